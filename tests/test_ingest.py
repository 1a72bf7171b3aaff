"""Tests for vital_actors.ingest: one device connection, driven over in-memory streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Client, Closed, open_pair

from protocol import (
    Ack,
    CloseCode,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Priority,
    Samples,
    ServerMessage,
    StreamSamples,
    Welcome,
)
from vital_actors.archive import Append, ArchiveItem, Close
from vital_actors.broadcast import Hub
from vital_actors.ingest import run_ingest
from vital_actors.messages import Block, Item, Publication
from vital_actors.settings import FilterSettings, LaneSettings, LimitSettings
from vital_actors.sources import Recording, load_record
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

FRAME = 36  # samples per frame: 0.1 s at 360 Hz


@pytest.fixture(scope="module")
def rec(mitdb: Path) -> Recording:
    return load_record(mitdb / "101", stop=20 * FRAME)


def hello_for(rec: Recording, *, stream: str = "dev1", resume: int | None = None) -> Hello:
    return Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                 tuple(float(b) for b in rec.baseline), device="test-device", resume=resume)


def frame(rec: Recording, seq: int, start: int | None = None) -> Samples:
    """Frame *seq*: samples [start, start + FRAME) of *rec* (start defaults to seq * FRAME)."""
    start = seq * FRAME if start is None else start
    data = np.ascontiguousarray(rec.samples[start:start + FRAME], dtype="<i2")
    return Samples(seq, FRAME, data.tobytes())


@dataclass
class Rig:
    client: Client
    outbox: trio.MemoryReceiveChannel[Item]
    registry: StreamRegistry
    stats: Stats
    done: trio.Event

    async def expect(self, expected: type[ServerMessage]) -> ServerMessage:
        message = await self.client.receive()
        assert isinstance(message, expected), message
        return message

    async def status(self) -> dict[str, object]:
        """The next status event, checking it went to ``streams`` and the raw topic."""
        first, second = await self.outbox.receive(), await self.outbox.receive()
        assert isinstance(first, Publication) and isinstance(second, Publication)
        assert isinstance(first.message, Event) and isinstance(second.message, Event)
        assert first.message.type == second.message.type == "status"
        assert first.message.priority is Priority.NORMAL
        assert first.message.body == second.message.body
        stream = first.message.body["stream"]
        assert {first.message.topic, second.message.topic} == {"streams",
                                                               f"stream/{stream}/raw"}
        return dict(first.message.body)

    async def block(self) -> Block:
        item = await self.outbox.receive()
        assert isinstance(item, Block), item
        return item


@asynccontextmanager
async def ingest(*, capacity: int = 64, max_samples: int = 8192,
                 max_message_bytes: int = 1 << 20,
                 registry: StreamRegistry | None = None,
                 live: Hub | None = None,
                 limits: LimitSettings | None = None) -> AsyncIterator[Rig]:
    """A running ``run_ingest`` on one connection, with its outbox's receive end."""
    registry = StreamRegistry(FilterSettings()) if registry is None else registry
    stats = Stats()
    ws, client = await open_pair(max_message_bytes=max_message_bytes)
    tx, rx = trio.open_memory_channel[Item](capacity)
    done = trio.Event()

    async def serve() -> None:
        await run_ingest(ws, tx, registry=registry, stats=stats, max_samples=max_samples,
                         live=live, limits=limits)
        done.set()

    # Tests run on the autojump clock: one stuck waiting fails at once, not after 60 s.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield Rig(client, rx, registry, stats, done)


async def start(rig: Rig, hello: Hello) -> Welcome:
    await rig.client.send(hello)
    welcome = await rig.expect(Welcome)
    assert isinstance(welcome, Welcome)
    assert (await rig.status())["state"] == "connected"
    return welcome


# --- the session ---------------------------------------------------------------------------


async def test_hello_gets_welcome_and_a_connected_status(
        rec: Recording, autojump_clock: MockClock) -> None:
    async with ingest() as rig:
        await rig.client.send(hello_for(rec))
        assert await rig.client.receive() == Welcome("dev1", 0)
        status = await rig.status()
        assert status == {"stream": "dev1", "state": "connected", "fs": 360.0,
                          "channels": ["MLII", "V1"], "run": 0, "next_seq": 0,
                          "device": "test-device"}
        info = rig.registry.get("dev1")
        assert info is not None and info.connected
        assert rig.stats.devices == 1
        await rig.client.close()
        assert (await rig.status()) == {"stream": "dev1", "state": "disconnected",
                                        "next_seq": 0}
    assert not info.connected
    assert rig.stats.devices == 0
    with pytest.raises(trio.EndOfChannel):  # run_ingest closed its outbox
        await rig.outbox.receive()


