"""Durability: the archive writer, repair after a crash, and the whole path on real
servers — connections killed at random during a replay, SIGKILL and restart, SIGTERM."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from httpclient import get_json, request
from trio_websocket import ConnectionClosed

import protocol as P
from loadtests.proxy import Cuts, killing_proxy
from vital_actors import archive
from vital_actors.archive import (
    RECORD,
    Append,
    ArchiveItem,
    Close,
    Durable,
    read_frames,
    run_archive,
    run_dir,
    scan,
)
from vital_actors.graph import Server
from vital_actors.history import ArchiveHistory, archive_token
from vital_actors.sdk import Backoff, DeviceClient, open_connection
from vital_actors.sdk._connection import receive
from vital_actors.settings import load_settings
from vital_actors.sources import Recording, load_record
from vital_actors.stats import Stats
from vital_actors.store.live import LiveReader, TrimmedError, live_meta

HELLO = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))


def hello_of(rec: Recording, stream: str) -> P.Hello:
    return P.Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                   tuple(float(b) for b in rec.baseline))


def append(seq: int, durable: Durable, n: int = 3, run: int = 0) -> Append:
    data = np.full((n, 2), seq, "<i2").tobytes()
    return Append("d1", run, HELLO, seq, seq * n, n, data, durable)


# --- the writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_frames_are_written_in_order_and_marked_durable(tmp_path: Path,
                                                              fsync: str) -> None:
    tx, rx = trio.open_memory_channel[ArchiveItem](8)
    durable = Durable()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_archive(
            rx, root=tmp_path, fsync=fsync, interval_s=0.05,  # type: ignore[arg-type]
            task_status=task_status))
        with tx:
            for seq in range(20):
                await tx.send(append(seq, durable))
            with trio.fail_after(5):
                await durable.wait_beyond(18)
            await tx.send(Close("d1", 0))
    path = run_dir(tmp_path, "d1", 0)
    assert list(read_frames(path)) == [(s, 3 * s, 3) for s in range(20)]
    samples = np.frombuffer((path / "samples.bin").read_bytes(), "<i2").reshape(-1, 2)
    assert (samples[:, 0] == np.repeat(np.arange(20), 3)).all()
    assert scan(tmp_path)[0].next_seq == 20


async def test_group_commit_waits_its_delay_and_serves_the_window_with_one_sync(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """interval with commit_delay_s: frames written within the delay after the first
    unsynced one share one sync, and none counts as durable before it."""
    # Jump only once nothing has run for 50 ms of real time: the writer's worker thread
    # (a few ms of file I/O) is not something to jump over.
    mock_clock.autojump_threshold = 0.05
    syncs: list[float] = []  # when each sync began (it runs in a worker thread)
    real_sync = archive._Writer.sync
    token = trio.lowlevel.current_trio_token()

    def counted(writer: archive._Writer) -> None:
        syncs.append(trio.from_thread.run_sync(trio.current_time, trio_token=token))
        real_sync(writer)

    monkeypatch.setattr(archive._Writer, "sync", counted)
    writes: list[int] = []  # the bytes of each write to the run's files
    real_write_all = archive._write_all

    def write_all(fd: int, data: bytes) -> None:
        writes.append(len(data))
        real_write_all(fd, data)

    monkeypatch.setattr(archive, "_write_all", write_all)
    tx, rx = trio.open_memory_channel[ArchiveItem](8)
    durable = Durable()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_archive(
            rx, root=tmp_path, fsync="interval", interval_s=1.0, commit_delay_s=0.2,
            task_status=task_status))
        with tx:
            await tx.send(append(0, durable))
            await trio.sleep(0.1)
            await tx.send(append(1, durable))
            await trio.sleep(0.05)
            assert durable.seq == -1 and syncs == []  # idle, but within the delay
            assert writes == []  # the window is written with its sync
            with trio.fail_after(5):
                await durable.wait_beyond(0)
            assert durable.seq == 1  # both at once
            assert len(syncs) == 1 and 0.2 <= syncs[0] < 0.25
            # One write per file for the window: both frames' samples, both records.
            assert writes == [2 * 3 * 2 * 2, 2 * archive.RECORD.size]
            await tx.send(append(2, durable))  # a new window begins with it
            with trio.fail_after(5):
                await durable.wait_beyond(1)
            assert len(syncs) == 2 and syncs[1] - syncs[0] >= 0.2
            await tx.send(Close("d1", 0))
    assert list(read_frames(run_dir(tmp_path, "d1", 0))) == [(s, 3 * s, 3) for s in range(3)]


async def test_a_long_window_is_written_early_and_synced_with_the_rest(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """interval: the writer holds a window's frames until its commit, but a window of
    more than 8 x max_batch items is written at once; none counts as durable before the
    window's one sync."""
    mock_clock.autojump_threshold = 0.05  # not over the worker thread's file I/O
    tx, rx = trio.open_memory_channel[ArchiveItem](64)
    durable = Durable()
    path = run_dir(tmp_path, "d1", 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_archive(
            rx, root=tmp_path, fsync="interval", interval_s=10.0, commit_delay_s=5.0,
            max_batch=2, task_status=task_status))
        with tx:
            for seq in range(7):
                await tx.send(append(seq, durable))
            await trio.sleep(1)
            assert not (path / "frames.bin").exists()  # held: fewer than 16 items
            for seq in range(7, 20):
                await tx.send(append(seq, durable))
            await trio.sleep(1)
            assert len(list(read_frames(path))) >= 16  # written early ...
            assert durable.seq == -1  # ... but not synced
            with trio.fail_after(10):
                await durable.wait_beyond(18)
            assert trio.current_time() >= 5.0  # at the window's commit
            await tx.send(Close("d1", 0))
    assert list(read_frames(path)) == [(s, 3 * s, 3) for s in range(20)]


