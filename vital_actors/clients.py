"""Clients on trio-websocket: simulated devices and a subscriber that summarises streams.

These speak protocol v1 exactly as third-party devices and dashboards do.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache, partial

import numpy as np
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
)

from protocol import (
    ECG_DICTIONARY_ID,
    INGEST_PATH,
    SUBPROTOCOL,
    SUBSCRIBE_PATH,
    Ack,
    Error,
    Event,
    Hello,
    Message,
    RemoteProtocolError,
    Samples,
    ServerMessage,
    StreamSamples,
    Subscribe,
    Welcome,
    ZstdCodec,
    decode_server,
    ecg_dictionary,
    encode,
)
from protocol import ZSTD_SUBPROTOCOL as ZSTD

from .sdk import open_connection
from .sdk._backoff import Backoff
from .sdk._connection import ENDINGS, reconnecting
from .sources import Recording

__all__ = ["DeviceReport", "StreamSummary", "receive", "run_device", "run_devices", "run_summary",
           "send"]


@dataclass(slots=True)
class DeviceReport:
    stream: str
    frames_sent: int = 0
    acked: int = -1
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    waiting_for: int | None = None
    all_acked: trio.Event = field(default_factory=trio.Event)


@asynccontextmanager
async def connect(ws_url: str, path: str, *,
                  zstd: bool = False) -> AsyncIterator[WebSocketConnection]:
    """A connection to *ws_url* + *path* offering protocol v1 (the SDK's
    :func:`~vital_actors.sdk.open_connection`), with the token in ``VITAL_TOKEN`` if set
    (servers with auth, issue 6; ``vital-actors token`` makes one).

    With *zstd*, it offers ``vital.v1.msgpack+zstd`` first (with the shipped dictionary);
    :func:`send` and :func:`receive` then compress and decompress.
    """
    target = f"{path}?zstd_dict={ECG_DICTIONARY_ID}" if zstd else path
    async with open_connection(ws_url, target, token=os.environ.get("VITAL_TOKEN"),
                               subprotocols=[ZSTD, SUBPROTOCOL] if zstd else [SUBPROTOCOL]
                               ) as ws:
        yield ws


async def receive(ws: WebSocketConnection) -> ServerMessage:
    """The next server message (the server only sends binary messages)."""
    payload = await ws.get_message()
    if isinstance(payload, str):
        raise RuntimeError("the server sent a text message")
    return _zstd().decode_server(payload) if ws.subprotocol == ZSTD else decode_server(payload)


async def send(ws: WebSocketConnection, message: Message) -> None:
    """Send one message, zstd-compressed when the connection agreed on it."""
    payload = encode(message)
    await ws.send_message(_zstd().compress(payload) if ws.subprotocol == ZSTD else payload)


@cache
def _zstd() -> ZstdCodec:
    return ZstdCodec(dictionary=ecg_dictionary())


def _hello(stream: str, rec: Recording, device: str) -> Hello:
    return Hello(stream=stream, fs=rec.fs, channels=rec.channels, dtype="int16",
                 gain=rec.gain, baseline=tuple(float(b) for b in rec.baseline), device=device)


async def run_device(
    ws_url: str,
    stream: str,
    recording: Recording,
    *,
    frame_s: float = 0.1,
    speed: float = 1.0,
    loop: bool = True,
    max_frames: int | None = None,
    report: DeviceReport | None = None,
    zstd: bool = False,
) -> DeviceReport:
    """Replay *recording* as device *stream* in frames of *frame_s* seconds.

    Paced at *speed* x real time (0 for as fast as the server's backpressure allows);
    loops at the end of the recording when *loop*. Returns after *max_frames* frames, or
    at the end of the recording when not looping.
    """
    report = report or DeviceReport(stream)
    report.waiting_for, report.all_acked = None, trio.Event()
    n = max(1, round(frame_s * recording.fs))
    samples = recording.samples
    total = len(samples)
    async with connect(ws_url, INGEST_PATH, zstd=zstd) as ws:
        report.connections += 1
        await send(ws, _hello(stream, recording, "vital-actors simulate"))
        welcome = await receive(ws)
        if not isinstance(welcome, Welcome):
            raise RuntimeError(f"expected welcome, got {welcome}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_acks, ws, report)
            start = trio.current_time()
            pos = seq = 0
            while max_frames is None or seq < max_frames:
                if pos >= total and not loop:
                    break
                idx = np.arange(pos, pos + n) % total if loop else np.arange(pos, min(pos + n,
                                                                                     total))
                frame = np.ascontiguousarray(samples[idx], dtype="<i2")
                await send(ws, Samples(seq, len(frame), frame.tobytes()))
                report.frames_sent += 1
                pos, seq = pos + len(frame), seq + 1
                if speed > 0:
                    await trio.sleep_until(start + seq * n / recording.fs / speed)
            # Wait until the server has acknowledged every frame, then leave.
            report.waiting_for = seq - 1
            if report.acked < report.waiting_for:
                with trio.move_on_after(10):
                    await report.all_acked.wait()
            nursery.cancel_scope.cancel()
    return report


async def _read_acks(ws: WebSocketConnection, report: DeviceReport) -> None:
    try:
        while True:
            msg = await receive(ws)
            if isinstance(msg, Ack):
                report.acked = max(report.acked, msg.seq)
                if report.waiting_for is not None and report.acked >= report.waiting_for:
                    report.all_acked.set()
            elif isinstance(msg, Error):
                report.errors.append(f"{msg.code}: {msg.message}")
    except ConnectionClosed:
        pass


async def run_devices(ws_url: str, recordings: Sequence[tuple[str, Recording]], *,
                      frame_s: float = 0.1, stagger_s: float = 0.5,
                      on_error: Callable[[str, BaseException], None] | None = None,
                      zstd: bool = False) -> None:
    """Run one looping device per (stream id, recording), staggered, reconnecting on error
    with exponential backoff and jitter. Runs until cancelled."""
    async with trio.open_nursery() as nursery:
        for i, (stream, rec) in enumerate(recordings):
            nursery.start_soon(partial(_keep_device, ws_url, stream, rec, frame_s,
                                       i * stagger_s, on_error, zstd=zstd))


async def _keep_device(ws_url: str, stream: str, rec: Recording, frame_s: float,
                       delay: float, on_error: Callable[[str, BaseException], None] | None,
                       *, zstd: bool = False) -> None:
    async def report(exc: BaseException) -> None:
        if on_error is not None:
            on_error(stream, exc)

    progress = DeviceReport(stream)
    sent = 0

    def worked() -> bool:  # the session sent frames: the delays start over
        nonlocal sent
        moved, sent = progress.frames_sent > sent, progress.frames_sent
        return moved

    await trio.sleep(delay)  # the stagger
    # A simulated device retries whatever ends its connection (a refused token too:
    # none is fatal), and what its own session raises on a server it does not
    # understand.
    await reconnecting(partial(run_device, ws_url, stream, rec, frame_s=frame_s, zstd=zstd,
                               report=progress),
                       backoff=Backoff(initial=0.5, maximum=10.0), on_down=report,
                       worked=worked, endings=(*ENDINGS, RuntimeError, RemoteProtocolError),
                       fatal=lambda exc, last_error: False)


@dataclass(slots=True)
class StreamSummary:
    messages: int = 0
    samples: int = 0
    quality: str = "-"
    hr: str = "-"  # heart rate (bpm, 10-s median) from the last quality event
    alerts: list[str] = field(default_factory=list)
    connected: bool = True  # False while the summary reconnects to the server


async def run_summary(ws_url: str, *, streams: Sequence[str] = (), interval: float = 1.0,
                      show: Callable[[dict[str, StreamSummary], float], None],
                      zstd: bool = False, backoff: Backoff | None = None) -> None:
    """Subscribe to every stream (or *streams*) and call *show* with per-stream counts
    every *interval* seconds, until cancelled.

    When the connection ends (the server restarts, the network drops), it connects
    again with *backoff* and subscribes again to every stream it knows, without
    ``since``: a summary counts what arrives, it does not replay what was missed.
    Meanwhile :attr:`StreamSummary.connected` is False in every row. A refusal that
    retrying cannot fix (a bad token, 1008 and the like) raises :class:`FatalError`.
    """
    table: dict[str, StreamSummary] = {}
    session = _SummarySession(table, streams)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_tick, table, interval, show)
        await reconnecting(partial(session.run, ws_url, zstd), backoff=backoff or Backoff(),
                           worked=lambda: session.received, on_down=session.down)


class _SummarySession:
    """The connection of :func:`run_summary`, one at a time, each starting afresh."""

    def __init__(self, table: dict[str, StreamSummary], streams: Sequence[str]) -> None:
        self.table, self.streams = table, streams
        self.followed: set[str] = set()
        self.received = False
        self.ws: WebSocketConnection | None = None

    async def run(self, ws_url: str, zstd: bool) -> None:
        self.followed, self.received = set(), False
        async with connect(ws_url, SUBSCRIBE_PATH, zstd=zstd) as ws:
            self.ws = ws
            await send(ws, Subscribe(("streams", "alerts")))
            for stream in [*self.streams, *self.table]:
                await self.follow(stream)
            while True:
                msg = await receive(ws)
                self.received = True
                await _tally(msg, self.table, self.follow)

    async def follow(self, stream: str) -> None:
        if stream in self.followed or (self.streams and stream not in self.streams):
            return
        assert self.ws is not None
        self.followed.add(stream)
        row = self.table.setdefault(stream, StreamSummary())
        row.connected = True
        await send(self.ws, Subscribe((f"stream/{stream}/raw", f"stream/{stream}/quality")))

    async def down(self, _: BaseException) -> None:
        for row in self.table.values():
            row.connected = False


async def _tally(msg: object, table: dict[str, StreamSummary],
                 follow: Callable[[str], Awaitable[None]]) -> None:
    if isinstance(msg, StreamSamples):
        row = table[msg.stream]
        row.messages += 1
        row.samples += len(msg.data) // (len(msg.channels) * 2)
    elif isinstance(msg, Event):
        stream = str(msg.body.get("stream", ""))
        if msg.type == "status" and msg.body.get("state") == "connected":
            await follow(stream)
        elif msg.type == "quality" and stream in table:
            bad = [k for k in ("flatline", "lead_off", "out_of_range") if msg.body.get(k)]
            table[stream].quality = ",".join(bad) or str(msg.body.get("class", "ok"))
            hr = msg.body.get("hr")
            table[stream].hr = f"{hr:.0f}" if isinstance(hr, int | float) else "-"
        elif msg.type == "alert" and msg.topic == "alerts" and stream in table:
            table[stream].alerts.append(f"{msg.body['alert']} {msg.body['state']}")


async def _tick(table: dict[str, StreamSummary], interval: float,
                show: Callable[[dict[str, StreamSummary], float], None]) -> None:
    while True:
        await trio.sleep(interval)
        show(table, interval)
        for row in table.values():
            row.messages = row.samples = 0
            row.alerts.clear()
