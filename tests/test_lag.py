"""The event-loop lag probe sees synchronous work that blocks the loop."""

from __future__ import annotations

import gc
import time

import trio
import trio.testing

from vital_actors.lag import LoopLag, run_lag_probe, steady_collector


def test_summary_of_known_lags() -> None:
    lag = LoopLag(keep=3)
    assert lag.summary().samples == 0
    for ms in (1.0, 2.0, 3.0, 50.0):  # the first falls out of the window
        lag.record(ms / 1e3)
    s = lag.summary()
    assert s.samples == 3
    assert s.max_ms == 50.0
    assert s.p50_ms == 3.0


async def test_an_idle_loop_shows_no_lag(autojump_clock: trio.testing.MockClock) -> None:
    lag = LoopLag()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_lag_probe, lag)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    s = lag.summary()
    assert s.samples == 19 or s.samples == 20
    assert s.max_ms == 0.0


async def test_blocking_work_shows_as_lag() -> None:
    # Real clock: the point is wall time spent without yielding to the loop.
    lag = LoopLag()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_lag_probe, lag)
        await trio.sleep(0.06)  # the probe has started a sleep
        time.sleep(0.12)  # noqa: ASYNC251 -- blocking the loop on purpose
        await trio.sleep(0.06)
        nursery.cancel_scope.cancel()
    assert lag.summary().max_ms >= 60


def test_a_steady_collector_freezes_and_collects_less_often_then_undoes_both() -> None:
    """What the server does once serving, and the load generator while it measures."""
    before = gc.get_threshold()
    assert before != (12345, 6, 78)
    with steady_collector((12345, 6, 78)):
        assert gc.get_threshold() == (12345, 6, 78)
        assert gc.get_freeze_count() > 10_000  # modules, numpy, the tests' objects
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