def _old_run(root: Path, stream: str, run: int, *, age_s: float, size: int) -> Path:
    """A finished run directory whose files were last written *age_s* seconds ago."""
    path = run_dir(root, stream, run)
    path.mkdir(parents=True)
    for name, data in (("meta.json", b"{}"), ("samples.bin", b"\0" * size),
                       ("frames.bin", b"")):
        (path / name).write_bytes(data)
        t = time.time() - age_s
        os.utime(path / name, (t, t))
    return path


def test_retention_deletes_old_finished_runs_but_never_a_stream_s_latest_or_an_open_one(
        tmp_path: Path) -> None:
    old = _old_run(tmp_path, "a", 0, age_s=7200, size=100)
    kept_open = _old_run(tmp_path, "a", 1, age_s=7200, size=100)
    latest = _old_run(tmp_path, "a", 2, age_s=7200, size=100)  # the device resumes it
    young = _old_run(tmp_path, "b", 0, age_s=10, size=100)
    only = _old_run(tmp_path, "b", 1, age_s=7200, size=100)
    writer = archive._Writer(tmp_path)
    writer.open[("a", 1)] = None  # type: ignore[assignment]  # as if a device wrote to it
    assert writer.prune(3600, 0, time.time()) == (1, 100 + 2)  # samples + meta
    assert not old.exists()
    assert kept_open.exists() and latest.exists() and young.exists() and only.exists()


def test_low_free_space_deletes_the_oldest_finished_runs_until_there_is_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {name: _old_run(tmp_path, stream, run, age_s=age, size=1000)
            for name, stream, run, age in (("a0", "a", 0, 300), ("a1", "a", 1, 100),
                                           ("a2", "a", 2, 999), ("b0", "b", 0, 200),
                                           ("b1", "b", 1, 999))}
    free = [0]  # what the file system has free: each deleted run frees its bytes

    def usage(path: object) -> SimpleNamespace:
        gone = sum(1002 for p in runs.values() if not p.exists())
        return SimpleNamespace(total=10**9, used=10**9 - free[0] - gone, free=free[0] + gone)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    writer = archive._Writer(tmp_path)
    assert writer.prune(None, 2000, time.time()) == (2, 2004)
    assert not runs["a0"].exists() and not runs["b0"].exists()  # the two oldest
    assert runs["a1"].exists() and runs["a2"].exists() and runs["b1"].exists()


async def test_the_archive_prunes_while_it_serves(tmp_path: Path) -> None:
    old = _old_run(tmp_path, "a", 0, age_s=7200, size=100)
    latest = _old_run(tmp_path, "a", 1, age_s=7200, size=100)
    stats = Stats()
    tx, rx = trio.open_memory_channel[ArchiveItem](8)
    durable = Durable()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_archive(
            rx, root=tmp_path, retention_s=3600, prune_interval_s=60, stats=stats,
            task_status=task_status))
        with tx:
            await tx.send(append(0, durable))
            with trio.fail_after(5):
                await durable.wait_beyond(-1)  # the writer went round its loop: pruned
    assert not old.exists() and latest.exists()
    assert (stats.totals.archive_runs_pruned, stats.totals.archive_bytes_pruned) == (1, 102)
    assert list(read_frames(run_dir(tmp_path, "d1", 0))) == [(0, 0, 3)]


def _long_run(root: Path, frames: int, *, start: float, step: float,
              stream: str = "d1") -> tuple[Path, bytes]:
    """A stream's only run: *frames* frames of 3 samples x 2 leads (every sample of frame
    k is k + 1), stamped from *start* every *step* seconds, written by the writer."""
    hello = P.Hello(stream, 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))
    files = archive.RunFiles(run_dir(root, stream, 0), hello)
    items = [Append(stream, 0, hello, k, 3 * k, 3, np.full((3, 2), k + 1, "<i2").tobytes(),
                    Durable(), start + k * step) for k in range(frames)]
    files.write(items)
    files.close()
    return run_dir(root, stream, 0), b"".join(i.data for i in items)


