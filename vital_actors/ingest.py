"""The ingest actor: one per device connection.

Decodes and validates each message (:class:`protocol.DeviceSession`), checks the
sequence (gaps and duplicates are reported, never hidden) and forwards frames into the
pipeline. Backpressure is lossless: while the pipeline is full, ``outbox.send`` parks
and this actor stops reading its socket, so TCP pushes back on the device.

With an archive, each frame also goes to the archive writer first, and its ``ack`` waits
until the writer reports it durable (:class:`archive.Durable`); a second task sends the
acks, in order. The connection's token must cover the stream (:mod:`auth`), and the
limits of :mod:`limits` apply: message rate, silence, channels and fs, streams known.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from typing import Any

import trio

from protocol import (
    Ack,
    CloseCode,
    DeviceSession,
    Duplicate,
    Frame,
    Gap,
    PingReceived,
    Pong,
    RemoteProtocolError,
    SessionEvent,
    Started,
    Welcome,
    decode_device,
)

from .archive import Append, ArchiveFailed, ArchiveItem, Close, Durable
from .auth import GRANT, authorize_stream
from .broadcast import Hub, admit, announce
from .clock import ClockTracker
from .edge.websocket import ConnectionClosed, WebSocket
from .limits import TokenBucket, check_hello, idle_error, stream_cap_error
from .messages import Item, put
from .settings import LimitSettings
from .stats import Stats
from .streams import StreamBusyError, StreamInfo, StreamRegistry

_log = logging.getLogger(__name__)

#: A frame's stamp in the archive (its ``t`` on our clock) is kept only from this long
#: before its arrival (a device's buffer, sent after an outage) ...
STAMP_BACKLOG_S = 86_400.0
#: ... to this long after (the clock estimate's error): retention trims by the stamps,
#: and a frame's ``t`` off its own pings' clock (1970, say) was trimmed at once.
STAMP_AHEAD_S = 5.0

__all__ = ["STORAGE_REASON", "run_ingest"]

STORAGE_REASON = "storage-unavailable"


class _Ingest:
    def __init__(self, ws: WebSocket, outbox: trio.MemorySendChannel[Item],
                 registry: StreamRegistry, stats: Stats, limits: LimitSettings,
                 archive: trio.MemorySendChannel[ArchiveItem] | None,
                 live: Hub | None) -> None:
        self.ws, self.outbox, self.registry, self.stats = ws, outbox, registry, stats
        self.limits, self.archive, self.live = limits, archive, live
        self.session = DeviceSession(max_samples=limits.max_samples_per_frame)
        self.bucket = TokenBucket(limits.messages_per_s, limits.message_burst)
        self.info: StreamInfo | None = None
        self.durable = Durable()
        self.pending: deque[int] = deque()  # seqs archived, waiting to be acked
        self.pending_added = trio.Event()
        self.clock = ClockTracker()
        self.received_at = 0.0  # our clock (Unix s) when the current message arrived
        self.off_clock = False  # a frame's t was off the pings' clock (logged once)
        self.waiting_since = trio.current_time()  # since when receive waits (idle watchdog)
        self.silent = False  # the watchdog ended the connection: nothing came for too long
        # Cancelled by the watchdog (idle) or by send_acks (the archive failed): only the
        # task that reads the connection may close it (a close reads the peer's reply).
        self.receiving = trio.CancelScope()
        self.storage_failed: ArchiveFailed | None = None
        self.start_t0 = 0  # the run's sample count when this connection began

    async def watch(self, receiving: trio.CancelScope) -> None:
        """Cancel *receiving* once nothing has come for ``idle_timeout_s``, and say so
        (:attr:`silent`). One watchdog per connection that wakes once per idle period,
        instead of a cancel scope with a deadline around every receive."""
        idle = self.limits.idle_timeout_s
        while True:
            now = trio.current_time()
            due = self.waiting_since + idle  # inf while a message is being handled
            if due <= now:
                break
            await trio.sleep_until(min(due, now + idle))
        self.silent = True
        receiving.cancel()

    async def serve(self) -> None:
        totals = self.stats.totals
        while True:
            self.waiting_since = trio.current_time()
            payload = await self.ws.receive()
            self.waiting_since = math.inf  # a pipeline that parks us is not the device idling
            self.received_at = time.time()
            self.bucket.check(trio.current_time())
            totals.messages_in += 1
            totals.bytes_in += len(payload)
            for event in self.session.receive(decode_device(payload)):
                await self._on(event)

    async def send_acks(self) -> None:
        """Ack archived frames, in order, as the archive makes them durable. If the
        archive cannot store them (a full disk), the connection's reading stops and
        :func:`run_ingest` closes it with 1013 ``storage-unavailable``; the device
        reconnects later and resumes after its last ack."""
        with contextlib.suppress(ConnectionClosed):
            try:
                await self._send_acks()
            except ArchiveFailed as exc:
                self.storage_failed = exc
                self.receiving.cancel()

    async def _send_acks(self) -> None:
        while True:
            while not self.pending:
                await self.pending_added.wait()
                self.pending_added = trio.Event()
            await self.durable.wait_beyond(self.pending[0] - 1)
            acks = []
            while self.pending and self.pending[0] <= self.durable.seq:
                acks.append(Ack(self.pending.popleft()))
            await self.ws.send_many(acks)  # what one sync made durable: one write

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
                await self._pong(event)

    async def _pong(self, ping: PingReceived) -> None:
        now = time.time()
        self.clock.ping(ping.t, ping.rx, received=self.received_at, now=now)
        if self.info is not None:
            self.info.clock = self.clock.estimate
        await self.ws.send(Pong(ping.t, self.received_at, now))

    def _stamp(self, frame: Frame, n: int, fs: float) -> float:
        """Our clock at the frame's first sample: the device's ``t`` through the clock
        estimate, else (no ``t``, no estimate yet, or a ``t`` that would put the frame
        more than ``STAMP_BACKLOG_S`` before or ``STAMP_AHEAD_S`` after its arrival)
        the arrival less the frame's length; never before the stream's last (across
        reconnects; retention bisects the stamps)."""
        info = self.info
        assert info is not None
        arrival = self.received_at - n / fs
        stamp, estimate = arrival, self.clock.estimate
        if frame.t is not None and estimate is not None:
            mapped = estimate.to_server(frame.t)
            if arrival - STAMP_BACKLOG_S <= mapped <= self.received_at + STAMP_AHEAD_S:
                stamp = mapped
            elif not self.off_clock:
                self.off_clock = True
                _log.warning("stream %s: frame %d's t (%g) is %.0f s off its pings' clock; "
                             "stamping such frames at their arrival", info.id, frame.seq,
                             frame.t, mapped - arrival)
        info.last_stamp = max(stamp, info.last_stamp)
        return info.last_stamp

    async def _start(self, event: Started) -> None:
        hello = event.hello
        authorize_stream(GRANT.get(), hello.stream)
        check_hello(hello, self.limits)
        if self.registry.get(hello.stream) is None and len(self.registry) >= \
                self.limits.max_streams:
            raise stream_cap_error(self.limits.max_streams)
        owner = self.registry.owner
        if owner is not None and not await owner.claim(hello, self.registry):
            raise RemoteProtocolError(f"stream {hello.stream!r} is connected to another node",
                                      code=CloseCode.POLICY_VIOLATION, reason="stream-busy")
        try:
            info = self.registry.attach(hello)
        except StreamBusyError as exc:
            raise RemoteProtocolError(str(exc), code=CloseCode.POLICY_VIOLATION,
                                      reason="stream-busy") from None
        self.info = info
        self.stats.devices += 1
        self.session.next_seq, self.session.t0 = info.next_seq, info.t0
        self.start_t0 = info.t0
        if self.archive is not None:
            # One mark per run, shared by its connections: frames a previous connection
            # sent to the archive must be on disk before welcome says "resume after them".
            if info.durable is None or info.durable[0] != info.run:
                info.durable = (info.run, Durable(info.next_seq - 1))  # new run, or restored
            elif info.durable[1].failed is not None:  # resumes after what is on disk
                info.durable = (info.run, Durable(info.next_seq - 1, info.t0))
            self.durable = info.durable[1]
            try:  # the frames of a connection just gone may still be on their way
                await self.durable.wait_beyond(info.next_seq - 2)
            except ArchiveFailed as exc:
                raise _storage_error(exc) from None
        info.clock = self.clock.estimate
        await self.ws.send(Welcome(info.id, info.next_seq))
        await self._status("connected", fs=info.fs, channels=list(info.channels),
                           run=info.run, next_seq=info.next_seq, device=info.hello.device)

    async def _frame(self, frame: Frame) -> None:
        info = self.info
        assert info is not None
        n = int(frame.samples.shape[0])
        if self.archive is not None:  # first to disk: parks while the writer is behind
            await put(self.archive, Append(info.id, info.run, info.hello, frame.seq,
                                           frame.t0, n, frame.samples.tobytes(),
                                           self.durable, self._stamp(frame, n, info.fs)))
            # On its way to disk, the frame counts as received (a resend is a duplicate)
            # and is acked once durable, even if a shutdown cancels the send below.
            self._count(info, n)
            await self._ack(frame.seq)
        await admit(self.outbox, self.live, info, info.run, frame.seq, frame.t0,
                    frame.samples)  # parks while the pipeline is full
        if self.archive is None:
            self._count(info, n)
            await self._ack(frame.seq)

    def _count(self, info: StreamInfo, n: int) -> None:
        info.next_seq, info.t0 = self.session.next_seq, self.session.t0
        info.frames += 1
        info.samples += n
        self.stats.totals.samples_in += n

    async def _ack(self, seq: int) -> None:
        if self.archive is None:
            await self.ws.send(Ack(seq))
        else:
            self.pending.append(seq)
            self.pending_added.set()

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
        await self._ack(dup.seq)  # it is here already (durable once those before it are)

    async def _status(self, state: str, **fields: Any) -> None:
        """A ``status`` event, in order with the stream's raw samples."""
        assert self.info is not None
        await announce(self.info.id, state, self.outbox, self.live, **fields)

    async def finish(self, *, patience: float) -> None:
        if self.info is None:
            return
        info = self.info
        if self.durable.failed is not None:
            # The archive stopped after frame durable.seq: the device resumes there.
            samples = self.durable.samples
            info.next_seq = self.durable.seq + 1
            info.t0 = samples if samples is not None else self.start_t0
        self.registry.detach(info)
        self.stats.devices -= 1
        if self.registry.owner is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(patience):
                await self.registry.owner.release(info)
        with trio.CancelScope(shield=True), trio.move_on_after(patience), \
                contextlib.suppress(ConnectionClosed, ArchiveFailed):  # it resends
            if self.ws.closed is None and self.pending:  # e.g. shutdown: flush, then ack
                await self.durable.wait_beyond(self.pending[-1] - 1)
                acks = [Ack(seq) for seq in self.pending]
                self.pending.clear()
                await self.ws.send_many(acks)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            if self.archive is not None:
                # Gone when the server is cancelled whole: its writer ended first.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.archive.send(Close(info.id, info.run))
            await self._status("disconnected", next_seq=info.next_seq)


