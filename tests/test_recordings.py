"""Recordings end to end: a real server on 127.0.0.1, HTTP uploads (Content-Length and
chunked), views, raw data, replay into the live pipeline, jobs with progress."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
import trio
from httpclient import get_json, post_chunked, request

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import load_record

Array = np.ndarray[Any, Any]


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store",
                                                            "max_upload_bytes": 10 << 20},
                               jobs={"chunk_frames": 1024}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


def _npy(x: Array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _signal(n: int, channels: int = 2, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(-20, 21, (n, channels)), axis=0).astype(np.int16)


async def test_upload_both_ways_then_list_get_and_delete(server: Server) -> None:
    port = server.port or 0
    x = _signal(100_000)
    status, body, headers = await request(port, "POST", "/api/v1/recordings?fs=360&gain=200"
                                          "&channels=MLII,V1&name=a.npy", raw=_npy(x))
    assert status == 201, body
    first = json.loads(body)
    assert headers["location"] == f"/api/v1/recordings/{first['id']}"
    status, second = await post_chunked(port, "/api/v1/recordings?fs=360&format=npy", _npy(x))
    assert status == 201, second
    assert first["checksum"] == second["checksum"] and first["frames"] == len(x)
    listed = await get_json(port, "/api/v1/recordings")
    assert {r["id"] for r in listed["recordings"]} == {first["id"], second["id"]}
    got = await get_json(port, f"/api/v1/recordings/{first['id']}")
    assert (got["channels"], got["gain"], got["source_name"]) == (["MLII", "V1"],
                                                                  [200.0, 200.0], "a.npy")
    status, _, _ = await request(port, "DELETE", f"/api/v1/recordings/{first['id']}")
    assert status == 204
    status, _, _ = await request(port, "GET", f"/api/v1/recordings/{first['id']}")
    assert status == 404


async def test_mit_bih_record_uploads_as_a_wfdb_tar(server: Server, mitdb: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for ext in ("hea", "dat"):
            t.add(mitdb / f"101.{ext}", f"101.{ext}")
    status, meta = await post_chunked(server.port or 0, "/api/v1/recordings", buf.getvalue())
    assert status == 201, meta
    rec = load_record(mitdb / "101")
    assert meta["frames"] == len(rec.samples) and meta["fs"] == rec.fs
    got = server.store.reader(meta["id"]).read(0, meta["frames"])
    assert np.array_equal(got, rec.samples)


def _wfdb_zip(header: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("r.hea", header)
        z.writestr("r.dat", bytes(400))
    return buf.getvalue()


# The last four were 500s, found by fuzzing uploads (a header no recording can have).
@pytest.mark.parametrize(("path", "data", "status", "words"), [
    ("/api/v1/recordings?fs=1&format=edf", _npy(_signal(100)), 415, "mislabelled"),
    ("/api/v1/recordings?fs=1&format=xls", _npy(_signal(100)), 415, "unsupported format"),
    ("/api/v1/recordings?fs=1", _npy(_signal(1000))[:-10], 422, "truncated"),
    ("/api/v1/recordings", _npy(_signal(1000)), 400, "fs="),
    ("/api/v1/recordings?fs=1", None, 413, "limit"),
    ("/api/v1/recordings?fs=360", _npy(np.zeros((10, 0), np.int16)), 422, "no channels"),
    ("/api/v1/recordings?fs=nan", _npy(_signal(100)), 422, "sampling rate"),
    ("/api/v1/recordings", _wfdb_zip("r 1 0 10\nr.dat 16 200 16 0 0 0 0 x\n"), 422,
     "sampling rate"),
    ("/api/v1/recordings", _wfdb_zip("r 3 360 10\n"), 422, "no signal"),
    # rates a device could not say hello with (limits.min_fs .. max_fs: 1 .. 20,000 Hz)
    ("/api/v1/recordings?fs=1e-300", _npy(_signal(100)), 422, "outside the server's 1..20000"),
    ("/api/v1/recordings?fs=1e9", _npy(_signal(100)), 422, "outside the server's 1..20000"),
], ids=["mislabelled", "unknown-format", "truncated", "no-rate", "too-large", "no-channels",
        "nan-rate", "wfdb-zero-rate", "wfdb-no-signals", "tiny-rate", "huge-rate"])
async def test_bad_uploads_get_clear_errors_and_leave_nothing(
        server: Server, path: str, data: bytes | None, status: int, words: str) -> None:
    if data is None:  # only the head, announcing 11 MB: refused before any body is read
        head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {11 << 20}\r\n\r\n")
        got, body, _ = await request(server.port or 0, "POST", path, head=head.encode())
    else:
        got, body, _ = await request(server.port or 0, "POST", path, raw=data)
    assert got == status and words in json.loads(body)["error"], body
    assert (await get_json(server.port or 0, "/api/v1/recordings"))["recordings"] == []
    assert list(server.store.partial.iterdir()) == []
    assert (await get_json(server.port or 0, "/healthz"))["status"] == "ok"


async def test_views_and_raw_data(server: Server) -> None:
    port = server.port or 0
    x = _signal(300_000)
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360&gain=100",
                                    raw=_npy(x))
    rec = json.loads(body)["id"]
    v = await get_json(port, f"/api/v1/recordings/{rec}/view?points=500&channel=1")
    assert v["mode"] == "minmax" and v["level"] is not None and len(v["t"]) == 500
    assert min(v["min"]) == x[:, 1].min() / 100 and max(v["max"]) == x[:, 1].max() / 100
    v = await get_json(port, f"/api/v1/recordings/{rec}/view?start=1000&end=21000&points=100")
    assert v["mode"] == "minmax" and v["level"] == 0
    ref = x[1000:21000, 0]
    assert min(v["min"]) == ref.min() / 100 and max(v["max"]) == ref.max() / 100
    v = await get_json(port, f"/api/v1/recordings/{rec}/view?start=5&end=1005&points=400")
    assert v["mode"] == "lttb" and len(v["t"]) == 400 and v["t"][0] == 5
    assert np.allclose(v["y"], x[np.array(v["t"]), 0] / 100)
    status, body, _ = await request(port, "GET", f"/api/v1/recordings/{rec}/data?start=7&end=99")
    got = msgpack.unpackb(body)
    assert np.array_equal(np.frombuffer(got["data"], "<i2").reshape(-1, 2), x[7:99])
    head = (f"GET /api/v1/recordings/{rec}/data?start=100&end=250 HTTP/1.1\r\nhost: x\r\n"
            "accept: application/x-npy\r\nconnection: close\r\n\r\n")
    status, body, headers = await request(port, "GET", "/", head=head.encode())
    assert headers["content-type"] == "application/x-npy"
    assert np.array_equal(np.load(io.BytesIO(body)), x[100:250])
    status, body, _ = await request(port, "GET", f"/api/v1/recordings/{rec}/view?channel=9")
    assert status == 400
    for query, want in (("start=99999999999999999999", 0), ("start=-5&end=3", 3),
                        ("start=299990&end=10000000", 10), ("start=50&end=40", 0)):
        status, body, _ = await request(port, "GET", f"/api/v1/recordings/{rec}/data?{query}")
        assert status == 200 and msgpack.unpackb(body)["n"] == want, (query, body[:200])
    status, body, _ = await request(port, "GET", f"/api/v1/recordings/{rec}/data?start=x")
    assert status == 400 and b"start" in body


async def _subscribe(ws: Any, *topics: str) -> None:
    await ws.send_message(P.encode(P.Subscribe(topics)))
    while not (isinstance(msg := await receive(ws), P.Event) and msg.topic == "subscriptions"):
        pass


async def test_replay_at_speed_0_delivers_every_sample_exactly_once(server: Server) -> None:
    port = server.port or 0
    x = _signal(50_000)
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360", raw=_npy(x))
    rec = json.loads(body)["id"]
    async with connect(f"ws://127.0.0.1:{port}", P.SUBSCRIBE_PATH) as sub:
        await _subscribe(sub, "stream/rp/raw", "stream/rp/filtered")
        status, body, _ = await request(port, "POST", f"/api/v1/recordings/{rec}/replay",
                                        {"speed": 0, "stream": "rp"})
        assert status == 201, body
        raw: list[P.StreamSamples] = []
        filtered = 0
        with trio.fail_after(20):
            while filtered < len(x):
                msg = await receive(sub)
                if isinstance(msg, P.StreamSamples):
                    if msg.topic.endswith("raw"):
                        raw.append(msg)
                    else:
                        filtered += len(msg.data) // (2 * np.dtype(msg.dtype).itemsize)
    assert [m.seq for m in raw] == list(range(len(raw)))
    assert [m.t0 for m in raw] == [0, *np.cumsum([len(m.data) // 4 for m in raw])[:-1]]
    got = np.concatenate([np.frombuffer(m.data, "<i2").reshape(-1, 2) for m in raw])
    assert np.array_equal(got, x) and filtered == len(x)
    replays = (await get_json(port, "/api/v1/replays"))["replays"]
    assert replays[0]["frames_sent"] == len(x)


async def test_job_progress_on_its_topic_and_cancel_over_http(server: Server) -> None:
    port = server.port or 0
    x = _signal(400_000, 1)
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360", raw=_npy(x))
    rec = json.loads(body)["id"]
    status, body, _ = await request(port, "POST", "/api/v1/jobs",
                                    {"recording": rec, "priority": "high",
                                     "filter": {"low_hz": 1.0, "high_hz": 30.0}})
    assert status == 201, body
    job = json.loads(body)["id"]
    async with connect(f"ws://127.0.0.1:{port}", P.SUBSCRIBE_PATH) as sub:
        await _subscribe(sub, f"job/{job}")
        with trio.fail_after(20):
            while not (isinstance(msg := await receive(sub), P.Event)
                       and msg.type == "progress" and msg.body["state"] == "running"):
                pass
            assert 0 < msg.body["progress"] < 1 and msg.priority == P.Priority.BULK
            status, body, _ = await request(port, "POST", f"/api/v1/jobs/{job}/cancel")
            assert status == 200
            while not (isinstance(msg := await receive(sub), P.Event)
                       and msg.body.get("state") == "cancelled"):
                pass
    got = await get_json(port, f"/api/v1/jobs/{job}")
    assert got["state"] == "cancelled" and got["frames_done"] < len(x)
    status, body, _ = await request(port, "POST", "/api/v1/jobs",
                                    {"recording": rec, "filter": {"high_hz": 200.0}})
    assert status == 422 and "Nyquist" in body.decode()
    status, body, _ = await request(port, "POST", "/api/v1/jobs", {"recording": "nope"})
    assert status == 404


async def test_a_replay_that_fails_on_a_bug_fails_alone(
        server: Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    port = server.port or 0
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360",
                                    raw=_npy(_signal(2000)))
    rec = json.loads(body)["id"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the loader")

    monkeypatch.setattr(server.loader, "read", broken)
    status, body, _ = await request(port, "POST", f"/api/v1/recordings/{rec}/replay",
                                    {"speed": 0, "stream": "bug"})
    assert status == 201, body
    for _ in range(1000):  # the replay runs in the server's own tasks
        if server.replays.replays["bug"].state not in ("starting", "playing"):
            break
        await trio.sleep(0.01)
    replays = (await get_json(port, "/api/v1/replays"))["replays"]
    assert replays[0]["state"] == "failed" and "a bug in the loader" in replays[0]["error"]
    assert "a bug in the loader" in caplog.text
    assert (await request(port, "GET", "/healthz"))[0] == 200
    status, body, _ = await request(port, "POST", f"/api/v1/recordings/{rec}/replay",
                                    {"speed": 0, "stream": "bug"})
    assert status == 201, body  # its stream was let go


async def test_a_looping_replay_runs_until_stopped(server: Server) -> None:
    port = server.port or 0
    x = _signal(10_000)
    status, body, _ = await request(port, "POST", "/api/v1/recordings?fs=360", raw=_npy(x))
    rec = json.loads(body)["id"]
    async with connect(f"ws://127.0.0.1:{port}", P.SUBSCRIBE_PATH) as sub:
        await _subscribe(sub, "stream/lp/raw")
        status, body, _ = await request(port, "POST", f"/api/v1/recordings/{rec}/replay",
                                        {"speed": 1000, "loop": True, "stream": "lp"})
        assert status == 201, body
        t0s: list[int] = []
        blocks: list[npt.NDArray[np.int16]] = []
        with trio.fail_after(20):
            while len(t0s) < 5 or t0s[-1] < 3 * len(x):
                msg = await receive(sub)
                if isinstance(msg, P.StreamSamples):
                    t0s.append(msg.t0)
                    blocks.append(np.frombuffer(msg.data, "<i2").reshape(-1, 2))
            status, body, _ = await request(port, "DELETE", "/api/v1/replays/lp")
            assert status == 200
            while not (isinstance(msg := await receive(sub), P.Event)
                       and msg.body.get("state") == "disconnected"):
                pass
    assert t0s == sorted(t0s)  # the sample index keeps counting across laps
    # 100-ms blocks of 36, read 113 at a time: every lap is the recording, sample for
    # sample, though 10,000 is a multiple of neither.
    assert t0s == [0, *np.cumsum([len(b) for b in blocks])[:-1]]
    got = np.concatenate(blocks)
    assert len(got) >= 3 * len(x) and {len(b) for b in blocks} == {36, 10_000 % 36}
    assert np.array_equal(got[:3 * len(x)], np.tile(x, (3, 1)))
    replay = (await get_json(port, "/api/v1/replays"))["replays"][0]
    assert replay["state"] == "stopped" and replay["laps"] >= 3
    status, _, _ = await request(port, "POST", f"/api/v1/recordings/{rec}/replay",
                                 {"speed": -1})
    assert status == 422