def test_retention_trims_the_old_frames_of_a_run_it_keeps(tmp_path: Path) -> None:
    """A device that stays connected keeps one run: retention deletes its frames older
    than retention_s from the start (holes punched in the files, the same offsets), says
    where it now begins in trim.json first, and readers start there."""
    now = time.time()
    path, data = _long_run(tmp_path, 3000, start=now - 7200, step=2.4)  # 2 h, one run
    writer = archive._Writer(tmp_path)
    assert writer.prune(3601, 0, now) == (0, 0)  # a stream's latest run is never deleted
    freed = writer.trim(3601, now)
    cut = 1500  # the first frame stamped within 3601 s: 7200 - 1500 x 2.4 = 3600 s ago
    assert json.loads((path / "trim.json").read_text()) == {
        "samples": 3 * cut, "records": cut, "seq": cut}
    width = 3 * 2 * 2
    on_disk = (path / "samples.bin").read_bytes()
    assert len(on_disk) == len(data)  # offsets unchanged
    assert on_disk[cut * width:] == data[cut * width:]  # what is kept is intact
    assert not on_disk[:cut * width // 4096 * 4096].strip(b"\0")  # the old part is holes
    assert freed >= cut * width // 4096 * 4096 - 4096 and freed > 0
    assert list(read_frames(path))[cut:] == [(k, 3 * k, 3) for k in range(cut, 3000)]
    assert writer.trim(3601, now) == 0  # nothing more to do
    reader = LiveReader(path, live_meta(path, frames=9000, id="d1"))
    assert reader.meta.first_frame == 3 * cut
    assert np.array_equal(reader.read(0, 9000),
                          np.frombuffer(data, "<i2").reshape(-1, 2)[3 * cut:])
    [stored] = scan(tmp_path)  # a restart resumes after the last frame, as before
    assert (stored.next_seq, stored.t0) == (3000, 9000)


def test_deleting_a_trimmed_run_counts_the_bytes_it_frees_not_its_holes(
        tmp_path: Path) -> None:
    now = time.time()
    path, _ = _long_run(tmp_path, 3000, start=now - 7200, step=2.4)
    archive._Writer(tmp_path).trim(3601, now)
    files = [f for f in path.iterdir() if f.is_file()]
    held = sum(min(f.stat().st_size, 512 * f.stat().st_blocks) for f in files)
    assert held < sum(f.stat().st_size for f in files) - 8192  # the holes
    for f in files:
        os.utime(f, (now - 7200, now - 7200))
    _old_run(tmp_path, "d1", 1, age_s=10, size=10)  # run 0 is no longer the latest
    assert archive._Writer(tmp_path).prune(3601, 0, now) == (1, held)


def test_short_of_space_the_runs_kept_lose_their_oldest_frames_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With archive.min_free_bytes, once no finished run is left to delete, the runs
    kept (a connected device's) are trimmed of their frames written before one time,
    the earliest that frees enough: the oldest data goes, the newest stays."""
    now = time.time()
    runs = [_long_run(tmp_path, 3000, start=now - 7200, step=2.4, stream=name)[0]
            for name in ("a", "b")]

    def held() -> int:
        return sum(512 * f.stat().st_blocks for run in runs for f in run.iterdir())

    full = held()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(
        total=10**12, used=10**12, free=full - held()))  # free: what trimming freed
    writer = archive._Writer(tmp_path)
    assert writer.housekeep(None, 100_000, now)[:2] == (0, 0)  # no finished run to delete
    # 2 runs x (12 bytes of samples + a 28-byte record) a frame: 1,250 frames each
    for run in runs:
        assert json.loads((run / "trim.json").read_text())["records"] == 1250
    assert full - held() > 80_000  # freed: whole blocks only, so a little less at first
    for _ in range(3):  # the next passes free the rest
        writer.make_room(100_000, now)
    assert full - held() >= 100_000
    assert list(read_frames(runs[0]))[-1] == (2999, 8997, 3)  # the newest stay


def test_trimming_keeps_a_run_s_last_frame_however_old(tmp_path: Path) -> None:
    now = time.time()
    path, data = _long_run(tmp_path, 500, start=now - 90000, step=1.0)  # all over a day old
    assert archive._Writer(tmp_path).trim(3600, now) >= 0
    assert json.loads((path / "trim.json").read_text())["seq"] == 499
    [stored] = scan(tmp_path)
    assert (stored.next_seq, stored.t0, stored.frames) == (500, 1500, 500)
    assert (path / "samples.bin").read_bytes()[-12:] == data[-12:]


async def test_a_replay_that_a_trim_overtakes_gives_nothing_rather_than_holes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ArchiveHistory reads trim.json before the frames and again after: a trim in
    between (here: the first look sees none) means what it read may be holes, so the
    replay gets nothing (and says the rest is lost), never zeros as samples."""
    from vital_actors.store.live import Trim, read_trim

    now = time.time()
    _long_run(tmp_path, 300, start=now - 600, step=2.0)
    archive._Writer(tmp_path).trim(301, now)  # keeps from seq 150
    calls = [0]

    def stale_first(path: Path) -> Trim:
        calls[0] += 1
        return Trim() if calls[0] == 1 else read_trim(path)  # before the trim, then after

    monkeypatch.setattr("vital_actors.history.read_trim", stale_first)
    assert await ArchiveHistory(tmp_path, "tok").read("stream/d1/raw", "tok.0", 10, 299,
                                                       5) == []


def test_a_read_that_retention_trims_under_it_fails_rather_than_return_holes(
        tmp_path: Path) -> None:
    """A reader that looked at the run before a trim would read the holes as zero
    samples: the read checks trim.json after reading and refuses (the API answers 410)."""
    now = time.time()
    path, _ = _long_run(tmp_path, 3000, start=now - 7200, step=2.4)
    reader = LiveReader(path, live_meta(path, frames=9000, id="d1"))  # before the trim
    assert reader.meta.first_frame == 0
    archive._Writer(tmp_path).trim(3601, now)
    with pytest.raises(TrimmedError, match="deleted by archive retention"):
        reader.read(0, 9000)
    assert len(reader.read(4500, 9000)) == 4500  # what is kept still reads


def test_trimming_keeps_what_the_view_pyramid_resumes_from(tmp_path: Path) -> None:
    """A device idle for longer than retention has all its run but the last frame
    trimmed; when it resumes, the run's files reopen and the pyramid's unfinished
    bucket is rebuilt from its samples on disk: those are not punched, so the bucket
    it completes holds the real minimum and maximum, not the holes' zeros."""
    now = time.time()
    path, _ = _long_run(tmp_path, 500, start=now - 90000, step=1.0)  # 1,500 samples
    archive._Writer(tmp_path).trim(3600, now)  # all but frame 499 (samples 1497-1499)
    assert json.loads((path / "trim.json").read_text())["samples"] == 1497
    hello = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))
    files = archive.RunFiles(path, hello)  # the device resumes: 12 frames more
    files.write([Append("d1", 0, hello, k, 3 * k, 3, np.full((3, 2), 1000, "<i2").tobytes(),
                        Durable(), now) for k in range(500, 512)])
    files.close()
    entries = np.fromfile(path / "pyr0.bin", "<i2").reshape(-1, 2, 2)
    assert len(entries) == 1536 // 64
    # bucket 23: samples 1472-1535, frames 490-499 (values 491-500) and the new ones
    assert entries[23].tolist() == [[491, 1000], [491, 1000]]


