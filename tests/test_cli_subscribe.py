"""``vital-actors subscribe``: the live summary per stream, across a server restart."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

import protocol as P
from vital_actors.cli import _show
from vital_actors.clients import StreamSummary, run_summary
from vital_actors.graph import Server
from vital_actors.sdk import Backoff, DeviceClient
from vital_actors.settings import load_settings
from vital_actors.sources import load_record

Seen = dict[str, tuple[int, bool]]  # per stream: (messages in the interval, connected)


async def _until(seen: list[Seen], want: Callable[[Seen], bool]) -> None:
    """Wait until the last summary shown satisfies *want*."""
    with trio.fail_after(20):
        while not (seen and want(seen[-1])):  # noqa: ASYNC110
            await trio.sleep(0.05)  # the summary's own ticks: real time, real sockets


async def _serve(port: int, archive: Path, *, task_status: trio.TaskStatus[Server]
                 = trio.TASK_STATUS_IGNORED) -> None:
    server = Server(load_settings(server={"port": port}, archive={"dir": archive}))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(server)


async def test_the_summary_counts_a_stream_reconnects_after_a_restart_and_counts_again(
        mitdb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = load_record(mitdb / "101", stop=360 * 60)
    seen: list[Seen] = []

    def show(table: dict[str, StreamSummary], interval: float) -> None:
        seen.append({k: (row.messages, row.connected) for k, row in table.items()})
        _show(table, interval)  # what the command prints

    hello = P.Hello("d1", rec.fs, rec.channels, "int16", rec.gain,
                    tuple(float(b) for b in rec.baseline))
    async with trio.open_nursery() as outer:
        first = trio.CancelScope()

        async def serve_first(*, task_status: trio.TaskStatus[Server]) -> None:
            with first:
                await _serve(0, tmp_path, task_status=task_status)

        server = await outer.start(serve_first)
        port = server.port
        url = f"ws://127.0.0.1:{port}"
        outer.start_soon(partial(run_summary, url, interval=0.1, show=show,
                                 backoff=Backoff(initial=0.05, maximum=0.2)))
        device = DeviceClient(url, hello, backoff=Backoff(initial=0.05, maximum=0.2))
        await outer.start(device.run)
        for start in range(0, 360 * 20, 36):  # 100-ms frames, 2 s of them
            await device.send(rec.samples[start:start + 36])
        await _until(seen, lambda s: s.get("d1", (0, False))[0] > 0)

        first.cancel()  # the server goes away ...
        await _until(seen, lambda s: s.get("d1") == (0, False))
        assert "connection lost: reconnecting" in capsys.readouterr().out

        await outer.start(_serve, port, tmp_path)  # ... and comes back on its port
        for start in range(360 * 20, 360 * 40, 36):
            await device.send(rec.samples[start:start + 36])
        await _until(seen, lambda s: s.get("d1", (0, False))[0] > 0
                     and s["d1"][1])
        outer.cancel_scope.cancel()
