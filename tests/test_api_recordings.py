"""Recordings over HTTP against a real server: a deletion racing a read is a 404."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
import pytest
import trio
from httpclient import request
from test_api_bodies import server as server  # the same server

from vital_actors.graph import Server


async def test_data_of_a_recording_deleted_while_it_is_read_is_404(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.port or 0
    buf = io.BytesIO()
    np.save(buf, np.arange(2000, dtype=np.int16).reshape(-1, 1))
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360",
                                    raw=buf.getvalue())
    rec = json.loads(body)["id"]
    entered, release = threading.Event(), threading.Event()
    real = server.loader.read

    def paused(*args: Any, **kwargs: Any) -> Any:  # the worker thread of GET …/data
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(server.loader, "read", paused)
    got: list[tuple[int, bytes, dict[str, str]]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _into(got, request(port, "GET",
                                                      f"/api/v1/recordings/{rec}/data")))
        assert await trio.to_thread.run_sync(entered.wait, 10)
        assert (await request(port, "DELETE", f"/api/v1/recordings/{rec}"))[0] == 204
        release.set()
    status, body, _ = got[0]
    assert status == 404 and rec in json.loads(body)["error"], body


async def _into(out: list[Any], coroutine: Any) -> None:
    out.append(await coroutine)
