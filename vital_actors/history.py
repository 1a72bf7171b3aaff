"""Topic history for subscriber recovery: positions, the in-memory ring, history sources.

Every message on a topic has a *position* (``epoch``, ``offset``). The epoch names one
unbroken history of the topic; it changes when history was lost (a new server run
without the archive, a new device run). Offsets increase within an epoch:

- ``stream/<id>/raw`` and ``stream/<id>/filtered``: the offset of a ``samples`` message
  is its frame's ``seq``, the epoch ``<token>.<run>`` (the stream run's, where
  ``token`` belongs to the live archive, so it survives a restart of the server). The
  ``status`` events of a raw topic carry no position; the ring replays them in order
  with the samples around them.
- every other topic: 0, 1, 2 ... counted by the hub for as long as it keeps the topic's
  :class:`TopicLog`; each new log starts a new epoch.

**The interface for other history sources** (the Redis bus, issue 9, implements it over
Redis Streams so that a subscriber reconnecting to another worker recovers too)::

    class History(Protocol):
        async def covers(self, topic, epoch, after) -> bool
        async def read(self, topic, epoch, after, upto, limit) -> list[tuple[int, Outgoing]]

``read`` returns, in order, at most *limit* messages of *topic* in *epoch* with
``after < offset <= upto`` as ``(offset, Outgoing)``; an empty list means it has nothing
more there. The hub asks a source only for what its ring no longer holds, and only
when ``covers`` said the source holds the whole history of that epoch after *after*.
:class:`ArchiveHistory` serves raw topics from the live archive (vital_actors/archive.py).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import trio

from protocol import TOPIC, Event, Priority, StreamSamples, decode_server

from .archive import RECORD, _hello, run_dir
from .edge.codecs import Outgoing
from .store.live import Trim, read_trim
from .store.recording import write_synced

__all__ = ["PROCESS_TOKEN", "ArchiveHistory", "Entry", "History", "Ring", "TopicLog",
           "archive_token", "is_sample_topic", "replayed", "stamp"]

#: Names this server run in epochs: its event topics', and its stream runs' without an
#: archive (the archive has a token of its own, :func:`archive_token`).
PROCESS_TOKEN = secrets.token_hex(4)
_logs = itertools.count()


class History(Protocol):
    """Where a topic's older messages come from once the ring no longer holds them."""

    async def covers(self, topic: str, epoch: str, after: int) -> bool:
        """Whether every message of *topic* in *epoch* after offset *after* is here."""
        ...

    async def read(self, topic: str, epoch: str, after: int, upto: int,
                   limit: int) -> list[tuple[int, Outgoing]]:
        """Up to *limit* messages with ``after < offset <= upto``, in order."""
        ...


def is_sample_topic(topic: str) -> bool:
    return topic.endswith(("/raw", "/filtered")) and topic.startswith("stream/")


def stamp(message: StreamSamples | Event, epoch: str, offset: int) -> StreamSamples | Event:
    """*message* with its position among its extra fields (allowed in protocol v1)."""
    if isinstance(message, StreamSamples):
        return replace(message, extra={**message.extra, "epoch": epoch, "offset": offset})
    return replace(message, body={**message.body, "epoch": epoch, "offset": offset})


#: One message in the ring: (offset, payload, priority, time published). A plain tuple
#: of atomic values, which the garbage collector stops tracking (a NamedTuple or a class
#: would be visited by every full collection: measured, 4 µs per live message with a
#: full ring). ``offset`` None: an unpositioned status event of a raw topic; ``payload``
#: the message's msgpack encoding as first sent; time is ``trio.current_time()``.
Entry = tuple[int | None, bytes, int, float]


def replayed(entry: Entry, priority: Priority | None = None) -> Outgoing:
    """The message of *entry* again, byte for byte, queued at *priority* (its own by
    default): decoded once more, for a replay."""
    _offset, payload, own, _t = entry
    return Outgoing(decode_server(payload), Priority(own) if priority is None else priority,
                    payload)


