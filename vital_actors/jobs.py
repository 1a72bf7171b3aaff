"""Batch jobs: a priority queue of processing jobs, a bounded number running at once.

Each job lives in ``<store>/jobs/<id>/`` (``job.json`` plus its checkpoint and its
unfinished result), so a restarted server finds every unfinished job and resumes it
from its last checkpoint. A running job does one chunk at a time in a worker thread
(numpy releases the GIL; the event loop keeps serving), checks for cancellation
between chunks, and publishes ``progress`` events on topic ``job/<id>``.

With a :class:`JobBoard` (the Redis bus, ``vital_actors/bus/jobs.py``) the queue is
shared: a job queued on any node is run by whichever node has a free slot, under a
lease; a node that dies loses its jobs to another, which resumes them from their
checkpoints in the shared store. The async methods (:meth:`JobRunner.create`,
:meth:`~JobRunner.get`, :meth:`~JobRunner.all_jobs`, :meth:`~JobRunner.stop`) serve the
API in both modes; :meth:`~JobRunner.submit` and :meth:`~JobRunner.cancel` are the
in-process ones.

Progress goes to the broadcaster's inbox with ``send_nowait``: a full pipeline skips a
progress update (the next one supersedes it) rather than stall the job.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import trio
from pydantic import BaseModel, ConfigDict, Field

from protocol import Event, Priority

from .filtering import FilterSettingsError
from .messages import Item, Publication
from .processing import Computed, Processing
from .settings import FilterSettings, JobSettings, ScreenSettings
from .store import RecordingStore
from .store.recording import fsync_path
from .store.store import new_id

__all__ = ["Job", "JobBoard", "JobBoardUnavailableError", "JobRunner", "JobSpec",
           "QueueFullError", "rank"]

PriorityName = Literal["low", "normal", "high", "urgent"]
_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
_seq = itertools.count()
_JOB_PATH = re.compile(r"^(\*|job-[0-9a-f]{1,32})/job\.json$")  # what _on_disk may read


class QueueFullError(Exception):
    pass


class JobBoardUnavailableError(Exception):
    """The shared queue cannot be reached (Redis is away): try again shortly."""


class _LostError(Exception):
    """Another node holds this job's lease now: stop touching its files."""


class JobSpec(BaseModel):
    """The body of POST /api/v1/jobs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["process"] = "process"
    recording: str
    filter: FilterSettings = Field(default_factory=FilterSettings)
    priority: PriorityName = "normal"
    screen: bool = Field(True, description="also run the quality screening (beats, quality, "
                         "alerts); false: filter only")


class Job(BaseModel):
    """A job's public state (GET /api/v1/jobs/{id}); also its ``job.json``."""

    id: str
    spec: JobSpec
    state: Literal["queued", "running", "done", "failed", "cancelled"] = "queued"
    progress: float = 0.0
    frames_done: int = 0
    frames_total: int = 0
    rate: float | None = Field(None, description="frames per second while running")
    eta_s: float | None = None
    created: float = Field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    resumed_from: int | None = Field(None, description="frame of the checkpoint resumed")
    result: str | None = Field(None, description="id of the result recording")
    events: int = 0
    error: str | None = None
    node: str | None = Field(None, description="the node running (or that ran) it, with "
                             "the Redis bus; null in one process")

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


def rank(job: Job) -> int:
    return _RANK[job.spec.priority]


@dataclass(order=True, slots=True)
class _Entry:
    rank: int
    seq: int
    job: Job = field(compare=False)


class JobBoard(Protocol):
    """A job queue shared by several nodes (implemented over Redis in
    ``vital_actors/bus/jobs.py``). The API calls (put, queued, get, all, cancel) raise
    :class:`JobBoardUnavailableError` when it cannot be reached; the runner's calls
    (take, check, save, release) ride that out."""

    node: str

    def open(self, seed: Iterable[Job]) -> AbstractAsyncContextManager[Any]: ...
    async def put(self, job: Job) -> None: ...
    async def queued(self) -> int: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def all(self) -> list[Job]: ...
    async def cancel(self, job_id: str) -> Literal["queued", "running", ""]: ...
    async def take(self) -> Job: ...
    async def check(self, job_id: str) -> tuple[bool, bool]: ...
    async def save(self, job: Job) -> None: ...
    async def release(self, job: Job) -> None: ...
    async def hand_back(self, job: Job) -> None: ...