async def test_frames_become_blocks_each_acked(rec: Recording, autojump_clock: MockClock) -> None:
    async with ingest() as rig:
        await start(rig, hello_for(rec))
        info = rig.registry.get("dev1")
        for seq in range(3):
            await rig.client.send(frame(rec, seq))
            block = await rig.block()
            assert (block.stream, block.run, block.seq, block.t0) == (info, 0, seq, seq * FRAME)
            assert block.raw.shape == (FRAME, 2)
            np.testing.assert_array_equal(block.raw, rec.samples[seq * FRAME:(seq + 1) * FRAME])
            assert await rig.client.receive() == Ack(seq)
        assert info is not None
        assert (info.next_seq, info.t0, info.frames, info.samples) == (3, 3 * FRAME, 3,
                                                                       3 * FRAME)
        totals = rig.stats.totals
        assert (totals.messages_in, totals.samples_in) == (4, 3 * FRAME)
        assert totals.bytes_in > 3 * FRAME * 2 * 2
        await rig.client.close()


async def test_live_view_does_not_wait_for_the_pipeline(
        rec: Recording, autojump_clock: MockClock) -> None:
    """With the hub as *live*, each frame's raw-topic message (and each status) is
    published on arrival, in order, even while nobody reads the pipeline: a live view
    never waits behind filtering and screening. Blocks (and only blocks) still go down
    the pipeline, and backpressure still holds."""
    hub = Hub(buffer=100, settings=LaneSettings(), stats=Stats())
    sub = hub.add()
    hub.subscribe(sub, ["stream/dev1/raw"])
    async with ingest(capacity=1, live=hub) as rig:
        await rig.client.send(hello_for(rec))
        assert isinstance(await rig.client.receive(), Welcome)
        for seq in range(2):  # the pipeline holds one block: ingest parks on the second
            await rig.client.send(frame(rec, seq))
        await trio.testing.wait_all_tasks_blocked()
        got = [sub.lanes.take_nowait().message for _ in range(3)]
        with pytest.raises(trio.WouldBlock):
            sub.lanes.take_nowait()
        blocks = [await rig.block() for _ in range(2)]  # the pipeline gets them all the same
        await rig.client.send(frame(rec, 2))
        await trio.testing.wait_all_tasks_blocked()
        got.append(sub.lanes.take_nowait().message)
        blocks.append(await rig.block())
        # (the lanes hand out the HIGH samples before the NORMAL status)
        samples = [m for m in got if isinstance(m, StreamSamples)]
        assert [m.body["state"] for m in got if isinstance(m, Event)] == ["connected"]
        assert [m.seq for m in samples] == [0, 1, 2]
        for m in samples:
            assert isinstance(m, StreamSamples)
            np.testing.assert_array_equal(
                np.frombuffer(m.data, "<i2").reshape(-1, 2),
                rec.samples[m.seq * FRAME:(m.seq + 1) * FRAME])
        assert [b.seq for b in blocks] == [0, 1, 2]  # rig.block(): no status came this way
        await rig.client.close()
        await rig.done.wait()
    status = sub.lanes.take_nowait().message
    assert isinstance(status, Event) and status.body["state"] == "disconnected"


async def test_shutdown_with_acks_pending_to_a_device_that_is_gone_ends_cleanly(
        rec: Recording, autojump_clock: MockClock) -> None:
    """At shutdown ingest acks what the archive made durable; a device whose transport
    is already gone cannot get them, and that must not crash the server (it resends and
    is answered with duplicates on its next connection). The run is still closed."""
    ws, client = await open_pair()
    tx, _pipeline = trio.open_memory_channel[Item](8)
    arch_tx, arch_rx = trio.open_memory_channel[ArchiveItem](8)
    registry, stats = StreamRegistry(FilterSettings()), Stats()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            serving = trio.CancelScope()

            async def serve() -> None:
                with serving:
                    await run_ingest(ws, tx, registry=registry, stats=stats, archive=arch_tx)

            nursery.start_soon(serve)
            await client.send(hello_for(rec))
            assert isinstance(await client.receive(), Welcome)
            await client.send(frame(rec, 0))
            append = await arch_rx.receive()
            assert isinstance(append, Append) and append.seq == 0
            assert isinstance(client.stream, trio.StapledStream)
            await client.stream.receive_stream.aclose()  # the device is gone (no EOF read)
            serving.cancel()  # shutdown
            await trio.testing.wait_all_tasks_blocked()
            append.durable.advance(0, append.n)  # the archive syncs: the ack is due
            closed = await arch_rx.receive()  # the run is closed all the same
            assert isinstance(closed, Close) and closed.stream == "dev1"
    info = registry.get("dev1")
    assert info is not None and not info.connected


