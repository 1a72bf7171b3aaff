"""Live streams viewed as recordings that grow: the archive builds the view pyramid as it
writes, and GET /api/v1/streams/{id}/view and /data read it up to the acked frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
from httpclient import get_json, request

import protocol as P
from vital_actors.archive import Append, Durable, RunFiles, run_dir
from vital_actors.graph import Server
from vital_actors.sdk import DeviceClient
from vital_actors.settings import load_settings
from vital_actors.sources import Recording, load_record
from vital_actors.store import Reader, Writer
from vital_actors.store.live import LiveReader, PyramidFiles, live_meta
from vital_actors.store.pyramid import LEVELS, bucket
from vital_actors.store.views import view

Array = np.ndarray[Any, Any]
HELLO = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))


def _signal(n: int, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(-20, 21, (n, 2)), axis=0).astype("<i2")


def offline(tmp: Path, x: Array, fs: float = 360.0, gain: float = 200.0,
            baseline: float = 1024.0, name: str = "off") -> Reader:
    """The committed recording of frames *x*: what a live view must equal."""
    w = Writer(tmp / f"{name}.tmp", fs=fs, channels=["MLII", "V1"], dtype="int16",
               gain=[gain] * 2, baseline=[baseline] * 2)
    w.append(x)
    w.commit(tmp / name, id=name, source_format="npy")
    return Reader.open(tmp / name)


def _frame(seq: int, x: Array) -> Append:
    return Append("d1", 0, HELLO, seq, 0, len(x), x.tobytes(), Durable())


# --- the pyramid as the archive writes it -------------------------------------------------


def test_a_growing_run_has_the_pyramid_of_the_same_frames_committed(tmp_path: Path) -> None:
    x = _signal(300_000)
    path = run_dir(tmp_path, "d1", 0)
    files = RunFiles(path, HELLO)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 400, replace=False)).tolist()
    for seq, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(x)], strict=True)):
        files.write([_frame(seq, x[a:b])])
        if seq % 97 == 0 or b == len(x):  # now and then: every level equals the offline one
            live = LiveReader(path, live_meta(path, frames=b, id="d1"))
            ref = offline(tmp_path, x[:b], name=f"off{seq}")
            for k in range(LEVELS):
                np.testing.assert_array_equal(live.level(k, 0, 1 << 40),
                                              ref.level(k, 0, 1 << 40))
    files.close()


def test_the_reader_never_reads_past_the_acked_frames(tmp_path: Path) -> None:
    x = _signal(50_000)
    path = run_dir(tmp_path, "d1", 0)
    files = RunFiles(path, HELLO)
    files.write([_frame(0, x)])
    acked = 12_345  # written further, acked this far
    live = LiveReader(path, live_meta(path, frames=acked, id="d1"))
    ref = offline(tmp_path, x[:acked])
    assert live.frames == acked and len(live.read(0, 1 << 40)) == acked
    for k in range(3):
        np.testing.assert_array_equal(live.level(k, 0, 1 << 40), ref.level(k, 0, 1 << 40))
    for start, end, points in [(0, acked, 100), (1000, 12_000, 2000), (12_000, 13_000, 50)]:
        assert view(live, live.read, channel=1, start=start, end=end, points=points) == \
            {**view(ref, ref.read, channel=1, start=start, end=end, points=points),
             "recording": "d1"}
    files.close()


@pytest.mark.parametrize("damage", ["trimmed", "pyramid-short", "no-pyramid"])
def test_a_reopened_run_trims_or_rebuilds_its_pyramid(tmp_path: Path, damage: str) -> None:
    x = _signal(100_000)
    path = run_dir(tmp_path, "d1", 0)
    files = RunFiles(path, HELLO)
    files.write([_frame(0, x[:70_001])])
    files.close()
    if damage == "trimmed":  # repair() cut the samples back: the pyramid is ahead
        with open(path / "samples.bin", "ab") as f:
            f.truncate(60_000 * 4)
    elif damage == "pyramid-short":  # killed between the samples and the pyramid
        with open(path / "pyr0.bin", "ab") as f:
            f.truncate(100 * 8)
    else:  # archived before pyramids existed
        for k in range(LEVELS):
            (path / f"pyr{k}.bin").unlink()
    have = 60_000 if damage == "trimmed" else 70_001
    files = RunFiles(path, HELLO)  # the device resumes the run
    files.write([_frame(1, x[have:])])
    files.close()
    live = LiveReader(path, live_meta(path, frames=len(x), id="d1"))
    ref = offline(tmp_path, np.concatenate([x[:have], x[have:]]))
    for k in range(LEVELS):
        np.testing.assert_array_equal(live.level(k, 0, 1 << 40), ref.level(k, 0, 1 << 40))
        assert (path / f"pyr{k}.bin").stat().st_size == len(x) // bucket(k) * 8


def test_pyramid_files_restore_pending_state_exactly(tmp_path: Path) -> None:
    x = _signal(20_000)
    (tmp_path / "samples.bin").write_bytes(x[:9_999].tobytes())
    first = PyramidFiles(tmp_path, 2, "int16", 0)
    first.append(x[:9_999])
    pending = [p.copy() for p in first.builder.pending]
    first.close()
    again = PyramidFiles(tmp_path, 2, "int16", 9_999)
    for a, b in zip(pending, again.builder.pending, strict=True):
        np.testing.assert_array_equal(a, b)
    again.close()


# --- a real server, a real device, real ECG -----------------------------------------------


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store"},
                               archive={"fsync": "interval"}))
    await nursery.start(srv.run)
    return srv


def _hello(rec: Recording) -> P.Hello:
    return P.Hello("ecg", rec.fs, rec.channels, "int16", rec.gain,
                   tuple(float(b) for b in rec.baseline))


async def _data(port: int, start: int = 0, end: int | None = None) -> tuple[dict[str, Any],
                                                                           Array]:
    q = f"?start={start}" + ("" if end is None else f"&end={end}")
    status, body, _ = await request(port, "GET", f"/api/v1/streams/ecg/data{q}")
    assert status == 200, body
    got = msgpack.unpackb(body)
    return got, np.frombuffer(got["data"], "<i2").reshape(-1, len(got["channels"]))


async def test_a_live_stream_is_viewed_as_the_recording_it_grows_into(
        server: Server, mitdb: Path, tmp_path: Path, nursery: trio.Nursery) -> None:
    rec = load_record(mitdb / "208", stop=360 * 600)  # 10 minutes of MIT-BIH 208
    x = np.ascontiguousarray(rec.samples, "<i2")
    port = server.port or 0
    some_acked = trio.Event()
    client = DeviceClient(f"ws://127.0.0.1:{port}", _hello(rec), max_unacked=500,
                          on_ack=lambda seq: some_acked.set() if seq >= 10 else None)
    await nursery.start(client.run)
    sent = 0
    windows = [(0, None, 2000), (1000, 90_000, 2000), (5_000, 5_500, 300),
               (10_000, 30_000, 2000), (0, None, 50), (0, None, 200), (1000, 90_000, 100),
               (7, 100_001, 20)]  # the last four from pyramid levels, partial buckets too
    for minutes in (3, 7, 10):  # three times: send more, then it must have grown
        for a in range(sent, 360 * 60 * minutes, 360):
            await client.send(x[a:a + 360])
            if a == sent + 360 * 30:  # mid-stream: the data is a prefix, at least what is acked
                with trio.fail_after(30):
                    await some_acked.wait()
                acked = (client.counters.acked + 1) * 360
                got, y = await _data(port)
                assert acked <= got["n"] <= a + 360 and y.tobytes() == x[:got["n"]].tobytes()
        sent = 360 * 60 * minutes
        with trio.fail_after(30):
            await client.drain()
        meta = await get_json(port, "/api/v1/streams/ecg/archive")
        assert (meta["frames"], meta["live"], meta["connected"]) == (sent, True, True)
        got, y = await _data(port)
        assert got["n"] == sent and y.tobytes() == x[:sent].tobytes()  # exactly what is acked
        ref = offline(tmp_path, x[:sent], fs=rec.fs, gain=rec.gain[0],
                      baseline=float(rec.baseline[0]), name=f"ref{minutes}")
        for start, end, points in windows:
            for channel in (0, 1):
                q = f"start={start}&points={points}&channel={channel}" + \
                    ("" if end is None else f"&end={end}")
                live = await get_json(port, f"/api/v1/streams/ecg/view?{q}")
                want = view(ref, ref.read, channel=channel, start=start,
                            end=sent if end is None else end, points=points)
                assert live == json.loads(json.dumps({**want, "recording": "ecg"}))
                if end is None:  # the whole-stream view ends at the last acked frame
                    assert live["end"] == sent


async def test_stream_views_refuse_unknown_streams_runs_and_paths(server: Server) -> None:
    port = server.port or 0
    for path in ("/api/v1/streams/nope/view", "/api/v1/streams/nope/data",
                 "/api/v1/streams/../archive", "/api/v1/streams/..%2Fx/view"):
        status, body, _ = await request(port, "GET", path)
        assert status == 404, (path, status, body)
    status, body, _ = await request(port, "GET", "/api/v1/streams/x/view?run=abc")
    assert status == 400 and b"bad run" in body


async def test_a_run_directory_left_empty_by_a_crash_is_not_listed(
        server: Server, mitdb: Path, nursery: trio.Nursery) -> None:
    # A crash (or a full disk) between a run's mkdir and its meta.json leaves it empty:
    # no run, no frames; it must not show among the stream's runs.
    rec = load_record(mitdb / "208", stop=360 * 10)
    port = server.port or 0
    client = DeviceClient(f"ws://127.0.0.1:{port}", _hello(rec))
    await nursery.start(client.run)
    await client.send(np.ascontiguousarray(rec.samples[:360], "<i2"))
    with trio.fail_after(30):
        await client.drain()
    (server.archive_root / "ecg" / "run-000099").mkdir()
    meta = await get_json(port, "/api/v1/streams/ecg/archive")
    assert (meta["run"], meta["runs"], meta["frames"]) == (0, [0], 360)