class JobRunner:
    """Owns the job queue; :meth:`run` serves it with ``max_concurrent`` workers.

    With *board* the queue is the board's, shared with other nodes; ``jobs`` then holds
    the jobs this node created or ran.
    """

    def __init__(self, store: RecordingStore, settings: JobSettings,
                 screen: ScreenSettings, *, board: JobBoard | None = None) -> None:
        self.store, self.settings, self.screen = store, settings, screen
        self.board = board
        self.jobs: dict[str, Job] = {}
        self._queue: list[_Entry] = []
        self._wakeup = trio.Event()
        self._cancel: set[str] = set()
        self._changed = trio.Event()  # set (and replaced) whenever a job changes
        self.outbox: trio.MemorySendChannel[Item] | None = None
        if board is not None:
            return  # the board adopts the store's unfinished jobs (see _unfinished)
        for job in self._on_disk():
            if job.active:  # the last server stopped (or died) before it finished
                job.state = "queued"
                self._push(job)
            self.jobs[job.id] = job

    def _on_disk(self, pattern: str = "*/job.json") -> Iterator[Job]:
        if not _JOB_PATH.match(pattern):
            return
        for path in sorted(self.store.jobs.glob(pattern)):
            with contextlib.suppress(OSError, ValueError):  # another node is replacing it
                yield Job.model_validate_json(path.read_text())

    def _unfinished(self) -> Iterator[Job]:
        return (job for job in self._on_disk() if job.active)

    def submit(self, spec: JobSpec) -> Job:
        """Queue a job (in this process; see :meth:`create` for either mode).

        Raises:
            RecordingNotFoundError, FilterSettingsError (not at the recording's rate),
            QueueFullError.
        """
        job = self._new(spec, sum(j.state == "queued" for j in self.jobs.values()))
        self._push(job)
        return job

    def _new(self, spec: JobSpec, queued: int) -> Job:
        meta = self.store.meta(spec.recording)
        problems = spec.filter.problems_at(meta.fs)
        if problems:
            raise FilterSettingsError(problems)
        if queued >= self.settings.max_queued:
            raise QueueFullError(f"{self.settings.max_queued} jobs are waiting")
        job = Job(id=new_id("job"), spec=spec, frames_total=meta.frames)
        (self.store.jobs / job.id).mkdir()
        self.jobs[job.id] = job
        self._save(job)
        return job

    # --- the API's calls, in either mode -----------------------------------------------------

    async def create(self, spec: JobSpec) -> Job:
        """Queue a job where any node may run it (this process without a board).

        Raises:
            what :meth:`submit` raises, and JobBoardUnavailableError.
        """
        if self.board is None:
            job = self.submit(spec)
        else:
            job = self._new(spec, await self.board.queued())
            try:
                await self.board.put(job)
            except JobBoardUnavailableError:
                del self.jobs[job.id]  # refused: leave nothing behind that looks queued
                shutil.rmtree(self.store.jobs / job.id, ignore_errors=True)
                raise
        await self._durable(job)  # accepted: it must outlive a power loss
        return job

    async def get(self, job_id: str) -> Job | None:
        """Job *job_id*; with a board, as the board has it, else (Redis away or
        restarted since it finished) as the shared store has it."""
        if self.board is None:
            return self.jobs.get(job_id)
        with contextlib.suppress(JobBoardUnavailableError):
            found = await self.board.get(job_id)
            if found is not None:
                return found
        return next((j for j in self._on_disk(f"{job_id}/job.json")), None)

    async def all_jobs(self) -> list[Job]:
        if self.board is None:
            return list(self.jobs.values())
        shared: list[Job] = []
        with contextlib.suppress(JobBoardUnavailableError):
            shared = await self.board.all()
        merged = {j.id: j for j in self._on_disk()} | {j.id: j for j in shared}
        return sorted(merged.values(), key=lambda j: j.created)

    async def stop(self, job_id: str) -> Job | None:
        """Cancel a job wherever it runs: a queued one at once, a running one after its
        chunk. None: no such job."""
        if self.board is None:
            return self.cancel(job_id) if job_id in self.jobs else None
        found = await self.board.cancel(job_id)
        job = await self.board.get(job_id)
        if found == "queued" and job is not None:
            self._finish(job, "cancelled")
            await self.board.save(job)
        elif found == "running" and job_id in self.jobs:
            self._cancel.add(job_id)  # running here: no need to wait for the board
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop: a queued one at once, a running one after its chunk."""
        job = self.jobs[job_id]
        if job.state == "queued":
            self._finish(job, "cancelled")
        elif job.state == "running":
            self._cancel.add(job_id)
        return job

    def _push(self, job: Job) -> None:
        heapq.heappush(self._queue, _Entry(rank(job), next(_seq), job))
        self._wakeup.set()

    async def wait(self, job_id: str, until: Callable[[Job], bool]) -> Job:
        """Return job *job_id* once ``until(job)`` holds (checked after each change;
        with a board, also waiting for this node to run it)."""
        while (job := self.jobs.get(job_id)) is None or not until(job):
            await self._changed.wait()
        return job

    async def _durable(self, job: Job) -> None:
        """Make *job*'s ``job.json`` as :meth:`_save` last wrote it durable, and its
        directory's entry: in a worker thread (fsyncs can take the disk's time). For its
        acceptance and its end; progress in between is superseded, so not synced."""
        folder = self.store.jobs / job.id
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
            await trio.to_thread.run_sync(_sync_job, folder)

    def _save(self, job: Job) -> None:
        self._changed.set()
        self._changed = trio.Event()
        path = self.store.jobs / job.id / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(job.model_dump_json())
        tmp.replace(path)

    async def run(self, outbox: trio.MemorySendChannel[Item] | None = None, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the queue until cancelled. Owns *outbox* (progress events).

        Sets the interpreter's thread switch interval (process-wide): a job's Python
        code in its worker thread then hands the GIL back to the event loop within
        ``jobs.switch_interval_ms`` instead of CPython's default 5 ms.
        """
        self.outbox = outbox
        sys.setswitchinterval(self.settings.switch_interval_ms / 1000)
        board = (self.board.open(_Rereadable(self._unfinished)) if self.board is not None
                 else contextlib.nullcontext())
        with outbox if outbox is not None else contextlib.nullcontext():
            async with board, trio.open_nursery() as nursery:
                for _ in range(self.settings.max_concurrent):
                    nursery.start_soon(self._worker)
                task_status.started()

    async def _worker(self) -> None:
        while True:
            if self.board is not None:
                await self._run_job(await self.board.take())
                continue
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            job = heapq.heappop(self._queue).job
            if job.state == "queued":
                await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        if self.board is not None:
            job.node = self.board.node
        jobdir = self.store.jobs / job.id
        # Running from here: a cancel while the job opens (in a worker thread) is then
        # noted for _chunks, not taken as a queued job's, which this run would overrule.
        job.state, job.started = "running", time.time()
        try:
            reader = self.store.reader(job.spec.recording)
            work = await trio.to_thread.run_sync(partial(
                Processing, jobdir, reader, job_id=job.id, filter_settings=job.spec.filter,
                screen_settings=self.screen if job.spec.screen else None,
                chunk_frames=self.settings.chunk_frames))
        except Exception as exc:  # the recording was deleted, or the settings do not fit
            await self._finished(job, "failed", f"{type(exc).__name__}: {exc}")
            return
        job.resumed_from = work.next_frame or None
        self._save(job)
        await self._share(job)
        try:
            await self._chunks(job, work)
        except _LostError:
            work.close()  # another node runs it now: its files are that node's
            return
        except Exception as exc:  # e.g. its recording was deleted under it
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # the one error of a chunk's two threads
            work.close()
            await self._finished(job, "failed", f"{type(exc).__name__}: {exc}")
            return
        except BaseException:
            work.close()  # cancelled (shutdown): the checkpoint stays for the next start
            await self._hand_back(job)
            raise
        if job.id in self._cancel:
            work.close()
            await self._finished(job, "cancelled")
            return
        try:
            meta = await trio.to_thread.run_sync(work.commit, self.store, new_id())
        except Exception as exc:  # e.g. the disk is full: the job fails, not the runner
            work.close()
            await self._finished(job, "failed", f"{type(exc).__name__}: {exc}")
            return
        job.result, job.events = meta.id, work.events
        await self._finished(job, "done")

    async def _share(self, job: Job) -> None:
        if self.board is not None:
            await self.board.save(job)

    async def _finished(self, job: Job, state: Any, error: str | None = None) -> None:
        self._finish(job, state, error)
        await self._durable(job)
        if self.board is not None:
            await self.board.save(job)
            await self.board.release(job)

    async def _hand_back(self, job: Job) -> None:
        """This node stops (shutdown) in the middle of *job*: with a board, queue it
        again at once for another node, which resumes it from its checkpoint."""
        if self.board is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            job.state, job.rate, job.eta_s = "queued", None, None
            self._save(job)
            await self.board.hand_back(job)

    async def _check(self, job: Job) -> None:
        """With a board: renew the lease; note a cancel asked on any node.

        Raises:
            _LostError: another node holds the job now (this one stalled past its lease).
        """
        if self.board is None:
            return
        ours, cancel = await self.board.check(job.id)
        if not ours:
            raise _LostError(job.id)
        if cancel:
            self._cancel.add(job.id)

    async def _chunks(self, job: Job, work: Processing) -> None:
        """Compute chunk k+1 while chunk k is written (two worker threads), until done
        or cancelled; progress and the checkpoint follow the written chunks. With a
        board, each round first checks the lease and a cancel from another node."""
        t_start, f_start = time.monotonic(), work.next_frame
        ready: list[Computed] = []
        while ready or not work.computed_all:
            await self._check(job)
            if job.id in self._cancel:
                break
            written, ready = ready, []
            async with trio.open_nursery() as nursery:
                if not work.computed_all:
                    nursery.start_soon(_compute, work, ready)
                for chunk in written:
                    nursery.start_soon(partial(trio.to_thread.run_sync, work.write, chunk))
            if written:
                elapsed = time.monotonic() - t_start
                job.frames_done = work.next_frame
                job.progress = work.next_frame / max(1, work.total)
                job.rate = (work.next_frame - f_start) / elapsed if elapsed > 0 else None
                left = work.total - work.next_frame
                job.eta_s = left / job.rate if job.rate else None
                self._save(job)
                await self._share(job)
                self._publish(job)

    def _finish(self, job: Job, state: Any, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.rate = job.eta_s = None
        if state != "done":
            shutil.rmtree(self.store.jobs / job.id / "out", ignore_errors=True)
            (self.store.jobs / job.id / "checkpoint.pkl").unlink(missing_ok=True)
        self._cancel.discard(job.id)
        self._save(job)
        self._publish(job)

    def _publish(self, job: Job) -> None:
        if self.outbox is None:
            return
        body = json.loads(job.model_dump_json(include={
            "id", "state", "progress", "frames_done", "frames_total", "rate", "eta_s",
            "result", "error"}))
        # A full pipeline skips this update: the next one supersedes it.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError,
                                 trio.BrokenResourceError):
            self.outbox.send_nowait(Publication(Event("progress", f"job/{job.id}",
                                                      Priority.BULK, body)))


@dataclass(slots=True)
class _Rereadable:
    """An iterable that calls *make* afresh on each iteration (the store's jobs now)."""

    make: Callable[[], Iterator[Job]]

    def __iter__(self) -> Iterator[Job]:
        return self.make()


async def _compute(work: Processing, into: list[Computed]) -> None:
    into.append(await trio.to_thread.run_sync(work.compute))


def _sync_job(folder: Path) -> None:
    """fsync *folder*'s ``job.json``, *folder* (the rename into it) and its parent (the
    folder's own entry, new at submit)."""
    for path in (folder / "job.json", folder, folder.parent):
        fsync_path(path)