def test_trimming_punches_the_view_pyramid_too_and_it_grows_on_exactly_the_same(
        tmp_path: Path) -> None:
    """The pyramid's entries wholly before the cut are freed as well, except those its
    unfinished buckets are rebuilt from when the run reopens: a run trimmed, reopened
    and written on has the same pyramid past the cut as one never trimmed."""
    now = time.time()
    trimmed, _ = _long_run(tmp_path / "a", 3000, start=now - 7200, step=2.4)
    whole, _ = _long_run(tmp_path / "b", 3000, start=now - 7200, step=2.4)
    archive._Writer(tmp_path / "a").trim(3601, now)  # from sample 4500 of 9000
    hello = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))
    for path in (trimmed, whole):  # the device resumes: 3,000 frames more
        files = archive.RunFiles(path, hello)
        files.write([Append("d1", 0, hello, k, 3 * k, 3,
                            np.full((3, 2), k % 700, "<i2").tobytes(), Durable(), now)
                     for k in range(3000, 6000)])
        files.close()
    # Freed: level 0 up to sample 4480 (70 entries), level 1 up to 4096 (8); level 2's
    # first entry is what level 3's unfinished bucket is rebuilt from: kept.
    for k, freed in enumerate([70, 8, 0, 0]):
        got, want = (np.fromfile(p / f"pyr{k}.bin", "<i2").reshape(-1, 2, 2)
                     for p in (trimmed, whole))
        assert len(got) == len(want) == 18000 // (64 * 8**k)
        assert not got[:freed].any() and np.array_equal(got[freed:], want[freed:]), k


def test_a_trimmed_run_s_pyramid_rebuilt_after_a_crash_ignores_the_holes(
        tmp_path: Path) -> None:
    """A run reopened with its pyramid behind its samples (a crash between the two
    writes) rebuilds the pyramid from the samples: where retention punched holes, it
    takes the first kept frame instead of the zeros."""
    now = time.time()
    path, _ = _long_run(tmp_path, 3000, start=now - 7200, step=2.4)  # 9,000 samples
    archive._Writer(tmp_path).trim(3601, now)  # keeps frames 1500-2999: from sample 4500
    for k in range(8):
        (path / f"pyr{k}.bin").write_bytes(b"")  # lost in the crash
    hello = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))
    archive.RunFiles(path, hello).close()  # reopened: rebuilt
    entries = np.fromfile(path / "pyr0.bin", "<i2").reshape(-1, 2, 2)
    assert len(entries) == 9000 // 64
    # bucket 70 (samples 4480-4543) straddles the cut: frames 1500-1514, values 1501-1515
    assert entries[70].tolist() == [[1501, 1515], [1501, 1515]]
    assert int(entries[:, :, 0].min()) == 1501  # no zero anywhere


