"""Typed messages that travel between the actors over memory channels."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import trio

from protocol import Event, StreamSamples

if TYPE_CHECKING:
    from .streams import StreamInfo

__all__ = ["Block", "Filtered", "Item", "Publication", "put", "run_batches", "stream_ids",
           "take_batch"]

_log = logging.getLogger(__name__)


# Block and Filtered are made once per frame on the hot path and never changed after;
# not frozen, because a frozen dataclass sets each field through object.__setattr__
# (1.2 against 0.25 µs a construction, measured).
@dataclass(slots=True, eq=False)
class Block:
    """One accepted device frame, in the device's dtype, shape (n, channels)."""

    stream: StreamInfo
    run: int
    seq: int
    t0: int
    raw: npt.NDArray[np.generic]
    received: float  # trio.current_time() when ingest accepted it

    @property
    def n(self) -> int:
        return int(self.raw.shape[0])


@dataclass(slots=True, eq=False)
class Filtered:
    """A block with its signal in mV (``mv``) and filtered (``filtered``), both float64."""

    block: Block
    mv: npt.NDArray[np.float64]
    filtered: npt.NDArray[np.float64]
    filter_version: int


@dataclass(frozen=True, slots=True, eq=False)
class Publication:
    """A ready server message for its topic (``message.topic``)."""

    message: StreamSamples | Event


#: What flows down the live pipeline: data, and events kept in order with it.
Item = Block | Filtered | Publication
T = TypeVar("T")


async def take_batch(inbox: trio.MemoryReceiveChannel[T], *, max_batch: int,
                     linger: float = 0.0) -> list[T]:
    """The next item and whatever else is waiting, up to *max_batch*: one numpy call for
    many streams' blocks. With *linger* (seconds), a batch that is not full yet waits
    that long for more first: at moderate load most blocks would otherwise go one or
    two per call, and a call's fixed cost (tens of µs) dwarfs its work on 36 samples.

    Raises:
        trio.EndOfChannel: *inbox* is closed and empty.
    """
    batch = [await inbox.receive()]
    if linger > 0 and inbox.statistics().current_buffer_used < max_batch - 1:
        await trio.sleep(linger)
    while len(batch) < max_batch:
        try:
            batch.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


async def put(outbox: trio.MemorySendChannel[T], item: T) -> None:
    """``outbox.send(item)``, minus its schedule point when there is room.

    For the actors' hot loops, which checkpoint once per round anyway (receiving): a
    full yield per item sent was a good part of what a message cost the scheduler.
    Without room it is ``send`` itself, so backpressure is unchanged: the caller parks.
    """
    try:
        outbox.send_nowait(item)
    except trio.WouldBlock:
        await outbox.send(item)


async def run_batches(inbox: trio.MemoryReceiveChannel[Item],
                      outbox: trio.MemorySendChannel[Item],
                      process: Callable[[list[Item]], Iterable[Item]], *, max_batch: int,
                      linger: float = 0.0,
                      on_failure: Callable[[list[Item], list[str]], Iterable[Item]] | None
                      = None) -> None:
    """A batching stage: each batch of *inbox* (:func:`take_batch`) through *process*,
    what it yields into *outbox*. Owns both ends: returns, closing *outbox*, when
    *inbox* ends.

    With *on_failure*, a batch *process* raises on (a bug) costs only that batch: the
    failure is logged, and what ``on_failure(batch, stream_ids)`` returns goes on
    instead (the stage forgets those streams' state, so they start over).
    """
    with inbox, outbox:
        while True:
            try:
                batch = await take_batch(inbox, max_batch=max_batch, linger=linger)
            except trio.EndOfChannel:
                break
            try:
                out = process(batch)
            except Exception:
                if on_failure is None:
                    raise
                ids = stream_ids(batch)
                _log.exception("a stage failed on a batch of stream(s) %s; they start over",
                               ", ".join(ids))
                out = on_failure(batch, ids)
            for item in out:
                await put(outbox, item)


def stream_ids(batch: Iterable[Item]) -> list[str]:
    """The ids of the streams whose blocks are in *batch*, sorted."""
    return sorted({(i.block if isinstance(i, Filtered) else i).stream.id for i in batch
                   if isinstance(i, Block | Filtered)})
