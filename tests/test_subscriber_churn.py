"""Subscribers that come and go, resubscribe or replay twice: the hub ends as it began
(``run_subscriber`` over in-memory WebSockets, a real hub, the server's rate ticker)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Client, Closed, open_pair

from protocol import SUBSCRIBE_PATH, CloseCode, Error, Event, Priority, Subscribe, position
from vital_actors.broadcast import Hub, run_hub_rates
from vital_actors.settings import (
    FilterSettings,
    LaneSettings,
    LimitSettings,
    RecoverySettings,
)
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry
from vital_actors.subscribers import run_subscriber


def make_hub(buffer: int = 100) -> Hub:
    return Hub(buffer=buffer, settings=LaneSettings(), stats=Stats(), rng=random.Random(1),
               recovery=RecoverySettings(seconds=30))


@asynccontextmanager
async def connected(hub: Hub, nursery: trio.Nursery) -> AsyncIterator[Client]:
    """One subscriber connection served by ``run_subscriber``; closed cleanly after."""
    ws, client = await open_pair(path=SUBSCRIBE_PATH)
    nursery.start_soon(partial(run_subscriber, ws, hub=hub, stats=hub.stats,
                               registry=StreamRegistry(FilterSettings())))
    yield client
    assert await client.close() == Closed(1000)


async def reply(client: Client) -> Event:
    """The next ``subscriptions`` reply (what comes before it is skipped)."""
    while True:
        message = await client.receive()
        assert not isinstance(message, Closed), message
        if isinstance(message, Event) and message.topic == "subscriptions":
            return message


async def test_topics_nobody_follows_any_more_are_forgotten_though_never_published(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_hub_rates, hub, interval=1.0))
        for round_ in range(3):  # dashboards for jobs that have ended, streams gone
            async with connected(hub, nursery) as client:
                topics = tuple(f"job/r{round_}-{k}" for k in range(256))
                await client.send(Subscribe(topics))
                await reply(client)
            await trio.testing.wait_all_tasks_blocked()
        assert hub.subscribers == set()
        await trio.sleep(hub.ring.seconds + 2)  # kept recovery.seconds, then forgotten
        assert hub.ring.logs == {}
        nursery.cancel_scope.cancel()


async def test_a_second_subscribe_since_replaces_a_replay_still_running(
        autojump_clock: MockClock) -> None:
    hub = make_hub()  # BULK lane: 2, so a replay of 300 takes many rounds
    holder = hub.add()
    hub.subscribe(holder, ["stream/x/beats"])  # keeps the topic's ring
    for r in range(300):
        hub.publish(Event("beat", "stream/x/beats", Priority.HIGH, {"r": r}))
    epoch = hub.ring.logs["stream/x/beats"].epoch
    assert epoch is not None
    async with trio.open_nursery() as nursery, connected(hub, nursery) as client:
        for offset in (250, 0):  # the client thinks better of it: all after 0
            await client.send(Subscribe(("stream/x/beats",), {"stream/x/beats": (epoch, offset)}))
        await trio.testing.wait_all_tasks_blocked()  # the replays have run their course
        hub.publish(Event("beat", "stream/x/beats", Priority.HIGH, {"r": 300}))
        await reply(client)
        second = await reply(client)
        assert second.body["recovered"] == {"stream/x/beats": True}
        offsets: list[int] = []
        while not offsets or offsets[-1] != 300:
            message = await client.receive()
            assert isinstance(message, Event), message
            pos = position(message)
            assert pos is not None and pos[0] == epoch
            offsets.append(pos[1])
        # Exactly what the second asked for, in order; of the first replay at most what
        # it had queued before the second reply.
        assert [o for o in offsets if o <= 250] == list(range(1, 251))
        assert sorted(set(offsets)) == list(range(1, 301))
        assert len(offsets) <= 300 + hub.capacities[Priority.BULK - 1]


async def test_a_subscriber_that_comes_after_shutdown_began_is_closed_with_1001(
        autojump_clock: MockClock) -> None:
    hub = make_hub()
    hub.close_all()  # the broadcaster has ended: the server is stopping
    ws, client = await open_pair(path=SUBSCRIBE_PATH)  # its handshake was under way
    with trio.fail_after(60):  # not left open, holding up the server's stop
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_subscriber, ws, hub=hub, stats=hub.stats,
                                       registry=StreamRegistry(FilterSettings())))
            assert await client.receive() == Closed(1001, "server shutting down")
    assert hub.subscribers == set()


async def test_a_subscriber_that_asks_for_too_many_topics_is_closed_1008_alone(
        autojump_clock: MockClock) -> None:
    # Each topic followed is state in the server and a line of every reply: one
    # connection could otherwise grow both without bound and stall the loop.
    hub = make_hub()
    registry = StreamRegistry(FilterSettings())
    async with trio.open_nursery() as nursery:
        async with connected(hub, nursery) as other:
            ws, greedy = await open_pair(path=SUBSCRIBE_PATH)
            nursery.start_soon(partial(run_subscriber, ws, hub=hub, stats=hub.stats,
                                       registry=registry,
                                       limits=LimitSettings(max_topics=5)))
            await greedy.send(Subscribe(("job/a", "job/b", "job/c")))
            await reply(greedy)
            await greedy.send(Subscribe(("job/a", "job/b", "job/c", "job/d", "job/e")))
            assert len((await reply(greedy)).body["topics"]) == 5  # the same ones count once
            await greedy.send(Subscribe(("job/f",)))
            error = await greedy.receive()
            assert isinstance(error, Error) and error.code == "too-many-topics", error
            assert await greedy.receive() == Closed(CloseCode.POLICY_VIOLATION,
                                                    error.message)
            await trio.testing.wait_all_tasks_blocked()
            assert hub.stats.totals.rejected == {"too-many-topics": 1}
            await other.send(Subscribe(("job/a",)))  # the other connection goes on
            assert (await reply(other)).body["topics"] == ["job/a"]
        nursery.cancel_scope.cancel()


async def test_a_subscriber_that_floods_control_messages_is_closed_1008_alone(
        autojump_clock: MockClock) -> None:
    # Devices have a message rate; so do subscribers (each subscribe costs a reply,
    # maybe a replay).
    hub = make_hub()
    async with trio.open_nursery() as nursery:
        async with connected(hub, nursery) as other:
            ws, flood = await open_pair(path=SUBSCRIBE_PATH)
            nursery.start_soon(partial(
                run_subscriber, ws, hub=hub, stats=hub.stats,
                registry=StreamRegistry(FilterSettings()),
                limits=LimitSettings(messages_per_s=10, message_burst=5)))
            for _ in range(5):  # the burst goes through
                await flood.send(Subscribe(("job/a",)))
                await reply(flood)
            await flood.send(Subscribe(("job/a",)))  # at once: one too many
            error = await flood.receive()
            assert isinstance(error, Error) and error.code == "rate-limited", error
            assert await flood.receive() == Closed(CloseCode.POLICY_VIOLATION,
                                                   error.message)
            await other.send(Subscribe(("job/b",)))
            assert (await reply(other)).body["topics"] == ["job/b"]
        nursery.cancel_scope.cancel()
