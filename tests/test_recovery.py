"""Subscriber recovery (issue 6): positions, replay from the ring and from the live
archive, ``recovered: false`` when the epoch changed, bad ``since`` values, a replay
that never crowds out live alerts, and the SDK subscriber through connections cut at
random, ending with an exact sequence."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from trio.testing import MockClock
from trio_websocket import ConnectionClosed, WebSocketConnection

import protocol as P
from loadtests.proxy import killing_proxy
from vital_actors.broadcast import Hub, Subscriber
from vital_actors.graph import Server
from vital_actors.history import Ring
from vital_actors.lanes import Lanes
from vital_actors.recovery import run_catch_up
from vital_actors.sdk import Backoff, DeviceClient, open_connection, open_subscriber
from vital_actors.sdk._connection import receive
from vital_actors.settings import LaneSettings, RecoverySettings, SettingsError, load_settings
from vital_actors.sources import load_record
from vital_actors.stats import Stats

HELLO = P.Hello("r1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
RAW = "stream/r1/raw"


def block(seq: int, n: int = 36) -> np.ndarray:
    """Frame *seq*'s samples: distinct per frame, so the data proves which one it is."""
    return (np.arange(n * 2, dtype="<i2").reshape(n, 2) + seq * 100).astype("<i2")


# --- the ring, pure -----------------------------------------------------------------------


def test_the_ring_forgets_oldest_first_by_age_and_by_bytes_over_all_topics() -> None:
    now = [0.0]
    ring = Ring(seconds=10.0, max_bytes=1000, clock=lambda: now[0])
    a, b = ring.open("alerts"), ring.open("streams")
    for i in range(4):
        now[0] = float(i)
        ring.append(a if i % 2 == 0 else b, i, _sized(300))
    # 1200 bytes > 1000: the oldest entry overall (alerts, offset 0) went first.
    assert [e[0] for e in a.entries] == [2] and a.floor == 0 and a.base == 1
    assert [e[0] for e in b.entries] == [1, 3] and b.floor == -1
    now[0] = 12.5  # offsets 1 and 2 are now older than 10 s
    ring.trim(now[0])
    assert [e[0] for e in b.entries] == [3] and b.floor == 1 and a.floor == 2
    assert ring.bytes == 300
    assert b.index_after(1) == b.base and b.index_after(3) == b.end


def _sized(n: int) -> Any:
    from vital_actors.edge.codecs import Outgoing

    return Outgoing(P.Event("status", "x", P.Priority.NORMAL), P.Priority.NORMAL, b"x" * n)


def test_since_round_trips_through_the_codec_and_is_optional() -> None:
    m = P.Subscribe((RAW, "alerts"), {RAW: ("ab.3", 41), "alerts": ("cd-1", -1)})
    assert P.decode_subscriber(P.encode(m)) == m
    assert msgpack.unpackb(P.encode(m))["since"] == {RAW: ["ab.3", 41], "alerts": ["cd-1", -1]}
    assert "since" not in msgpack.unpackb(P.encode(P.Subscribe((RAW,))))


@pytest.mark.parametrize(("key", "value"), [("seconds", -1), ("seconds", 7200),
                                            ("max_bytes", -1), ("replay_batch", 0)])
def test_recovery_settings_are_validated(key: str, value: int) -> None:
    with pytest.raises(SettingsError, match=f"recovery.{key}"):
        load_settings(recovery={key: value})


