"""Jobs over the Redis bus: queued on any node, run by any node with a free slot.

Nodes share a real redis-server and one store directory (as workers on one machine do).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from httpclient import get_json, request
from redisserver import Redis, redis_server
from test_bus import node, pytestmark, subscribe, url
from test_jobs import _SERVE, _ecg_like, _process, _store_recording

import protocol as P
from vital_actors.bus import RedisJobBoard
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.jobs import Job, JobSpec
from vital_actors.settings import BusSettings
from vital_actors.store import Meta, RecordingStore

__all__ = ["pytestmark"]  # test_bus's warning filters apply here too

CHUNK = 8192


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    yield from redis_server(tmp_path)
    # What coredis leaves to the collector (see test_bus) is collected here, under this
    # module's warning filters, not at the end of the session.
    gc.collect()


def _jobs_settings(root: Path) -> dict[str, Any]:
    return {"store": {"dir": root}, "jobs": {"chunk_frames": CHUNK, "max_concurrent": 1}}


async def _submit(server: Server, recording: Meta) -> str:
    assert server.port is not None
    return await _submit_to(server.port, recording)


async def _first_to(servers: list[Server], job_id: str,
                    until: Callable[[Job], bool]) -> tuple[Server, Job]:
    """The node that runs *job_id*, once ``until(job)`` holds there."""
    found: list[tuple[Server, Job]] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async def one(server: Server) -> None:
                found.append((server, await server.jobs.wait(job_id, until)))
                nursery.cancel_scope.cancel()

            for server in servers:
                nursery.start_soon(one, server)
    return found[0]


def _settled(job: Job) -> bool:
    return not job.active


async def test_a_job_queued_on_a_busy_node_runs_on_another_and_is_cancelled_from_any(
        redis: Redis, tmp_path: Path, nursery: trio.Nursery) -> None:
    root = tmp_path / "store"
    store = RecordingStore(root)
    long, short = (_store_recording(store, _ecg_like(n, 1)) for n in (3_000_000, 600_000))
    async with node(redis, "a", nursery, **_jobs_settings(root)) as a, \
            node(redis, "b", nursery, **_jobs_settings(root)) as b:
        first = await _submit(a, long)
        busy, _ = await _first_to([a, b], first, lambda j: j.state == "running")
        free = b if busy is a else a
        assert busy.port is not None and free.port is not None
        # busy's one job slot is taken: a job submitted there is run by the other node,
        # and its progress reaches a subscriber on busy through the bus.
        async with connect(url(busy), P.SUBSCRIBE_PATH) as sub:
            second = await _submit(busy, short)
            await subscribe(sub, f"job/{second}", seen_by=free)
            states: list[str] = []
            with trio.fail_after(60):
                while not states or states[-1] == "running":
                    msg = await receive(sub)
                    if isinstance(msg, P.Event) and msg.topic == f"job/{second}":
                        states.append(msg.body["state"])
        _, done = await _first_to([free], second, _settled)
        assert states[-1] == "done" == done.state and done.node == free.bus.node  # type: ignore[union-attr]
        assert done.result is not None and RecordingStore(root).meta(done.result).frames == \
            short.frames
        # Every node shows the same state.
        assert a.port is not None and b.port is not None
        assert await get_json(a.port, f"/api/v1/jobs/{second}") == \
            await get_json(b.port, f"/api/v1/jobs/{second}")
        listed = (await get_json(free.port, "/api/v1/jobs"))["jobs"]
        assert [j["id"] for j in listed] == [first, second]
        assert listed[0]["state"] == "running" and listed[0]["rate"] > 0
        # Cancel the long job from the node that is not running it: within one chunk.
        status, body, _ = await request(free.port, "POST", f"/api/v1/jobs/{first}/cancel")
        assert status == 200, body
        asked = json.loads(body)["frames_done"]  # as the board had it once asked to stop
        _, cancelled = await _first_to([busy], first, _settled)
        assert cancelled.state == "cancelled"
        assert asked <= cancelled.frames_done <= asked + CHUNK < long.frames
        assert not (root / "jobs" / first / "out").exists()
        assert (await get_json(free.port, f"/api/v1/jobs/{first}"))["state"] == "cancelled"
        status, _, _ = await request(free.port, "POST", "/api/v1/jobs/job-nope/cancel")
        assert status == 404


async def test_jobs_survive_a_redis_restart(redis: Redis, tmp_path: Path,
                                            nursery: trio.Nursery) -> None:
    """Redis restarts empty: running jobs go on, a queued one is rebuilt from the store."""
    root = tmp_path / "store"
    store = RecordingStore(root)
    rec = _store_recording(store, _ecg_like(1_000_000, 1))
    async with node(redis, "a", nursery, **_jobs_settings(root)) as a, \
            node(redis, "b", nursery, **_jobs_settings(root)) as b:
        running = [await _submit(a, rec), await _submit(b, rec)]
        for job_id in running:
            await _first_to([a, b], job_id, lambda j: j.state == "running")
        waiting = await _submit(a, rec)  # both slots are busy: it waits in the queue
        assert (await get_json(b.port or 0, f"/api/v1/jobs/{waiting}"))["state"] == "queued"
        redis.stop()
        # Redis away: the store answers for the jobs; a new job is refused, clearly.
        assert (await get_json(b.port or 0, f"/api/v1/jobs/{waiting}"))["state"] == "queued"
        status, body, _ = await request(b.port or 0, "POST", "/api/v1/jobs",
                                        {"recording": rec.id})
        assert status == 503 and b"unreachable" in body, body
        redis.start()  # same port, empty
        for job_id in [*running, waiting]:
            _, job = await _first_to([a, b], job_id, _settled)
            assert job.state == "done", job
        assert (await get_json(b.port or 0, f"/api/v1/jobs/{waiting}"))["state"] == "done"
        listed = (await get_json(a.port or 0, "/api/v1/jobs"))["jobs"]
        assert sorted(j["id"] for j in listed) == sorted([*running, waiting])  # no 503 one
        # Idle nodes ride out an outage too: they keep looking and take the next job.
        redis.stop()
        await trio.sleep(5 * 0.05)  # several of their polls (bus.job_poll_s) fail
        redis.start()
        short = _store_recording(store, _ecg_like(20_000, 1))
        after = await _submit(b, short)
        _, job = await _first_to([a, b], after, _settled)
        assert job.state == "done"


async def test_a_node_that_stops_hands_its_job_to_another(
        redis: Redis, tmp_path: Path, nursery: trio.Nursery) -> None:
    root = tmp_path / "store"
    rec = _store_recording(RecordingStore(root), _ecg_like(1_000_000, 1))
    # A lease far longer than the test: the job moves because it is handed back, not
    # because its lease ran out.
    async with node(redis, "a", nursery, bus={"lease_s": 600}, **_jobs_settings(root)) as a, \
            node(redis, "b", nursery, bus={"lease_s": 600}, **_jobs_settings(root)) as b:
        job_id = await _submit(a, rec)
        first, _ = await _first_to([a, b], job_id, lambda j: j.frames_done >= 4 * CHUNK)
        other = b if first is a else a
        first.shutdown()  # draining: the job goes back to the queue at its checkpoint
        _, done = await _first_to([other], job_id, _settled)
    assert done.state == "done" and done.node == other.bus.node  # type: ignore[union-attr]
    assert done.resumed_from is not None and done.resumed_from >= 4 * CHUNK
    store = RecordingStore(root)
    reference = _process(store, rec, tmp_path / "ref", chunk=CHUNK)
    assert done.result is not None
    assert store.meta(done.result).checksum == reference.checksum


async def test_a_stalled_node_takes_its_job_back_only_while_no_one_else_has(
        redis: Redis) -> None:
    """Leases over a real Redis, two boards and no servers: a node that stalled past
    its lease continues its job if nobody took it meanwhile (and takes it out of the
    queue, so nobody does), and learns that it lost it otherwise."""
    settings = BusSettings(url=redis.url, lease_s=0.2)
    a, b = RedisJobBoard(settings, node="a"), RedisJobBoard(settings, node="b")
    first, second, third = (Job(id=f"job-{i}", spec=JobSpec(recording="rec-x"),
                                created=i) for i in (1, 2, 3))
    second.spec.priority = "urgent"
    # Their clients without open(): no renewer, so a lease runs out when a test says.
    async with a._client, b._client:
        await a._client.set(a.k_seeded, "test")  # nothing in a store to adopt
        await a.put(first)
        assert (await a.take()).id == first.id
        await trio.sleep(0.3)  # a stalls past its lease
        await b.put(second)  # b's claim puts the first back in the queue, takes the second
        assert (await b.take()).id == second.id
        assert await a.check(first.id) == (True, False)  # nobody took it: a goes on
        assert await b._claim() == ""  # and it is not in the queue any more
        await trio.sleep(0.3)  # a stalls again
        await b.put(third)
        await b.release(second)
        assert {(await b.take()).id, (await b.take()).id} == {first.id, third.id}
        assert await a.check(first.id) == (False, False)  # b has it now: a must stop
        assert await b.cancel(first.id) == "running"
        assert await b.check(first.id) == (True, True)


def _node_process(redis: Redis, root: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VITAL_STORE__DIR": str(root), "VITAL_JOBS__CHUNK_FRAMES": "2048",
           "VITAL_SERVER__PORT": "0", "VITAL_ARCHIVE__ENABLED": "false",
           "VITAL_BUS__URL": redis.url, "VITAL_BUS__NODE": name, "VITAL_BUS__LEASE_S": "1",
           "VITAL_BUS__JOB_POLL_S": "0.05"}
    return subprocess.Popen([sys.executable, "-c", _SERVE], env=env, stdout=subprocess.PIPE)


async def _job(port: int, job_id: str) -> dict[str, Any]:
    """Another process: polling its API is the only way to watch it."""
    await trio.sleep(0.02)
    return await get_json(port, f"/api/v1/jobs/{job_id}")  # type: ignore[no-any-return]


async def test_a_job_whose_node_is_killed_is_finished_by_another_byte_identical(
        redis: Redis, tmp_path: Path) -> None:
    root = tmp_path / "store"
    meta = _store_recording(RecordingStore(root), _ecg_like(600_000, 1))
    procs = {name: _node_process(redis, root, name) for name in ("p0", "p1")}
    try:
        ports = {}
        for name, proc in procs.items():
            assert proc.stdout is not None
            ports[name] = int(proc.stdout.readline().split()[0])
        job_id = await _submit_to(ports["p0"], meta)
        with trio.fail_after(60):
            while (job := await _job(ports["p0"], job_id))["frames_done"] < 100_000:
                pass
            victim = job["node"]
            procs[victim].send_signal(signal.SIGKILL)  # no cleanup of any kind
            procs[victim].wait()
            (survivor,) = set(procs) - {victim}
            while (job := await _job(ports[survivor], job_id))["state"] != "done":
                assert job["state"] in ("running", "queued"), job
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert job["node"] == survivor and 100_000 <= job["resumed_from"] < meta.frames
    store = RecordingStore(root)
    reference = _process(store, meta, tmp_path / "ref", chunk=2048)
    for name in ("samples.bin", "pyr0.bin", "events.jsonl"):
        got = (store.path(job["result"]) / name).read_bytes()
        if name == "events.jsonl":  # events name their job: the reference's is "ref"
            got = got.replace(f"job-{job_id}".encode(), b"job-ref")
        assert got == (store.path(reference.id) / name).read_bytes(), name
    assert store.meta(job["result"]).checksum == reference.checksum


async def _submit_to(port: int, recording: Meta) -> str:
    status, body, _ = await request(port, "POST", "/api/v1/jobs", {"recording": recording.id})
    assert status == 201, body
    return str(json.loads(body)["id"])
