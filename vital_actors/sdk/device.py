"""A device client that loses nothing it was given: buffer until acked, resume, resend.

::

    client = DeviceClient("ws://127.0.0.1:8080", hello, token=token)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        for block in blocks:              # int16 or float32, shape (n, channels)
            await client.send(block)      # parks while max_unacked frames wait for acks
        await client.drain()              # every frame acked: durable on the server
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import trio
from trio_websocket import WebSocketConnection

from protocol import INGEST_PATH, Ack, Error, Hello, Ping, Pong, Samples, Welcome, encode

from ._backoff import Backoff
from ._connection import FatalError, open_connection, receive, reconnecting

__all__ = ["DeviceClient", "DeviceCounters"]


@dataclass(slots=True)
class DeviceCounters:
    connections: int = 0
    frames_sent: int = 0  # including resends
    resent: int = 0
    acked: int = -1  # highest seq acked
    last_error: str | None = None


class DeviceClient:
    """One device stream that survives lost connections and server restarts.

    Args:
        url: ``ws://host:port``.
        hello: the stream's description; ``resume`` is set by the client.
        token: a device token covering ``hello.stream``, when the server wants one.
        max_unacked: frames kept for resending; :meth:`send` parks while this many wait.
        ping_interval_s: how often to ping (clock estimation and liveness).
        on_ack: called with the seq of each ack.
    """

    def __init__(self, url: str, hello: Hello, *, token: str | None = None,
                 max_unacked: int = 1000, backoff: Backoff | None = None,
                 ping_interval_s: float = 5.0,
                 on_ack: Callable[[int], None] | None = None) -> None:
        self.url, self.hello, self.token = url, hello, token
        self.max_unacked = max_unacked
        self.backoff = backoff or Backoff()
        self.ping_interval_s = ping_interval_s
        self.on_ack = on_ack  # called with each acked seq (benchmarks, progress)
        self.counters = DeviceCounters()
        self.next_seq = 0  # the seq the next frame given to send() gets
        self._frames: deque[Samples] = deque()  # unacked, consecutive seqs
        self._changed = trio.Event()  # a frame was added or acked
        self._dtype = np.dtype(hello.dtype).newbyteorder("<")
        self._welcomed = False
        self._pong_rx: float | None = None  # our clock when the last ping's pong came

    @property
    def unacked(self) -> int:
        return len(self._frames)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, block: npt.NDArray[np.generic], *, t: float | None = None) -> int:
        """Queue one frame, shape (n, channels), with our clock *t* at its first sample
        (optional); its seq. Parks while the buffer is full."""
        while len(self._frames) >= self.max_unacked:
            await self._changed.wait()
        data = np.ascontiguousarray(block, dtype=self._dtype)
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self._frames.append(Samples(seq, int(data.shape[0]), data.tobytes(), t))
        self._notify()
        return seq

    async def drain(self) -> None:
        """Return once every frame given to :meth:`send` is acked."""
        while self._frames:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Stay connected until cancelled; raises :class:`FatalError` when the server
        refuses for good (bad token, scope, format)."""
        task_status.started()
        await reconnecting(self._connection, backoff=self.backoff,
                           last_error=lambda: self.counters.last_error)

    async def _connection(self) -> None:
        async with open_connection(self.url, INGEST_PATH, token=self.token) as ws:
            resume = max(self.counters.acked, 0) if self._welcomed else None
            await ws.send_message(encode(replace(self.hello, resume=resume)))
            welcome = await receive(ws)
            if isinstance(welcome, Error):
                self.counters.last_error = welcome.code
                await ws.get_message()  # the close that follows raises ConnectionClosed
            if not isinstance(welcome, Welcome):
                raise FatalError(f"expected welcome, got {welcome}")
            self.counters.connections += 1
            self._welcomed = True
            self._acked(welcome.next_seq - 1)  # the server has everything before next_seq
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_frames, ws, welcome.next_seq)
                nursery.start_soon(self._ping, ws)
                await self._read(ws)

    def _acked(self, seq: int) -> None:
        while self._frames and self._frames[0].seq <= seq:
            self._frames.popleft()
        self.counters.acked = max(self.counters.acked, seq)
        self._notify()

    async def _send_frames(self, ws: WebSocketConnection, cursor: int) -> None:
        # Frames queued before this connection and not acked were sent before: resends.
        resend_until = self.next_seq if self.counters.connections > 1 else 0
        while True:
            while self._frames and self._frames[-1].seq >= cursor:
                i = max(0, cursor - self._frames[0].seq)
                frame = self._frames[i]
                await ws.send_message(encode(frame))
                self.counters.frames_sent += 1
                self.counters.resent += frame.seq < resend_until
                cursor = frame.seq + 1
            await self._changed.wait()

    async def _ping(self, ws: WebSocketConnection) -> None:
        """Ping with our clock, reporting when the previous pong arrived (rx): the server
        estimates our clock's offset and drift from these (docs/protocol.md 3.4)."""
        self._pong_rx = None
        while True:
            rx, self._pong_rx = self._pong_rx, None
            await ws.send_message(encode(Ping(time.time(), rx)))
            await trio.sleep(self.ping_interval_s)

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            message = await receive(ws)
            if isinstance(message, Ack):
                self._acked(message.seq)
                if self.on_ack is not None:
                    self.on_ack(message.seq)
            elif isinstance(message, Error):
                self.counters.last_error = message.code
            elif isinstance(message, Pong):
                self._pong_rx = time.time()
