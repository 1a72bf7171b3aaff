"""Jobs over HTTP against a real server: bad bodies and races are refused or handled
without losing or corrupting anything."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from httpclient import request

from vital_actors.graph import Server
from vital_actors.processing import Processing
from vital_actors.settings import load_settings


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store"},
                               jobs={"chunk_frames": 1024}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


async def _recording(port: int, frames: int = 5000) -> str:
    x = np.cumsum(np.random.default_rng(0).integers(-20, 21, (frames, 1)), axis=0)
    buf = io.BytesIO()
    np.save(buf, x.astype(np.int16))
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360",
                                    raw=buf.getvalue())
    assert status == 201, body
    return str(json.loads(body)["id"])


async def _submit(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = await request(port, "POST", "/api/v1/jobs", spec)
    assert status == 201, body
    return json.loads(body)  # type: ignore[no-any-return]


async def test_a_job_cancelled_while_it_starts_stays_cancelled(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.port or 0
    rec = await _recording(port)
    entered, release = threading.Event(), threading.Event()

    def slow_start(*args: Any, **kwargs: Any) -> Any:  # the worker thread opening the job
        entered.set()
        release.wait(10)
        return Processing(*args, **kwargs)

    monkeypatch.setattr("vital_actors.jobs.Processing", slow_start)
    first = await _submit(port, {"recording": rec})
    assert await trio.to_thread.run_sync(entered.wait, 10)
    status, body, _ = await request(port, "POST", f"/api/v1/jobs/{first['id']}/cancel")
    release.set()
    assert status == 200 and json.loads(body)["state"] in ("running", "cancelled"), body
    second = await _submit(port, {"recording": rec})  # runs after the first is let go
    with trio.fail_after(20):
        await server.jobs.wait(second["id"], lambda j: not j.active)
    got = (await server.jobs.get(first["id"]))
    assert got is not None and got.state == "cancelled" and got.result is None
    assert not (server.store.jobs / first["id"] / "out").exists()
    results = [m.id for m in server.store if m.source_format == "job"]
    assert results == [(await server.jobs.get(second["id"])).result]  # type: ignore[union-attr]


async def test_a_job_with_an_infinite_filter_number_is_refused(server: Server) -> None:
    # Python's json writes it (Infinity); job.json kept it as null, which no restart
    # could read back: the job vanished.
    port = server.port or 0
    rec = await _recording(port)
    status, body, _ = await request(port, "POST", "/api/v1/jobs", {
        "recording": rec, "filter": {"notch_hz": 60, "notch_q": float("inf")}})
    assert status == 422 and "notch_q" in body.decode(), body
    assert (await server.jobs.all_jobs()) == []
    assert list(server.store.jobs.iterdir()) == []


async def test_a_job_whose_result_cannot_be_committed_fails_and_the_next_one_runs(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.port or 0
    rec = await _recording(port)
    real = Processing.commit
    calls: list[int] = []

    def full_disk(self: Processing, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(Processing, "commit", full_disk)
    first = await _submit(port, {"recording": rec})
    second = await _submit(port, {"recording": rec})
    with trio.fail_after(20):
        await server.jobs.wait(second["id"], lambda j: not j.active)
    got = await server.jobs.get(first["id"])
    assert got is not None and got.state == "failed" and got.result is None
    assert got.error is not None and "No space left" in got.error
    done = await server.jobs.get(second["id"])
    assert done is not None and done.state == "done" and done.result is not None
    assert (await request(port, "GET", "/healthz"))[0] == 200
