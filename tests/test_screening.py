"""Tests for vital_actors.screening: the screen actor around the quality chain."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
from quality_helpers import F64, bandpass, to_mv
from trio.testing import MockClock

from protocol import Event, Hello, Priority
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.quality import Frame, QualityChain
from vital_actors.screening import Screener, run_screen, screen_batch
from vital_actors.settings import FilterSettings, ScreenSettings
from vital_actors.sources import synthetic_ecg
from vital_actors.streams import StreamInfo, StreamRegistry

SETTINGS = ScreenSettings()
FS = 360.0


def stream(name: str = "s1", channels: int = 2) -> StreamInfo:
    names = tuple(f"ch{k}" for k in range(channels))
    hello = Hello(name, FS, names, "int16", (200.0,) * channels, (0.0,) * channels)
    return StreamRegistry(FilterSettings()).attach(hello)


def blocks(info: StreamInfo, mv: F64, size: int) -> list[Filtered]:
    f = bandpass(mv, FS)
    raw = np.zeros((size, mv.shape[1]), dtype=np.int16)  # the screen reads mv, filtered
    return [Filtered(Block(info, info.run, k, t, raw, 0.0), mv[t:t + size], f[t:t + size], 1)
            for k, t in enumerate(range(0, len(mv), size))]


def signal(seconds: float = 12, seed: int = 0) -> F64:
    return to_mv(synthetic_ecg(fs=FS, seconds=seconds, seed=seed))


def events_of(items: list[Item]) -> list[Event]:
    return [i.message for i in items
            if isinstance(i, Publication) and isinstance(i.message, Event)]


def test_screen_batch_puts_each_blocks_events_right_after_it() -> None:
    a, b = stream("a"), stream("b")
    items: list[Item] = []
    for x, y in zip(blocks(a, signal(seed=1), 720), blocks(b, signal(seed=2), 720),
                    strict=True):
        items += [x, y]
    out = screen_batch(QualityChain(SETTINGS), items)
    assert [i for i in out if isinstance(i, Filtered)] == items
    current = None
    for i in out:
        if isinstance(i, Filtered):
            current = i.block.stream.id
        else:
            assert isinstance(i, Publication) and isinstance(i.message, Event)
            assert i.message.body["stream"] == current
    alone = screen_batch(QualityChain(SETTINGS), [i for i in items
                                                  if i.block.stream.id == "a"])  # type: ignore[union-attr]
    assert events_of(alone) == [e for e in events_of(out) if e.body["stream"] == "a"]


def test_screener_feeds_one_block_at_a_time_like_the_chain() -> None:
    info = stream()
    mv = signal()
    screener = Screener(SETTINGS)
    got = [e for blk in blocks(info, mv, 500) for e in screener.feed(blk)]
    whole = QualityChain(SETTINGS).feed_one("s1", FS, 0, mv, bandpass(mv, FS))
    assert got == whole and {e.type for e in got} == {"beat", "quality"}


async def test_run_screen_forwards_everything_then_its_events(autojump_clock: MockClock) -> None:
    info = stream()
    note = Publication(Event("status", "streams", Priority.NORMAL, {"state": "x"}))
    items: list[Item] = [note, *blocks(info, signal(4), 360)]
    in_tx, in_rx = trio.open_memory_channel[Item](len(items))
    out_tx, out_rx = trio.open_memory_channel[Item](256)
    for item in items:
        in_tx.send_nowait(item)
    in_tx.close()
    with trio.fail_after(60):  # instant on the autojump clock, if run_screen never ends
        async with trio.open_nursery() as nursery:
            chain = await nursery.start(partial(run_screen, in_rx, out_tx, settings=SETTINGS))
            got = [item async for item in out_rx]  # ends: run_screen closed its outbox
    assert isinstance(chain, QualityChain)
    assert [g for g in got if not isinstance(g, Publication) or g is note] == items
    quality = [e for e in events_of(got) if e.type == "quality"]
    assert [q.body["t0"] + q.body["n"] for q in quality] == [360, 720, 1080, 1440]
    assert in_rx.statistics().open_receive_channels == 0


class _FailsOnce(QualityChain):
    """A chain with a bug that strikes stream *key*'s third block, once."""

    def __init__(self, key: str) -> None:
        super().__init__(SETTINGS)
        self.key, self.calls, self.failed = key, 0, False

    def feed(self, frames: Sequence[Frame]) -> list[list[Event]]:
        if any(f.key == self.key for f in frames):
            self.calls += 1
            if self.calls == 3 and not self.failed:
                self.failed = True
                raise ZeroDivisionError("a bug in the chain")
        return super().feed(frames)


async def test_a_batch_the_chain_fails_on_goes_on_unscreened_and_the_stream_starts_over(
        autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    info = stream("bug")
    items: list[Item] = list(blocks(info, signal(8), 360))
    in_tx, in_rx = trio.open_memory_channel[Item](len(items))
    out_tx, out_rx = trio.open_memory_channel[Item](256)
    chain = _FailsOnce("bug")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_screen, in_rx, out_tx, settings=SETTINGS, chain=chain,
                                   max_batch=1))
        got: list[Item] = []
        for item in items:  # one block a batch: the third one's batch fails
            in_tx.send_nowait(item)
            await trio.testing.wait_all_tasks_blocked()
            got += [out_rx.receive_nowait() for _ in range(out_rx.statistics().current_buffer_used)]
        in_tx.close()
    assert chain.failed and "a bug in the chain" in caplog.text
    assert [g for g in got if isinstance(g, Filtered)] == items  # every block went on
    quality = [e.body["t0"] + e.body["n"] for e in events_of(got) if e.type == "quality"]
    # Seconds 1-2, none for the failed third, then the stream starts over from its next
    # block: a fresh state whose first window starts at t0 = 1080.
    assert quality == [360, 720, 1440, 1800, 2160, 2520, 2880], quality
