"""The streams the server knows: format, counters, filter settings and ownership.

A :class:`StreamInfo` outlives its device connection, so a device that reconnects with
``resume`` continues the same stream (same seq numbering, sample index and filter state).
The HTTP API reads and changes it; the actors read it. Single-threaded (trio), no locks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from protocol import Hello

from .archive import Durable
from .clock import ClockEstimate
from .filtering import FilterDesign, design
from .settings import FilterSettings

__all__ = ["StreamBusyError", "StreamInfo", "StreamRegistry"]


class StreamBusyError(Exception):
    """Another device is connected to this stream id."""


@dataclass(eq=False, slots=True)
class StreamInfo:
    """One stream. ``run`` counts fresh starts (a hello without ``resume``)."""

    id: str
    hello: Hello
    filter: FilterDesign
    run: int = 0
    connected: bool = False
    next_seq: int = 0
    t0: int = 0
    frames: int = 0
    samples: int = 0
    gaps: int = 0
    missing_frames: int = 0
    duplicates: int = 0
    clock: ClockEstimate | None = None  # the device's clock against ours (ping/pong)
    durable: tuple[int, Durable] | None = None  # (run, its mark in the live archive)
    last_stamp: float = -math.inf  # its last frame's archive stamp (they never go back)
    scale: npt.NDArray[np.float64] = field(init=False)
    offset: npt.NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        self._set_format(self.hello)

    def _set_format(self, hello: Hello) -> None:
        self.hello = hello
        # mV = (adc - baseline) / gain, computed as adc * scale - offset in one pass.
        self.scale = 1.0 / np.asarray(hello.gain, dtype=np.float64)
        self.offset = np.asarray(hello.baseline, dtype=np.float64) * self.scale

    @property
    def fs(self) -> float:
        return self.hello.fs

    @property
    def channels(self) -> tuple[str, ...]:
        return self.hello.channels

    def restart(self, hello: Hello) -> None:
        """Begin a fresh run: seq and sample index from 0, filter state reset."""
        self._set_format(hello)
        self.run += 1
        self.next_seq = self.t0 = 0


def _same_format(a: Hello, b: Hello) -> bool:
    return (a.fs, a.channels, a.dtype, a.gain, a.baseline) == (b.fs, b.channels, b.dtype,
                                                                 b.gain, b.baseline)


class Owner(Protocol):
    """Who may serve a stream when several nodes share the streams (the Redis bus)."""

    async def claim(self, hello: Hello, registry: StreamRegistry) -> bool:
        """Take *hello.stream* for this node; False when another node holds it."""
        ...

    async def release(self, info: StreamInfo) -> None:
        """Let the stream go (its device left), saving its position for the next node."""
        ...


class StreamRegistry:
    """Streams by id, with the default filter for new ones."""

    def __init__(self, default_filter: FilterSettings) -> None:
        self.default_filter = default_filter
        self._streams: dict[str, StreamInfo] = {}
        self.owner: Owner | None = None  # set when streams are shared across nodes

    def __iter__(self) -> Iterator[StreamInfo]:
        return iter(self._streams.values())

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: str) -> StreamInfo | None:
        return self._streams.get(stream_id)

    def attach(self, hello: Hello) -> StreamInfo:
        """Claim *hello.stream* for a device connection.

        A hello with ``resume`` continues the known stream when its format is unchanged;
        otherwise the stream starts a fresh run.

        Raises:
            StreamBusyError: another device holds the stream.
        """
        info = self._streams.get(hello.stream)
        if info is None:
            # A rate too low for the default filter gets it fitted, never a failed hello.
            info = StreamInfo(hello.stream, hello, design(self.default_filter, hello.fs,
                                                          fallback=self.default_filter))
            self._streams[hello.stream] = info
        elif info.connected:
            raise StreamBusyError(f"stream {hello.stream!r} is already connected to a device")
        elif hello.resume is None or not _same_format(info.hello, hello):
            if info.fs != hello.fs:
                info.filter = design(info.filter.settings, hello.fs, fallback=self.default_filter)
            info.restart(hello)
        info.connected = True
        return info

    def restore(self, hello: Hello, *, run: int, next_seq: int, t0: int) -> StreamInfo:
        """Know a stream from the live archive (after a restart), so its device resumes."""
        info = StreamInfo(hello.stream, hello, design(self.default_filter, hello.fs,
                                                      fallback=self.default_filter), run=run)
        info.next_seq, info.t0 = next_seq, t0
        self._streams[hello.stream] = info
        return info

    def detach(self, info: StreamInfo) -> None:
        info.connected = False