# --- a real server ------------------------------------------------------------------------


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[Server]:
    server = Server(load_settings(server={"port": 0}, **settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        server.shutdown()


@asynccontextmanager
async def device(server: Server, hello: P.Hello = HELLO) -> AsyncIterator[DeviceClient]:
    client = DeviceClient(f"ws://127.0.0.1:{server.port}", hello)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def subscriber(server: Server, topics: tuple[str, ...],
                     since: dict[str, P.Position] | None = None,
                     ) -> AsyncIterator[tuple[WebSocketConnection, P.Event]]:
    """A subscriber connection; yields it with the server's reply to its subscribe."""
    async with open_connection(f"ws://127.0.0.1:{server.port}", P.SUBSCRIBE_PATH) as ws:
        await ws.send_message(P.encode(P.Subscribe(topics, since or {})))
        while True:
            reply = await receive(ws)
            if isinstance(reply, P.Event) and reply.topic == "subscriptions":
                break
        yield ws, reply


async def samples_until(ws: WebSocketConnection, last: int) -> list[P.StreamSamples]:
    """The raw ``samples`` messages *ws* receives, up to and including seq *last*."""
    got: list[P.StreamSamples] = []
    with trio.fail_after(20):
        while not got or got[-1].seq < last:
            message = await receive(ws)
            if isinstance(message, P.StreamSamples):
                got.append(message)
    return got


async def send_frames(client: DeviceClient, seqs: range) -> None:
    for seq in seqs:
        assert await client.send(block(seq)) == seq


async def test_recovery_from_the_ring_replays_exactly_the_missed_frames_then_live() -> None:
    async with serving(archive={"enabled": False}) as server, device(server) as dev, \
            subscriber(server, (RAW,)) as (witness, _):
        async with subscriber(server, (RAW,)) as (ws, reply):
            await send_frames(dev, range(5))
            seen = await samples_until(ws, 4)
        position = P.position(seen[-1])
        assert position is not None and position[1] == 4
        assert reply.body["positions"][RAW] == [position[0], -1]  # nothing before it

        await send_frames(dev, range(5, 15))  # missed while away
        await samples_until(witness, 14)
        async with subscriber(server, (RAW,), {RAW: position}) as (ws, reply):
            assert reply.body["recovered"] == {RAW: True}
            assert reply.body["positions"][RAW] == list(position)
            await send_frames(dev, range(15, 20))  # live, during or after the replay
            got = await samples_until(ws, 19)
    assert [m.seq for m in got] == list(range(5, 20))  # no gap, no duplicate
    assert all(m.data == block(m.seq).tobytes() for m in got)
    assert [P.position(m) for m in got] == [(position[0], s) for s in range(5, 20)]


async def test_one_subscribe_recovers_several_topics_and_raw_status_in_order() -> None:
    async with serving(archive={"enabled": False}) as server:
        async with subscriber(server, ("streams", RAW)) as (_, reply):
            since = {t: (e, o) for t, (e, o) in reply.body["positions"].items()}
        assert set(since) == {"streams", RAW}  # both known before any device came
        async with device(server) as dev, subscriber(server, (RAW,)) as (witness, _):
            await send_frames(dev, range(5))  # all while no one with since was there
            await samples_until(witness, 4)
            async with subscriber(server, ("streams", RAW), since) as (ws, reply):
                assert reply.body["recovered"] == {"streams": True, RAW: True}
                got: list[P.ServerMessage] = []
                with trio.fail_after(10):
                    while True:
                        got.append(await receive(ws))
                        if isinstance(got[-1], P.StreamSamples) and got[-1].seq == 4:
                            break
    replayed = [m for m in got if isinstance(m, P.StreamSamples) or (
        isinstance(m, P.Event) and not m.body.get("snapshot"))]
    streams = [m for m in replayed if m.topic == "streams"]
    raw = [m for m in replayed if m.topic == RAW]
    assert [(m.body["stream"], m.body["state"]) for m in streams if isinstance(m, P.Event)] \
        == [("r1", "connected")] and P.position(streams[0]) == (since["streams"][0], 0)
    assert isinstance(raw[0], P.Event) and raw[0].body["state"] == "connected"
    assert [m.seq for m in raw[1:] if isinstance(m, P.StreamSamples)] == list(range(5))
    assert len(raw) == 6


async def test_recovery_from_the_archive_when_the_ring_no_longer_holds_it(
        tmp_path: Path) -> None:
    # A ring of about 3 raw frames: most of the 10 missed ones come from the disk.
    async with serving(archive={"dir": tmp_path}, recovery={"max_bytes": 1500}) as server, \
            device(server) as dev, subscriber(server, (RAW,)) as (witness, _):
        await send_frames(dev, range(5))
        position = P.position((await samples_until(witness, 4))[-1])
        assert position is not None
        await send_frames(dev, range(5, 15))
        await samples_until(witness, 14)
        log = server.hub.ring.logs[RAW]
        assert log.floor is not None and log.floor > 6  # frames 5, 6 ... are gone from it
        with trio.fail_after(10):
            await dev.drain()  # acked: durable in the archive
        async with subscriber(server, (RAW,), {RAW: position}) as (ws, reply):
            assert reply.body["recovered"] == {RAW: True}
            await send_frames(dev, range(15, 18))
            got = await samples_until(ws, 17)
    assert [m.seq for m in got] == list(range(5, 18))
    assert all(m.data == block(m.seq).tobytes() for m in got)
    totals = server.stats.totals  # on /metrics as vital_recoveries, vital_replayed ...
    assert (totals.recoveries, totals.recovered) == (1, 1)
    assert 0 < totals.replayed_archive < totals.replayed <= 13
    assert [m.t0 for m in got] == [36 * s for s in range(5, 18)]


async def test_history_gone_is_recovered_false_and_replays_what_the_ring_still_holds(
        ) -> None:
    async with serving(archive={"enabled": False}, recovery={"max_bytes": 1500}) as server, \
            device(server) as dev, subscriber(server, (RAW,)) as (witness, _):
        await send_frames(dev, range(15))
        old = P.position((await samples_until(witness, 14))[4])
        assert old is not None
        floor = server.hub.ring.logs[RAW].floor
        assert floor is not None and 4 < floor < 14
        async with subscriber(server, (RAW,), {RAW: old}) as (ws, reply):
            assert reply.body["recovered"] == {RAW: False}
            assert reply.body["positions"][RAW] == [old[0], floor]  # what follows it comes
            await send_frames(dev, range(15, 17))
            got = await samples_until(ws, 16)
    assert [m.seq for m in got] == list(range(floor + 1, 17))


async def test_after_a_restart_over_the_same_archive_raw_topics_recover_from_disk(
        tmp_path: Path) -> None:
    async with serving(archive={"dir": tmp_path}) as server, \
            subscriber(server, (RAW,)) as (ws, _), device(server) as dev:
        await send_frames(dev, range(10))
        seen = await samples_until(ws, 9)
        with trio.fail_after(10):
            await dev.drain()
    position = P.position(seen[4])  # the subscriber counts 0..4 as received
    assert position is not None
    async with serving(archive={"dir": tmp_path}) as server, \
            subscriber(server, (RAW,), {RAW: position}) as (ws, reply):
        assert reply.body["recovered"] == {RAW: True}  # the same epoch: the same archive
        got = await samples_until(ws, 9)
    assert [m.seq for m in got] == list(range(5, 10))
    assert [m.data for m in got] == [m.data for m in seen[5:]]


async def test_a_changed_epoch_is_recovered_false_with_where_it_resumes() -> None:
    async with serving(archive={"enabled": False}) as server, \
            subscriber(server, (RAW,)) as (witness, _):
        async with device(server) as dev:
            await send_frames(dev, range(3))
            old = P.position((await samples_until(witness, 2))[-1])
        assert old is not None
        async with device(server) as dev:  # a fresh hello: a new run, a new epoch
            await send_frames(dev, range(2))
            new = P.position((await samples_until(witness, 1))[-1])
            assert new is not None and new[0] != old[0]
            async with subscriber(server, (RAW,), {RAW: (old[0], 1)}) as (ws, reply):
                assert reply.body["recovered"] == {RAW: False}
                assert reply.body["positions"][RAW] == [new[0], 1]
                await send_frames(dev, range(2, 4))
                got = await samples_until(ws, 3)
    assert [m.seq for m in got] == [2, 3]  # what follows the position it was given


async def test_an_unknown_epoch_after_a_restart_without_archive_is_recovered_false() -> None:
    async with serving(archive={"enabled": False}) as server, \
            subscriber(server, (RAW, "alerts"),
                       {RAW: ("0badc0de.0", 41), "alerts": ("0badc0de-3", 7)}) as (_, reply):
        assert reply.body["recovered"] == {RAW: False, "alerts": False}
        # Unknown here: it will begin with run 0 of this server's epochs.
        assert reply.body["positions"][RAW] == [server.hub.stream_epoch(0), -1]
        assert reply.body["positions"]["alerts"][1] == -1


@pytest.mark.parametrize(("since", "says"), [
    ([1, 2], "must be a map"),
    ({"alerts": ["e", 1]}, "not in 'topics'"),
    ({RAW: ["e", "1"]}, "[epoch (str), offset (int)]"),
    ({RAW: ["e", True]}, "[epoch (str), offset (int)]"),
    ({RAW: ["e", 1, 2]}, "[epoch (str), offset (int)]"),
    ({RAW: ["", 1]}, "1 to 64 characters"),
    ({RAW: ["e", -2]}, "offset must be >= -1"),
])
async def test_a_bad_since_is_refused_with_its_own_error(since: object, says: str) -> None:
    async with serving() as server, open_connection(
            f"ws://127.0.0.1:{server.port}", P.SUBSCRIBE_PATH) as ws:
        await ws.send_message(msgpack.packb({"type": "subscribe", "topics": [RAW],
                                             "since": since}))
        error = await receive(ws)
        assert isinstance(error, P.Error) and error.code == "bad-since"
        assert says in error.message
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        reason = closed.value.reason
        assert reason is not None and reason.code == P.CloseCode.INVALID_PAYLOAD


# --- replays and the lanes (a real hub, its lanes drained by hand) -----------------------


async def test_a_replay_waits_for_room_in_bulk_and_never_holds_back_live_alerts(
        autojump_clock: MockClock) -> None:
    hub = Hub(buffer=100, settings=LaneSettings(), stats=Stats(), rng=random.Random(3),
              recovery=RecoverySettings())
    holder = hub.add()
    hub.subscribe(holder, ["stream/x/beats"])  # keeps the topic's ring
    for r in range(300):
        hub.publish(P.Event("beat", "stream/x/beats", P.Priority.HIGH, {"r": r}))
    epoch = hub.ring.logs["stream/x/beats"].epoch
    assert epoch is not None
    sub = hub.add()
    hub.subscribe(sub, ["alerts"])
    resume = hub.recover(sub, "stream/x/beats", (epoch, 9))
    assert resume.recovered and resume.replay
    got: list[P.ServerMessage] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_catch_up, hub, sub, "stream/x/beats", 9,
                                   history=False, batch=64))
        await trio.testing.wait_all_tasks_blocked()
        bulk = sub.lanes.capacities[P.Priority.BULK - 1]
        assert sub.lanes.depths[P.Priority.BULK - 1] == bulk  # parked: BULK is full
        hub.publish(P.Event("alert", "alerts", P.Priority.CRITICAL, {"alert": "asystole"}))
        assert _take(sub.lanes).message.type == "alert"  # ahead of the whole replay
        while hub.catching_up(sub, "stream/x/beats"):
            got.append(_take(sub.lanes).message)
            await trio.testing.wait_all_tasks_blocked()
    got += [out.message for out in _drain(sub.lanes)]
    hub.publish(P.Event("beat", "stream/x/beats", P.Priority.HIGH, {"r": 300}))
    got += [out.message for out in _drain(sub.lanes)]
    offsets = [P.position(m) for m in got]
    assert offsets == [(epoch, o) for o in range(10, 301)]  # then live, no gap or dup
    assert sub.lanes.counts.dropped == [0] * 5


