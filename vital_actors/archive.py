"""The live archive: every accepted device frame on disk before the device gets its ack.

Layout, one directory per stream run (beside the recording store's ``recordings/``)::

    <dir>/<stream>/run-<run>/meta.json    the hello (fs, channels, dtype, gain, baseline)
    <dir>/<stream>/run-<run>/samples.bin  interleaved little-endian frames, as a recording's
    <dir>/<stream>/run-<run>/frames.bin   one record per device frame: seq, t0, n, t (<QQId)

    <dir>/<stream>/run-<run>/pyr<k>.bin   the view pyramid's complete buckets (store/live.py)
    <dir>/<stream>/run-<run>/trim.json    where the frames archive retention kept begin
                                          (the files hold holes before: store/live.py Trim)

``t`` is the server's clock (Unix s) at the frame's first sample: the device's own
timestamp mapped through its clock estimate (:mod:`clock`) when it sent one, else the
arrival time less the frame's duration. ``samples.bin`` and ``meta.json`` follow the
recording layout (store/recording.py), so a run, finished or growing, is read like a
recording (:class:`store.live.LiveReader`, GET /api/v1/streams/{id}/view and /data).
Appends go samples first, pyramid second, index third; a record in ``frames.bin`` is
only trusted when its samples are all there, so a server killed mid-write restarts from
the last whole frame (:func:`scan`), and the pyramid is trimmed (or rebuilt) to match
when the run is next opened.

:func:`run_archive` is the writer actor. Ingest connections send it :class:`Append` and
:class:`Close` over one bounded channel (``buffers.archive``, a clone per connection);
it writes in a worker thread (each batch, or with the ``interval`` policy each commit
window at once, with its sync) and, per the fsync policy, advances each run's
:class:`Durable` mark, on which the connection sends its acks.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import math
import os
import shutil
import struct
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import trio

from protocol import Hello

from .stats import Stats
from .store.libc import libc_function
from .store.live import TRIM, PyramidFiles, read_trim
from .store.pyramid import BASE, FACTOR, LEVELS, bucket
from .store.recording import write_synced

__all__ = ["PRUNED", "RECORD", "Append", "ArchiveFailed", "ArchiveItem", "Close", "Durable",
           "RunFiles", "Stored", "prunable", "read_frames", "read_records", "repair",
           "run_archive", "run_dir", "scan", "stream_runs"]

_log = logging.getLogger(__name__)
RECORD = struct.Struct("<QQId")  # seq, t0 (first sample's index in the run), n, t
_ITEMSIZE = {"int16": 2, "float32": 4}
Fsync = Literal["always", "interval", "never"]


class Durable:
    """How far one stream run is safely on disk: frames up to :attr:`seq` (-1: none),
    which end at sample :attr:`samples` of the run's ``samples.bin`` (None: not known
    here, as for a run restored from disk until its next frame is durable)."""

    def __init__(self, seq: int = -1, samples: int | None = None) -> None:
        self.seq = seq
        self.samples = 0 if seq == -1 and samples is None else samples
        self.failed: str | None = None  # why the archive stopped taking this run's frames
        self._changed = trio.Event()

    def advance(self, seq: int, samples: int | None = None) -> None:
        if seq > self.seq:
            self.seq = seq
            if samples is not None:
                self.samples = samples
            self._wake()

    def fail(self, reason: str, seq: int, samples: int) -> None:
        """The archive could not write this run's frames after frame *seq*, which ends
        at sample *samples* (synced): that is where the run stands now, and waiters get
        :class:`ArchiveFailed`."""
        if seq >= self.seq:
            self.seq, self.samples = seq, samples
        self.failed = reason
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, seq: int) -> None:
        """Return once :attr:`seq` is greater than *seq*.

        Raises:
            ArchiveFailed: it never will be: the archive could not write the frames.
        """
        while self.seq <= seq:
            if self.failed is not None:
                raise ArchiveFailed(self.failed)
            await self._changed.wait()


class ArchiveFailed(Exception):
    """The archive could not write a run's frames (a full disk, an I/O error)."""


@dataclass(frozen=True, slots=True, eq=False)
class Append:
    """Frame *seq* of *stream*'s run *run*: ``data`` holds its samples as received."""

    stream: str
    run: int
    hello: Hello
    seq: int
    t0: int
    n: int
    data: bytes
    durable: Durable
    t: float = 0.0  # server time of the first sample


