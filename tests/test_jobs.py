"""Processing jobs: equal to offline sosfilt, resume after a kill, cancel, priorities."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal
import trio
from httpclient import get_json, request

from vital_actors.filtering import design
from vital_actors.graph import Server
from vital_actors.jobs import JobRunner, JobSpec
from vital_actors.messages import Item, Publication
from vital_actors.processing import Processing
from vital_actors.settings import FilterSettings, JobSettings, ScreenSettings, load_settings
from vital_actors.store import Meta, RecordingStore

Array = np.ndarray[Any, Any]


def _ecg_like(n: int, channels: int = 2, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 360.0
    beats = (np.sin(2 * np.pi * 1.2 * t) ** 63)[:, None] * 400
    return (beats + rng.standard_normal((n, channels)) * 20 + 1024).astype(np.int16)


def _store_recording(store: RecordingStore, x: Array) -> Meta:
    rec_id, writer = store.writer(fs=360.0, channels=[f"c{i}" for i in range(x.shape[1])],
                                  dtype="int16", gain=[200.0] * x.shape[1],
                                  baseline=[1024.0] * x.shape[1])
    writer.append(x)
    return store.commit(rec_id, writer, source_format="npy")


def _process(store: RecordingStore, meta: Meta, jobdir: Path, chunk: int) -> Meta:
    jobdir.mkdir(parents=True)
    work = Processing(jobdir, store.reader(meta.id), job_id="ref", chunk_frames=chunk,
                      filter_settings=FilterSettings(), screen_settings=ScreenSettings())
    while not work.done:
        work.step()
    return work.commit(store, f"ref-{jobdir.name}")


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "store")


def test_result_equals_offline_sosfilt_over_the_whole_signal(store: RecordingStore,
                                                             tmp_path: Path) -> None:
    x = _ecg_like(50_000)
    meta = _store_recording(store, x)
    result = _process(store, meta, tmp_path / "a", chunk=4321)
    sos = design(FilterSettings(), 360.0).sos
    reference = scipy.signal.sosfilt(sos, (x.astype(np.float64) - 1024.0) / 200.0, axis=0)
    got = store.reader(result.id).read(0, result.frames)
    assert np.array_equal(got, reference.astype(np.float32))
    events = (store.path(result.id) / "events.jsonl").read_text().splitlines()
    assert len(events) >= 50_000 // 360  # one quality event per second at least


def test_resume_after_a_kill_mid_chunk_is_byte_identical(store: RecordingStore,
                                                         tmp_path: Path) -> None:
    meta = _store_recording(store, _ecg_like(40_000))
    whole = _process(store, meta, tmp_path / "whole", chunk=3000)
    jobdir = tmp_path / "killed"
    jobdir.mkdir()
    args: dict[str, Any] = {"job_id": "ref", "chunk_frames": 3000,
                            "filter_settings": FilterSettings(),
                            "screen_settings": ScreenSettings()}
    work = Processing(jobdir, store.reader(meta.id), **args)
    for _ in range(5):
        work.step()
    saved = (jobdir / "checkpoint.pkl").read_bytes()
    work.step()  # its bytes reach the disk, but the process dies before its checkpoint:
    work.close()
    (jobdir / "checkpoint.pkl").write_bytes(saved)
    again = Processing(jobdir, store.reader(meta.id), **args)
    assert again.next_frame == 15_000
    while not again.done:
        again.step()
    resumed = again.commit(store, "resumed")
    for name in ("samples.bin", "pyr0.bin", "pyr1.bin", "events.jsonl"):
        assert (store.path(whole.id) / name).read_bytes() == \
            (store.path(resumed.id) / name).read_bytes(), name
    assert resumed.checksum == whole.checksum


async def _progress(rx: trio.MemoryReceiveChannel[Item]) -> dict[str, Any]:
    item = await rx.receive()
    assert isinstance(item, Publication) and item.message.topic.startswith("job/")
    return dict(item.message.body)  # type: ignore[union-attr]


async def test_cancel_stops_within_one_chunk(store: RecordingStore) -> None:
    meta = _store_recording(store, _ecg_like(400_000, 1))
    runner = JobRunner(store, JobSettings(chunk_frames=1024), ScreenSettings())
    tx, rx = trio.open_memory_channel[Item](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run, tx)
        job = runner.submit(JobSpec(recording=meta.id))
        while (body := await _progress(rx))["frames_done"] < 4096:
            assert body["state"] == "running"
        asked_at = job.frames_done
        runner.cancel(job.id)
        while (body := await _progress(rx))["state"] == "running":
            pass
        assert body["state"] == "cancelled" == job.state
        assert asked_at <= job.frames_done <= asked_at + 1024 < meta.frames
        assert not (store.jobs / job.id / "out").exists()
        assert [m.id for m in store] == [meta.id]  # no result recording
        nursery.cancel_scope.cancel()


async def test_queue_runs_the_most_urgent_first(store: RecordingStore) -> None:
    meta = _store_recording(store, _ecg_like(3000, 1))
    runner = JobRunner(store, JobSettings(max_concurrent=1), ScreenSettings())
    order = ["low", "normal", "urgent", "high"]
    ids = {runner.submit(JobSpec(recording=meta.id, priority=p)).id: p
           for p in order}
    tx, rx = trio.open_memory_channel[Item](1000)
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run, tx)
        while len(done) < len(order):
            body = await _progress(rx)
            if body["state"] == "done":
                done.append(ids[body["id"]])
        nursery.cancel_scope.cancel()
    assert done == ["urgent", "high", "normal", "low"]


_SERVE = """
import sys, trio
from vital_actors.graph import Server
from vital_actors.settings import load_settings