async def test_ping_gets_pong(rec: Recording, autojump_clock: MockClock) -> None:
    """``t`` comes back as sent, with our receive and send times (clock estimation)."""
    async with ingest() as rig:
        await rig.client.send(Ping(12.5))
        pong = await rig.client.receive()
        assert isinstance(pong, Pong) and pong.t == 12.5
        assert pong.t1 is not None and pong.t2 is not None and 0 <= pong.t2 - pong.t1 < 1
        await rig.client.send(Ping())  # no t: no clock, still an answer
        pong = await rig.client.receive()
        assert isinstance(pong, Pong) and pong.t is None
        await rig.client.close()


async def test_gap_is_reported_in_order_and_counted(
        rec: Recording, autojump_clock: MockClock) -> None:
    async with ingest() as rig:
        await start(rig, hello_for(rec))
        await rig.client.send(frame(rec, 0))
        await rig.block()
        assert await rig.client.receive() == Ack(0)
        await rig.client.send(frame(rec, 3))
        assert await rig.status() == {"stream": "dev1", "state": "gap", "expected": 1,
                                      "got": 3, "missing": 2}
        block = await rig.block()  # after the status: the gap is announced before the data
        assert (block.seq, block.t0) == (3, FRAME)  # t0 counts samples actually received
        assert await rig.client.receive() == Ack(3)
        info = rig.registry.get("dev1")
        assert info is not None
        assert (info.gaps, info.missing_frames, info.next_seq) == (1, 2, 4)
        assert rig.stats.totals.gaps == 1
        await rig.client.close()


async def test_duplicate_is_dropped_counted_and_acked(
        rec: Recording, autojump_clock: MockClock) -> None:
    async with ingest() as rig:
        await start(rig, hello_for(rec))
        for seq in (0, 1):
            await rig.client.send(frame(rec, seq))
            await rig.block()
            assert await rig.client.receive() == Ack(seq)
        await rig.client.send(frame(rec, 1))
        assert await rig.status() == {"stream": "dev1", "state": "duplicate", "seq": 1}
        assert await rig.client.receive() == Ack(1)
        await rig.client.send(frame(rec, 2))
        assert (await rig.block()).seq == 2  # the duplicate never reached the pipeline
        info = rig.registry.get("dev1")
        assert info is not None
        assert (info.duplicates, info.frames, info.t0) == (1, 3, 3 * FRAME)
        assert rig.stats.totals.duplicates == 1
        await rig.client.close()


async def test_resume_continues_the_stream(rec: Recording, autojump_clock: MockClock) -> None:
    registry = StreamRegistry(FilterSettings())
    async with ingest(registry=registry) as rig:
        await start(rig, hello_for(rec))
        for seq in (0, 1):
            await rig.client.send(frame(rec, seq))
            await rig.block()
            await rig.expect(Ack)
        await rig.client.close()
    async with ingest(registry=registry) as rig:
        assert await start(rig, hello_for(rec, resume=2)) == Welcome("dev1", 2)
        await rig.client.send(frame(rec, 2))
        block = await rig.block()
        assert (block.run, block.seq, block.t0) == (0, 2, 2 * FRAME)
        await rig.client.close()


async def test_hello_below_the_filter_rate_is_welcomed_with_a_fitted_filter(
        autojump_clock: MockClock) -> None:
    # The default band-pass reaches 40 Hz, above Nyquist at 50 Hz: it must be fitted,
    # not crash the connection (or the server).
    hello = Hello("slow", 50.0, ("I",), "int16", (200.0,), (0.0,))
    async with ingest() as rig:
        assert await start(rig, hello) == Welcome("slow", 0)
        info = rig.registry.get("slow")
        assert info is not None
        assert info.filter.settings.high_hz < 25.0
        await rig.client.close()


# --- bad input -----------------------------------------------------------------------------


def _float_hello() -> Hello:
    return Hello("f32", 250.0, ("I",), "float32", (1.0,), (0.0,))


async def _nan_frame(client: Client) -> None:
    await client.send(_float_hello())
    assert isinstance(await client.receive(), Welcome)
    data = np.array([0.1, np.nan, 0.2], dtype="<f4").tobytes()
    await client.send(Samples(0, 3, data))


async def _busy(client: Client) -> None:
    await client.send(_float_hello())


