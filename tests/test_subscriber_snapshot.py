"""The ``streams`` snapshot a subscriber gets while devices come and go."""

from __future__ import annotations

import random
from functools import partial

import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Closed, open_pair

from protocol import SUBSCRIBE_PATH, Event, Hello, Priority, Subscribe
from vital_actors.broadcast import Hub
from vital_actors.settings import FilterSettings, LaneSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry
from vital_actors.subscribers import run_subscriber


def hello(stream: str) -> Hello:
    return Hello(stream, 360.0, ("MLII",), "int16", (200.0,), (1024.0,))


async def test_a_device_that_connects_during_the_snapshot_does_not_end_the_subscriber(
        autojump_clock: MockClock) -> None:
    hub = Hub(buffer=100, settings=LaneSettings(), stats=Stats(), rng=random.Random(1))
    registry = StreamRegistry(FilterSettings())
    for k in range(3):
        registry.attach(hello(f"s{k}"))
    ws, client = await open_pair(path=SUBSCRIBE_PATH)
    down = ws.stream.send_stream  # type: ignore[attr-defined]
    pump, sent = down.send_all_hook, 0

    async def meanwhile() -> None:  # each write of the snapshot lets others run
        nonlocal sent
        sent += 1
        if sent == 1:
            registry.attach(hello("late"))  # a device connects meanwhile
        await pump()

    down.send_all_hook = meanwhile
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_subscriber, ws, hub=hub, stats=hub.stats,
                                   registry=registry))
        await client.send(Subscribe(("streams",)))
        got: list[Event] = []
        while not got or got[-1].topic != "subscriptions":
            message = await client.receive()
            assert isinstance(message, Event), message
            got.append(message)
        assert [m.body["stream"] for m in got[:-1]][:3] == ["s0", "s1", "s2"]
        hub.publish(Event("status", "streams", Priority.NORMAL, {"stream": "late", "state": "gap"}))
        after = await client.receive()
        assert isinstance(after, Event) and after.body["stream"] == "late"
        assert await client.close() == Closed(1000)
