"""``serve --workers N``: N server processes on one port, joined by the Redis bus.

One Python process uses one core. The supervisor starts N ordinary ``serve`` processes
with SO_REUSEPORT on the same host and port (the kernel spreads new connections over
them) and the same bus URL (so a subscriber on any worker receives every stream, and a
device whose worker died reconnects to another and resumes). It restarts a worker that
dies, and on SIGINT/SIGTERM passes the signal on and waits for every worker's clean stop.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import trio

__all__ = ["run_workers", "worker_env"]

#: A worker that dies is restarted after this long (doubling while it keeps dying fast).
RESTART_AFTER_S = 0.5
STOP_PATIENCE_S = 10.0


def worker_env(i: int, *, bus_url: str, node_prefix: str) -> dict[str, str]:
    """The environment that makes an ordinary ``serve`` process worker *i*."""
    return {**os.environ, "VITAL_SERVER__REUSE_PORT": "true", "VITAL_BUS__URL": bus_url,
            "VITAL_BUS__NODE": f"{node_prefix}-w{i}"}


async def _keep(argv: Sequence[str], env: dict[str, str], name: str,
                stopping: trio.Event, processes: dict[str, trio.Process]) -> None:
    """Run one worker until *stopping*; restart it whenever it dies before that."""
    delay = RESTART_AFTER_S
    while not stopping.is_set():
        process = await trio.lowlevel.open_process(list(argv), env=env)
        processes[name] = process
        started = trio.current_time()
        await process.wait()
        if stopping.is_set():
            return
        print(f"worker {name} exited with {process.returncode}; restarting", file=sys.stderr,
              flush=True)
        delay = RESTART_AFTER_S if trio.current_time() - started > 10 else min(delay * 2, 10)
        await trio.sleep(delay)


async def run_workers(count: int, argv: Sequence[str], *, bus_url: str,
                      node_prefix: str) -> None:
    """Supervise *count* workers running *argv* until SIGINT or SIGTERM."""
    stopping = trio.Event()
    processes: dict[str, trio.Process] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                env = worker_env(i, bus_url=bus_url, node_prefix=node_prefix)
                nursery.start_soon(_keep, argv, env, f"w{i}", stopping, processes)
            print(f"{count} workers on one port, bus {bus_url}", flush=True)
            async for signum in signals:
                stopping.set()
                for process in processes.values():
                    if process.returncode is None:
                        process.send_signal(signum)
                break
            with trio.move_on_after(STOP_PATIENCE_S) as late:
                for process in processes.values():
                    await process.wait()
            if late.cancelled_caught:
                for process in processes.values():
                    if process.returncode is None:
                        process.kill()