class TopicLog:
    """One topic's position and its ring: entries in publication order, addressed by an
    absolute index (``base`` is the index of the oldest entry still held).

    ``floor`` is the offset up to which the ring cannot vouch for anything: every
    message with a greater offset is held (or not published yet). None: unknown yet.
    """

    def __init__(self, topic: str, epoch: str | None, last: int, floor: int | None) -> None:
        self.topic = topic
        self.epoch = epoch  # None: a sample topic whose stream has not published yet
        self.last = last  # offset of the last message published in this epoch (-1: none)
        self.floor = floor
        self.entries: deque[Entry] = deque()
        self.base = 0
        self.idle_since: float | None = None  # when its last subscriber left

    @property
    def end(self) -> int:
        return self.base + len(self.entries)

    def at(self, index: int) -> Entry:
        return self.entries[index - self.base]

    def index_after(self, offset: int) -> int:
        """The index of the first entry that follows position *offset*: just after the
        entry at that offset (so unpositioned entries after it are kept), else the first
        with a greater offset."""
        for i in range(len(self.entries) - 1, -1, -1):
            o = self.entries[i][0]
            if o is not None and o <= offset:
                return self.base + i + 1
        return self.base

    def new_epoch(self, epoch: str, last: int) -> None:
        """History broke (a new device run): what the ring holds is of the old epoch."""
        self.entries.clear()
        self.base += 1  # indices held by catch-up tasks are gone
        self.epoch, self.last, self.floor = epoch, last, last


