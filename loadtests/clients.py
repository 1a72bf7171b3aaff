"""The load's clients: N paced devices and N subscribers, one per stream, in one process.

Every device frame's send time and its subscriber's receive time go into a
:class:`Book` indexed by (device, seq), both read from ``time.perf_counter()``, so a
latency is a difference of two readings of one clock. Messages are encoded before the
run starts: the hot loops only stamp, send and receive.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import msgpack
import numpy as np
import numpy.typing as npt
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from protocol import INGEST_PATH, SUBPROTOCOL, SUBSCRIBE_PATH, Hello, Samples, Subscribe, encode
from vital_actors.sources import Recording

__all__ = ["Book", "LoadError", "Plan", "make_plan", "run_load"]

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
#: How long the devices wait, once all are connected, before the first frame.
START_DELAY_S = 0.5


class LoadError(Exception):
    """A client could not set up its connection: the run is not comparable, stop it."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What every client sends: one hello and the encoded frames of each device."""

    url: str
    streams: tuple[str, ...]
    kind: str  # the topic each subscriber follows: stream/<id>/<kind>
    frame_s: float
    hellos: tuple[bytes, ...]
    frames: tuple[tuple[bytes, ...], ...]

    @property
    def devices(self) -> int:
        return len(self.streams)

    @property
    def per_device(self) -> int:
        return len(self.frames[0])


def make_plan(url: str, recordings: Sequence[Recording], *, devices: int, kind: str,
              frame_s: float, seconds: float) -> Plan:
    """Device *i* replays ``recordings[i % len]`` from its own offset, in frames of
    *frame_s* seconds, for *seconds* seconds (looping over the recording if need be)."""
    count = round(seconds / frame_s)
    streams, hellos, frames = [], [], []
    for i in range(devices):
        rec = recordings[i % len(recordings)]
        stream = f"{rec.name}-{i:03d}"
        n = round(frame_s * rec.fs)
        offset = (i * 7919 * n) % len(rec.samples)  # a prime stride: different beats
        idx = (offset + np.arange(count * n)) % len(rec.samples)
        data = np.ascontiguousarray(rec.samples[idx], dtype="<i2").reshape(count, n, -1)
        streams.append(stream)
        hellos.append(encode(Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                                   tuple(float(b) for b in rec.baseline), device="loadtest")))
        frames.append(tuple(encode(Samples(k, n, data[k].tobytes())) for k in range(count)))
    return Plan(url, tuple(streams), kind, frame_s, tuple(hellos), tuple(frames))


def _nan(shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    return np.full(shape, np.nan)


@dataclass(slots=True)
class Book:
    """Send and receive times, (device, seq) -> ``perf_counter()`` seconds (NaN: never).

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
    errors: list[str] = field(default_factory=list)

    @classmethod
    def for_plan(cls, plan: Plan) -> Book:
        shape = (plan.devices, plan.per_device)
        return cls(sent=_nan(shape), received=_nan(shape))

    def start(self, *, delay: float, run_s: float) -> None:
        """Release every device *delay* seconds from now; clients stop at the deadline."""
        now_trio, now_perf = trio.current_time(), time.perf_counter()
        self.t0, self.t0_perf = now_trio + delay, now_perf + delay
        self.deadline = self.t0 + run_s
        self.go.set()


def _unpack(payload: bytes | str) -> dict[str, Any]:
    if isinstance(payload, str):
        raise LoadError("the server sent a text message")
    return cast(dict[str, Any], msgpack.unpackb(payload, raw=False))


def _connect(url: str) -> Any:
    return open_websocket_url(url, subprotocols=[SUBPROTOCOL], connect_timeout=CONNECT_TIMEOUT_S,
                              disconnect_timeout=CLOSE_TIMEOUT_S)


async def run_device(plan: Plan, i: int, book: Book, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Connect and say hello (then report started); at ``book.go`` send every frame on
    its absolute time; wait (until the deadline) for the last ack, and close."""
    async with _connect(plan.url + INGEST_PATH) as ws:
        await ws.send_message(plan.hellos[i])
        welcome = _unpack(await ws.get_message())
        if welcome.get("type") != "welcome":
            raise LoadError(f"device {plan.streams[i]}: expected welcome, got {welcome}")
        task_status.started()
        last_acked = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_acks, ws, plan.per_device - 1, last_acked, book)
            await book.go.wait()
            try:
                await _send_frames(ws, plan, i, book)
            except ConnectionClosed as exc:
                book.errors.append(f"device {plan.streams[i]}: closed while sending: {exc}")
            with trio.move_on_at(book.deadline):
                await last_acked.wait()
            nursery.cancel_scope.cancel()


async def _send_frames(ws: WebSocketConnection, plan: Plan, i: int, book: Book) -> None:
    start = book.t0 + i * plan.frame_s / plan.devices  # staggered over one frame period
    sent = book.sent[i]
    for k, message in enumerate(plan.frames[i]):
        await trio.sleep_until(start + k * plan.frame_s)
        sent[k] = time.perf_counter()
        await ws.send_message(message)


async def _read_acks(ws: WebSocketConnection, last: int, done: trio.Event, book: Book) -> None:
    try:
        while True:
            message = _unpack(await ws.get_message())
            if message.get("type") == "ack" and message.get("seq") == last:
                done.set()
            elif message.get("type") == "error":
                book.errors.append(f"device error: {message}")
    except ConnectionClosed:
        done.set()


async def run_subscriber(plan: Plan, i: int, book: Book, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Subscribe to device *i*'s topic and report started once the server confirms;
    then stamp every ``samples`` message until all arrived or the deadline, and close."""
    topic = f"stream/{plan.streams[i]}/{plan.kind}"
    async with _connect(plan.url + SUBSCRIBE_PATH) as ws:
        await ws.send_message(encode(Subscribe((topic,))))
        while (reply := _unpack(await ws.get_message())).get("topic") != "subscriptions":
            book.other_messages += 1
        if topic not in reply.get("topics", ()):
            raise LoadError(f"subscriber {i}: subscription not confirmed: {reply}")
        task_status.started()
        await book.go.wait()
        with trio.move_on_at(book.deadline):
            try:
                await _receive_frames(ws, plan, i, book)
            except ConnectionClosed as exc:
                book.errors.append(f"subscriber {topic}: closed: {exc}")


async def _receive_frames(ws: WebSocketConnection, plan: Plan, i: int, book: Book) -> None:
    received = book.received[i]
    count = 0
    while count < plan.per_device:
        payload = await ws.get_message()
        now = time.perf_counter()
        message = _unpack(payload)
        if message.get("type") != "samples":
            book.other_messages += 1
            continue
        seq = int(message["seq"])
        if np.isnan(received[seq]):
            received[seq] = now
            count += 1
        else:
            book.duplicates += 1


async def run_load(plan: Plan, book: Book, *, grace_s: float,
                   on_start: trio.Event | None = None) -> None:
    """Connect every subscriber, then every device, then release the devices together.

    Returns when every client has finished: at the latest ``grace_s`` after the last
    frame's time. Raises :class:`LoadError` (or trio's TooSlowError) if set-up fails.
    """
    run_s = plan.per_device * plan.frame_s + plan.frame_s + grace_s
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT_S + 0.1 * plan.devices):
            for i in range(plan.devices):
                await nursery.start(partial(run_subscriber, plan, i, book))
            for i in range(plan.devices):
                await nursery.start(partial(run_device, plan, i, book))
        book.start(delay=START_DELAY_S, run_s=run_s)
        if on_start is not None:
            on_start.set()
