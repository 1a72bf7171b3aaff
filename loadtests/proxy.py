"""A TCP proxy that cuts its live connections at random moments (abrupt ends, no
close frame): what a flaky network does to a device. Used by tests/test_durability.py
and loadtests/bench_durability.py."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

__all__ = ["Cuts", "killing_proxy"]


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class Cuts(list[int]):
    """The proxy's cuts so far (one entry per connection cut); ``await next_cut()``."""

    def __init__(self) -> None:
        super().__init__()
        self._cut = trio.Event()

    def record(self) -> None:
        self.append(1)
        self._cut.set()
        self._cut = trio.Event()

    async def next_cut(self) -> None:
        """Return at the next cut."""
        await self._cut.wait()


@asynccontextmanager
async def killing_proxy(upstream_port: int, *, rng: random.Random,
                        every_s: tuple[float, float]) -> AsyncIterator[tuple[int, Cuts]]:
    """A TCP proxy to *upstream_port* that cuts its live connections at random moments."""
    live: set[trio.CancelScope] = set()
    kills = Cuts()

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
                kills.record()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        nursery.start_soon(killer)
        yield listeners[0].socket.getsockname()[1], kills
        nursery.cancel_scope.cancel()