class Ring:
    """Every topic log, and the bound over all of them: entries older than *seconds* or
    beyond *max_bytes* (of msgpack payloads; each entry adds about 100 bytes of
    bookkeeping) in all go, oldest first (the oldest entry overall is always the oldest
    of its topic, so one deque in publication order finds it)."""

    def __init__(self, *, seconds: float, max_bytes: int,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.clock = clock
        self.logs: dict[str, TopicLog] = {}
        self.bytes = 0
        self._order: deque[tuple[str, Entry]] = deque()

    @property
    def enabled(self) -> bool:
        return self.seconds > 0 and self.max_bytes > 0

    def open(self, topic: str, *, epoch: str | None = None, last: int = -1) -> TopicLog:
        """The log of *topic*, made if need be: a sample topic's with its stream's
        position (*epoch*, *last*), any other topic's with a new epoch."""
        log = self.logs.get(topic)
        if log is None:
            if not is_sample_topic(topic):
                epoch, last = f"{PROCESS_TOKEN}-{next(_logs)}", -1
            log = self.logs[topic] = TopicLog(topic, epoch, last, last)
        return log

    def append(self, log: TopicLog, offset: int | None, out: Outgoing) -> None:
        if offset is not None:
            log.last = offset
        if not self.enabled:
            log.floor = log.last
            return
        now = self.clock()
        entry: Entry = (offset, out.payload, int(out.priority), now)
        log.entries.append(entry)
        self._order.append((log.topic, entry))
        self.bytes += len(out.payload)
        self.trim(now)

    def trim(self, now: float) -> None:
        order, horizon = self._order, now - self.seconds
        while order and (self.bytes > self.max_bytes or order[0][1][3] < horizon):
            topic, entry = order.popleft()
            offset, payload = entry[0], entry[1]
            self.bytes -= len(payload)
            log = self.logs.get(topic)
            if log is not None and log.entries and log.entries[0] is entry:
                log.entries.popleft()
                log.base += 1
                if offset is not None:
                    log.floor = max(log.floor if log.floor is not None else -1, offset)

    def drop(self, topic: str) -> None:
        """Forget *topic*'s log (its entries leave the byte count as they age out)."""
        log = self.logs.pop(topic, None)
        if log is not None:
            log.entries.clear()


def archive_token(root: Path) -> str:
    """The live archive's name in epochs, kept in ``<root>/epoch-token`` (made once):
    a raw topic's epoch survives a restart of the server over the same archive and
    changes if the archive is a new one."""
    path = root / "epoch-token"
    try:
        token = path.read_text().strip()
        if token:  # (empty: a power loss caught its first write; made anew)
            return token
    except FileNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    write_synced(path, token)
    return token


class ArchiveHistory:
    """Raw topics from the live archive: frame *seq* of a run is offset *seq* of the raw
    topic in the run's epoch ``<token>.<run>``. Reads in a worker thread."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.token = token

    def _run(self, topic: str, epoch: str) -> Path | None:
        m = TOPIC.fullmatch(topic)
        token, _, run = epoch.rpartition(".")
        if m is None or m["kind"] != "raw" or token != self.token or not run.isdigit():
            return None
        return run_dir(self.root, m["stream"], int(run))

    async def covers(self, topic: str, epoch: str, after: int) -> bool:
        """Does the run still hold the frames after *after* (retention may have deleted
        the oldest: :class:`~.store.live.Trim`)?"""
        path = self._run(topic, epoch)
        return path is not None and await trio.to_thread.run_sync(_covers, path, after)

    async def read(self, topic: str, epoch: str, after: int, upto: int,
                   limit: int) -> list[tuple[int, Outgoing]]:
        path = self._run(topic, epoch)
        if path is None:
            return []
        try:
            return await trio.to_thread.run_sync(_read_run, path, topic, epoch, after, upto,
                                                 limit)
        except FileNotFoundError:  # the run was deleted (archive.retention_s): gone
            return []


_RECORDS = np.dtype([("seq", "<u8"), ("t0", "<u8"), ("n", "<u4"), ("t", "<f8")])


class _Records:
    """``frames.bin`` read record by record (``os.pread``): seqs increase in a run."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = os.fstat(fd).st_size // RECORD.size

    def seq(self, k: int) -> int:
        return int(RECORD.unpack(os.pread(self.fd, RECORD.size, k * RECORD.size))[0])

    def first_after(self, seq: int) -> int:
        """The index of the first record whose seq is greater than *seq*."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            if self.seq(mid) <= seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def read(self, k: int, limit: int) -> np.ndarray:
        raw = os.pread(self.fd, min(limit, self.count - k) * RECORD.size, k * RECORD.size)
        return np.frombuffer(raw, _RECORDS, count=len(raw) // RECORD.size)


def _holds_after(trim: Trim, after: int) -> bool:
    """Does a run trimmed at *trim* still hold the frames after seq *after*?"""
    return trim.records == 0 or after + 1 >= trim.seq


def _covers(path: Path, after: int) -> bool:
    return (path / "frames.bin").exists() and _holds_after(read_trim(path), after)


def _read_run(path: Path, topic: str, epoch: str, after: int, upto: int,
              limit: int) -> list[tuple[int, Outgoing]]:
    """Frames ``after < seq <= upto`` of the run at *path*: found by binary search in
    ``frames.bin`` (O(log n) reads, however long the run); a frame's samples start at
    ``t0 x frame width`` in ``samples.bin``."""
    hello = _hello(json.loads((path / "meta.json").read_text()))
    width = len(hello.channels) * (2 if hello.dtype == "int16" else 4)
    trim = read_trim(path)
    if not _holds_after(trim, after):  # retention deleted what follows *after*: gone
        return []  # (the replay says so), rather than a silent jump over it
    fd = os.open(path / "frames.bin", os.O_RDONLY)
    try:
        records = _Records(fd)
        chunk = records.read(max(trim.records, records.first_after(after)), limit)
    finally:
        os.close(fd)
    out: list[tuple[int, Outgoing]] = []
    with open(path / "samples.bin", "rb") as samples:
        for seq, t0, n, _t in chunk.tolist():
            if seq > upto:
                break
            samples.seek(t0 * width)
            data = samples.read(n * width)
            if len(data) < n * width:
                break  # indexed, samples not written yet: the rest is not here yet
            message = StreamSamples(topic, hello.stream, seq, t0, hello.fs, hello.channels,
                                    hello.dtype, hello.gain, hello.baseline, data,
                                    extra={"epoch": epoch, "offset": seq})
            out.append((seq, Outgoing.of(message, Priority.HIGH)))
    if not _holds_after(read_trim(path), after):  # a trim overtook the read: what it got
        return []  # may be holes
    return out
