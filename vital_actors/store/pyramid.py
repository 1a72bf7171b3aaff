"""A multi-resolution min/max pyramid, built incrementally while a recording is written.

Level ``k`` holds, per bucket of ``BASE * FACTOR**k`` frames, each channel's minimum and
maximum: shape (buckets, channels, 2), in the recording's sample dtype. Level 0 is made
from the samples, each higher level from the one below, so feeding costs one reduction
per level and the levels are a few percent of the samples on disk. Any window of any
recording is then answered from at most ``points * FACTOR`` entries of one level.

Everything here is pure numpy (no trio, no files): :class:`PyramidBuilder` turns frames
into level entries, and :func:`envelope` / :func:`lttb` reduce arrays for a view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BASE", "FACTOR", "LEVELS", "PyramidBuilder", "bucket", "envelope", "lttb",
           "minmax", "pick_level", "reduce"]

BASE = 64  # frames per level-0 bucket
FACTOR = 8  # buckets of level k per bucket of level k+1
LEVELS = 8  # level 7 buckets hold 64 * 8**7 = 134M frames: enough for any 2 GB file
_FEW = 4  # groups up to which one plain min/max beats folding in halves (measured)

Array = npt.NDArray[Any]


def bucket(level: int) -> int:
    """Frames per bucket at *level*."""
    return int(BASE * FACTOR**level)


def reduce(entries: Array, group: int | None) -> Array:
    """Min/max over each run of *group* entries (n, ch, 2); n a multiple of *group*
    (None: all of them, one entry)."""
    g = entries.reshape(-1, group or len(entries), *entries.shape[1:])
    lo, hi = _halve(g[..., 0], g[..., 1])
    return np.stack([lo, hi], axis=-1)


def minmax(frames: Array, group: int | None) -> Array:
    """Min/max over each run of *group* frames (n, ch); n a multiple of *group* (None:
    all of them, one entry)."""
    g = frames.reshape(-1, group or len(frames), frames.shape[1])
    lo, hi = _halve(g, g)
    return np.stack([lo, hi], axis=-1)


def _halve(lo: Array, hi: Array) -> tuple[Array, Array]:
    """Min of *lo* and max of *hi* over axis 1, (m, g, ch) -> (m, ch).

    A power-of-two *g* is folded in halves, elementwise over whole rows: numpy's own
    reduction along a middle axis of length 64 runs one short loop per group, 2-3x
    slower (and a channel-major copy to avoid that costs a pass over the data). A few
    groups (the live archive's one or two buckets per frame) go the plain way too: there
    the folding's dozen calls cost 2-3x the two reductions."""
    g = lo.shape[1]
    if g & (g - 1) or lo.shape[0] <= _FEW:  # a partial bucket, or a few: plain reduction
        return lo.min(axis=1), hi.max(axis=1)
    while lo.shape[1] > 1:
        h = lo.shape[1] // 2
        lo = np.minimum(lo[:, :h], lo[:, h:])
        hi = np.maximum(hi[:, :h], hi[:, h:])
    return lo[:, 0], hi[:, 0]


class PyramidBuilder:
    """Feeds frames in; hands out the new complete entries of each level.

    Its whole state is ``pending`` (the frames or entries not yet filling a bucket,
    a few KB), so a writer can checkpoint and restore it exactly.
    """

    def __init__(self, channels: int, dtype: np.dtype[Any],
                 pending: list[Array] | None = None) -> None:
        self.channels, self.dtype = channels, dtype
        empty = [np.empty((0, channels), dtype)] + [np.empty((0, channels, 2), dtype)
                                                      for _ in range(1, LEVELS)]
        self.pending: list[Array] = pending if pending is not None else empty

    def feed(self, frames: Array) -> list[Array]:
        """Take frames (n, channels); return the newly complete entries per level."""
        out: list[Array] = []
        data = np.concatenate([self.pending[0], frames]) if len(self.pending[0]) else frames
        whole = len(data) // BASE * BASE
        new = minmax(data[:whole], BASE) if whole else np.empty((0, self.channels, 2),
                                                                   self.dtype)
        self.pending[0] = data[whole:].copy()
        out.append(new)
        for k in range(1, LEVELS):
            if not len(new):  # nothing new below: this level and those above wait too
                out += [new] * (LEVELS - k)
                break
            data = np.concatenate([self.pending[k], new]) if len(self.pending[k]) else new
            whole = len(data) // FACTOR * FACTOR
            new = reduce(data[:whole], FACTOR) if whole else data[:0]
            self.pending[k] = data[whole:].copy()
            out.append(new)
        return out

    def finish(self) -> list[Array]:
        """The last, partial bucket of each level (empty where a level has none)."""
        out: list[Array] = []
        tail = self.pending[0]
        new = minmax(tail, None) if len(tail) else np.empty((0, self.channels, 2),
                                                                    self.dtype)
        out.append(new)
        for k in range(1, LEVELS):
            data = np.concatenate([self.pending[k], new])
            new = reduce(data, None) if len(data) else data
            out.append(new)
        return out


def pick_level(n: int, points: int) -> int | None:
    """The coarsest useful level for *n* frames shown as *points*: the finest whose
    window spans at most ``points * FACTOR`` entries; None when the raw samples
    (fewer than one level-0 bucket per point) serve better."""
    if n < points * BASE:
        return None
    for k in range(LEVELS):
        if n / bucket(k) <= points * FACTOR:
            return k
    return LEVELS - 1


def envelope(entries: Array, points: int) -> tuple[Array, Array, Array]:
    """Group *entries* (m, 2) min/max or (m,) values into at most *points* groups.

    Returns (first entry index of each group, minima, maxima).
    """
    m = len(entries)
    groups = min(points, m)
    starts = np.unique(np.linspace(0, m, groups, endpoint=False).astype(np.int64))
    if entries.ndim == 1:
        lo, hi = entries, entries
    else:
        lo, hi = entries[:, 0], entries[:, 1]
    return starts, np.minimum.reduceat(lo, starts), np.maximum.reduceat(hi, starts)


def lttb(y: Array, points: int) -> Array:
    """Largest-triangle-three-buckets: the indices of *points* samples of *y* that keep
    its visual shape (Steinarsson 2013). First and last samples are always kept."""
    n = len(y)
    if points >= n or points < 3:
        return np.arange(n) if points >= n else np.array([0, n - 1])[:points]
    y = np.asarray(y, dtype=np.float64)
    edges = np.linspace(1, n - 1, points - 1).astype(np.int64)  # points-2 inner buckets
    # Each bucket's neighbour on the right is represented by its mean point.
    means_y = np.add.reduceat(y[:n - 1], edges[:-1]) / np.diff(edges)
    means_x = (edges[:-1] + edges[1:] - 1) / 2.0
    # The choice in each bucket depends on the previous one, so this loop is sequential;
    # buckets hold a few samples (views use LTTB up to 4x points), so plain floats beat
    # a numpy call per bucket by an order of magnitude.
    ys, mx, my, bounds = y.tolist(), means_x.tolist(), means_y.tolist(), edges.tolist()
    out = [0] * points
    out[-1] = n - 1
    a = 0
    for i in range(points - 2):
        lo, hi = bounds[i], bounds[i + 1]
        cx, cy = (mx[i + 1], my[i + 1]) if i + 1 < points - 2 else (n - 1, ys[-1])
        ya, best, pick = ys[a], -1.0, lo
        for j in range(lo, hi):
            area = abs((a - cx) * (ys[j] - ya) - (a - j) * (cy - ya))
            if area > best:
                best, pick = area, j
        a = out[i + 1] = pick
    return np.asarray(out, dtype=np.int64)