def _storage_error(exc: ArchiveFailed) -> RemoteProtocolError:
    return RemoteProtocolError(f"the server cannot store this stream's frames ({exc}); "
                               "reconnect later and resume after the last ack",
                               code=CloseCode.TRY_AGAIN_LATER, reason=STORAGE_REASON)


async def run_ingest(
    ws: WebSocket,
    outbox: trio.MemorySendChannel[Item],
    *,
    registry: StreamRegistry,
    stats: Stats,
    max_samples: int | None = None,
    limits: LimitSettings | None = None,
    archive: trio.MemorySendChannel[ArchiveItem] | None = None,
    live: Hub | None = None,
    patience: float = 2.0,
) -> None:
    """Serve one device connection until it closes or sends something invalid.

    Owns *outbox* (its own clone of the pipeline's inlet) and *archive* (its own clone
    of the archive writer's inbox; None: ack once a frame is in the pipeline), closing
    both on return. With *live* (the server's hub), each frame's raw-topic message and
    each ``status`` event are published on arrival, so a live view does not wait behind
    filtering and screening (frames still go down the pipeline for those); without it,
    they travel down the pipeline and the broadcaster publishes them.

    Invalid input gets an ``error`` message and the fitting close code; it touches
    nothing beyond this connection. When cancelled (shutdown), frames already
    archived are acked first, for up to *patience* seconds.
    """
    limits = limits or LimitSettings()
    if max_samples is not None:
        limits = limits.model_copy(update={"max_samples_per_frame": max_samples})
    ingest = _Ingest(ws, outbox, registry, stats, limits, archive, live)
    with outbox, archive or contextlib.nullcontext():
        try:
            async with trio.open_nursery() as nursery:
                if archive is not None:
                    nursery.start_soon(ingest.send_acks)
                try:
                    with ingest.receiving:
                        nursery.start_soon(ingest.watch, ingest.receiving)
                        await ingest.serve()
                    if ingest.storage_failed is not None:
                        raise _storage_error(ingest.storage_failed)
                    if ingest.silent:
                        raise idle_error(limits.idle_timeout_s)
                except RemoteProtocolError as exc:
                    stats.reject(exc.reason)
                    await ws.fail(exc.code, exc.reason, exc.message)
                except ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            await ingest.finish(patience=patience)