async def test_subscriber_recovery_from_a_trimmed_run_says_what_is_gone(
        tmp_path: Path) -> None:
    """The archive's history of a trimmed run covers only what retention kept: a replay
    from before it gets nothing (the replay then says the rest is lost) rather than a
    silent jump over the deleted frames; from after it, the frames as they were."""
    now = time.time()
    _long_run(tmp_path, 300, start=now - 600, step=2.0)  # 10 min; keep the last 5
    archive._Writer(tmp_path).trim(301, now)
    history = ArchiveHistory(tmp_path, "tok")
    topic, epoch = "stream/d1/raw", "tok.0"
    assert not await history.covers(topic, epoch, 10)
    assert await history.read(topic, epoch, 10, 299, 50) == []
    assert await history.covers(topic, epoch, 149)
    got = await history.read(topic, epoch, 149, 299, 3)
    assert [seq for seq, _ in got] == [150, 151, 152]
    message = got[0][1].message
    assert isinstance(message, P.StreamSamples)
    assert message.data == np.full((3, 2), 151, "<i2").tobytes()


async def test_a_server_deletes_a_finished_run_past_retention_and_keeps_the_latest(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    """With archive.retention_s, a run that is no longer its stream's latest is deleted
    once old enough; its views answer 404, the latest run is served as before."""
    server = Server(load_settings(server={"port": 0}, archive={
        "dir": tmp_path, "retention_s": 0.5, "prune_interval_s": 0.1}))
    await nursery.start(server.run)
    url = f"ws://127.0.0.1:{server.port}"
    frames = np.zeros((36, 2), "<i2")
    for hello in (HELLO, P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (100.0, 100.0),
                                 (1024.0, 1024.0))):  # another gain: a fresh run, run 1
        client = DeviceClient(url, hello)
        async with trio.open_nursery() as inner:
            await inner.start(client.run)
            await client.send(frames)
            with trio.fail_after(10):
                await client.drain()
            inner.cancel_scope.cancel()
    first, latest = run_dir(tmp_path, "d1", 0), run_dir(tmp_path, "d1", 1)
    with trio.fail_after(10):
        while first.exists():  # noqa: ASYNC110  # the writer's own timer, real time
            await trio.sleep(0.05)
    assert latest.exists() and server.stats.totals.archive_runs_pruned == 1
    assert server.stats.totals.archive_bytes_pruned > 36 * 2 * 2
    port = server.port
    assert port is not None
    status, _, _ = await request(port, "GET", "/api/v1/streams/d1/archive?run=0")
    assert status == 404
    assert (await get_json(port, "/api/v1/streams/d1/archive"))["run"] == 1
    server.shutdown()


def test_a_run_is_renamed_away_before_it_is_deleted_and_leftovers_are_swept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers look for run-*: retention renames a run out of their sight in one step,
    so none finds it half deleted; a rename a crash left behind goes at the next pass."""
    old = _old_run(tmp_path, "a", 0, age_s=7200, size=100)
    _old_run(tmp_path, "a", 1, age_s=7200, size=100)
    left = tmp_path / "b" / f"{archive.PRUNED}run-000004"
    left.mkdir(parents=True)
    (left / "samples.bin").write_bytes(b"\0" * 10)
    seen: list[tuple[str, bool, bool]] = []
    real = shutil.rmtree

    def rmtree(path: Path, ignore_errors: bool = False) -> None:
        seen.append((Path(path).name, old.exists(), (Path(path) / "samples.bin").exists()))
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert archive._Writer(tmp_path).prune(3600, 0, time.time()) == (1, 102)
    assert seen[0] == (f"{archive.PRUNED}run-000000", False, True)  # whole, out of sight
    assert not old.exists() and not left.exists() and not old.with_name(seen[0][0]).exists()


async def test_a_read_of_a_run_retention_deletes_meanwhile_answers_404(
        tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view or data request whose run retention deletes between finding the run and
    reading it answers 404 (it used to fail with 500), and the latest run still serves."""
    from vital_actors.api import recordings

    server = Server(load_settings(server={"port": 0}, archive={"dir": tmp_path}))
    await nursery.start(server.run)
    url = f"ws://127.0.0.1:{server.port}"
    for gain in (200.0, 100.0, 50.0):  # another gain each: a fresh run, runs 0, 1, 2
        hello = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (gain, gain), (1024.0, 1024.0))
        client = DeviceClient(url, hello)
        async with trio.open_nursery() as inner:
            await inner.start(client.run)
            await client.send(np.zeros((36, 2), "<i2"))
            with trio.fail_after(10):
                await client.drain()
            inner.cancel_scope.cancel()
    opened = recordings.open_run

    def open_then_prune(srv: Server, stream: str, run: int | None) -> object:
        got = opened(srv, stream, run)
        writer = archive._Writer(tmp_path)  # retention's own pass, on the run just opened
        writer.open = {(stream, r): None for r in (0, 1) if r != run}  # type: ignore[misc]
        assert writer.prune(0.0, 0, time.time() + 1)[0] == 1
        return got

    monkeypatch.setattr(recordings, "open_run", open_then_prune)
    port = server.port
    assert port is not None
    for what, run in (("view", 0), ("data", 1)):
        status, body, _ = await request(port, "GET", f"/api/v1/streams/d1/{what}?run={run}")
        assert status == 404, (what, status, body)
        assert f"no archived run {run}: deleted by archive retention".encode() in body
        assert not run_dir(tmp_path, "d1", run).exists()
    monkeypatch.setattr(recordings, "open_run", opened)
    status, _, _ = await request(port, "GET", "/api/v1/streams/d1/view?run=2")
    assert status == 200
    server.shutdown()


