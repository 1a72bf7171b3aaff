"""The ingest actor: one per device connection.

Decodes and validates each message (:class:`protocol.DeviceSession`), checks the
sequence (gaps and duplicates are reported, never hidden) and forwards frames into the
pipeline. Backpressure is lossless: while the pipeline is full, ``outbox.send`` parks
and this actor stops reading its socket, so TCP pushes back on the device.
"""

from __future__ import annotations

from typing import Any

import trio

from protocol import (
    Ack,
    CloseCode,
    DeviceSession,
    Duplicate,
    Event,
    Frame,
    Gap,
    PingReceived,
    Pong,
    Priority,
    RemoteProtocolError,
    SessionEvent,
    Started,
    Welcome,
    decode_device,
)

from .edge.websocket import ConnectionClosed, WebSocket
from .messages import Block, Item, Publication
from .stats import Stats
from .streams import StreamBusyError, StreamInfo, StreamRegistry

__all__ = ["run_ingest"]


class _Ingest:
    def __init__(self, ws: WebSocket, outbox: trio.MemorySendChannel[Item],
                 registry: StreamRegistry, stats: Stats, max_samples: int) -> None:
        self.ws, self.outbox, self.registry, self.stats = ws, outbox, registry, stats
        self.session = DeviceSession(max_samples=max_samples)
        self.info: StreamInfo | None = None

    async def serve(self) -> None:
        totals = self.stats.totals
        while True:
            payload = await self.ws.receive()
            totals.messages_in += 1
            totals.bytes_in += len(payload)
            for event in self.session.receive(decode_device(payload)):
                await self._on(event)

    async def _on(self, event: SessionEvent) -> None:
        match event:
            case Frame():
                await self._frame(event)
            case Started():
                await self._start(event)
            case Gap():
                await self._gap(event)
            case Duplicate():
                await self._duplicate(event)
            case PingReceived():
                await self.ws.send(Pong(event.t))

    async def _start(self, event: Started) -> None:
        try:
            info = self.registry.attach(event.hello)
        except StreamBusyError as exc:
            raise RemoteProtocolError(str(exc), code=CloseCode.POLICY_VIOLATION,
                                      reason="stream-busy") from None
        self.info = info
        self.stats.devices += 1
        self.session.next_seq, self.session.t0 = info.next_seq, info.t0
        await self.ws.send(Welcome(info.id, info.next_seq))
        await self._status("connected", fs=info.fs, channels=list(info.channels),
                           run=info.run, next_seq=info.next_seq, device=info.hello.device)

    async def _frame(self, frame: Frame) -> None:
        info = self.info
        assert info is not None
        n = int(frame.samples.shape[0])
        await self.outbox.send(Block(info, info.run, frame.seq, frame.t0, frame.samples,
                                     trio.current_time()))  # parks while the pipeline is full
        info.next_seq, info.t0 = self.session.next_seq, self.session.t0
        info.frames += 1
        info.samples += n
        self.stats.totals.samples_in += n
        await self.ws.send(Ack(frame.seq))

    async def _gap(self, gap: Gap) -> None:
        assert self.info is not None
        self.info.gaps += 1
        self.info.missing_frames += gap.missing
        self.stats.totals.gaps += 1
        await self._status("gap", expected=gap.expected, got=gap.got, missing=gap.missing)

    async def _duplicate(self, dup: Duplicate) -> None:
        assert self.info is not None
        self.info.duplicates += 1
        self.stats.totals.duplicates += 1
        await self._status("duplicate", seq=dup.seq)
        await self.ws.send(Ack(dup.seq))  # it is safely here already

    async def _status(self, state: str, **fields: Any) -> None:
        """A ``status`` event, in order with the stream's data: on ``streams`` and on the
        stream's raw topic."""
        assert self.info is not None
        body = {"stream": self.info.id, "state": state, **fields}
        for topic in ("streams", f"stream/{self.info.id}/raw"):
            await self.outbox.send(Publication(Event("status", topic, Priority.NORMAL, body)))

    async def finish(self) -> None:
        if self.info is None:
            return
        self.registry.detach(self.info)
        self.stats.devices -= 1
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._status("disconnected", next_seq=self.info.next_seq)


async def run_ingest(
    ws: WebSocket,
    outbox: trio.MemorySendChannel[Item],
    *,
    registry: StreamRegistry,
    stats: Stats,
    max_samples: int,
) -> None:
    """Serve one device connection until it closes or sends something invalid.

    Owns *outbox* (its own clone of the pipeline's inlet) and closes it on return.
    Invalid input gets an ``error`` message and the fitting close code; it touches
    nothing beyond this connection.
    """
    ingest = _Ingest(ws, outbox, registry, stats, max_samples)
    with outbox:
        try:
            await ingest.serve()
        except RemoteProtocolError as exc:
            stats.reject(exc.reason)
            await ws.fail(exc.code, exc.reason, exc.message)
        except ConnectionClosed:
            pass
        finally:
            await ingest.finish()
