"""The load's clients, in one process: paced devices, measured subscribers (M per stream
and W on every stream), and the disturbances (stalled, slow, churning, idle clients).

Every device frame's send time and each measured subscriber's receive time go into a
:class:`Book` indexed by (listener, device, seq), both read from
``time.perf_counter()``, so a latency is a difference of two readings of one clock.
Messages are encoded before the run starts: the hot loops only stamp, send and receive.

Two client stacks speak the same protocol (``Plan.clients``): ``lean`` (the default:
trio socket streams, frames framed and masked at plan time, :mod:`loadtests.lean`; one
:class:`~loadtests.pacing.Pacer` task sends every device's frames on time; devices read
their acks every :data:`ACK_PAUSE_S`) and ``trio-websocket`` (the library the generator
was first built on: a task per device sleeping until each frame; kept to measure the
generator itself against, ``--clients trio-websocket``).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast

import msgpack
import numpy as np
import numpy.typing as npt
import trio
import trio_websocket
from trio_websocket import DisconnectionTimeout, WebSocketConnection, open_websocket_url

from protocol import INGEST_PATH, SUBPROTOCOL, SUBSCRIBE_PATH, Hello, Subscribe, encode
from vital_actors.sources import Recording

from . import lean
from .pacing import Pacer
from .scenario import CLIENTS, Load
from .wsframes import client_frames

__all__ = ["CLIENTS", "Book", "LoadError", "Plan", "connect_idle", "make_plan", "run_load"]

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
#: How long the devices wait, once all are connected, before the first frame.
START_DELAY_S = 0.5
#: A lean device reads its acks at most this often (they wait in the socket buffer).
ACK_PAUSE_S = 1.0


class LoadError(Exception):
    """A client could not set up its connection: the run is not comparable, stop it."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What every client sends: one hello and the encoded frames of each device."""

    url: str
    streams: tuple[str, ...]
    kind: str  # the topic each subscriber follows: stream/<id>/<kind>
    load: Load
    hellos: tuple[bytes, ...]
    #: Per device, what ``send_frame`` sends: masked WebSocket frames (lean) or the
    #: messages themselves (trio-websocket frames them as it sends).
    frames: tuple[tuple[bytes, ...], ...]
    samples_per_frame: int  # per channel
    channels: int
    clients: str = "lean"
    churn_frame: bytes = b""  # the message churning devices send (device 0's first)

    @property
    def devices(self) -> int:
        return len(self.streams)

    @property
    def per_device(self) -> int:
        return len(self.frames[0])

    def topic(self, i: int) -> str:
        return f"stream/{self.streams[i]}/{self.kind}"

    def start_offset(self, i: int) -> float:
        """When device *i* sends its first frame, after the common start: staggered over
        one frame period, and spread over the ramp."""
        n = self.devices
        return i * self.load.frame_s / n + self.load.ramp_s * i / n


def _hello(stream: str, rec: Recording) -> bytes:
    return encode(Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                        tuple(float(b) for b in rec.baseline), device="loadtest"))


def _frame(stream: str, seq: int, samples: npt.NDArray[np.int16]) -> bytes:
    """A ``samples`` message with an extra ``stream`` key: our server ignores it (unknown
    fields are allowed), and the bare relay forwards it, so a wall subscriber of the
    relay can tell the streams apart too."""
    return cast(bytes, msgpack.packb({"type": "samples", "seq": seq, "n": len(samples),
                                      "data": samples.tobytes(), "stream": stream}))


def make_plan(url: str, recordings: Sequence[Recording], *, devices: int, kind: str,
              load: Load, seconds: float, clients: str = "lean") -> Plan:
    """Device *i* replays ``recordings[i % len]`` from its own offset, in frames of
    ``load.frame_s`` seconds, for *seconds* seconds (looping over the recording).

    With ``clients="lean"`` each frame is also framed and masked here (a fresh random
    key per frame), so that sending it is one write of ready bytes.
    """
    if clients not in CLIENTS:
        raise ValueError(f"clients must be one of {CLIENTS}, not {clients!r}")
    frame_s = load.frame_s
    count = round(seconds / frame_s)
    streams, hellos, frames = [], [], []
    n = round(frame_s * recordings[0].fs)
    churn = b""
    for i in range(devices):
        rec = recordings[i % len(recordings)]
        stream = f"{rec.name}-{i:04d}"
        offset = (i * 7919 * n) % len(rec.samples)  # a prime stride: different beats
        idx = (offset + np.arange(count * n)) % len(rec.samples)
        data = np.ascontiguousarray(rec.samples[idx], dtype="<i2").reshape(count, n, -1)
        messages = [_frame(stream, k, data[k]) for k in range(count)]
        churn = churn or messages[0]
        streams.append(stream)
        hellos.append(_hello(stream, rec))
        frames.append(tuple(client_frames(messages) if clients == "lean" else messages))
    return Plan(url, tuple(streams), kind, load, tuple(hellos), tuple(frames), n,
                len(recordings[0].channels), clients, churn)


