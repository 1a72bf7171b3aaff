"""The chunk loader: any [start, end) of a recording, through an LRU of chunks bounded
in bytes.

A recording is cut into fixed chunks of ``chunk_frames`` frames, chosen per recording
so one chunk is about ``chunk_bytes`` whatever its channel count and dtype (the
adaptive part: a 1-channel int16 file gets 8x the frames of a 4-channel float32 one).
Chunks are read through a short-lived memory map (see :class:`Reader`) and kept, as
plain copies, in the cache; the cache drops least recently used chunks to stay under
``cache_bytes``. Reads that would flood the cache (a replay or a job scanning a whole
file) pass ``cache=False``: those read just the frames asked for, not whole chunks.

Views read pyramid levels through :meth:`ChunkLoader.level`: a level small enough
(at most 1/8 of the cache: every level above 0 of a 2 GB two-channel recording) is
read whole once and kept in the same LRU, so a view of it costs no map, no syscall
and no page the OS may have dropped while a 2 GB upload streamed through its cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from .store import Reader, RecordingStore

__all__ = ["ChunkCache", "ChunkLoader", "chunk_frames"]

_LEVEL = -1  # cache keys (rec_id, _LEVEL - k) hold pyramid level k whole

Array = npt.NDArray[Any]


def chunk_frames(frame_bytes: int, chunk_bytes: int, cache_bytes: int) -> int:
    """Frames per chunk: a power of two near *chunk_bytes*, at most 1/8 of the cache."""
    target = max(1, min(chunk_bytes, cache_bytes // 8) // frame_bytes)
    return 1 << max(8, target.bit_length() - 1)


class ChunkCache:
    """An LRU of arrays bounded by their total ``nbytes``; thread-safe (views and data
    reads run in worker threads, several at once)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._chunks: OrderedDict[tuple[str, int], Array] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chunks)

    def get(self, key: tuple[str, int]) -> Array | None:
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is None:
                self.misses += 1
                return None
            self.hits += 1
            self._chunks.move_to_end(key)
            return chunk

    def put(self, key: tuple[str, int], chunk: Array) -> None:
        if chunk.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._chunks.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._chunks[key] = chunk
            self.bytes += chunk.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._chunks.popitem(last=False)
                self.bytes -= dropped.nbytes

    def forget(self, rec_id: str) -> None:
        with self._lock:
            for key in [k for k in self._chunks if k[0] == rec_id]:
                self.bytes -= self._chunks.pop(key).nbytes


class ChunkLoader:
    """Reads ranges of the store's recordings, a chunk at a time, through the cache.

    Synchronous; safe from several threads at once (its state is the cache, which
    locks). Two threads missing the same chunk both read it: harmless.
    """

    def __init__(self, store: RecordingStore, *, cache_bytes: int, chunk_bytes: int) -> None:
        self.store = store
        self.cache = ChunkCache(cache_bytes)
        self.chunk_bytes = chunk_bytes

    def chunk_frames(self, reader: Reader) -> int:
        frame = reader.channels * reader.dtype.itemsize
        return chunk_frames(frame, self.chunk_bytes, self.cache.max_bytes)

    def chunk(self, reader: Reader, index: int, *, cache: bool = True) -> Array:
        """Chunk *index* of the recording (the last one may be short)."""
        key = (reader.meta.id, index)
        got = self.cache.get(key) if cache else None
        if got is None:
            size = self.chunk_frames(reader)
            got = reader.read(index * size, (index + 1) * size)
            got.flags.writeable = False  # shared by every caller that hits it
            if cache:
                self.cache.put(key, got)
        return got

    def read(self, rec_id: str, start: int, end: int, *, cache: bool = True) -> Array:
        """Frames [start, end), clipped to the recording: (n, channels)."""
        reader = self.store.reader(rec_id)
        start, end = max(0, start), min(reader.frames, end)
        if end <= start:
            return np.empty((0, reader.channels), reader.dtype)
        if not cache:  # whole chunks would be read only to be thrown away
            return reader.read(start, end)
        size = self.chunk_frames(reader)
        first, last = start // size, (end - 1) // size
        parts = [self.chunk(reader, i, cache=cache) for i in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = first * size
        return data[start - offset:end - offset]

    def level(self, reader: Reader, k: int, start: int, end: int) -> Array:
        """Entries [start, end) of pyramid level *k*: (n, channels, 2), from the cache
        when the whole level fits in an eighth of it."""
        total = reader.level_entries(k)
        if total * reader.channels * 2 * reader.dtype.itemsize > self.cache.max_bytes // 8:
            return reader.level(k, start, end)
        key = (reader.meta.id, _LEVEL - k)
        whole = self.cache.get(key)
        if whole is None:
            whole = reader.level(k, 0, total)
            whole.flags.writeable = False
            self.cache.put(key, whole)
        return whole[max(0, start):max(0, end)]