BAD_INPUT: dict[str, tuple[Callable[[Client], Awaitable[None]], CloseCode, str]] = {
    "not-msgpack": (lambda c: c.send_bytes(b"\xc1"), CloseCode.INVALID_PAYLOAD,
                    "invalid-payload"),
    "unknown-type": (lambda c: c.send_bytes(bytes(msgpack.packb({"type": "bogus"}))),
                     CloseCode.PROTOCOL_ERROR, "unknown-type"),
    "samples-before-hello": (lambda c: c.send(Samples(0, 1, b"\0\0")),
                             CloseCode.PROTOCOL_ERROR, "hello-required"),
    "text": (lambda c: c.send_text('{"type": "hello"}'), CloseCode.UNSUPPORTED_DATA,
             "text-message"),
    "too-big": (lambda c: c.send_bytes(b"\0" * 2048), CloseCode.MESSAGE_TOO_BIG, "too-big"),
    "nan": (_nan_frame, CloseCode.INVALID_PAYLOAD, "non-finite"),
    "busy": (_busy, CloseCode.POLICY_VIOLATION, "stream-busy"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_gets_an_error_then_the_close_code(
        case: str, autojump_clock: MockClock) -> None:
    send_bad, code, reason = BAD_INPUT[case]
    registry = StreamRegistry(FilterSettings())
    holder = None
    if case == "busy":  # another device holds the stream
        holder = registry.attach(_float_hello())
    async with ingest(max_message_bytes=1024, registry=registry) as rig:
        await send_bad(rig.client)
        error = await rig.client.receive()
        assert isinstance(error, Error), error
        assert error.code == reason
        assert await rig.client.receive() == Closed(code, error.message[:123])
        await rig.done.wait()
        assert rig.stats.totals.rejected == {reason: 1}
    assert holder is None or holder.connected  # the other device keeps its stream
    blocks = [item async for item in rig.outbox if isinstance(item, Block)]
    assert blocks == []  # nothing bad reached the pipeline; the outbox is closed


# --- backpressure --------------------------------------------------------------------------


async def test_a_device_parked_by_a_full_pipeline_is_not_idle(
        rec: Recording, autojump_clock: MockClock) -> None:
    """The idle timeout counts the time spent waiting for the device, not the time its
    frame waits for room in the pipeline (backpressure is ours, not the device's)."""
    async with ingest(capacity=1, limits=LimitSettings(idle_timeout_s=5)) as rig:
        await rig.client.send(hello_for(rec))
        await rig.expect(Welcome)
        await rig.status()
        await rig.client.send(frame(rec, 0))  # fills the outbox (capacity 1)
        await rig.client.send(frame(rec, 1))  # read by ingest, which parks sending it
        await trio.sleep(30)  # six idle timeouts, parked all along
        assert not rig.done.is_set()
        assert (await rig.block()).seq == 0
        assert (await rig.block()).seq == 1
        start = trio.current_time()  # now it waits for the device: 5 s, then closed
        while not isinstance(message := await rig.client.receive(), Closed):
            pass
        assert message.code == CloseCode.POLICY_VIOLATION
        assert 5 <= trio.current_time() - start < 6
        assert rig.stats.totals.rejected == {"idle-timeout": 1}


async def test_full_pipeline_parks_ingest_and_holds_the_ack(
        rec: Recording, autojump_clock: MockClock) -> None:
    async with ingest(capacity=1) as rig:
        await rig.client.send(hello_for(rec))
        await rig.expect(Welcome)
        await rig.status()
        replies: list[ServerMessage | Closed] = []

        async def collect() -> None:
            while not isinstance(message := await rig.client.receive(), Closed):
                replies.append(message)

        sent = []

        async def send_third() -> None:
            await rig.client.send(frame(rec, 2))
            sent.append(2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            await rig.client.send(frame(rec, 0))  # fills the outbox (capacity 1)
            await rig.client.send(frame(rec, 1))  # read by ingest, which parks sending it
            nursery.start_soon(send_third)
            await trio.testing.wait_all_tasks_blocked()
            stats = rig.outbox.statistics()
            assert (stats.current_buffer_used, stats.tasks_waiting_send) == (1, 1)
            assert replies == [Ack(0)]  # no ack for the parked frame
            assert sent == []  # ingest stopped reading its socket: the device waits too

            assert (await rig.block()).seq == 0  # the pipeline takes one
            await trio.testing.wait_all_tasks_blocked()
            assert replies == [Ack(0), Ack(1)]
            assert sent == [2]  # reading resumed; frame 2 now parks in turn
            assert rig.outbox.statistics().tasks_waiting_send == 1

            assert [(await rig.block()).seq for _ in range(2)] == [1, 2]
            await trio.testing.wait_all_tasks_blocked()
            assert replies == [Ack(0), Ack(1), Ack(2)]
            nursery.cancel_scope.cancel()
        await rig.client.close()
        assert (await rig.status())["state"] == "disconnected"