async def test_a_server_trims_a_connected_device_s_old_frames_and_serves_the_rest(
        tmp_path: Path, mitdb: Path, nursery: trio.Nursery) -> None:
    """A device that stays connected keeps one run; with archive.retention_s the server
    deletes its frames older than that from the run's start. The archive's views and
    data then begin where the kept frames do, exactly as the device sent them."""
    server = Server(load_settings(server={"port": 0}, archive={
        "dir": tmp_path, "retention_s": 0.5, "prune_interval_s": 0.1}))
    await nursery.start(server.run)
    rec = load_record(mitdb / "101", stop=360 * 10)
    x = np.ascontiguousarray(rec.samples, "<i2")
    client = DeviceClient(f"ws://127.0.0.1:{server.port}", hello_of(rec, "d1"))
    path = run_dir(tmp_path, "d1", 0)
    async with trio.open_nursery() as inner:
        await inner.start(client.run)
        for k in range(60):  # 6 s of ECG at once, then nothing for over retention_s
            await client.send(x[36 * k:36 * (k + 1)])
        with trio.fail_after(10):
            await client.drain()
            while not (path / "trim.json").exists():  # noqa: ASYNC110  # real time
                await trio.sleep(0.05)
        for k in range(60, 100):  # 4 s more, on the same connection: the same run
            await client.send(x[36 * k:36 * (k + 1)])
        with trio.fail_after(10):
            await client.drain()
        inner.cancel_scope.cancel()
    port = server.port
    assert port is not None
    meta = await get_json(port, "/api/v1/streams/d1/archive")
    first = meta["first_frame"]
    assert meta["run"] == 0 and first >= 36 * 59 and first % 36 == 0  # the first 59 at least
    assert meta["frames"] == 3600 and server.stats.totals.archive_bytes_trimmed > 0
    status, body, _ = await request(port, "GET", "/api/v1/streams/d1/data?start=0")
    assert status == 200
    got = msgpack.unpackb(body)
    assert got["start"] == first
    assert np.array_equal(np.frombuffer(got["data"], "<i2").reshape(-1, 2), x[first:3600])
    view = await get_json(port, "/api/v1/streams/d1/view?start=0&points=100")
    assert view["start"] == first and len(view["t"]) > 0 and min(view["t"]) >= first
    server.shutdown()


def _run_with_meta(root: Path, run: int) -> Path:
    path = run_dir(root, "d1", run)
    path.mkdir(parents=True)
    (path / "meta.json").write_text('{"stream": "d1", "fs": 360, "channels": ["MLII", "V1"], '
                                    '"dtype": "int16", "gain": [200, 200], '
                                    '"baseline": [1024, 1024]}')
    return path


def test_repair_keeps_whole_frames_only(tmp_path: Path) -> None:
    """A server killed between the two appends leaves a record without all its samples,
    or samples without a record: both are trimmed to the last whole frame."""
    path = _run_with_meta(tmp_path, 2)
    frame = 3 * 2 * 2
    (path / "samples.bin").write_bytes(b"\1" * (frame * 4 + 5))  # frame 4 half written
    (path / "frames.bin").write_bytes(b"".join(RECORD.pack(s, 3 * s, 3, 0.0) for s in range(5))
                                      + b"\0" * 7)  # and a torn record
    [stored] = scan(tmp_path)
    assert (stored.run, stored.next_seq, stored.t0, stored.frames) == (2, 4, 12, 4)
    assert (path / "samples.bin").stat().st_size == frame * 4
    assert (path / "frames.bin").stat().st_size == RECORD.size * 4


def test_repair_reads_only_the_end_of_a_long_run_s_index(tmp_path: Path) -> None:
    """A crash only cuts a run's end, so repair reads the index from the end back to the
    last whole frame and trusts the rest: a restart costs the same for a month-long run
    as for a short one. The records before the cut are not read: here they are zeroed,
    and the samples they index are kept all the same."""
    path = _run_with_meta(tmp_path, 0)
    frame = 3 * 2 * 2
    (path / "samples.bin").write_bytes(b"\1" * (frame * 1000 + 5))  # the last half written
    records = [RECORD.pack(s, 3 * s, 3, 0.0) for s in range(1001)]
    records[:990] = [b"\0" * RECORD.size] * 990  # not read: the crash cannot reach them
    (path / "frames.bin").write_bytes(b"".join(records))
    [stored] = scan(tmp_path)
    assert (stored.next_seq, stored.t0, stored.frames) == (1000, 3000, 1000)
    assert (path / "samples.bin").stat().st_size == frame * 1000  # nothing lost
    assert (path / "frames.bin").stat().st_size == RECORD.size * 1000


