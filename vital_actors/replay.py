"""Replay: a recording played into the live pipeline as if a device were sending it.

A replay claims a stream in the registry (like a device's hello), sends ``status``
events as ingest does, and puts :class:`Block` frames into its own clone of the
ingest inlet, so filter, screen, broadcast and subscribers cannot tell it from a
device. ``speed`` 1.0 paces frames in real time; 0 sends as fast as backpressure
allows (``outbox.send`` parks while the pipeline is full), so nothing is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from protocol import Hello

from .broadcast import Hub, admit, announce
from .loader import ChunkLoader
from .messages import Item
from .stats import Stats
from .streams import StreamInfo, StreamRegistry

__all__ = ["Replay", "Replays", "frame_frames"]

_log = logging.getLogger(__name__)

_FAST_FRAME = 4096  # frames per block at speed 0 (a device frame holds at most 8192)


def frame_frames(fs: float, speed: float, frame_s: float) -> int:
    """Frames per block: *frame_s* of signal, or a big block at speed 0."""
    return _FAST_FRAME if speed == 0 else max(1, min(_FAST_FRAME, round(fs * frame_s)))


@dataclass(eq=False, slots=True)
class Replay:
    stream: str
    recording: str
    speed: float
    loop: bool
    frames_sent: int = 0
    laps: int = 0
    state: str = "starting"
    error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def public(self) -> dict[str, Any]:
        return {"stream": self.stream, "recording": self.recording, "speed": self.speed,
                "loop": self.loop, "frames_sent": self.frames_sent, "laps": self.laps,
                "state": self.state, "error": self.error}


class Replays:
    """The running replays. :meth:`run` owns the inlet clone they are cloned from."""

    def __init__(self, loader: ChunkLoader, registry: StreamRegistry, stats: Stats, *,
                 frame_s: float = 0.1, live: Hub | None = None) -> None:
        self.loader, self.registry, self.stats = loader, registry, stats
        self.live = live  # where raw samples and status go at once (as ingest's do)
        self.frame_s = frame_s
        self.replays: dict[str, Replay] = {}
        self._nursery: trio.Nursery | None = None
        self._inlet: trio.MemorySendChannel[Item] | None = None

    async def run(self, inlet: trio.MemorySendChannel[Item], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host replays until cancelled (the server's shutdown does that)."""
        with inlet:
            self._inlet = inlet
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    def start(self, recording: str, *, speed: float, loop: bool,
              stream: str | None = None) -> Replay:
        """Begin replaying *recording* on *stream* (default ``replay-<recording>``).

        Raises:
            RecordingNotFoundError, StreamBusyError, RuntimeError (not running).
        """
        if self._nursery is None or self._inlet is None:
            raise RuntimeError("replays are not running")
        meta = self.loader.store.meta(recording)
        hello = Hello(stream or f"replay-{recording}", meta.fs, tuple(meta.channels),
                      meta.dtype, tuple(meta.gain), tuple(meta.baseline),  # type: ignore[arg-type]
                      device=f"replay:{recording}")
        info = self.registry.attach(hello)  # raises StreamBusyError
        replay = Replay(info.id, recording, speed, loop)
        self.replays[info.id] = replay
        self._nursery.start_soon(self._serve, replay, info, self._inlet.clone())
        return replay

    def stop(self, stream: str) -> Replay:
        replay = self.replays[stream]
        replay.scope.cancel()
        return replay

    async def _serve(self, replay: Replay, info: StreamInfo,
                     outbox: trio.MemorySendChannel[Item]) -> None:
        with outbox, replay.scope:
            try:
                replay.state = "playing"
                await announce(info.id, "connected", outbox, self.live, fs=info.fs,
                               run=info.run, channels=list(info.channels),
                               next_seq=info.next_seq, device=info.hello.device)
                try:
                    await self._play(replay, info, outbox)
                except (OSError, KeyError, ValueError) as exc:  # the recording went away
                    replay.state, replay.error = "failed", f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # a bug: this replay fails, not the server
                    _log.exception("replay of %s on %s failed", replay.recording, info.id)
                    replay.state, replay.error = "failed", f"{type(exc).__name__}: {exc}"
                else:
                    replay.state = "finished"
            finally:
                self.registry.detach(info)
                if replay.state == "playing":
                    replay.state = "stopped"
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await announce(info.id, "disconnected", outbox, self.live,
                                   next_seq=info.next_seq)

    async def _play(self, replay: Replay, info: StreamInfo,
                    outbox: trio.MemorySendChannel[Item]) -> None:
        reader = self.loader.store.reader(replay.recording)
        size = frame_frames(info.fs, replay.speed, self.frame_s)
        # One read for the next blocks up to _FAST_FRAME frames (11 s of a 360-Hz
        # recording in 100-ms blocks), not one per block: a block is a few hundred bytes
        # and a read costs a map of the file. A recording deleted meanwhile fails the
        # replay at its next read.
        ahead = size * max(1, _FAST_FRAME // size)
        clock0, t_first = trio.current_time(), info.t0
        while True:
            piece, at = np.empty((0, reader.channels), reader.dtype), 0
            for start in range(0, reader.frames, size):
                if replay.speed > 0:  # the block is due when its first sample would be
                    due = (info.t0 - t_first) / info.fs / replay.speed
                    await trio.sleep_until(clock0 + due)
                if start >= at + len(piece):  # pieces end on a block's edge, or the end
                    piece = self.loader.read(replay.recording, start, start + ahead,
                                             cache=False)
                    at = start
                frames = piece[start - at:start - at + size]
                await admit(outbox, self.live, info, info.run, info.next_seq, info.t0, frames)
                if replay.speed == 0:  # as fast as backpressure allows, yet one turn each
                    await trio.lowlevel.checkpoint()
                n = len(frames)
                info.next_seq += 1
                info.t0 += n
                info.frames += 1
                info.samples += n
                replay.frames_sent += n
                self.stats.totals.samples_in += n
            replay.laps += 1
            if not replay.loop:
                return
