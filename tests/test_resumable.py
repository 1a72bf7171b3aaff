"""Resumable uploads on real HTTP servers: a body cut mid-way continues from the bytes
the server stored; wrong offsets and checksums are refused and change nothing; the CLI's
client resumes by itself through connections cut at random and across a SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import signal
import zlib
from pathlib import Path
from typing import Any

import h11
import numpy as np
import pytest
import trio
from httpclient import get_json, read_response, request
from test_durability import free_port, start_server

from loadtests.proxy import killing_proxy
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.store.resumable import BusyError, Session
from vital_actors.uploader import upload_file

Array = np.ndarray[Any, Any]
QUERY = "fs=360&gain=200&channels=MLII,V1&name=x.npy"


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store"}))
    await nursery.start(srv.run)
    return srv


def _npy(frames: int, seed: int = 0) -> tuple[Array, bytes]:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.integers(-20, 21, (frames, 2)), axis=0).astype(np.int16)
    buf = io.BytesIO()
    np.save(buf, x)
    return x, buf.getvalue()


def _sha(data: bytes) -> str:
    return f"sha256 {hashlib.sha256(data).hexdigest()}"


async def _create(port: int, data: bytes, *, checksum: str | None = None) -> str:
    head = {"upload-length": str(len(data)), "upload-checksum": checksum or _sha(data)}
    status, body, headers = await _send(port, "POST", f"/api/v1/uploads?{QUERY}", b"", head)
    assert status == 201, body
    return headers["location"]


async def _send(port: int, method: str, path: str, data: bytes, head: dict[str, str]
                ) -> tuple[int, bytes, dict[str, str]]:
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=[
            ("host", "127.0.0.1"), ("connection", "close"),
            ("content-length", str(len(data))), *head.items()])))
        async with trio.open_nursery() as nursery:  # an early answer (409) cuts the body
            nursery.start_soon(_send_body, stream, conn, data)
            answer = await read_response(conn, stream)
            nursery.cancel_scope.cancel()
    return answer


async def _send_body(stream: trio.SocketStream, conn: h11.Connection, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))


async def _patch(port: int, where: str, data: bytes, offset: int,
                 checksum: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    head = {"upload-offset": str(offset)}
    if checksum is not None:
        head["upload-checksum"] = checksum
    return await _send(port, "PATCH", where, data[offset:], head)


async def _cut_patch(port: int, where: str, data: bytes, offset: int, send: int) -> None:
    """A PATCH that declares the rest of *data* but sends *send* bytes, then drops."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    head = (f"PATCH {where} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data) - offset}\r\n"
            f"upload-offset: {offset}\r\n\r\n").encode()
    await stream.send_all(head + data[offset:offset + send])
    await stream.aclose()


async def _offset(port: int, where: str) -> int:
    status, _, headers = await request(port, "GET", where)
    assert status == 200
    return int(headers["upload-offset"])


async def _finish_from(port: int, where: str, data: bytes, offset: int
                       ) -> tuple[int, dict[str, Any]]:
    """PATCH the rest from *offset*, taking the server's word (409) for where it is."""
    while True:
        status, body, headers = await _patch(port, where, data, offset)
        if status != 409:
            return status, json.loads(body) if body else {}
        assert int(headers["upload-offset"]) >= offset
        offset = int(headers["upload-offset"])


async def test_a_cut_body_continues_from_the_stored_bytes(server: Server) -> None:
    port = server.port or 0
    x, data = _npy(3_000_000)  # 12 MB
    where = await _create(port, data)
    await _cut_patch(port, where, data, 0, 5_000_000)
    # The server finishes the cut PATCH (fsync, offset) in its own time: a resuming client
    # either sees the new offset or is told it (409) when its PATCH takes the upload over.
    status, meta = await _finish_from(port, where, data, await _offset(port, where))
    assert status == 201, meta
    got = server.store.reader(meta["id"]).read(0, meta["frames"])
    assert got.tobytes() == x.tobytes()
    assert meta["source_sha256"] == hashlib.sha256(data).hexdigest()
    upload = await get_json(port, where)  # for a client that lost the answer: the answer
    assert (upload["offset"], upload["status"], upload["answer"]) == (len(data), 201, meta)
    assert [p.name for p in (server.store.uploads / upload["id"]).iterdir()] == \
        ["upload.json"]  # the bytes are gone
    status, again = await _finish_from(port, where, data, len(data))  # PATCH again: same
    assert (status, again) == (201, meta)