@dataclass(slots=True)
class Book:
    """Send and receive times: ``sent[device, seq]`` and ``received[listener, device,
    seq]`` in ``perf_counter()`` seconds (NaN: never). Listeners ``0..M-1`` are each
    device's own subscribers, ``M..M+W-1`` the wall subscribers.

    ``t0`` (trio clock) paces the devices; ``t0_perf`` is the same instant on the
    ``perf_counter`` clock of the stamps.
    """

    sent: npt.NDArray[np.float64]
    received: npt.NDArray[np.float64]
    go: trio.Event = field(default_factory=trio.Event)
    t0: float = 0.0
    t0_perf: float = 0.0
    deadline: float = 0.0
    duplicates: int = 0
    other_messages: int = 0
    wire_bytes: int = 0  # payload bytes of the samples messages measured listeners got
    wire_samples: int = 0  # samples (all channels) in those messages
    churned: int = 0  # short-lived clients that came and went
    errors: list[str] = field(default_factory=list)

    @classmethod
    def for_plan(cls, plan: Plan) -> Book:
        return cls(sent=np.full((plan.devices, plan.per_device), np.nan),
                   received=np.full((plan.load.listeners, plan.devices, plan.per_device),
                                    np.nan))

    def start(self, *, delay: float, run_s: float) -> None:
        """Release every device *delay* seconds from now; clients stop at the deadline."""
        now_trio, now_perf = trio.current_time(), time.perf_counter()
        self.t0, self.t0_perf = now_trio + delay, now_perf + delay
        self.deadline = self.t0 + run_s
        self.go.set()


def _unpack(payload: bytes) -> dict[str, Any]:
    return cast(dict[str, Any], msgpack.unpackb(payload, raw=False))


class Connection(Protocol):
    """What the clients need of a WebSocket connection, whichever the stack."""

    async def send_message(self, payload: bytes) -> None: ...

    async def send_frame(self, frame: bytes) -> None: ...

    async def get_message(self) -> bytes: ...

    async def receive_messages(self) -> list[bytes]: ...


class _TrioWebSocket:
    """A trio-websocket connection as a :class:`Connection` (its frames are messages)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self.send_message = self.send_frame = ws.send_message

    async def get_message(self) -> bytes:
        payload = await self._ws.get_message()
        if isinstance(payload, str):
            raise LoadError("the server sent a text message")
        return payload

    async def receive_messages(self) -> list[bytes]:
        return [await self.get_message()]


@asynccontextmanager
async def _open_trio_websocket(url: str) -> AsyncIterator[Connection]:
    async with open_websocket_url(url, subprotocols=[SUBPROTOCOL],
                                  connect_timeout=CONNECT_TIMEOUT_S,
                                  disconnect_timeout=CLOSE_TIMEOUT_S) as ws:
        yield _TrioWebSocket(ws)


def _connect(plan: Plan | str, url: str) -> AbstractAsyncContextManager[Connection]:
    """A connection to *url* with the plan's client stack (or the one named)."""
    clients = plan if isinstance(plan, str) else plan.clients
    if clients == "trio-websocket":
        return _open_trio_websocket(url)
    return lean.open_lean(url, SUBPROTOCOL, connect_timeout=CONNECT_TIMEOUT_S,
                          close_timeout=CLOSE_TIMEOUT_S)


#: A connection that the server closed or that broke, whichever the stack.
ConnectionClosed = (trio_websocket.ConnectionClosed, lean.ConnectionClosed)


# --- devices ---------------------------------------------------------------------------------


