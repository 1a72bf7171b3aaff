"""A TCP proxy that cuts its live connections at random moments (abrupt ends, no
close frame): what a flaky network does to a device. Used by tests/test_durability.py
and loadtests/bench_durability.py."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

__all__ = ["killing_proxy"]


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def killing_proxy(upstream_port: int, *, rng: random.Random,
                        every_s: tuple[float, float]) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP proxy to *upstream_port* that cuts its live connections at random moments."""
    live: set[trio.CancelScope] = set()
    kills: list[int] = []

    async def handle(client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            live.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
                async with client, upstream, trio.open_nursery() as n:
                    n.start_soon(_pump, client, upstream)
                    n.start_soon(_pump, upstream, client)
            finally:
                live.discard(scope)

    async def killer() -> None:
        while True:
            await trio.sleep(rng.uniform(*every_s))
            for scope in list(live):
                scope.cancel()  # closes both sockets: an abrupt end (no close frame)
                kills.append(1)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        nursery.start_soon(killer)
        yield listeners[0].socket.getsockname()[1], kills
        nursery.cancel_scope.cancel()