async def test_the_stored_bytes_after_a_cut_are_a_prefix_of_the_source(
        server: Server) -> None:
    port = server.port or 0
    _, data = _npy(1_000_000)
    where = await _create(port, data)
    await _cut_patch(port, where, data, 0, 3_000_001)
    status, body, headers = await _patch(port, where, data, 0)  # takes over, then: wrong
    assert status == 409, body
    kept = int(headers["upload-offset"])
    assert 0 < kept <= 3_000_001 and f"continue from {kept}" in json.loads(body)["error"]
    upload_id = where.rsplit("/", 1)[1]
    stored = (server.store.uploads / upload_id / "body").read_bytes()
    assert stored == data[:kept]


async def test_a_patch_taken_over_while_its_client_still_sends_is_told_409(
        server: Server) -> None:
    port = server.port or 0
    x, data = _npy(3_000_000)  # 12 MB: 9 MB before the takeover is one fsync (8 MB)
    where = await _create(port, data)
    conn = h11.Connection(h11.CLIENT)
    old = await trio.open_tcp_stream("127.0.0.1", port)
    async with old:
        await old.send_all(conn.send(h11.Request(method="PATCH", target=where, headers=[
            ("host", "127.0.0.1"), ("connection", "close"),
            ("content-length", str(len(data))), ("upload-offset", "0")])))
        await old.send_all(conn.send(h11.Data(data=data[:9_000_000])))
        for _ in range(2000):  # the server's fsync, in its own time
            if (stored := await _offset(port, where)) > 0:
                break
            await trio.sleep(0.01)
        status, meta = await _finish_from(port, where, data, stored)  # takes over
        assert status == 201, meta
        await old.send_all(conn.send(h11.Data(data=data[9_000_000:])) +
                           conn.send(h11.EndOfMessage()))
        told, body, headers = await read_response(conn, old)
    assert told == 409 and "taken over" in json.loads(body)["error"], body
    assert headers["upload-offset"] == str(len(data))
    got = server.store.reader(meta["id"]).read(0, meta["frames"])
    assert got.tobytes() == x.tobytes()


async def test_a_wrong_offset_is_409_and_changes_nothing(server: Server) -> None:
    port = server.port or 0
    _, data = _npy(200_000)
    where = await _create(port, data)
    status, _, headers = await _patch(port, where, data, 0)
    assert status == 201  # one PATCH, the whole body: the recording
    where = await _create(port, data)
    status, _, headers = await _send(port, "PATCH", where, data[:1000], {"upload-offset": "0"})
    assert status == 204 and headers["upload-offset"] == "1000"
    for wrong in (0, 999, 1001, 10**9):
        status, body, headers = await _send(port, "PATCH", where, data[wrong:wrong + 10],
                                            {"upload-offset": str(wrong)})
        assert status == 409 and headers["upload-offset"] == "1000", body
    status, body, _ = await _send(port, "PATCH", where, b"x", {"upload-offset": "-1"})
    assert status == 400 and b"Upload-Offset" in body
    assert await _offset(port, where) == 1000
    status, body, headers = await request(port, "HEAD", where)
    assert (status, body, headers["upload-offset"]) == (200, b"", "1000")
    status, meta = await _finish_from(port, where, data, 1000)
    assert status == 201 and meta["frames"] == 200_000


async def test_a_patch_with_a_wrong_checksum_is_refused_and_dropped(server: Server) -> None:
    port = server.port or 0
    x, data = _npy(200_000)
    where = await _create(port, data)
    part = data[:50_000]
    status, body, _ = await _patch(port, where, part, 0, checksum=_sha(b"not it"))
    assert status == 460 and b"checksum mismatch" in body
    assert await _offset(port, where) == 0
    status, body, _ = await _send(port, "PATCH", where, part,
                                  {"upload-offset": "0", "upload-checksum": "md5 abc"})
    assert status == 400 and b"sha256" in body
    status, _, headers = await _patch(port, where, part, 0, checksum=_sha(part))
    assert status == 204 and headers["upload-offset"] == "50000"
    status, meta = await _finish_from(port, where, data, 50_000)
    assert status == 201
    assert server.store.reader(meta["id"]).read(0, 1 << 30).tobytes() == x.tobytes()


