"""``vital-actors serve --workers 2 --bus redis://...``: real processes on one port.

Which worker the kernel gives a connection is its choice (SO_REUSEPORT); the tests find
out from the workers' sockets (psutil) instead of assuming.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import coredis
import numpy as np
import psutil  # type: ignore[import-untyped]
import pytest
import trio
from redisserver import Redis, free_port, redis_server
from trio_websocket import WebSocketConnection

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.sdk import Backoff, DeviceClient

pytestmark = [
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
]

HELLO = P.Hello("bed7", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
FRAME = np.zeros((36, 2), np.int16)
INTEREST_S = 0.1


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    yield from redis_server(tmp_path)


class Workers:
    def __init__(self, redis: Redis, tmp: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "VITAL_BUS__LEASE_S": "1", "VITAL_BUS__RETRY_S": "0.1",
               "VITAL_BUS__INTEREST_S": str(INTEREST_S),
               "VITAL_STORE__DIR": str(tmp / "store")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vital_actors.cli", "serve", "--workers", "2", "--port",
             str(self.port), "--bus", redis.url], env=env, stdout=subprocess.DEVNULL)
        self.url = f"ws://127.0.0.1:{self.port}"
        self.redis_port = redis.port

    def workers(self) -> list[psutil.Process]:
        return list(psutil.Process(self.process.pid).children())

    def _connections(self) -> Iterator[tuple[psutil.Process, Any]]:
        """(worker, TCP connection) of every live worker (one may be dying)."""
        for worker in self.workers():
            try:
                conns = worker.net_connections(kind="tcp")
            except (psutil.Error, OSError):
                continue
            for conn in conns:
                yield worker, conn

    def holding_other_than(self, client_ports: set[int]) -> psutil.Process:
        """The worker with a client connection from none of *client_ports*."""
        for worker, conn in self._connections():
            if (conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == self.port
                    and conn.raddr and conn.raddr.port not in client_ports):
                return worker
        raise AssertionError("no worker holds such a connection")

    def owner_of(self, client_port: int) -> psutil.Process | None:
        """The worker holding the server end of the connection from *client_port*."""
        for worker, conn in self._connections():
            if conn.raddr and conn.raddr.port == client_port:
                return worker
        return None

    def listening(self) -> bool:
        listening = {w.pid for w, c in self._connections() if c.status == psutil.CONN_LISTEN}
        return len(listening) == 2

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def workers(redis: Redis, tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(redis, tmp_path)
    try:
        await eventually(w.listening, seconds=30)
        yield w
    finally:
        w.stop()


async def eventually(check: Callable[[], bool], *, seconds: float = 10.0) -> None:
    """Wait until *check* holds: it watches other processes, so there is no event to
    wait on; checked every 50 ms, failing after *seconds*."""
    with trio.fail_after(seconds):
        for _ in range(int(seconds / 0.05) + 1):
            if check():
                return
            await trio.sleep(0.05)
    raise AssertionError("condition never held")


def _local_port(ws: WebSocketConnection) -> int:
    return int(ws.local.port)  # type: ignore[union-attr]


async def _subscribers_on_both(w: Workers, stack: AsyncExitStack
                               ) -> list[WebSocketConnection]:
    """Subscribers until both workers have at least one (the kernel spreads them).

    No deadline around it: a cancel scope must not close before the connections it
    opens (they live in *stack*); each connection is bounded by its own timeouts, and
    the count of attempts by 20.
    """
    subs: list[WebSocketConnection] = []
    owners: set[int] = set()
    for _ in range(20):
        ws = await stack.enter_async_context(connect(w.url, P.SUBSCRIBE_PATH))
        await ws.send_message(P.encode(P.Subscribe(("stream/bed7/raw",))))
        with trio.fail_after(10):
            while not isinstance(m := await receive(ws), P.Event) or m.topic != "subscriptions":
                pass
        owner = w.owner_of(_local_port(ws))
        assert owner is not None
        owners.add(owner.pid)
        subs.append(ws)
        if len(owners) == 2:
            break
    assert len(owners) == 2, "20 connections, all on one worker"
    await _advertised(w, "stream/bed7/raw")
    return subs


async def _advertised(w: Workers, topic: str) -> None:
    """Wait until both workers advertise *topic* on the bus, then for one more round of
    learning (each worker reads the others' topics every INTEREST_S)."""
    client = coredis.Redis(host="127.0.0.1", port=w.redis_port)
    async with client:
        with trio.fail_after(10):
            while True:
                keys = [k async for k in client.scan_iter(match="vital:interest:*")]
                members = [await client.smembers(k) for k in keys]
                if len(keys) == 2 and all(topic.encode() in m for m in members):
                    break
                await trio.sleep(INTEREST_S)
    await trio.sleep(3 * INTEREST_S)


async def _seqs(ws: WebSocketConnection, until: int) -> list[int]:
    seqs: list[int] = []
    with trio.fail_after(20):
        while not seqs or seqs[-1] < until:
            m = await receive(ws)
            if isinstance(m, P.StreamSamples):
                seqs.append(m.seq)
    return seqs


async def test_subscribers_on_both_workers_get_the_stream_and_it_survives_a_kill(
        workers: Workers) -> None:
    # One test, not two: starting two workers costs seconds (imports) on a busy machine.
    async with AsyncExitStack() as stack:
        subs = await _subscribers_on_both(workers, stack)
        device = DeviceClient(workers.url, HELLO, backoff=Backoff(initial=0.05, maximum=0.5))
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            for _ in range(3):
                await device.send(FRAME)
            for ws in subs:  # whichever worker has the device, every subscriber gets it
                assert await _seqs(ws, 2) == [0, 1, 2]
            await eventually(lambda: device.counters.acked >= 2)
            # The worker holding the device's connection dies without a goodbye.
            victim = workers.holding_other_than({_local_port(s) for s in subs})
            victim.send_signal(signal.SIGKILL)
            survivor_subs = [s for s in subs if (o := workers.owner_of(_local_port(s)))
                             is not None and o.pid != victim.pid]
            for _ in range(3):
                await device.send(FRAME)
            # Its lease expires (1 s); the device reconnects, to whichever worker.
            await eventually(lambda: device.counters.acked >= 5, seconds=20)
            assert device.counters.connections >= 2
            seqs = await _seqs(survivor_subs[0], 5)
            assert seqs[-3:] == [3, 4, 5]
            nursery.cancel_scope.cancel()
