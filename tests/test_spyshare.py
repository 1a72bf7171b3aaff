"""loadtests.spyshare: shares of a py-spy raw profile."""

from __future__ import annotations

from loadtests.spyshare import SCHEDULER, THREADS, shares, tasks

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


LOOP = ("<module> (v:8);main (cli.py:1);run (trio/_core/_run.py:1);"
        "unrolled_run (trio/_core/_run.py:2);")
TRIO = [
    # a connection's task, a screen step, the run loop itself, waiting, a worker thread
    LOOP + "_run_handler (trio/_highlevel_serve_listeners.py:34);serve (ingest.py:9) 50",
    LOOP + "run_screen (screening.py:80);feed (chain.py:1) 30",
    LOOP + "Deadlines.expire (trio/_core/_run.py:3) 7",
    LOOP.rstrip(";") + " 3",
    "<module> (v:8);main (cli.py:1);run (trio/_core/_run.py:1);"
    "EpollIOManager.get_events (trio/_core/_io_epoll.py:243) 90",
    "Thread._bootstrap (threading.py:1);WorkerThread._work (trio/_core/_thread_cache.py:211) 80",
    "Thread._bootstrap (threading.py:1);WorkerThread._work (trio/_core/_thread_cache.py:1);"
    "commit (archive.py:5) 12",
]


def test_tasks_gives_busy_samples_to_the_running_task_or_the_scheduler() -> None:
    got = tasks(TRIO)
    assert got == {"_run_handler": 50, "run_screen": 30, SCHEDULER: 10, THREADS: 12}