async def test_a_wrong_whole_file_checksum_leaves_no_recording(server: Server) -> None:
    port = server.port or 0
    _, data = _npy(100_000)
    where = await _create(port, data, checksum=_sha(data + b"!"))
    status, body, _ = await _patch(port, where, data, 0)
    assert status == 460 and b"the whole upload" in body, body
    assert (await get_json(port, "/api/v1/recordings"))["recordings"] == []
    assert not any(server.store.partial.iterdir())
    upload = await get_json(port, where)
    assert upload["status"] == 460 and "the whole upload" in upload["answer"]["error"]


async def test_creation_refuses_bad_lengths_and_parameters(server: Server) -> None:
    port = server.port or 0
    for head, status_wanted in [({}, 400), ({"upload-length": "x"}, 400),
                                ({"upload-length": str(10**12)}, 413),
                                ({"upload-length": "10", "upload-checksum": "sha1 00"}, 400)]:
        status, body, _ = await _send(port, "POST", f"/api/v1/uploads?{QUERY}", b"", head)
        assert status == status_wanted, (head, body)
    status, body, _ = await _send(port, "POST", "/api/v1/uploads?fs=abc", b"",
                                  {"upload-length": "10"})
    assert status == 400 and b"fs" in body
    status, _, _ = await _send(port, "PATCH", "/api/v1/uploads/up-0000000000", b"x",
                               {"upload-offset": "0"})
    assert status == 404
    assert not any(server.store.uploads.iterdir())


async def test_the_cli_client_resumes_through_connections_cut_at_random(
        server: Server, tmp_path: Path) -> None:
    x, data = _npy(4_000_000)  # 16 MB
    src = tmp_path / "x.npy"
    src.write_bytes(data)
    resumed: list[int] = []
    async with killing_proxy(server.port or 0, rng=random.Random(3),
                             every_s=(0.02, 0.08)) as (port, kills):
        status, meta = await upload_file(
            f"http://127.0.0.1:{port}", src, on_resume=resumed.append,
            query={"fs": "360", "gain": "200", "channels": "MLII,V1"})
    assert status == 201, meta
    assert server.store.reader(meta["id"]).read(0, 1 << 30).tobytes() == x.tobytes()
    assert kills and resumed and max(resumed) > 0  # cut, and went on from stored bytes


# --- SIGKILL mid-upload, restart, resume ---------------------------------------------------


async def test_an_upload_survives_sigkill_of_the_server(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_STORE__DIR", str(tmp_path / "store"))
    x, data = _npy(10_000_000)  # 40 MB
    first = 10_000_000
    port = free_port()
    proc = await start_server(port, tmp_path / "live")
    try:
        where = await _create(port, data)
        status, _, _ = await _send(port, "PATCH", where, data[:first], {"upload-offset": "0"})
        assert status == 204  # answered: durable
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # then a PATCH killed mid-way
        await stream.send_all((f"PATCH {where} HTTP/1.1\r\nhost: x\r\ncontent-length: "
                               f"{len(data) - first}\r\nupload-offset: {first}\r\n\r\n"
                               ).encode())
        for a in range(first, 30_000_000, 1 << 20):
            await stream.send_all(data[a:a + (1 << 20)])
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await stream.aclose()
    finally:
        if proc.returncode is None:
            proc.kill()
    proc = await start_server(port, tmp_path / "live")
    upload_id = where.rsplit("/", 1)[1]
    try:
        kept = await _offset(port, where)
        assert first <= kept <= 30_000_000  # at least what was acknowledged
        stored = (tmp_path / "store" / "uploads" / upload_id / "body").read_bytes()
        assert stored[:kept] == data[:kept]
        status, meta = await _finish_from(port, where, data, kept)
        assert status == 201, meta
        assert meta["frames"] == len(x)  # and the samples, by their CRC:
        assert meta["checksum"] == f"crc32:{zlib.crc32(x.tobytes()):08x}"
    finally:
        proc.terminate()
        await proc.wait()


def test_one_writer_at_a_time_across_processes(tmp_path: Path) -> None:
    session = Session.create(tmp_path, length=100, query="", content_type=None, sha256=None)
    first = session.writer(0, None)  # another worker on the same store.dir would see:
    with pytest.raises(BusyError) as refused:
        Session.open(tmp_path, session.state.id).writer(0, None)
    assert refused.value.status == 409 and refused.value.have == 0
    first.write(b"x" * 10)
    first.commit(whole=True)
    again = Session.open(tmp_path, session.state.id)
    assert again.state.offset == 10
    again.writer(10, None).abandon()
