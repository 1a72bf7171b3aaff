"""Replaying what a subscriber missed, then joining it to the live stream:
:func:`run_catch_up` for each topic of a ``subscribe.since``, one after the other.

While it runs the hub keeps the subscriber out of the topic's live delivery: live
messages go into the ring only, and the replay walks the ring up to its head (decoding
each entry's payload again), so the ring itself buffers what arrives meanwhile
(nothing extra in memory). What the ring no
longer holds comes from the history source (raw topics: the live archive), a bounded
batch at a time. Every replayed message is queued in the subscriber's BULK lane, and
only when :meth:`Lanes.wait_for_room` says the lane has room and the buffer is in
normal state: a replay is never dropped, never pushes out what the lanes' policy would
admit, and never delays live CRITICAL, HIGH, NORMAL or LOW messages of other topics.
At the head it waits until its last replayed message has left the BULK lane (a live
HIGH message must not overtake it), then goes live with no await in between: no gap,
no duplicate. If the ring drops entries the replay still needed (it was slower than
``recovery.seconds``) and no source has them, the subscriber gets a ``status`` on the
topic with ``state: "recovery"``, ``recovered: false`` and the position it resumes
from, in order with the replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import trio

from protocol import Event, Position, Priority

from .broadcast import Hub, Subscriber
from .edge.codecs import Outgoing
from .history import TopicLog, replayed

__all__ = ["run_catch_up", "subscribe"]


async def run_catch_up(hub: Hub, sub: Subscriber, topic: str, cursor: int, *,
                       history: bool, batch: int, ticket: object | None = None) -> None:
    """Replay *topic* to *sub* after offset *cursor*, then make it a live subscriber.

    Ends early, quietly, when *sub* unsubscribes, is evicted, its lanes close (its
    connection ends, or the server stops), or when a later ``subscribe.since`` of the
    topic replaced it (*ticket* is no longer ``sub.replays[topic]``): two replays of
    one topic would interleave, and the first to reach the head would end the other's
    with a silent gap.
    """
    log = hub.ring.logs.get(topic)
    try:
        if log is None or log.epoch is None:
            hub.go_live(sub, topic)
            return
        catching = partial(_catching, hub, sub, topic, ticket)
        await _catch_up(hub, sub, log, cursor, history=history, batch=batch,
                        catching=catching)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        return  # its connection is going away
    finally:
        if ticket is not None and sub.replays.get(topic) is ticket:
            del sub.replays[topic]


def _catching(hub: Hub, sub: Subscriber, topic: str, ticket: object | None) -> bool:
    """Whether the replay holding *ticket* is still *sub*'s replay of *topic*, and its
    lanes still take offers (once closed, :meth:`Lanes.wait_for_room` returns at once:
    a replay that went on would spin until its connection ends)."""
    return (not sub.lanes.closed and hub.catching_up(sub, topic)
            and (ticket is None or sub.replays.get(topic) is ticket))


async def _catch_up(hub: Hub, sub: Subscriber, log: TopicLog, cursor: int, *,
                    history: bool, batch: int, catching: Callable[[], bool]) -> None:
    topic, epoch = log.topic, log.epoch
    assert epoch is not None
    index: int | None = None  # the next ring entry to replay, while the ring still has it
    while catching():
        if log.epoch != epoch:  # a new run of the stream: what we replay is over
            epoch, index = log.epoch or epoch, log.base
            cursor = log.floor if log.floor is not None else log.last
            await _offer(sub, _lost(topic, epoch, cursor))
            continue
        if index is None or index < log.base:
            if log.floor is not None and cursor < log.floor:
                got = []
                if history and hub.history is not None:
                    try:
                        got = await hub.history.read(topic, epoch, cursor, log.floor, batch)
                    except OSError:  # the run's files went away (or the disk failed):
                        history = False  # what they held is lost to this replay
                        continue
                if not got:  # gone: say so, in order, and go on from what the ring has
                    cursor = log.floor
                    await _offer(sub, _lost(topic, epoch, cursor))
                for offset, out in got:
                    await _offer(sub, out)
                    cursor = offset
                    hub.stats.totals.replayed += 1
                    hub.stats.totals.replayed_archive += 1
                    if not catching():
                        return
                continue
            index = log.index_after(cursor)
        if index < log.end:
            if not sub.lanes.has_room(Priority.BULK):
                await sub.lanes.wait_for_room(Priority.BULK)
                continue  # the ring may have moved on while we waited
            entry = log.at(index)
            sub.lanes.offer(replayed(entry, Priority.BULK))
            hub.stats.totals.replayed += 1
            index += 1
            cursor = cursor if entry[0] is None else entry[0]
        elif sub.lanes.depths[Priority.BULK - 1]:
            await sub.lanes.wait_for_room(Priority.BULK, below=1)  # our last one leaves
        else:
            hub.go_live(sub, topic)  # no await since the last check: no gap, no duplicate
            return


def _bulk(out: Outgoing) -> Outgoing:
    """The same message and frames (memoized per codec), in the BULK lane."""
    return dataclasses.replace(out, priority=Priority.BULK)


def _lost(topic: str, epoch: str | None, offset: int) -> Outgoing:
    return Outgoing.of(Event("status", topic, Priority.NORMAL, {
        "state": "recovery", "recovered": False, "epoch": epoch, "offset": offset}),
        Priority.BULK)


async def _offer(sub: Subscriber, out: Outgoing) -> None:
    """Queue *out* in BULK once there is room (without a schedule point while there is:
    a replay fills the lane in one go, up to its capacity)."""
    if not sub.lanes.has_room(Priority.BULK):
        await sub.lanes.wait_for_room(Priority.BULK)
    sub.lanes.offer(_bulk(out))


Replay = Callable[[], Awaitable[None]]


async def subscribe(hub: Hub, sub: Subscriber, topics: Sequence[str],
                    since: Mapping[str, Position]) -> tuple[dict[str, Any], list[Replay]]:
    """Handle one ``subscribe``: the fields its reply adds (``positions`` of every topic
    that has one, ``recovered`` per topic of *since*) and the replays to start once the
    reply is on its way (so that it precedes what they send)."""
    positions = hub.subscribe(sub, [t for t in topics if t not in since])
    recovered: dict[str, bool] = {}
    replays: list[Replay] = []
    for topic, pos in since.items():
        resume = hub.recover(sub, topic, pos)
        ticket = sub.replays[topic] = object()  # ends a replay of the topic still running
        log = hub.ring.logs.get(topic)
        if resume.history and log is not None and hub.history is not None and not (
                await hub.history.covers(topic, pos[0], pos[1])):
            resume = hub.partly(log)
        recovered[topic] = resume.recovered
        hub.stats.totals.recoveries += 1
        hub.stats.totals.recovered += resume.recovered
        if resume.epoch is not None:
            positions[topic] = (resume.epoch, resume.offset)
        if resume.replay:
            replays.append(partial(run_catch_up, hub, sub, topic, resume.offset,
                                   history=resume.history, batch=hub.recovery.replay_batch,
                                   ticket=ticket))
        else:
            del sub.replays[topic]
    fields: dict[str, Any] = {"positions": {t: list(p) for t, p in positions.items()}}
    if since:
        fields["recovered"] = recovered
    return fields, [partial(_in_turn, replays)] if replays else []


async def _in_turn(replays: list[Replay]) -> None:
    """One topic's replay after the other: they share one BULK lane anyway, and one task
    waiting for its room wakes once per message sent, not once per topic."""
    for replay in replays:
        await replay()