async def main():
    server = Server(load_settings())
    async with trio.open_nursery() as nursery:
        print(await nursery.start(server.run), flush=True)
        await trio.sleep(60)  # the test kills us long before
        server.shutdown()

trio.run(main)
"""


async def test_job_resumes_after_sigkill_and_restart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = RecordingStore(root)
    meta = _store_recording(store, _ecg_like(600_000, 1))
    env = {**os.environ, "VITAL_STORE__DIR": str(root), "VITAL_JOBS__CHUNK_FRAMES": "2048",
           "VITAL_SERVER__PORT": "0"}
    proc = await trio.lowlevel.open_process([sys.executable, "-c", _SERVE], env=env,
                                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with trio.fail_after(60):  # a guard, not a timing: CI's two cores may be busy
            port = int((await proc.stdout.receive_some(100)).split()[0])
            status, body, _ = await request(port, "POST", "/api/v1/jobs",
                                            {"recording": meta.id})
            assert status == 201, body
            job_id = json.loads(body)["id"]
            # Another process: polling its API is the only way to watch it.
            while (await get_json(port, f"/api/v1/jobs/{job_id}"))[  # noqa: ASYNC110
                    "frames_done"] < 100_000:
                await trio.sleep(0.01)
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    settings = load_settings(server={"port": 0}, store={"dir": root},
                             jobs={"chunk_frames": 2048})
    server = Server(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with trio.fail_after(90):
            job = await server.jobs.wait(job_id, lambda j: j.state == "done")
        assert job.resumed_from is not None and 100_000 <= job.resumed_from < meta.frames
        assert job.result is not None
        result = server.store.meta(job.result)
        server.shutdown()
    reference = _process(RecordingStore(root), meta, tmp_path / "ref", chunk=2048)
    assert result.checksum == reference.checksum
    assert (root / "recordings" / result.id / "samples.bin").read_bytes() == \
        (root / "recordings" / reference.id / "samples.bin").read_bytes()
    shutil.rmtree(root)


async def test_a_job_whose_recording_is_deleted_fails_alone(store: RecordingStore) -> None:
    meta = _store_recording(store, _ecg_like(300_000, 1))
    runner = JobRunner(store, JobSettings(chunk_frames=1024), ScreenSettings())
    tx, rx = trio.open_memory_channel[Item](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run, tx)
        job = runner.submit(JobSpec(recording=meta.id, screen=False))
        while (await _progress(rx))["frames_done"] < 2048:
            pass
        store.delete(meta.id)
        await runner.wait(job.id, lambda j: not j.active)
        assert job.state == "failed" and "FileNotFoundError" in (job.error or "")
        other = _store_recording(store, _ecg_like(5000, 1))  # the runner still serves
        second = runner.submit(JobSpec(recording=other.id))
        await runner.wait(second.id, lambda j: not j.active)
        assert second.state == "done"
        nursery.cancel_scope.cancel()


async def test_a_job_is_on_disk_for_good_when_accepted_and_when_it_ends(
        store: RecordingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # job.json was renamed into place unsynced: a power loss soon after the 202 (or the
    # end) could leave it empty, and the job would be gone (or run again).
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    meta = _store_recording(store, _ecg_like(3000, 1))
    runner = JobRunner(store, JobSettings(), ScreenSettings())
    tx, _rx = trio.open_memory_channel[Item](1000)
    async with trio.open_nursery() as nursery:
        job = await runner.create(JobSpec(recording=meta.id, screen=False))
        folder = store.jobs / job.id
        accepted = [str(folder / "job.json"), str(folder), str(store.jobs)]
        assert [p for p in synced if p in accepted] == accepted
        synced.clear()
        await nursery.start(runner.run, tx)
        await runner.wait(job.id, lambda j: not j.active)
        assert job.state == "done"
        nursery.cancel_scope.cancel()  # (a thread's fsync is not cancelled: waited for)
    assert [p for p in synced if p in accepted][-3:] == accepted