def _recovering_alerts() -> tuple[Hub, Subscriber]:
    """A hub with 50 alerts in its ring, and a subscriber recovering them from 0."""
    hub = Hub(buffer=100, settings=LaneSettings(), stats=Stats(), rng=random.Random(3))
    holder = hub.add()
    hub.subscribe(holder, ["alerts"])
    for i in range(50):
        hub.publish(P.Event("alert", "alerts", P.Priority.CRITICAL, {"i": i}))
    epoch = hub.ring.logs["alerts"].epoch
    assert epoch is not None
    sub = hub.add()
    assert hub.recover(sub, "alerts", (epoch, 0)).replay
    return hub, sub


async def test_unsubscribing_during_a_replay_ends_it(autojump_clock: MockClock) -> None:
    hub, sub = _recovering_alerts()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_catch_up, hub, sub, "alerts", 0, history=False,
                                   batch=64))
        await trio.testing.wait_all_tasks_blocked()  # parked: BULK is full
        hub.unsubscribe(sub, ["alerts"])
        _drain(sub.lanes)  # room again: the replay looks, and ends
    assert not hub.catching_up(sub, "alerts") and sub not in hub._topics.get("alerts", ())
    hub.publish(P.Event("alert", "alerts", P.Priority.CRITICAL, {"i": 50}))
    assert _drain(sub.lanes) == []


