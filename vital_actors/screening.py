"""The screen actor: beats, heart rate, signal quality and alerts on the live stream.

All decisions live in :mod:`vital_actors.quality` (pure, no trio); this actor only
batches: it takes the filtered blocks waiting in its inbox (up to ``max_batch``), runs
them through one :class:`~vital_actors.quality.QualityChain` call, and forwards every
item followed by the events of its block, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import trio

from protocol import Event

from .messages import Filtered, Item, Publication, run_batches
from .quality import Frame, QualityChain
from .quality.chain import gc_deferred
from .settings import ScreenSettings

__all__ = ["Screener", "frame_of", "run_screen", "screen_batch"]


def frame_of(item: Filtered) -> Frame:
    """The chain's view of a filtered block (stream id, rate, run, t0, mV, filtered)."""
    block = item.block
    return Frame(block.stream.id, block.stream.fs, block.t0, item.mv, item.filtered,
                 block.run)


class Screener:
    """One-block-at-a-time front of a :class:`QualityChain` (picklable, like the chain).

    For callers that hold :class:`Filtered` blocks; batch jobs may as well call
    :meth:`QualityChain.feed_one` with plain arrays.
    """

    def __init__(self, settings: ScreenSettings) -> None:
        self.chain = QualityChain(settings)

    def feed(self, item: Filtered) -> Iterator[Event]:
        """The events of one filtered block, in sample order."""
        return iter(self.chain.feed([frame_of(item)])[0])


def screen_batch(chain: QualityChain, batch: list[Item]) -> list[Item]:
    """Pure: *batch* with each filtered block followed by its events (the garbage
    collector deferred to the end, as in :meth:`QualityChain.feed`)."""
    frames = [frame_of(item) for item in batch if isinstance(item, Filtered)]
    if not frames:
        return batch
    with gc_deferred():
        events = iter(chain.feed(frames))
        out: list[Item] = []
        for item in batch:
            out.append(item)
            if isinstance(item, Filtered):
                out.extend(map(Publication, next(events)))
    return out


async def run_screen(
    inbox: trio.MemoryReceiveChannel[Item],
    outbox: trio.MemorySendChannel[Item],
    *,
    settings: ScreenSettings,
    max_batch: int = 512,
    linger: float = 0.0,
    chain: QualityChain | None = None,
    task_status: trio.TaskStatus[QualityChain] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Screen the filtered blocks from *inbox*; pass every item on, then its events.

    Takes whatever is waiting (up to *max_batch* items, lingering *linger* s for more)
    as one batch. Owns both ends: returns, closing *outbox*, when *inbox* ends.
    """
    chain = chain or QualityChain(settings)
    task_status.started(chain)
    await run_batches(inbox, outbox, partial(screen_batch, chain), max_batch=max_batch,
                      linger=linger, on_failure=partial(_unscreened, chain))


def _unscreened(chain: QualityChain, batch: list[Item], streams: list[str]) -> list[Item]:
    """A batch the chain failed on (a bug): its items go on without events, so their
    samples still reach subscribers; its streams' screening starts over."""
    for key in streams:
        chain.forget(key)
    return batch