async def _run_device(plan: Plan, i: int, book: Book, pacer: Pacer | None, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Connect and say hello (then report started); at ``book.go`` send every frame on
    its absolute time (with a *pacer*: the pacer sends them, this task only what the
    pacer could not send without waiting); wait (until the deadline) for the last ack,
    and close."""
    async with _connect(plan, plan.url + INGEST_PATH) as ws:
        await ws.send_message(plan.hellos[i])
        welcome = _unpack(await ws.get_message())
        if welcome.get("type") != "welcome":
            raise LoadError(f"device {plan.streams[i]}: expected welcome, got {welcome}")
        if pacer is not None:
            pacer.join(i, cast(lean.LeanWebSocket, ws))
        task_status.started()
        last_acked = trio.Event()
        async with trio.open_nursery() as nursery:
            pause = ACK_PAUSE_S if plan.clients == "lean" else 0.0
            nursery.start_soon(_read_acks, ws, plan.per_device - 1, last_acked, book, pause)
            await book.go.wait()
            try:
                await (pacer.drain(i) if pacer is not None else _send_frames(ws, plan, i, book))
            except ConnectionClosed as exc:
                book.errors.append(f"device {plan.streams[i]}: closed while sending: {exc}")
            with trio.move_on_at(book.deadline):
                await last_acked.wait()
            nursery.cancel_scope.cancel()


async def _send_frames(ws: Connection, plan: Plan, i: int, book: Book) -> None:
    start = book.t0 + plan.start_offset(i)
    sent = book.sent[i]
    frame_s = plan.load.frame_s
    send, clock = ws.send_frame, time.perf_counter
    for k, frame in enumerate(plan.frames[i]):
        await trio.sleep_until(start + k * frame_s)
        sent[k] = clock()
        await send(frame)


async def _read_acks(ws: Connection, last: int, done: trio.Event, book: Book,
                     pause: float) -> None:
    """Read what the server sends a device until the ack of seq *last* (or the close).

    With a *pause*, reads at most once per *pause* seconds: the acks wait in the
    socket's buffer meanwhile (a few bytes each) and come in one read, instead of one
    wake-up of this task per frame.
    """
    try:
        while True:
            for payload in await ws.receive_messages():
                message = _unpack(payload)
                if message.get("type") == "ack" and message.get("seq") == last:
                    done.set()
                elif message.get("type") == "error":
                    book.errors.append(f"device error: {message}")
            if pause:
                await trio.sleep(pause)
    except ConnectionClosed:
        done.set()


# --- subscribers -----------------------------------------------------------------------------


async def _subscribe(ws: Connection, topics: tuple[str, ...], book: Book) -> None:
    """Subscribe in batches and wait for each confirmation."""
    for k in range(0, len(topics), 256):  # protocol limit per message
        batch = topics[k:k + 256]
        await ws.send_message(encode(Subscribe(batch)))
        while (reply := _unpack(await ws.get_message())).get("topic") != "subscriptions":
            book.other_messages += 1
        if not set(batch) <= set(reply.get("topics", ())):
            raise LoadError(f"subscription to {batch[:2]}... not confirmed: {reply}")


async def _run_listener(plan: Plan, listener: int, devices: range, book: Book, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A measured subscriber of *devices*' topics: stamp every ``samples`` message until
    all arrived or the deadline, and close."""
    topics = tuple(plan.topic(i) for i in devices)
    index = {plan.streams[i]: i for i in devices}
    async with _connect(plan, plan.url + SUBSCRIBE_PATH) as ws:
        await _subscribe(ws, topics, book)
        task_status.started()
        await book.go.wait()
        with trio.move_on_at(book.deadline):
            try:
                await _receive(ws, plan, listener, index, book)
            except ConnectionClosed as exc:
                book.errors.append(f"subscriber {listener} of {topics[0]}...: closed: {exc}")


async def _receive(ws: Connection, plan: Plan, listener: int,
                   index: dict[str, int], book: Book) -> None:
    """Stamp each ``samples`` message with the time the read that completed it returned."""
    received = book.received[listener]
    expected = plan.per_device * len(index)
    per_message = plan.samples_per_frame * plan.channels
    count = 0
    receive, clock, unpack = ws.receive_messages, time.perf_counter, msgpack.unpackb
    while count < expected:
        batch = await receive()
        now = clock()
        for payload in batch:
            message = unpack(payload)
            if message.get("type") != "samples":
                book.other_messages += 1
                continue
            row, seq = received[index[message["stream"]]], int(message["seq"])
            book.wire_bytes += len(payload)
            book.wire_samples += per_message
            if math.isnan(row[seq]):
                row[seq] = now
                count += 1
            else:
                book.duplicates += 1


async def _run_disturber(plan: Plan, i: int, book: Book, *, rate: float | None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A subscriber of device *i*'s topic that never reads (*rate* None: stalled) or
    reads at most *rate* messages/s. Not measured: it is the disturbance."""
    async with _connect(plan, plan.url + SUBSCRIBE_PATH) as ws:
        await _subscribe(ws, (plan.topic(i),), book)
        task_status.started()
        await book.go.wait()
        with trio.move_on_at(book.deadline):
            if rate is None:
                await trio.sleep_forever()
            try:
                while True:
                    await ws.get_message()
                    await trio.sleep(1 / rate)
            except ConnectionClosed:
                pass  # evicted, as a slow subscriber may be


async def run_churn(plan: Plan, book: Book, *, per_s: float, recording: Recording) -> None:
    """Until the deadline, *per_s* times a second: a device that says hello, sends a few
    frames and leaves, and a subscriber that subscribes, reads a little and leaves."""
    frame = plan.churn_frame
    async with trio.open_nursery() as nursery:
        k = 0
        while trio.current_time() < book.deadline - 1:
            nursery.start_soon(_churn_once, plan, book, k, frame, recording)
            k += 1
            await trio.sleep(1 / per_s)


async def _churn_once(plan: Plan, book: Book, k: int, frame: bytes, rec: Recording) -> None:
    try:
        async with _connect(plan, plan.url + INGEST_PATH) as dev:
            await dev.send_message(_hello(f"churn-{k}", rec))
            await dev.get_message()
            for _ in range(3):
                await dev.send_message(frame)
        async with _connect(plan, plan.url + SUBSCRIBE_PATH) as sub:
            await _subscribe(sub, (plan.topic(k % plan.devices),), book)
            with trio.move_on_after(0.3):
                await sub.get_message()
        book.churned += 1
    except (*_BROKEN, LoadError) as exc:
        book.errors.append(f"churn {k}: {exc}")


async def connect_idle(url: str, count: int, *, done: trio.Event, clients: str = "lean",
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Hold *count* subscriber connections (subscribed to ``alerts`` only) until *done*.

    Thousands closing at once may not all finish their close handshake in time: that is
    after the measurement, not a failure of it (:func:`_tolerant`).
    """
    book = Book(np.empty((0, 0)), np.empty((0, 0, 0)))

    async def one(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with _connect(clients, url + SUBSCRIBE_PATH) as ws:
            await _subscribe(ws, ("alerts",), book)
            task_status.started()
            await done.wait()

    async with trio.open_nursery() as nursery:
        for k in range(count):
            await nursery.start(partial(_tolerant, one, f"idle subscriber {k}", book))
        task_status.started()


_BROKEN = (*ConnectionClosed, DisconnectionTimeout, trio_websocket.HandshakeError,
           lean.HandshakeError, OSError)


@dataclass(slots=True)
class _Relay:
    """Passes ``started()`` on to the real task status, remembering that it was called."""

    status: trio.TaskStatus[None]
    called: bool = False

    def started(self, value: None = None) -> None:
        self.called = True
        self.status.started(value)


async def _tolerant(body: Any, what: str, book: Book, *args: Any,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a client; once it has started, a connection that breaks or will not close in
    time is an error of the run (counted, shown), not a crash of the harness."""
    relay = _Relay(task_status)
    try:
        await body(*args, task_status=relay)
    except _BROKEN as exc:
        if not relay.called:
            raise LoadError(f"{what}: could not connect: {exc!r}") from None
        book.errors.append(f"{what}: {exc!r}")


def run_device(plan: Plan, i: int, book: Book, pacer: Pacer | None = None) -> Any:
    return partial(_tolerant, _run_device, f"device {i}", book, plan, i, book, pacer)


def run_listener(plan: Plan, listener: int, devices: range, book: Book) -> Any:
    return partial(_tolerant, _run_listener, f"subscriber {listener}/{devices.start}", book,
                   plan, listener, devices, book)


def run_disturber(plan: Plan, i: int, book: Book, *, rate: float | None) -> Any:
    return partial(_tolerant, partial(_run_disturber, rate=rate), f"slow subscriber of {i}",
                   book, plan, i, book)


# --- the whole load --------------------------------------------------------------------------


async def run_load(plan: Plan, book: Book, *, grace_s: float,
                   churn_recording: Recording | None = None,
                   on_start: trio.Event | None = None) -> None:
    """Connect every subscriber, then every device, then release the devices together.

    Returns when every client has finished: at the latest ``grace_s`` after the last
    frame's time. Raises :class:`LoadError` (or trio's TooSlowError) if set-up fails.
    """
    load, n = plan.load, plan.devices
    run_s = plan.per_device * load.frame_s + load.frame_s + load.ramp_s + grace_s
    clients = n * (load.subscribers_per_stream + 1) + load.wall_subscribers
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S + 0.1 * clients):
            for j in range(load.subscribers_per_stream):
                for i in range(n):
                    await nursery.start(run_listener(plan, j, range(i, i + 1), book))
            for w in range(load.wall_subscribers):
                await nursery.start(run_listener(plan, load.subscribers_per_stream + w,
                                                 range(n), book))
            for k in range(load.stalled_subscribers):
                await nursery.start(run_disturber(plan, k % n, book, rate=None))
            for k in range(load.slow_subscribers):
                await nursery.start(run_disturber(plan, k % n, book, rate=load.slow_rate))
            pacer = (Pacer(plan.frames, book.sent, load.frame_s) if plan.clients == "lean"
                     else None)
            for i in range(n):
                await nursery.start(run_device(plan, i, book, pacer))
        book.start(delay=START_DELAY_S, run_s=run_s)
        if pacer is not None:
            nursery.start_soon(pacer.run, [book.t0 + plan.start_offset(i) for i in range(n)])
        if load.churn_per_s > 0 and churn_recording is not None:
            nursery.start_soon(partial(run_churn, plan, book, per_s=load.churn_per_s,
                                       recording=churn_recording))
        if on_start is not None:
            on_start.set()
