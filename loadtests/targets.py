"""The servers under load, each in its own process, and what they cost.

A target is a command line with a ``{port}`` to fill in. :func:`running` starts it on
a free loopback port, waits until the port accepts connections and, on the way out,
stops it with SIGINT (the clean stop of both servers), then SIGKILL if it lingers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import psutil  # type: ignore[import-untyped]  # no stubs in the project's deps
import trio

__all__ = ["TARGETS", "Meter", "Target", "TargetError", "Usage", "free_port", "get_json", "http",
           "running"]

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
#: Interval between RSS samples while measuring.
RSS_EVERY_S = 1.0


class TargetError(Exception):
    """The server process did not come up (its log says why)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A server to measure, and the topic kind its subscribers follow."""

    name: str
    argv: tuple[str, ...]
    kind: str = "raw"
    has_api: bool = True  # serves GET /api/v1/stats (ours does, the relay does not)
    needs_redis: bool = False  # the harness starts a redis-server and fills in {redis}

    def command(self, port: int, redis: str = "") -> list[str]:
        return [a.format(port=port, redis=redis) for a in self.argv]


#: Settings of our server under load: the per-address and stream caps protect a
#: deployment from one misbehaving host, but here every client is on 127.0.0.1.
LOAD_ENV = {
    "VITAL_LIMITS__MAX_CONNECTIONS_PER_IP": "1000000",
    "VITAL_LIMITS__MAX_STREAMS": "1000000",
}


def _vital_actors() -> tuple[str, ...]:
    """The ``vital-actors`` script of this interpreter (not a pyenv shim, so that the
    pid we measure is the server's own)."""
    script = Path(sys.executable).parent / "vital-actors"
    return (str(script),) if script.is_file() else (sys.executable, "-m", "vital_actors.cli")


_SERVE = (*_vital_actors(), "serve", "--host", HOST, "--port", "{port}")
RELAY = Target("relay", (sys.executable, "-m", "loadtests.relay", "--host", HOST,
                         "--port", "{port}", "--max-seconds", "900"), has_api=False)
TARGETS: dict[str, Target] = {
    "relay": RELAY,
    "vital-raw": Target("vital-raw", _SERVE, "raw"),
    "vital-filtered": Target("vital-filtered", _SERVE, "filtered"),
    # Beyond one process (issue 9): one server on the Redis bus, and two workers sharing
    # the port over the bus (the supervisor's whole process tree is measured).
    "vital-1w": Target("vital-1w", (*_SERVE, "--bus", "{redis}"), "raw", needs_redis=True),
    "vital-2w": Target("vital-2w", (*_SERVE, "--workers", "2", "--bus", "{redis}"), "raw",
                       needs_redis=True),
}


async def http(port: int, method: str, path: str, body: bytes = b"",
               content_type: str = "application/json") -> tuple[int, Any]:
    """One HTTP/1.1 request to the target's API (h11); (status, decoded JSON body)."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", HOST), ("content-length", str(len(body))),
               ("content-type", content_type)]
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=path,
                                                    headers=headers))
                              + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, data = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return status, json.loads(data) if data else None


async def get_json(port: int, path: str) -> Any:
    """GET *path* from the target's HTTP API; its JSON (TargetError unless 200)."""
    status, body = await http(port, "GET", path)
    if status != 200:
        raise TargetError(f"GET {path}: HTTP {status}")
    return body


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def _wait_ready(process: trio.Process, port: int, log: Path) -> None:
    with trio.move_on_after(READY_TIMEOUT_S):
        while process.poll() is None:
            try:
                probe = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.1)
                continue
            await probe.aclose()
            return
    raise TargetError(f"server on port {port} not ready (exit code {process.returncode}); "
                      f"see {log}")


@asynccontextmanager
async def running(target: Target, log: Path) -> AsyncIterator[tuple[psutil.Process, int]]:
    """Run *target* on a free port for the block: yields (its process, the port)."""
    port = free_port()
    async with _redis(target, log) as redis:
        with log.open("ab") as out:
            process = await trio.lowlevel.open_process(target.command(port, redis),
                                                       stdout=out, stderr=out,
                                                       env={**os.environ, **LOAD_ENV})
            try:
                await _wait_ready(process, port, log)
                yield psutil.Process(process.pid), port
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)