# --- connections killed at random during a replay ---------------------------------------


def archived(root: Path, stream: str) -> tuple[list[int], np.ndarray]:
    runs = sorted((root / stream).glob("run-*"))
    assert len(runs) == 1, runs  # one run: every reconnection resumed it
    seqs = [seq for seq, _, _ in read_frames(runs[0])]
    samples = np.frombuffer((runs[0] / "samples.bin").read_bytes(), "<i2")
    return seqs, samples


async def replay(client: DeviceClient, rec: Recording, frame: int, kills: Cuts,
                 parts: int = 4) -> None:
    """Send *rec* in *parts*; after each part but the last, wait for the proxy's next cut,
    so that cuts land while frames are in flight however fast the machine is."""
    starts = list(range(0, len(rec.samples), frame))
    step = -(-len(starts) // parts)
    for i in range(0, len(starts), step):
        for start in starts[i:i + step]:
            await client.send(rec.samples[start:start + frame])
        if i + step < len(starts):
            with trio.fail_after(10):
                await kills.next_cut()
    with trio.fail_after(60):
        await client.drain()


async def test_killing_connections_during_a_replay_loses_and_duplicates_nothing(
        mitdb: Path, tmp_path: Path, nursery: trio.Nursery) -> None:
    rec = load_record(mitdb / "101", stop=360 * 120)  # 2 minutes, 600 frames
    server = Server(load_settings(server={"port": 0}, archive={"dir": tmp_path}))
    await nursery.start(server.run)
    async with killing_proxy(server.port or 0, rng=random.Random(6),
                             every_s=(0.05, 0.2)) as (port, kills):
        client = DeviceClient(f"ws://127.0.0.1:{port}", hello_of(rec, "k1"),
                              max_unacked=200, backoff=Backoff(initial=0.01, maximum=0.05))
        async with trio.open_nursery() as inner:
            await inner.start(client.run)
            await replay(client, rec, 72, kills)
            inner.cancel_scope.cancel()
    server.shutdown()
    seqs, samples = archived(tmp_path, "k1")
    assert len(kills) >= 3 and client.counters.connections >= 3
    assert seqs == list(range(len(seqs))) == list(range(client.next_seq))  # 0 lost, 0 dup
    assert samples.tobytes() == np.ascontiguousarray(rec.samples, "<i2").tobytes()
    info = server.registry.get("k1")
    assert info is not None and info.gaps == 0


# --- SIGKILL, restart, resume; SIGTERM ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_server(port: int, archive: Path) -> trio.Process:
    env = {**os.environ, "VITAL_ARCHIVE__DIR": str(archive), "VITAL_SERVER__PORT": str(port)}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vital_actors.cli", "serve"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    with trio.fail_after(30):  # the banner says it is listening
        assert b"serving on" in await proc.stdout.receive_some(4096)
    return proc


async def test_sigkill_then_restart_keeps_every_acked_frame_and_the_device_resumes(
        mitdb: Path, tmp_path: Path) -> None:
    rec = load_record(mitdb / "101", stop=360 * 120)
    port = free_port()
    proc = await start_server(port, tmp_path)
    client = DeviceClient(f"ws://127.0.0.1:{port}", hello_of(rec, "k9"), max_unacked=2000,
                          backoff=Backoff(initial=0.05, maximum=0.2))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            frames = [rec.samples[s:s + 36] for s in range(0, len(rec.samples), 36)]
            for block in frames[:600]:
                await client.send(block)
            with trio.fail_after(20):
                while client.counters.acked < 300:  # noqa: ASYNC110 - acks from a process
                    await trio.sleep(0.01)
            proc.kill()
            await proc.wait()
            acked_at_kill = client.counters.acked
            seqs, _ = archived(tmp_path, "k9")
            assert seqs[: acked_at_kill + 1] == list(range(acked_at_kill + 1))
            proc = await start_server(port, tmp_path)
            for block in frames[600:]:
                await client.send(block)
            with trio.fail_after(30):
                await client.drain()
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
    seqs, samples = archived(tmp_path, "k9")
    assert client.counters.connections >= 2
    assert seqs == list(range(len(frames)))
    assert samples.tobytes() == np.ascontiguousarray(rec.samples, "<i2").tobytes()


async def test_sigterm_acks_what_is_on_disk_and_closes_1001(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_server(port, tmp_path)
    acked: list[int] = []
    async with open_connection(f"ws://127.0.0.1:{port}", P.INGEST_PATH) as ws:
        await ws.send_message(P.encode(HELLO))
        assert isinstance(await receive(ws), P.Welcome)
        block = np.zeros((36, 2), "<i2").tobytes()
        for seq in range(100):
            await ws.send_message(P.encode(P.Samples(seq, 36, block)))
        with trio.fail_after(15):  # the server has read (and stored) some of them
            while not isinstance(message := await receive(ws), P.Ack):
                pass
            acked.append(message.seq)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(15):
            while True:
                message = await receive(ws)
                if isinstance(message, P.Ack):
                    acked.append(message.seq)
    assert closed.value.reason is not None
    assert closed.value.reason.code == P.CloseCode.GOING_AWAY
    with trio.fail_after(15):
        assert await proc.wait() == 0
    seqs, _ = archived(tmp_path, "d1")
    # What the server read before it stopped reading is on disk and was acked before the
    # close; the rest was never read (the device resends it to the next server).
    assert seqs == list(range(len(seqs))) and acked == seqs


def test_many_dirty_runs_are_made_durable_by_one_syncfs(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = archive._SYNCFS
    if real is None:
        pytest.skip("no syncfs(2) on this system: the archive fsyncs file by file")

    def counting_syncfs(fd: int) -> int:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(archive, "_SYNCFS", counting_syncfs)
    fsyncs: list[int] = []
    monkeypatch.setattr(archive.RunFiles, "sync", lambda self: fsyncs.append(1))
    writer = archive._Writer(tmp_path)
    streams = archive.SYNCFS_ABOVE + 1
    writer.write([Append(f"d{k}", 0, HELLO, 0, 0, 3, bytes(12), Durable())
                  for k in range(streams)])
    writer.sync()
    assert len(calls) == 1 and fsyncs == []  # one call for every stream
    writer.write([Append("d0", 0, HELLO, 1, 3, 3, bytes(12), Durable())])
    writer.sync()
    assert len(calls) == 1 and fsyncs == [1]  # a single dirty run: its own fsyncs
    writer.close_all()


# --- a full disk ---------------------------------------------------------------------------


async def test_a_full_disk_closes_the_device_1013_loses_nothing_and_it_resumes(
        mitdb: Path, tmp_path: Path, nursery: trio.Nursery) -> None:
    """The kernel refuses to grow the archive's files (RLIMIT_FSIZE: EFBIG, as a full
    disk gives ENOSPC): the device is closed with 1013 ``storage-unavailable``, the
    server and another stream carry on, the run on disk holds whole frames only; once
    there is room the device resumes after its last ack and the run is complete."""
    rec = load_record(mitdb / "101", stop=360 * 60)  # 60 frames of 1,440 bytes
    server = Server(load_settings(server={"port": 0}, archive={"dir": tmp_path}))
    await nursery.start(server.run)
    url = f"ws://127.0.0.1:{server.port}"
    full = DeviceClient(url, hello_of(rec, "full"), max_unacked=100,
                        backoff=Backoff(initial=0.01, maximum=0.05))
    small = DeviceClient(url, hello_of(rec, "small"), max_unacked=100)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    async with trio.open_nursery() as inner:
        await inner.start(full.run)
        await inner.start(small.run)
        await small.send(rec.samples[:360])
        for start in range(0, 360 * 10, 360):  # ten frames on disk before the limit
            await full.send(rec.samples[start:start + 360])
        with trio.fail_after(20):
            await small.drain()
            await full.drain()
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, hard))  # ~27 frames fit
        try:
            for start in range(360 * 10, len(rec.samples), 360):
                await full.send(rec.samples[start:start + 360])
            with trio.fail_after(20):
                # Another actor's progress, seen only in its counters:
                while server.stats.totals.rejected.get("storage-unavailable", 0) == 0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await small.send(rec.samples[360:720])  # its file is small: it goes on
                await small.drain()
            assert full.counters.last_error == "storage-unavailable"
            seqs, samples = archived(tmp_path, "full")  # whole frames, nothing after
            assert seqs == list(range(len(seqs))) and 10 <= len(seqs) < 60
            assert samples.tobytes() == np.ascontiguousarray(
                rec.samples[:360 * len(seqs)], "<i2").tobytes()
            assert full.counters.acked <= len(seqs) - 1
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        with trio.fail_after(30):
            await full.drain()  # room again: it resumes after its last ack
        inner.cancel_scope.cancel()
    server.shutdown()
    seqs, samples = archived(tmp_path, "full")
    assert seqs == list(range(60)), seqs
    assert samples.tobytes() == np.ascontiguousarray(rec.samples, "<i2").tobytes()
    assert full.counters.connections >= 2


def test_the_archive_token_is_kept_and_an_empty_one_is_made_anew(tmp_path: Path) -> None:
    # A power loss during its first (then unsynced) write could leave the file empty:
    # the token was then "", and every raw topic's epoch ".<run>".
    token = archive_token(tmp_path)
    assert len(token) == 8 and archive_token(tmp_path) == token  # kept across starts
    (tmp_path / "epoch-token").write_text("")
    again = archive_token(tmp_path)
    assert len(again) == 8 and (tmp_path / "epoch-token").read_text() == again
