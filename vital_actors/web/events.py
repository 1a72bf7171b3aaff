"""Beats and alerts of a recording, for the viewer's overlay.

A processing job leaves its events in the result recording's ``events.jsonl`` (one JSON
object per line: ``beat`` with ``r``, ``alert`` with ``state``/``start``/``end``, and
``quality``). The recordings API does not serve that file, so the viewer asks
``GET /ui/recordings/<id>/events?start=&end=`` here: beat indices and alert spans that
overlap the window. The file is parsed once per recording (in a worker thread) into a
sorted index array and a list of spans, kept in a small LRU keyed by the file's mtime.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_BEATS", "EventIndex", "EventsCache", "index_events", "overlay"]

MAX_BEATS = 5000  # more beats than this in a window are only counted: too dense to draw


@dataclass(frozen=True, slots=True)
class EventIndex:
    beats: npt.NDArray[np.int64]  # R sample indices, sorted
    alerts: list[dict[str, Any]]  # {alert, channel, start, end (None: to the end)}


def index_events(lines: Iterable[bytes]) -> EventIndex:
    """Beats and alert spans from the lines of an ``events.jsonl``."""
    beats: list[int] = []
    spans: dict[tuple[str, Any, int], int | None] = {}
    for line in lines:
        if line.startswith(b'{"type": "quality"'):
            continue  # the bulk of the file, and nothing to draw
        e = json.loads(line)
        if e.get("type") == "beat":
            beats.append(int(e["r"]))
        elif e.get("type") == "alert":  # one per topic it went to: the key merges them
            spans[(e["alert"], e.get("channel"), int(e["start"]))] = e.get("end")
    alerts = [{"alert": a, "channel": c, "start": s, "end": end}
              for (a, c, s), end in sorted(spans.items(), key=lambda kv: kv[0][2])]
    return EventIndex(np.sort(np.array(beats, dtype=np.int64)), alerts)


def overlay(index: EventIndex, start: int, end: int) -> dict[str, Any]:
    """What of *index* overlaps frames [start, end)."""
    lo, hi = np.searchsorted(index.beats, [start, end])
    n = int(hi - lo)
    beats = index.beats[lo:hi].tolist() if n <= MAX_BEATS else []
    alerts = [a for a in index.alerts
              if a["start"] < end and (a["end"] is None or a["end"] >= start)]
    return {"start": start, "end": end, "beat_count": n, "beats": beats,
            "beats_truncated": n > MAX_BEATS, "alerts": alerts}


class EventsCache:
    """Parsed ``events.jsonl`` files, the *size* most recently used."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[Path, tuple[float, EventIndex]] = OrderedDict()
        self._lock = threading.Lock()  # worker threads share it

    def get(self, path: Path) -> EventIndex | None:
        """The index of *path* (None if there is no such file); blocking: call it in a
        worker thread."""
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        with self._lock:
            hit = self._items.get(path)
            if hit is not None and hit[0] == mtime:
                self._items.move_to_end(path)
                return hit[1]
        with open(path, "rb") as f:
            index = index_events(f)
        with self._lock:
            self._items[path] = (mtime, index)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return index