@asynccontextmanager
async def _redis(target: Target, log: Path) -> AsyncIterator[str]:
    """A redis-server of the run's own on loopback, if *target* needs one: its URL."""
    if not target.needs_redis:
        yield ""
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise TargetError(f"{target.name} needs redis-server (apt-get install redis-server)")
    port = free_port()
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            stdout=out, stderr=out)
    try:
        yield f"redis://{HOST}:{port}"
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def _stop(process: trio.Process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(STOP_TIMEOUT_S):
            await process.wait()
    if process.poll() is None:
        print(f"  pid {process.pid} still running {STOP_TIMEOUT_S} s after SIGINT: killing it",
              file=sys.stderr)
        process.kill()
        await process.wait()


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU (% of one core, averaged over the window) and peak RSS of one process."""

    cpu_percent: float
    rss_mb: float


#: How long a process tree is reused: finding children reads every /proc/<pid>/stat
#: (about 2.5 ms), and the meters ask several times a second.
TREE_EVERY_S = 5.0
_trees: dict[psutil.Process, tuple[float, list[psutil.Process]]] = {}  # by pid and start


def _tree(p: psutil.Process) -> list[psutil.Process]:
    """*p* and its children (the workers of ``serve --workers``), as found at most
    :data:`TREE_EVERY_S` ago; the harness itself alone (its children are the servers
    it measures)."""
    if p.pid == os.getpid():
        return [p]
    now = time.monotonic()
    found, tree = _trees.get(p, (-TREE_EVERY_S, [p]))
    if now - found >= TREE_EVERY_S:
        try:
            tree = [p, *p.children(recursive=True)]
        except psutil.Error:
            tree = [p]
        _trees[p] = (now, tree)
    return tree


def _cpu_s(p: psutil.Process) -> float:
    """CPU seconds of *p* and its children."""
    total = 0.0
    for q in _tree(p):
        try:
            t = q.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _rss(p: psutil.Process) -> int:
    """Resident bytes of *p* and its children."""
    total = 0
    for q in _tree(p):
        try:
            total += q.memory_info().rss
        except psutil.Error:
            continue
    return total


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy, summed over its cores."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class Meter:
    """Measures the server's and this process's usage between two trio times, and the
    whole machine's (``machine``: the other tenants' load shows as the difference)."""

    def __init__(self, server: psutil.Process) -> None:
        self.processes = {"server": server, "harness": psutil.Process()}
        self.usage: dict[str, Usage] = {}
        self.series: dict[str, list[float]] = {"t": [], "server_cpu": [], "rss_mb": []}

    async def track(self, t0: float, stop: float) -> None:
        """Every second from *t0* (trio time) until *stop*: the server's CPU % over that
        second and its RSS, into :attr:`series` (t in seconds since *t0*)."""
        server = self.processes["server"]
        await trio.sleep_until(t0)
        last, last_t = _cpu_s(server), trio.current_time()
        tick = 0
        while last_t < stop:
            tick += 1
            await trio.sleep_until(t0 + tick * RSS_EVERY_S)
            try:
                cpu, rss = _cpu_s(server), _rss(server) / 2**20
            except psutil.Error:  # the server is gone
                return
            now = trio.current_time()
            self.series["t"].append(now - t0)
            self.series["server_cpu"].append(100 * (cpu - last) / (now - last_t))
            self.series["rss_mb"].append(rss)
            last, last_t = cpu, now

    async def measure(self, start: float, stop: float) -> None:
        """Fill :attr:`usage`: ``server``, ``harness``, ``machine`` (CPU averaged over the
        window) and ``other_peak`` (the other tenants' CPU in their busiest second)."""
        await trio.sleep_until(start)
        cpu0 = {k: _cpu_s(p) for k, p in self.processes.items()}
        busy0, wall0 = _busy_s(), trio.current_time()
        peak = dict.fromkeys(self.processes, 0)
        last, other_peak = (busy0, sum(cpu0.values()), wall0), 0.0
        for tick in range(int((stop - start) / RSS_EVERY_S) + 1):
            for k, p in self.processes.items():
                peak[k] = max(peak[k], _rss(p))
            await trio.sleep_until(min(stop, start + (tick + 1) * RSS_EVERY_S))
            now = (_busy_s(), sum(_cpu_s(p) for p in self.processes.values()),
                   trio.current_time())
            if now[2] - last[2] > RSS_EVERY_S / 2:
                other = (now[0] - last[0]) - (now[1] - last[1])
                other_peak = max(other_peak, 100 * other / (now[2] - last[2]))
            last = now
        wall = trio.current_time() - wall0
        self.usage = {k: Usage(100 * (_cpu_s(p) - cpu0[k]) / wall, peak[k] / 2**20)
                      for k, p in self.processes.items()}
        self.usage["machine"] = Usage(100 * (_busy_s() - busy0) / wall, 0.0)
        self.usage["other_peak"] = Usage(other_peak, 0.0)
