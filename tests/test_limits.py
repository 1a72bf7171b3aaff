"""Limits: each refusal with its own reason, close code (or HTTP status) and counter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio
import trio.testing
from trio.testing import MockClock
from wsclient import Client, Closed, open_pair

import protocol as P
from vital_actors.graph import Server
from vital_actors.ingest import run_ingest
from vital_actors.limits import ConnectionCounter, TokenBucket, check_hello
from vital_actors.messages import Item
from vital_actors.settings import FilterSettings, LimitSettings, load_settings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

HELLO = P.Hello("s1", 250.0, ("I", "II"), "int16", (200.0, 200.0), (0.0, 0.0))
FRAME = P.Samples(0, 1, np.zeros(2, "<i2").tobytes())


# --- pure ---------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1) and not bucket.take(0.1)  # 0.1 s refills one token
    assert sum(bucket.take(10.0) for _ in range(10)) == 5  # never more than the burst


def test_connection_counter_caps_each_address() -> None:
    counter = ConnectionCounter(limit=2)
    assert counter.enter("a") and counter.enter("a") and not counter.enter("a")
    assert counter.enter("b")
    counter.leave("a")
    assert counter.enter("a")
    counter.leave("a")
    counter.leave("a")
    counter.leave("b")
    assert counter.open == {}


@pytest.mark.parametrize(("hello", "code", "reason"), [
    (P.Hello("s", 250.0, tuple("ABCDE"), "int16", (1.0,) * 5, (0.0,) * 5),
     P.CloseCode.POLICY_VIOLATION, "too-many-channels"),
    (P.Hello("s", 0.5, ("I",), "int16", (1.0,), (0.0,)), P.CloseCode.INVALID_PAYLOAD,
     "fs-out-of-range"),
    (P.Hello("s", 1e6, ("I",), "int16", (1.0,), (0.0,)), P.CloseCode.INVALID_PAYLOAD,
     "fs-out-of-range"),
])
def test_hello_beyond_the_limits(hello: P.Hello, code: int, reason: str) -> None:
    with pytest.raises(P.RemoteProtocolError) as err:
        check_hello(hello, LimitSettings(max_channels=4))
    assert (err.value.code, err.value.reason) == (code, reason)


# --- one connection (in memory, autojump clock) --------------------------------------------


@asynccontextmanager
async def device(limits: LimitSettings, registry: StreamRegistry | None = None
                 ) -> AsyncIterator[tuple[Client, Stats]]:
    registry = registry or StreamRegistry(FilterSettings())
    stats = Stats()
    ws, client = await open_pair()
    tx, rx = trio.open_memory_channel[Item](1000)
    with rx:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_ingest(ws, tx, registry=registry, stats=stats,
                                                  limits=limits))
            yield client, stats


async def closed_with(client: Client, reason: str, code: int) -> None:
    while True:
        message = await client.receive()
        if isinstance(message, P.Error):
            assert message.code == reason, message
            closed = await client.receive()
            assert isinstance(closed, Closed) and closed.code == code, closed
            return


async def test_a_device_over_the_message_rate_is_closed_1008(autojump_clock: MockClock) -> None:
    async with device(LimitSettings(messages_per_s=10, message_burst=20)) as (client, stats):
        await client.send(HELLO)
        for seq in range(20):  # the hello took one token: the 20th frame is over
            await client.send(P.Samples(seq, 1, FRAME.data))
        await closed_with(client, "rate-limited", P.CloseCode.POLICY_VIOLATION)
    assert stats.totals.rejected == {"rate-limited": 1}


async def test_a_device_at_the_rate_keeps_going(autojump_clock: MockClock) -> None:
    async with device(LimitSettings(messages_per_s=10, message_burst=2)) as (client, stats):
        await client.send(HELLO)
        for seq in range(50):
            await client.send(P.Samples(seq, 1, FRAME.data))
            await trio.sleep(0.11)  # a little under the rate (float sums)
        await client.close()
    assert stats.totals.rejected == {}


async def test_a_silent_device_is_closed_after_the_idle_timeout(
        autojump_clock: MockClock) -> None:
    async with device(LimitSettings(idle_timeout_s=5)) as (client, stats):
        await client.send(HELLO)
        start = trio.current_time()
        await closed_with(client, "idle-timeout", P.CloseCode.POLICY_VIOLATION)
        assert 5 <= trio.current_time() - start < 6
    assert stats.totals.rejected == {"idle-timeout": 1}


async def test_a_new_stream_beyond_max_streams_is_refused(autojump_clock: MockClock) -> None:
    registry = StreamRegistry(FilterSettings())
    registry.attach(P.Hello("old", 250.0, ("I",), "int16", (1.0,), (0.0,)))
    async with device(LimitSettings(max_streams=1), registry) as (client, stats):
        await client.send(HELLO)
        await closed_with(client, "too-many-streams", P.CloseCode.POLICY_VIOLATION)
    assert registry.get("s1") is None and stats.totals.rejected == {"too-many-streams": 1}


# --- a real server ------------------------------------------------------------------------


async def raw_status(port: int, head: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        reply = b""
        with trio.fail_after(5):
            while b"\r\n" not in reply:
                reply += await stream.receive_some(4096)
        return reply.split(b"\r\n", 1)[0]


async def test_connections_per_address_and_slow_heads(nursery: trio.Nursery) -> None:
    server = Server(load_settings(server={"port": 0, "handshake_timeout_s": 0.3},
                                  limits={"max_connections_per_ip": 3}))
    await nursery.start(server.run)
    port = server.port or 0
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    # Three silent connections hold the address's quota: a fourth gets 429 at once.
    assert await raw_status(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n") == \
        b"HTTP/1.1 429 Too Many Requests"
    assert server.stats.totals.rejected["too-many-connections"] == 1
    # Slowloris: a head never finished is answered 400 after the handshake timeout.
    start = trio.current_time()
    for stream in held:
        async with stream:
            with trio.fail_after(3):
                assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 400 ")
                assert await stream.receive_some(4096) == b""
    assert trio.current_time() - start < 1
    with trio.fail_after(3):  # each handler lets go of its address as it returns
        while server.gate.connections.open:  # noqa: ASYNC110 - the server's own tasks
            await trio.sleep(0.01)
    assert (await raw_status(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
                             b"connection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")
    server.shutdown()
