"""Zoomable views of a recording: min/max envelopes from the pyramid, LTTB up close.

For a window of ``n`` frames shown as ``points``:

- ``n <= points``: the samples themselves (``raw``);
- ``n <= LTTB_FACTOR * points``: LTTB picks ``points`` samples that keep the shape;
- fewer than one level-0 bucket per point: min/max per point from the samples;
- otherwise min/max per point from the finest pyramid level that needs at most
  ``points * FACTOR`` entries: the cost is bounded whatever the window or file size.

Values are in mV; ``t`` is the first frame each point covers (or the sample's frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .pyramid import bucket, envelope, lttb, pick_level
from .recording import Reader

__all__ = ["LTTB_FACTOR", "view"]

LTTB_FACTOR = 4
Array = npt.NDArray[Any]


def _mv(reader: Reader, channel: int, values: Array) -> list[float]:
    gain, base = reader.meta.gain[channel], reader.meta.baseline[channel]
    return np.round((values.astype(np.float64) - base) / gain, 6).tolist()  # type: ignore[no-any-return]


def view(reader: Reader, read: Callable[[int, int], Array], *, channel: int, start: int,
         end: int, points: int,
         levels: Callable[[int, int, int], Array] | None = None) -> dict[str, Any]:
    """The view of frames [start, end) of *channel*; *read* returns raw frames, *levels*
    (default ``reader.level``) pyramid entries; within what the recording holds (from
    ``first_frame``: archive retention may have deleted the frames before)."""
    start, end = max(reader.first_frame, start), min(reader.frames, end)
    n = max(0, end - start)
    out: dict[str, Any] = {"recording": reader.meta.id, "channel": channel,
                           "name": reader.meta.channels[channel], "fs": reader.meta.fs,
                           "start": start, "end": end, "level": None}
    if n == 0:
        return {**out, "mode": "raw", "t": [], "y": []}
    level = pick_level(n, points)
    if level is None:
        y = read(start, end)[:, channel]
        if n <= points:
            return {**out, "mode": "raw", "t": list(range(start, end)),
                    "y": _mv(reader, channel, y)}
        if n <= LTTB_FACTOR * points:
            keep = lttb(y, points)
            return {**out, "mode": "lttb", "t": (keep + start).tolist(),
                    "y": _mv(reader, channel, y[keep])}
        first, lo, hi = envelope(y, points)
        t = first + start
    else:
        size = bucket(level)
        i0, i1 = start // size, -(-end // size)
        entries = (levels or reader.level)(level, i0, i1)[:, channel, :]
        first, lo, hi = envelope(entries, points)
        t = np.maximum((first + i0) * size, start)
        out["level"] = level
    return {**out, "mode": "minmax", "t": t.tolist(), "min": _mv(reader, channel, lo),
            "max": _mv(reader, channel, hi)}