async def test_a_replay_ends_when_the_lanes_close_though_its_lane_stays_full(
        autojump_clock: MockClock) -> None:
    hub, sub = _recovering_alerts()
    ended = trio.Event()

    async def replay() -> None:
        await run_catch_up(hub, sub, "alerts", 0, history=False, batch=64)
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay)
        await trio.testing.wait_all_tasks_blocked()  # parked: BULK is full
        hub.close_all()  # shutdown; its client reads no more, BULK stays full
        for _ in range(100):  # no busy loop: it ends at once, not when cancelled
            await trio.lowlevel.checkpoint()
        assert ended.is_set()
        nursery.cancel_scope.cancel()


def _take(lanes: Lanes) -> Any:
    return lanes.take_nowait()


def _drain(lanes: Lanes) -> list[Any]:
    out = []
    while True:
        try:
            out.append(lanes.take_nowait())
        except trio.WouldBlock:
            return out


# --- the SDK through a network that cuts connections -------------------------------------


async def test_the_sdk_recovers_from_positions_saved_by_an_earlier_client() -> None:
    async with serving(archive={"enabled": False}) as server, device(server) as dev, \
            subscriber(server, (RAW,)) as (witness, _):
        await send_frames(dev, range(6))
        saved = P.position((await samples_until(witness, 5))[2])  # got 0..2 last time
        assert saved is not None
        positions = {RAW: saved}
        async with open_subscriber(f"ws://127.0.0.1:{server.port}", [RAW],
                                   positions=positions) as rx:
            with trio.fail_after(10):
                reply = await rx.receive()
                seqs = [m.seq async for m in _samples(rx, 5)]
    assert isinstance(reply, P.Event) and reply.body["recovered"] == {RAW: True}
    assert seqs == [3, 4, 5] and positions[RAW] == (saved[0], 5)


