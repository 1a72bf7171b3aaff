"""loadtests.spyshare: shares of a py-spy raw profile."""

from __future__ import annotations

from loadtests.spyshare import shares

RAW = [
    "process 1:\"x\";main (a.py:1);serve (b.py:5);recv (c.py:9) 30",
    "process 1:\"x\";main (a.py:1);serve (b.py:5);parse (d.py:2) 10",
    "process 1:\"x\";main (a.py:1);screen (e.py:3) 60",
    "not a sample line",
]


def test_inclusive_and_self_shares_count_each_function_once_per_stack() -> None:
    got = shares(RAW)
    assert got.samples == 100
    assert got.inclusive["main"] == 100 and got.inclusive["serve"] == 40
    assert got.own["recv (c.py:9)"] == 30 and got.own["screen (e.py:3)"] == 60


def test_under_keeps_the_stacks_through_a_function_and_shares_are_of_those() -> None:
    got = shares(RAW, under="serve")
    assert got.samples == 40
    assert dict(got.inclusive) == {"recv": 30, "parse": 10}
