"""Isolation: do 99 subscribers notice that a 100th has stopped reading?

    timeout -s INT 900 python -m loadtests.bench_isolation --devices 2 --subscribers 100 \\
        --repeat 3 --seconds 15

D devices replay MIT-BIH in 100 ms frames into a real ``vital-actors serve`` process;
S - 1 *reading* subscribers each follow every device's raw topic. In the ``stalled``
runs one more subscriber follows them too but never reads, on a socket with a 4 KiB
receive buffer, so its lanes fill (the server's ``buffers.subscriber`` is lowered with
``--buffer`` so that they fill within the warm-up; see the lanes' state it prints).
The ``alone`` and the ``stalled`` server run at the same time, two fresh processes
driven from one start time by this one harness process, so that the machine's noise
(other tenants, the harness itself) hits both alike; the readers' latency (device send
to subscriber receive, one ``perf_counter`` clock) is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import msgpack
import numpy as np
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from protocol import INGEST_PATH, SUBPROTOCOL, SUBSCRIBE_PATH, Hello, Samples, Subscribe, encode
from vital_actors.sources import Recording, data_dir, list_records, load_record

from .targets import HOST, TARGETS, Meter, running

__all__ = ["main"]

STALLED_RCVBUF = 4096
FRAME_S = 0.1


@dataclass(slots=True)
class Plan:
    """The devices' encoded messages, and their send stamps ``sent[device, seq]``."""

    streams: list[str]
    hellos: list[bytes]
    frames: list[list[bytes]]
    sent: np.ndarray[Any, Any]
    go: trio.Event
    t0: float = 0.0  # trio clock: the first frame
    t0_perf: float = 0.0  # the same instant on perf_counter
    deadline: float = 0.0

    @property
    def per_device(self) -> int:
        return len(self.frames[0])

    def start(self, run_s: float, *, offset: float = 0.0) -> None:
        delay = 0.5 + offset
        self.t0, self.t0_perf = trio.current_time() + delay, time.perf_counter() + delay
        self.deadline = self.t0 + run_s
        self.go.set()


def _plan(devices: int, seconds: float) -> Plan:
    """Device *i* replays MIT-BIH record ``i % 8`` in 100 ms frames for *seconds*."""
    folder = (data_dir() or Path("/nonexistent")) / "mitdb"
    paths = list_records(folder)[:8]
    if not paths:
        raise SystemExit(f"MIT-BIH records not found in {folder}")
    count = round(seconds / FRAME_S)
    recs: list[Recording] = [load_record(p, stop=count * 36 + 1) for p in paths]
    streams, hellos, frames = [], [], []
    for i in range(devices):
        rec = recs[i % len(recs)]
        streams.append(f"{rec.name}-{i:03d}")
        hellos.append(encode(Hello(streams[-1], rec.fs, rec.channels, "int16", rec.gain,
                                   tuple(float(b) for b in rec.baseline))))
        data = np.ascontiguousarray(rec.samples[:count * 36], "<i2").reshape(count, 36, -1)
        frames.append([encode(Samples(k, 36, data[k].tobytes())) for k in range(count)])
    return Plan(streams, hellos, frames, np.full((devices, count), np.nan), trio.Event())


async def _device(port: int, plan: Plan, i: int, *,
                  task_status: trio.TaskStatus[None]) -> None:
    """Say hello, then send each frame on its absolute time (staggered by device)."""
    stream = await _open(port)
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, HOST, INGEST_PATH,
                                      subprotocols=[SUBPROTOCOL])
        await ws.send_message(plan.hellos[i])
        await ws.get_message()  # welcome
        nursery.start_soon(_discard_acks, ws)
        task_status.started()
        await plan.go.wait()
        start = plan.t0 + i * FRAME_S / len(plan.streams)
        for k, frame in enumerate(plan.frames[i]):
            await trio.sleep_until(start + k * FRAME_S)
            plan.sent[i, k] = time.perf_counter()
            await ws.send_message(frame)
        await trio.sleep_until(plan.deadline)
        nursery.cancel_scope.cancel()


async def _discard_acks(ws: Any) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.get_message()


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered_per_s: float
    lost: int
    server_cpu: float
    harness_cpu: float
    other_cpu: float
    stalled: dict[str, Any] | None  # the stalled subscriber's row in /api/v1/subscribers
    latency_ms: np.ndarray[Any, Any]  # every reader's, for frames sent in the window
    second: np.ndarray[Any, Any]  # the second of the window each of them was sent in


