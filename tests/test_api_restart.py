"""When the HTTP API's hypercorn dies (a race inside it, see Server._serve_api), the
server starts it again: HTTP answers again on the same port, the door answers 503 in
between, and a device streaming over WebSocket the whole time never notices."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from httpclient import get_json, request
from hypercorn.trio import serve as hypercorn_serve
from test_e2e import hello, send_all_frames

import protocol as P
import vital_actors.graph as graph
from vital_actors.clients import connect
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import frame_sizes, load_record


async def test_the_http_api_is_started_again_after_hypercorn_dies(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, mitdb: Path) -> None:
    real = hypercorn_serve
    die, calls = trio.Event(), []

    async def dies_once(app: Any, config: Any, *, shutdown_trigger: Any) -> None:
        """The real hypercorn; the first one dies as the race makes it die."""
        calls.append(app)
        if len(calls) > 1:
            return await real(app, config, shutdown_trigger=shutdown_trigger)
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(real, app, config, shutdown_trigger=shutdown_trigger))
            await die.wait()
            raise trio.BusyResourceError("another task is currently sending data on this "
                                         "SocketStream")

    monkeypatch.setattr(graph, "hypercorn_serve", dies_once)
    server = Server(load_settings(server={"port": 0}))
    await nursery.start(server.run)
    port = server.port or 0
    assert (await request(port, "GET", "/healthz"))[0] == 200

    rec = load_record(mitdb / "101", stop=20 * 360)
    sizes = list(frame_sizes(len(rec.samples), rng=np.random.default_rng(0), max_frame=360))
    half = len(sizes) // 2
    async with connect(f"ws://127.0.0.1:{port}", P.INGEST_PATH) as dev:
        await hello(dev, "101")
        upto = sum(sizes[:half])
        await send_all_frames(dev, rec.samples[:upto], sizes[:half])
        die.set()
        statuses: list[int] = []
        with trio.fail_after(10):
            while not statuses or statuses[-1] != 200:
                statuses.append((await request(port, "GET", "/healthz"))[0])
                if statuses[-1] != 200:
                    await trio.sleep(0.01)  # hypercorn binding its socket again
        assert set(statuses) <= {200, 503}, statuses
        assert len(calls) == 2 and server.stats.totals.api_restarts == 1
        # the device kept its connection: the rest of its frames, in sequence, acked
        await send_all_frames(dev, rec.samples[upto:], sizes[half:], first=half)
    info = await get_json(port, "/api/v1/streams/101")
    assert info["samples_received"] == len(rec.samples) and info["last_seq"] == len(sizes) - 1
