"""Tests for ``vital-actors serve`` run in this process: what it sets up once serving."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from vital_actors import cli
from vital_actors.lag import steady_collector
from vital_actors.settings import Settings


async def test_serving_freezes_the_start_up_heap_and_sets_the_gc_thresholds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate({"server": {"port": 0, "gc_thresholds": [12345, 6, 78]},
                                        "archive": {"enabled": False}})
    before = gc.get_threshold()
    assert before != (12345, 6, 78)
    tuned = trio.Event()
    real = steady_collector

    @contextmanager
    def spy(thresholds: tuple[int, int, int]) -> Iterator[None]:
        with real(thresholds):
            tuned.set()
            yield

    monkeypatch.setattr(cli, "steady_collector", spy)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: cli.serve(settings, banner=False))
            await tuned.wait()
            assert gc.get_threshold() == (12345, 6, 78)
            assert gc.get_freeze_count() > 10_000  # modules, numpy, scipy, the app
            nursery.cancel_scope.cancel()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # undone on return
