"""Resumable uploads against a real server: bad requests and races get a clear 4xx and
leave nothing behind."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import h11
import numpy as np
import pytest
import trio
from httpclient import read_response, request

from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.store.resumable import PatchWriter


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


async def test_a_patch_whose_upload_is_deleted_meanwhile_is_told_404(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.port or 0
    wrote = threading.Event()

    def write(writer: PatchWriter, data: bytes) -> None:
        real_write(writer, data)
        wrote.set()

    real_write = PatchWriter.write
    monkeypatch.setattr(PatchWriter, "write", write)
    data = _npy(20_000)
    status, body, headers = await _create(port, "fs=360", len(data))
    assert status == 201, body
    where = headers["location"]
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="PATCH", target=where, headers=[
            ("host", "x"), ("content-length", str(len(data))), ("upload-offset", "0")])))
        await stream.send_all(conn.send(h11.Data(data=data[:len(data) // 2])))
        assert await trio.to_thread.run_sync(wrote.wait, 10)  # its writer is open
        status, _, _ = await request(port, "DELETE", where)
        assert status == 204
        await stream.send_all(conn.send(h11.Data(data=data[len(data) // 2:]))
                              + conn.send(h11.EndOfMessage()))
        with trio.fail_after(10):
            status, body, _ = await read_response(conn, stream)
    assert status == 404 and "deleted" in json.loads(body)["error"], body
    assert list(server.store.uploads.iterdir()) == []
    assert [m.id for m in server.store] == []
    assert (await request(port, "GET", where))[0] == 404


async def test_a_body_past_the_length_is_413_and_keeps_the_bytes_within_it(
        server: Server) -> None:
    port = server.port or 0
    data = _npy(20_000)
    status, body, headers = await _create(port, "fs=360", len(data))
    assert status == 201, body
    where = headers["location"]
    head = (f"PATCH {where} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            f"content-length: {len(data) + 5}\r\nupload-offset: 0\r\n\r\n")
    status, body, headers = await request(port, "PATCH", where,
                                          head=head.encode() + data + b"extra")
    assert status == 413 and "past Upload-Length" in json.loads(body)["error"], body
    status, body, headers = await request(port, "GET", where)
    assert int(headers["upload-offset"]) == len(data), body  # docs/protocol.md §12
    head = (f"PATCH {where} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            f"content-length: 0\r\nupload-offset: {len(data)}\r\n\r\n")
    status, body, _ = await request(port, "PATCH", where, head=head.encode())
    assert status == 201 and json.loads(body)["frames"] == 20_000, body