async def _samples(rx: trio.MemoryReceiveChannel[P.ServerMessage],
                   last: int) -> AsyncIterator[P.StreamSamples]:
    async for message in rx:
        if isinstance(message, P.StreamSamples):
            yield message
            if message.seq == last:
                return


async def test_the_sdk_subscriber_ends_with_every_frame_once_through_cut_connections(
        mitdb: Path, tmp_path: Path) -> None:
    rec = load_record(mitdb / "101", stop=360 * 60)  # 60 s, 300 frames of 72 samples
    hello = P.Hello("k1", rec.fs, rec.channels, "int16", rec.gain,
                    tuple(float(b) for b in rec.baseline))
    frames = [rec.samples[i:i + 72] for i in range(0, len(rec.samples), 72)]
    got: list[P.StreamSamples] = []
    replies: list[P.Event] = []
    async with serving(archive={"dir": tmp_path}) as server, killing_proxy(
            server.port or 0, rng=random.Random(9), every_s=(0.2, 0.5)) as (port, kills):
        positions: dict[str, P.Position] = {}
        async with open_subscriber(f"ws://127.0.0.1:{port}", ["stream/k1/raw"],
                                   backoff=Backoff(initial=0.01, maximum=0.05),
                                   positions=positions) as rx, device(server, hello) as dev:
            with trio.fail_after(60):
                for frame in frames:  # about 3 s of sending, cut several times
                    await dev.send(frame)
                    await trio.sleep(0.01)
                async for message in rx:
                    if isinstance(message, P.StreamSamples):
                        got.append(message)
                        if message.seq == len(frames) - 1:
                            break
                    elif isinstance(message, P.Event) and message.topic == "subscriptions":
                        replies.append(message)
        assert positions["stream/k1/raw"][1] == len(frames) - 1
    assert len(kills) >= 3 and len(replies) >= 3
    assert all(r.body["recovered"] == {"stream/k1/raw": True} for r in replies[1:])
    assert [m.seq for m in got] == list(range(len(frames)))  # no gap, no duplicate
    assert b"".join(m.data for m in got) == np.ascontiguousarray(rec.samples, "<i2").tobytes()
