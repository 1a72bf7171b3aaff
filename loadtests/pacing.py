"""One task sends every lean device's frames on time.

A task per device sleeping until each of its frames costs a cancel scope, a deadline
and a task switch per frame; at thousands of frames a second that was the load
generator's largest cost after the sockets themselves. The :class:`Pacer` instead
keeps the next frame time of every device in one heap, sleeps until the earliest, and
writes every frame due within :data:`SLACK_S` without waiting
(:meth:`LeanWebSocket.send_frame_nowait`), stamping each just before its write.

A device whose socket is full (the server applies backpressure, as it does when its
pipeline is behind) must not hold up the others: its frame goes to the device's
backlog, and the device's own task (:meth:`Pacer.drain`) sends the backlog in order,
waiting for room, stamping each frame when its write starts, as the per-device loop
did. Later frames of that device join the backlog until it is empty again.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from .lean import LeanWebSocket

__all__ = ["SLACK_S", "Pacer"]

#: Frames due within this much of the earliest are written in the same wake-up (early by
#: at most this; each is stamped when it is written, so latencies stay exact).
SLACK_S = 0.002


@dataclass(slots=True, eq=False)
class _Lane:
    ws: LeanWebSocket
    backlog: deque[int] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    done: bool = False  # the pacer has handed out every frame of this device


class Pacer:
    """Sends ``frames[i][k]`` of device *i* at ``starts[i] + k * frame_s`` (trio time)
    and stamps ``sent[i, k]`` (``perf_counter``) when its write starts.

    Each device :meth:`join` s with its connection before :meth:`run` starts, then
    awaits :meth:`drain`, which returns once all its frames are written.
    """

    def __init__(self, frames: Sequence[Sequence[bytes]], sent: npt.NDArray[np.float64],
                 frame_s: float) -> None:
        self.frames, self.sent, self.frame_s = frames, sent, frame_s
        self._lanes: list[_Lane | None] = [None] * len(frames)

    def join(self, i: int, ws: LeanWebSocket) -> None:
        self._lanes[i] = _Lane(ws)

    async def run(self, starts: Sequence[float]) -> None:
        """Until every frame of every joined device is handed out."""
        heap = [(t, i, 0) for i, t in enumerate(starts) if self._lanes[i] is not None]
        heapq.heapify(heap)
        while heap:
            await trio.sleep_until(heap[0][0])
            horizon = trio.current_time() + SLACK_S
            while heap and heap[0][0] <= horizon:
                t, i, k = heap[0]
                self._send(i, k)
                if k + 1 < len(self.frames[i]):
                    heapq.heapreplace(heap, (t + self.frame_s, i, k + 1))
                else:
                    heapq.heappop(heap)
                    self._finish(i)

    def _send(self, i: int, k: int) -> None:
        lane = self._lanes[i]
        assert lane is not None
        if lane.ws.closed is not None:
            return  # gone: the device's task reports why; the frame is never sent
        if lane.backlog:
            lane.backlog.append(k)
            return
        self.sent[i, k] = time.perf_counter()
        frame = self.frames[i][k]
        done = lane.ws.send_frame_nowait(frame)
        if done == 0:
            lane.backlog.append(k)
        if done < len(frame):
            lane.wake.set()

    def _finish(self, i: int) -> None:
        lane = self._lanes[i]
        assert lane is not None
        lane.done = True
        lane.wake.set()

    async def drain(self, i: int) -> None:
        """Device *i*'s task: write what the pacer could not, in order, until the pacer
        handed out the last frame and it is written.

        Raises:
            lean.ConnectionClosed: the connection closed or broke.
        """
        lane = self._lanes[i]
        assert lane is not None
        while True:
            await lane.ws.flush()
            while lane.backlog:
                k = lane.backlog[0]
                self.sent[i, k] = time.perf_counter()
                await lane.ws.send_frame(self.frames[i][k])
                lane.backlog.popleft()
            if lane.done:
                return
            lane.wake = trio.Event()
            await lane.wake.wait()