@dataclass(frozen=True, slots=True, eq=False)
class Close:
    """The device left: sync and close the run's files."""

    stream: str
    run: int


ArchiveItem = Append | Close
Written = tuple[Append, int]  # a frame written, and its run's sample count after it


#: A run being deleted by retention is first renamed to this prefix plus its name, which
#: no reader looks for (they look for ``run-*``).
PRUNED = ".pruned-"


def run_dir(root: Path, stream: str, run: int) -> Path:
    return root / stream / f"run-{run:06d}"


@dataclass(slots=True)
class RunFiles:
    """The open files of one run; plain blocking I/O, used from a worker thread."""

    path: Path
    hello: Hello
    samples: int = field(init=False)
    frames: int = field(init=False)
    pyramid: PyramidFiles = field(init=False)
    count: int = field(init=False)  # samples (per channel) in samples.bin
    records: int = field(init=False)  # records in frames.bin
    last_seq: int = field(init=False)  # seq of the last record (-1: none)

    def __post_init__(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "meta.json"
        if not meta.exists():
            _write_meta(meta, self.hello)
        self.samples = os.open(self.path / "samples.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:  # a full disk can fail the pyramid's rebuild: no descriptor is left behind
            self.frames = os.open(self.path / "frames.bin",
                                  os.O_RDWR | os.O_CREAT | os.O_APPEND)
            try:
                self.count = os.fstat(self.samples).st_size // self.frame_bytes
                self.records = os.fstat(self.frames).st_size // RECORD.size
                self.last_seq = _record(self.frames, self.records - 1)[0] if self.records \
                    else -1
                self.pyramid = PyramidFiles(self.path, len(self.hello.channels),
                                            self.hello.dtype, self.count)
            except BaseException:
                os.close(self.frames)
                raise
        except BaseException:
            os.close(self.samples)
            raise

    @property
    def frame_bytes(self) -> int:
        return len(self.hello.channels) * _ITEMSIZE[self.hello.dtype]

    def write(self, items: list[Append]) -> list[int]:
        """Append *items*; return the run's sample count after each of them.

        Raises:
            OSError: a write failed (a full disk): the files are cut back to what they
                held before, synced, and must be closed (the pyramid's builder is not).
        """
        data = b"".join(i.data for i in items)
        try:
            _write_all(self.samples, data)
            dtype = np.dtype(self.hello.dtype).newbyteorder("<")
            self.pyramid.append(np.frombuffer(data, dtype).reshape(-1,
                                                                   len(self.hello.channels)))
            _write_all(self.frames, b"".join(RECORD.pack(i.seq, i.t0, i.n, i.t)
                                             for i in items))
        except OSError as exc:
            try:
                os.ftruncate(self.samples, self.count * self.frame_bytes)
                os.ftruncate(self.frames, self.records * RECORD.size)
                self.sync()  # what was written before is durable, as the caller will say
            except OSError as worse:  # not even that: stop, as a crash would
                raise RuntimeError(f"archive run {self.path} cannot be repaired after "
                                   f"{exc}: {worse}") from worse
            raise
        ends = (self.count + np.cumsum([i.n for i in items])).tolist()
        self.count, self.records, self.last_seq = ends[-1], self.records + len(items), \
            items[-1].seq
        return ends  # type: ignore[no-any-return]

    def sync(self) -> None:
        os.fsync(self.samples)  # not the pyramid: derived, it is trimmed or rebuilt on open
        os.fsync(self.frames)

    def close(self) -> None:
        os.close(self.samples)
        self.pyramid.close()
        os.close(self.frames)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of *data* is written (a full disk first writes short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_meta(path: Path, hello: Hello) -> None:
    meta = {"stream": hello.stream, "fs": hello.fs, "channels": list(hello.channels),
            "dtype": hello.dtype, "gain": list(hello.gain), "baseline": list(hello.baseline),
            "device": hello.device, "source_format": "live"}
    write_synced(path, json.dumps(meta))  # scan reads it at the next start


#: With more dirty runs than this, one syncfs(2) of the archive's file system replaces
#: two fsyncs per run: measured here, 300 fsyncs took 1.16 s and one syncfs 11 ms, so a
#: few hundred live streams need it for the interval policy to keep up.
SYNCFS_ABOVE = 8


_SYNCFS = libc_function("syncfs", ctypes.c_int)


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


_FALLOCATE = libc_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
                            ctypes.c_longlong)


def punch(path: Path, length: int) -> int:
    """Free the disk blocks of *path*'s first *length* bytes, which then read as zeros
    (``fallocate(2)`` ``FALLOC_FL_PUNCH_HOLE``; size and offsets unchanged). Returns the
    bytes freed.

    Raises:
        OSError: the file system cannot (``EOPNOTSUPP``), or another failure.
    """
    if _FALLOCATE is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate(2) is not available here")
    fd = os.open(path, os.O_WRONLY)
    try:
        before = os.fstat(fd).st_blocks
        if length > 0 and _FALLOCATE(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                                     length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
        return max(0, before - os.fstat(fd).st_blocks) * 512
    finally:
        os.close(fd)


def _syncfs_at(path: Path) -> bool:
    """Flush and wait for everything written to *path*'s file system; False if that
    cannot be done here (the caller then fsyncs file by file)."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return _SYNCFS(fd) == 0
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Failure:
    """A run whose frames could not be written, for the actor to report in the trio
    thread: where its files now end."""

    key: tuple[str, int]  # (stream, run)
    durable: Durable
    reason: str
    last_seq: int  # the last frame on disk (-1: none)
    samples: int  # the run's samples on disk


@dataclass(frozen=True, slots=True)
class _Cut:
    """Where a trim would start a run (see :meth:`_Writer.trim`): its first kept index
    record and that frame's seq and first sample; *gain* estimates the bytes it frees."""

    records: int
    seq: int
    samples: int
    width: int
    gain: int


def _record(fd: int, k: int) -> tuple[int, int, int, float]:
    return cast(tuple[int, int, int, float],
                RECORD.unpack(os.pread(fd, RECORD.size, k * RECORD.size)))


def _first_stamp(path: Path) -> float | None:
    """When the first frame a run still holds was stamped (None: no frame, gone or
    unreadable)."""
    try:
        with open(path / "frames.bin", "rb") as f:
            k = read_trim(path).records
            if os.fstat(f.fileno()).st_size < (k + 1) * RECORD.size:
                return None
            return _record(f.fileno(), k)[3]
    except (OSError, ValueError, KeyError):  # ValueError, KeyError: a bad trim.json
        return None


def _cut(path: Path, before: float) -> _Cut | None:
    """Where trimming the frames stamped before *before* would start the run at *path*
    (never past its last frame); None if that deletes nothing more.

    Raises:
        FileNotFoundError: the run is gone.
    """
    trim = read_trim(path)
    with open(path / "frames.bin", "rb") as f:
        count = os.fstat(f.fileno()).st_size // RECORD.size
        lo, hi = trim.records, count - 1  # the first record stamped at or after *before*
        while lo < hi:
            mid = (lo + hi) // 2
            if _record(f.fileno(), mid)[3] < before:
                lo = mid + 1
            else:
                hi = mid
        if lo <= trim.records:
            return None
        seq, t0, _n, _t = _record(f.fileno(), lo)
    hello = json.loads((path / "meta.json").read_text())
    width = len(hello["channels"]) * _ITEMSIZE[hello["dtype"]]
    gain = (t0 - trim.samples) * width + (lo - trim.records) * RECORD.size
    return _Cut(lo, seq, t0, width, gain)


def _apply(path: Path, cut: _Cut) -> int:
    """Trim the run at *path* at *cut*; the bytes freed. Records the new start first,
    so that from then on readers start there, then punches the files."""
    # Synced before the punches: readers would otherwise take the holes for samples.
    write_synced(path / TRIM, json.dumps({"samples": cut.samples, "records": cut.records,
                                          "seq": cut.seq}))
    # What the view pyramid's unfinished buckets are rebuilt from when the run reopens
    # (PyramidFiles) stays: the samples of level 0's, and for each level the entries
    # of the unfinished bucket of the level above.
    frames = (path / "samples.bin").stat().st_size // cut.width
    freed = punch(path / "samples.bin", min(cut.samples, frames // BASE * BASE) * cut.width)
    freed += punch(path / "frames.bin", cut.records * RECORD.size)
    for k in range(LEVELS):
        above = frames // bucket(k + 1) * FACTOR if k + 1 < LEVELS else frames // bucket(k)
        entries = min(cut.samples // bucket(k), above)  # wholly before the cut
        if entries > 0 and (path / f"pyr{k}.bin").exists():  # (runs from before pyramids)
            freed += punch(path / f"pyr{k}.bin", entries * 2 * cut.width)
    _log.info("archive: trimmed run %s to frame seq %d (sample %d): %d bytes freed",
              path, cut.seq, cut.samples, freed)
    return freed


class _Writer:
    """What the actor does with a batch, in a worker thread: group by run, write, sync."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: dict[tuple[str, int], RunFiles] = {}
        self.dirty: set[tuple[str, int]] = set()
        self.failures: list[_Failure] = []
        self.can_trim = True  # until the file system says it cannot punch holes

    def write(self, batch: list[ArchiveItem]) -> list[Written]:
        """Write *batch*; return each Append written, with its run's sample count."""
        groups: dict[tuple[str, int], list[Append]] = {}
        written: list[Written] = []
        for item in batch:
            key = (item.stream, item.run)
            if isinstance(item, Close):
                written += self._flush_group(key, groups.pop(key, []))
                self._close(key)
            else:
                groups.setdefault(key, []).append(item)
        for key, items in groups.items():
            written += self._flush_group(key, items)
        return written

    def _flush_group(self, key: tuple[str, int], items: list[Append]) -> list[Written]:
        """Write one run's *items*. If that fails (a full disk), the run's files are cut
        back to their last whole frame and closed, and its connection is told
        (:attr:`failures`); frames of that connection still on their way are dropped,
        so nothing lands after a hole. A reconnecting device resumes from the disk."""
        if not items or items[0].durable.failed is not None:
            return []
        files = self.open.get(key)
        try:
            if files is None:
                files = self.open[key] = RunFiles(run_dir(self.root, *key), items[0].hello)
            ends = files.write(items)
        except OSError as exc:
            if files is not None:
                files.close()
                self.open.pop(key, None)
                self.dirty.discard(key)
            last, count = (files.last_seq, files.count) if files is not None else (-1, 0)
            self.failures.append(_Failure(key, items[0].durable, _reason(exc), last, count))
            return []
        self.dirty.add(key)
        return list(zip(items, ends, strict=True))

    def _close(self, key: tuple[str, int]) -> None:
        files = self.open.pop(key, None)
        if files is not None:
            files.sync()
            files.close()
            self.dirty.discard(key)

    def commit(self, batch: list[ArchiveItem]) -> list[Written]:
        """:meth:`write` *batch*, then :meth:`sync`: one trip to the worker thread."""
        written = self.write(batch)
        self.sync()
        return written

    def sync(self) -> None:
        dirty = [self.open[key] for key in self.dirty if key in self.open]
        self.dirty.clear()
        if len(dirty) > SYNCFS_ABOVE and _syncfs_at(self.root):
            return  # one call made every stream's writes durable
        for files in dirty:
            files.sync()

    def prune(self, retention_s: float | None, min_free: int, now: float) -> tuple[int, int]:
        """Delete the finished runs (:func:`prunable`) last written before
        ``now - retention_s``, then, while the file system has less than *min_free*
        bytes free, the oldest of the others. Returns (runs, bytes) deleted."""
        runs = size = 0
        for mtime, path, nbytes in prunable(self.root, self.open.keys()):
            if retention_s is not None and mtime < now - retention_s:
                why = f"older than {retention_s:g} s"
            elif min_free and shutil.disk_usage(self.root).free < min_free:
                why = f"less than {min_free} bytes free"
            else:
                continue
            # Renamed out of the readers' sight first, in one step: a reader finds the
            # whole run or no run, never one half deleted (see PRUNED).
            gone = path.with_name(PRUNED + path.name)
            try:
                path.rename(gone)
            except FileNotFoundError:
                continue
            shutil.rmtree(gone, ignore_errors=True)
            _log.info("archive: deleted run %s (%d bytes): %s", path, nbytes, why)
            runs, size = runs + 1, size + nbytes
        for left in self.root.glob(f"*/{PRUNED}run-*"):  # a crash between rename and rmtree
            shutil.rmtree(left, ignore_errors=True)
        return runs, size

    def housekeep(self, retention_s: float | None, min_free: int,
                  now: float) -> tuple[int, int, int]:
        """:meth:`prune`; then with *retention_s* :meth:`trim`, and with *min_free*
        :meth:`make_room`: (runs deleted, their bytes, bytes trimmed from the runs kept)."""
        runs, size = self.prune(retention_s, min_free, now)
        trimmed = 0 if retention_s is None else self.trim(retention_s, now)
        return runs, size, trimmed + (self.make_room(min_free, now) if min_free else 0)

    def trim(self, retention_s: float, now: float) -> int:
        """Delete, from the start of every run :meth:`prune` keeps, the frames written
        before ``now - retention_s``: a device that stays connected keeps one run, which
        nothing else would bound. Never a run's last frame (a restart resumes after it).
        Records the new start (:class:`Trim`, ``trim.json``) before it punches the
        samples and index records before it out of the files (:func:`punch`), so a
        reader never takes the holes for data. Returns the bytes freed; on a file
        system that cannot punch holes it logs that once and trims nothing."""
        return self._trim_all(now - retention_s)

    def make_room(self, min_free: int, now: float) -> int:
        """When the file system still has less than *min_free* bytes free once
        :meth:`prune` has deleted every finished run it may: trim the runs kept (as
        :meth:`trim` does) of their frames written before the earliest time that frees
        enough, the same time for every run, so the oldest data goes first. A full disk
        would otherwise close every device (1013) once the latest runs fill it. Never a
        run's last frame. Returns the bytes freed."""
        need = min_free - shutil.disk_usage(self.root).free
        if need <= 0 or not self.can_trim:
            return 0
        paths = sorted(self.root.glob("*/run-*"))
        firsts = [t for t in map(_first_stamp, paths) if t is not None]
        if not firsts:
            return 0
        lo, hi = min(firsts), now  # the earliest cut time whose estimate frees *need*

        def gain(before: float) -> int:
            total = 0
            for path in paths:
                try:
                    cut = _cut(path, before)
                except OSError:  # gone meanwhile, or unreadable: _trim_all says which
                    continue
                total += 0 if cut is None else cut.gain
            return total

        most = gain(hi)
        if most < need:
            _log.error("archive: less than %d bytes free, and trimming every run to its last "
                       "frame frees only %d of the %d needed", min_free, most, need)
        else:
            while hi - lo > 1.0:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if gain(mid) >= need else (mid, hi)
        _log.warning("archive: less than %d bytes free: deleting the frames written before "
                     "%s from the runs kept", min_free, time.strftime(
                         "%Y-%m-%d %H:%M:%S UTC", time.gmtime(hi)))
        return self._trim_all(hi)

    def _trim_all(self, before: float) -> int:
        if not self.can_trim:
            return 0
        freed, synced = 0, False
        for path in sorted(self.root.glob("*/run-*")):
            try:
                cut = _cut(path, before)
                if cut is None:
                    continue
                if not synced:  # a trim may cut up to a run's last frame: it must stay
                    self.sync()
                    synced = True
                freed += _apply(path, cut)
            except FileNotFoundError:  # deleted meanwhile (prune, or by hand)
                continue
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    _log.warning("archive: this file system cannot punch holes in files "
                                 "(%s): retention deletes finished runs only", exc)
                    self.can_trim = False
                    return freed
                _log.error("archive: cannot trim run %s: %s", path, _reason(exc))
            except (ValueError, KeyError) as exc:  # its trim.json or meta.json is damaged
                _log.error("archive: cannot trim run %s: %r", path, exc)
        return freed

    def close_all(self) -> None:
        self.sync()
        for files in self.open.values():
            files.close()
        self.open.clear()


async def run_archive(
    inbox: trio.MemoryReceiveChannel[ArchiveItem],
    *,
    root: Path,
    fsync: Fsync = "interval",
    interval_s: float = 1.0,
    commit_delay_s: float = 0.0,
    max_batch: int = 512,
    retention_s: float | None = None,
    min_free_bytes: int = 0,
    prune_interval_s: float = 60.0,
    stats: Stats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write what *inbox* brings under *root*; mark frames durable per the *fsync* policy.

    ``always``: write and fsync each batch before its frames count as durable.
    ``interval`` (group commit): keep what arrives until the inbox is empty but not
    before *commit_delay_s* after the first frame of the window, and under a steady
    inflow at most *interval_s* after it; then write the window and fsync it, in one
    trip to a worker thread. So acks wait that long at most, and one write per file of
    each run, one sync and one ack per device serve every frame of the window (written
    as they came, batch by batch, each run's files were written once per frame, and the
    thread trips cost as much again: docs/benchmarks.md). A window that grows past
    ``8 * max_batch`` items is written at once and synced with the rest. With
    *commit_delay_s* 0 it commits whenever the inbox is empty. ``never``: write each
    batch; durable once written to the OS (survives a killed server, not a lost
    machine). Returns, after writing and syncing what it holds, when every sender has
    closed *inbox*.

    With *retention_s* or *min_free_bytes*, finished runs are deleted at the start and
    every *prune_interval_s* (:meth:`_Writer.prune`), and the old frames of the runs
    kept are too (:meth:`_Writer.trim`, :meth:`_Writer.make_room`), counted in *stats*.
    """
    writer = _Writer(root)
    pruning = retention_s is not None or min_free_bytes > 0
    next_prune = trio.current_time() if pruning else math.inf
    pending: list[ArchiveItem] = []  # interval: received, to be written with the sync
    unsynced: list[Written] = []
    deadline = math.inf  # when the unsynced writes are synced, whatever comes
    soonest = math.inf  # when they may be, once the inbox is empty
    with inbox:
        task_status.started()
        try:
            while True:
                batch: list[ArchiveItem] = []
                idle = inbox.statistics().current_buffer_used == 0
                wake = min(deadline, soonest) if idle else deadline
                with trio.move_on_at(min(wake, next_prune)):
                    try:
                        batch.append(await inbox.receive())
                    except trio.EndOfChannel:
                        break
                    while len(batch) < max_batch:
                        try:
                            batch.append(inbox.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                if batch and fsync == "interval":
                    pending += batch
                    if len(pending) >= 8 * max_batch:  # a long window: write what it has
                        unsynced += await _write(writer, pending)
                        pending = []
                elif batch:
                    unsynced += await _write(writer, batch)
                now = trio.current_time()
                held = bool(pending or unsynced)
                if held and fsync != "interval":
                    deadline = now  # sync (or not) right now
                elif held and deadline == math.inf:
                    deadline, soonest = now + interval_s, now + commit_delay_s
                idle = inbox.statistics().current_buffer_used == 0
                if held and (now >= deadline or (idle and now >= soonest)):
                    if fsync == "interval":
                        unsynced += await _write(writer, pending, sync=True)
                        pending = []
                    elif fsync == "always":
                        await trio.to_thread.run_sync(writer.sync)
                    _mark(unsynced)
                    unsynced, deadline, soonest = [], math.inf, math.inf
                if now >= next_prune:
                    runs, size, trimmed = await trio.to_thread.run_sync(
                        writer.housekeep, retention_s, min_free_bytes, time.time())
                    if stats is not None:
                        stats.totals.archive_runs_pruned += runs
                        stats.totals.archive_bytes_pruned += size
                        stats.totals.archive_bytes_trimmed += trimmed
                    next_prune = trio.current_time() + prune_interval_s
        finally:
            with trio.CancelScope(shield=True):
                unsynced += await _write(writer, pending)
                await trio.to_thread.run_sync(writer.close_all)
            _mark(unsynced)


def prunable(root: Path, open_runs: Collection[tuple[str, int]]) -> list[tuple[float, Path, int]]:
    """The runs under *root* that may be deleted, least recently written first, as
    (last write, path, bytes): every run but each stream's latest (its device resumes
    it, and a restart restores the stream from it) and but those in *open_runs*
    ((stream, run) pairs the writer has open)."""
    out: list[tuple[float, Path, int]] = []
    if not root.is_dir():
        return out
    for stream_dir in root.iterdir():
        if not stream_dir.is_dir():
            continue
        for path in stream_runs(stream_dir)[:-1]:
            if (stream_dir.name, int(path.name.removeprefix("run-"))) in open_runs:
                continue
            try:
                stats = [f.stat() for f in path.iterdir() if f.is_file()]
                last = max((st.st_mtime for st in stats), default=path.stat().st_mtime)
            except FileNotFoundError:  # gone meanwhile
                continue
            # What deleting frees: a trimmed run's files are partly holes (its size
            # counts them, its blocks do not).
            out.append((last, path, sum(min(st.st_size, 512 * st.st_blocks) for st in stats)))
    out.sort()
    return out


def stream_runs(stream_dir: Path) -> list[Path]:
    """A stream's runs, oldest first: its ``run-<n>`` directories that hold a meta.json.
    One without holds no frame (meta.json is written before any): a crash or a full
    disk came between its mkdir and its meta.json. It must not pass for the latest."""
    return sorted(p for p in stream_dir.glob("run-*")
                  if p.name.removeprefix("run-").isdigit() and (p / "meta.json").exists())


def _mark(items: list[Written]) -> None:
    for item, samples in items:
        item.durable.advance(item.seq, samples)


async def _write(writer: _Writer, items: list[ArchiveItem], *,
                 sync: bool = False) -> list[Written]:
    """*writer* writes *items* (and with *sync*, syncs) in a worker thread; then the
    connections of the runs it could not write are told (``_Writer._flush_group``)."""
    written = await trio.to_thread.run_sync(writer.commit if sync else writer.write, items)
    for f in writer.failures:
        _log.error("archive: cannot write stream %s run %d after frame %d: %s", *f.key,
                   f.last_seq, f.reason)
        f.durable.fail(f.reason, f.last_seq, f.samples)
    writer.failures.clear()
    return written


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f" ({errno.errorcode.get(exc.errno, exc.errno)})"
                                       if exc.errno else "")


# --- reading back -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """The last run of a stream as found on disk: where a resuming device continues."""

    hello: Hello
    run: int
    next_seq: int
    t0: int
    frames: int


def _hello(meta: dict[str, object]) -> Hello:
    return Hello(stream=str(meta["stream"]), fs=float(meta["fs"]),  # type: ignore[arg-type]
                 channels=tuple(meta["channels"]),  # type: ignore[arg-type]
                 dtype=meta["dtype"],  # type: ignore[arg-type]
                 gain=tuple(meta["gain"]),  # type: ignore[arg-type]
                 baseline=tuple(meta["baseline"]),  # type: ignore[arg-type]
                 device=meta.get("device"))  # type: ignore[arg-type]


def repair(path: Path, hello: Hello) -> tuple[int, int, int]:
    """Trim a run cut short by a crash to its last whole frame: (next_seq, t0, frames).

    A crash can only cut a run's end: the samples are written before their records, in
    order, and frame *k*'s samples end at ``(t0 + n) x frame width``. So only the last
    records are read, from the end back to the first whose samples are all on disk:
    a restart costs the same for a run of a minute and one of a month (reading and
    unpacking the whole index took 0.33 s per day of 100-ms frames)."""
    frame_bytes = len(hello.channels) * _ITEMSIZE[hello.dtype]
    index = path / "frames.bin"
    samples = path / "samples.bin"
    have = samples.stat().st_size if samples.exists() else 0
    seq, t0, n = -1, 0, 0  # the last whole frame's (none: the run starts afresh)
    with open(index, "ab+") as f:  # made if missing, as before
        kept = os.fstat(f.fileno()).st_size // RECORD.size
        while kept:
            seq, t0, n, _t = _record(f.fileno(), kept - 1)
            if (t0 + n) * frame_bytes <= have:
                break
            seq, t0, n, kept = -1, 0, 0, kept - 1
        f.truncate(kept * RECORD.size)  # also a partial record after the last whole one
    with open(samples, "ab") as f:
        f.truncate((t0 + n) * frame_bytes)
    return seq + 1, t0 + n, kept


def read_frames(path: Path) -> Iterator[tuple[int, int, int]]:
    """The (seq, t0, n) records of a run."""
    for seq, t0, n, _t in read_records(path):
        yield seq, t0, n


def read_records(path: Path) -> Iterator[tuple[int, int, int, float]]:
    """The (seq, t0, n, t) records of a run."""
    raw = (path / "frames.bin").read_bytes()
    for k in range(0, len(raw) - RECORD.size + 1, RECORD.size):
        yield RECORD.unpack_from(raw, k)


def scan(root: Path) -> list[Stored]:
    """Each stream's latest run under *root*, repaired; what the registry restores."""
    out: list[Stored] = []
    if not root.is_dir():
        return out
    for stream_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = stream_runs(stream_dir)
        if not runs:
            continue
        hello = _hello(json.loads((runs[-1] / "meta.json").read_text()))
        next_seq, t0, frames = repair(runs[-1], hello)
        out.append(Stored(hello, int(runs[-1].name.removeprefix("run-")), next_seq, t0,
                          frames))
    return out
