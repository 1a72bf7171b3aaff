"""Resumable uploads against a real server: bad requests and races get a clear 4xx and
leave nothing behind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import trio
from httpclient import request

from vital_actors.graph import Server
from vital_actors.settings import load_settings


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store",
                                                            "write_chunk_bytes": 4096}))
    await nursery.start(srv.run)
    return srv


def _npy(frames: int) -> bytes:
    x = np.cumsum(np.random.default_rng(0).integers(-20, 21, (frames, 2)), axis=0)
    buf = io.BytesIO()
    np.save(buf, x.astype(np.int16))
    return buf.getvalue()


async def _create(port: int, query: str, length: int) -> tuple[int, bytes, dict[str, str]]:
    head = (f"POST /api/v1/uploads?{query} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            f"content-length: 0\r\nupload-length: {length}\r\n\r\n")
    return await request(port, "POST", "/api/v1/uploads", head=head.encode())


async def test_creation_refuses_a_format_the_server_does_not_read(server: Server) -> None:
    port = server.port or 0
    status, body, _ = await _create(port, "fs=360&format=xls", 1000)
    assert status == 415 and "xls" in json.loads(body)["error"], body
    assert list(server.store.uploads.iterdir()) == []