async def _open(port: int, *, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((HOST, port))
    return trio.SocketStream(sock)


async def _subscriber(port: int, plan: Plan, out: np.ndarray[Any, Any], *,
                      stalled: bool, task_status: trio.TaskStatus[None]) -> None:
    """Follow every stream; stamp each samples message into *out* (device, seq), or, if
    *stalled*, never read after the confirmation.

    A lean client straight on wsproto (no task or queue per connection, one stamp per
    chunk read), so that the harness, not the server, is not what is measured.
    """
    stream = await _open(port, rcvbuf=STALLED_RCVBUF if stalled else None)
    conn = WSConnection(ConnectionType.CLIENT)
    index = {s: i for i, s in enumerate(plan.streams)}
    topics = tuple(f"stream/{s}/raw" for s in plan.streams)
    async with stream:
        await stream.send_all(conn.send(Request(host=HOST, target=SUBSCRIBE_PATH,
                                                subprotocols=[SUBPROTOCOL])))
        parts: list[bytes] = []
        confirmed = False
        while not confirmed:
            conn.receive_data(await stream.receive_some(65536))
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    await stream.send_all(conn.send(BytesMessage(encode(Subscribe(topics)))))
                elif isinstance(event, BytesMessage):
                    confirmed = msgpack.unpackb(event.data).get("topic") == "subscriptions"
        task_status.started()
        await plan.go.wait()
        with trio.move_on_at(plan.deadline):
            if stalled:
                await trio.sleep_forever()
            while data := await stream.receive_some(65536):
                now = time.perf_counter()
                conn.receive_data(data)
                for event in conn.events():
                    if isinstance(event, BytesMessage):
                        parts.append(bytes(event.data))
                        if event.message_finished:
                            m = msgpack.unpackb(b"".join(parts))
                            parts = []
                            if m.get("type") == "samples":
                                out[index[m["stream"]], m["seq"]] = now
                    elif isinstance(event, CloseConnection):
                        return


async def _get_json(port: int, path: str) -> Any:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(method="GET", target=path,
                                                    headers=[("Host", HOST)])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return json.loads(body)


async def _load(port: int, plan: Plan, readers: int, *, stalled: bool,
                nursery: trio.Nursery) -> np.ndarray[Any, Any]:
    """Connect *readers* subscribers (and a stalled one), then the devices, in *nursery*;
    the readers' receive stamps ``[reader, device, seq]``."""
    received = np.full((readers, len(plan.streams), plan.per_device), np.nan)
    for r in range(readers):
        await nursery.start(partial(_subscriber, port, plan, received[r], stalled=False))
    if stalled:
        await nursery.start(partial(_subscriber, port, plan, received[0].copy(),
                                    stalled=True))  # stamps nothing
    for i in range(len(plan.streams)):
        await nursery.start(partial(_device, port, plan, i))
    return received


def _result(mode: str, plan: Plan, received: np.ndarray[Any, Any], meter: Meter,
            args: argparse.Namespace, stalled_row: dict[str, Any] | None) -> Result:
    t0 = plan.t0_perf + args.warmup
    sent = np.broadcast_to(plan.sent, received.shape)
    in_window = (sent >= t0) & (sent < t0 + args.seconds)
    ok = in_window & ~np.isnan(received)
    latency = (received[ok] - sent[ok]) * 1e3
    second = ((sent[ok] - t0) // 1.0).astype(int)
    p50, p99, top = np.percentile(latency, [50, 99, 100])
    usage = meter.usage
    return Result(mode, float(p50), float(p99), float(top),
                  float(np.count_nonzero(ok)) / args.seconds,
                  int(np.count_nonzero(in_window & np.isnan(received))),
                  usage["server"].cpu_percent, usage["harness"].cpu_percent,
                  max(0.0, usage["machine"].cpu_percent - usage["server"].cpu_percent
                      - usage["harness"].cpu_percent), stalled_row, latency, second)


async def _run(args: argparse.Namespace, rep: int) -> tuple[Result, Result]:
    """Both servers at once, from one start time: the machine's noise hits both."""
    os.environ["VITAL_BUFFERS__SUBSCRIBER"] = str(args.buffer)
    sending_s = args.warmup + args.seconds + 1
    plans = {mode: _plan(args.devices, sending_s) for mode in ("alone", "stalled")}
    target = TARGETS["vital-raw"]
    async with running(target, args.out / f"server-alone-{rep}.log") as (p_alone, port_a), \
            running(target, args.out / f"server-stalled-{rep}.log") as (p_stalled, port_s):
        meters = {"alone": Meter(p_alone), "stalled": Meter(p_stalled)}
        with trio.fail_after(sending_s + 90):
            async with trio.open_nursery() as nursery:
                received = {
                    "alone": await _load(port_a, plans["alone"], args.subscribers - 1,
                                         stalled=False, nursery=nursery),
                    "stalled": await _load(port_s, plans["stalled"], args.subscribers - 1,
                                           stalled=not args.control, nursery=nursery)}
                # Half a frame apart, so that the two loads' frames do not collide; which
                # one goes first alternates from run to run.
                first, second = ("alone", "stalled") if rep % 2 == 0 else ("stalled", "alone")
                plans[first].start(run_s=sending_s + 2)
                plans[second].start(run_s=sending_s + 2, offset=FRAME_S / 2)
                start = plans[second].t0 + args.warmup
                for meter in meters.values():
                    nursery.start_soon(meter.measure, start, start + args.seconds)
                await trio.sleep_until(start + args.seconds + 0.5)
                rows = (await _get_json(port_s, "/api/v1/subscribers"))["subscribers"]
                stalled_row = None if args.control else max(rows, key=lambda r: r["depth"])
    return (_result("alone", plans["alone"], received["alone"], meters["alone"], args, None),
            _result(_second(args), plans["stalled"], received["stalled"], meters["stalled"],
                    args, stalled_row))


def _second(args: argparse.Namespace) -> str:
    return "control" if args.control else "stalled"


def _paired_p99_ratios(alone: Result, stalled: Result) -> list[float]:
    """p99 of the stalled server's readers over that of the alone one's, for each second
    of the window: both loads ran in the same seconds, so slow swings of the machine's
    load cancel out in each pair."""
    out = []
    for sec in np.intersect1d(alone.second, stalled.second):
        a = np.percentile(alone.latency_ms[alone.second == sec], 99)
        b = np.percentile(stalled.latency_ms[stalled.second == sec], 99)
        out.append(float(b / a))
    return out


def _describe(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    lanes = row["lanes"]
    return (f"{row['state']}, depth {row['depth']}/{row['capacity']}, HIGH "
            f"{lanes['high']['depth']}/{lanes['high']['capacity']}, sent {row['sent']}, "
            f"dropped {row['dropped']}")


async def _main(args: argparse.Namespace) -> list[Result]:
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for rep in range(args.repeat):
        for r in await _run(args, rep):
            print(f"  {r.mode}: p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} max {r.max_ms:.1f} ms, "
                  f"{r.delivered_per_s:.0f} msg/s, lost {r.lost}, server CPU "
                  f"{r.server_cpu:.0f} %, harness {r.harness_cpu:.0f} %, other "
                  f"{r.other_cpu:.0f} %; stalled: "
                  f"{_describe(r.stalled)}", flush=True)
            results.append(r)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_isolation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2, help="per server")
    p.add_argument("--subscribers", type=int, default=100, help="including the stalled one")
    p.add_argument("--buffer", type=int, default=500, help="buffers.subscriber of the server")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring window (s)")
    p.add_argument("--warmup", type=float, default=12.0, help="excluded from the figures (s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("loadtests/out/isolation"))
    p.add_argument("--control", action="store_true",
                   help="A/A control: the second server gets no stalled subscriber either, "
                   "so its ratios show the noise floor")
    args = p.parse_args(argv)
    results = trio.run(_main, args)
    print("\n| run | mode | readers' p50 ms | p99 ms | max ms | msg/s | lost | server CPU % "
          "| harness CPU % | other CPU % | the stalled subscriber at the window's end |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for k, r in enumerate(results):
        print(f"| {k // 2 + 1} | {r.mode} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} | "
              f"{r.delivered_per_s:.0f} | {r.lost} | {r.server_cpu:.0f} | "
              f"{r.harness_cpu:.0f} | {r.other_cpu:.0f} | "
              f"{_describe(r.stalled)} |")
    ratios, paired = [], []
    for k in range(0, len(results), 2):
        alone, stalled = sorted(results[k:k + 2], key=lambda r: r.mode)
        ratios.append(stalled.p99_ms / alone.p99_ms)
        paired += _paired_p99_ratios(alone, stalled)
        print(f"run {k // 2 + 1}: p99 {_second(args)} / alone = {ratios[-1]:.2f}x, "
              f"p50 {stalled.p50_ms / alone.p50_ms:.2f}x")
    second = _second(args)
    q25, q50, q75 = np.percentile(paired, [25, 50, 75])
    print(f"p99 {second} / alone second by second ({len(paired)} paired seconds): median "
          f"{q50:.2f}x, interquartile {q25:.2f}x-{q75:.2f}x")
    pooled = {mode: np.percentile(np.concatenate([r.latency_ms for r in results
                                                  if r.mode == mode]), [50, 99])
              for mode in ("alone", second)}
    print(f"median of the runs' p99 ratios: {statistics.median(ratios):.2f}x; all runs pooled: "
          f"p50 {pooled[second][0]:.2f} / {pooled['alone'][0]:.2f} ms "
          f"({pooled[second][0] / pooled['alone'][0]:.2f}x), p99 {pooled[second][1]:.2f}"
          f" / {pooled['alone'][1]:.2f} ms ({pooled[second][1] / pooled['alone'][1]:.2f}x)")


if __name__ == "__main__":
    main()
