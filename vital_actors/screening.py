"""Quality screening per window: flatline, lead off and out of range, with alerts.

The checks are pure functions of a window of the signal in mV; :class:`Screener` cuts
each stream's blocks into windows of ``window_s`` (the same windows for any framing)
and turns runs of bad windows into CRITICAL alerts with hysteresis. The full signal
quality indices and beat detection build on this (issue 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import trio

from protocol import Event, Priority

from .messages import Filtered, Item, Publication
from .settings import ScreenSettings

__all__ = ["ALERT_KINDS", "Screener", "WindowQuality", "assess", "run_screen"]

ALERT_KINDS = ("flatline", "lead_off", "out_of_range")
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class WindowQuality:
    """Per-channel findings for one window."""

    std_mv: tuple[float, ...]
    range_mv: tuple[float, ...]
    flatline: tuple[bool, ...]
    lead_off: tuple[bool, ...]
    out_of_range: tuple[bool, ...]

    def flags(self, kind: str) -> tuple[bool, ...]:
        flags: tuple[bool, ...] = getattr(self, kind)
        return flags


def assess(window: F64, settings: ScreenSettings) -> WindowQuality:
    """Judge a window of shape (n, channels) in mV, baseline removed.

    - flatline: peak-to-peak below ``flatline_mv`` (no signal at all);
    - lead off: at least ``lead_off_fraction`` of the samples beyond ``out_of_range_mv``
      (the amplifier sits at a rail, as with a detached electrode);
    - out of range: some samples beyond ``out_of_range_mv``, fewer than that.
    """
    ptp = np.ptp(window, axis=0)
    beyond = (np.abs(window) > settings.out_of_range_mv).mean(axis=0)
    lead_off = beyond >= settings.lead_off_fraction
    return WindowQuality(
        std_mv=tuple(np.round(window.std(axis=0), 6).tolist()),
        range_mv=tuple(np.round(ptp, 6).tolist()),
        flatline=tuple((ptp < settings.flatline_mv).tolist()),
        lead_off=tuple(lead_off.tolist()),
        out_of_range=tuple(((beyond > 0) & ~lead_off).tolist()),
    )


@dataclass(slots=True)
class _Alarm:
    active: bool = False
    streak: int = 0  # consecutive windows disagreeing with ``active``
    since: int = 0


@dataclass(slots=True)
class _StreamScreen:
    run: int
    start: int  # sample index of the first sample in ``pending``
    pending: list[F64] = field(default_factory=list)
    pending_n: int = 0
    alarms: dict[tuple[str, int], _Alarm] = field(default_factory=dict)


class Screener:
    """Windows and alarm state of every stream; pure (no trio), fed block by block."""

    def __init__(self, settings: ScreenSettings) -> None:
        self.settings = settings
        self._streams: dict[str, _StreamScreen] = {}

    def feed(self, item: Filtered) -> Iterator[Event]:
        """Take one filtered block; yield quality and alert events for completed windows."""
        info = item.block.stream
        state = self._streams.get(info.id)
        if state is None or state.run != item.block.run:
            state = self._streams[info.id] = _StreamScreen(item.block.run, item.block.t0)
        state.pending.append(item.mv)
        state.pending_n += item.mv.shape[0]
        size = max(1, round(self.settings.window_s * info.fs))
        if state.pending_n < size:
            return
        data = np.vstack(state.pending)
        whole = (len(data) // size) * size
        for start in range(0, whole, size):
            yield from self._window(info.id, state, state.start + start, data[start:start + size])
        state.pending = [data[whole:]] if whole < len(data) else []
        state.pending_n = len(data) - whole
        state.start += whole

    def _window(self, stream: str, state: _StreamScreen, t0: int, window: F64) -> Iterator[Event]:
        q = assess(window, self.settings)
        yield Event("quality", f"stream/{stream}/quality", Priority.NORMAL, {
            "stream": stream, "t0": t0, "n": len(window), "std_mv": list(q.std_mv),
            "range_mv": list(q.range_mv), "flatline": any(q.flatline),
            "lead_off": any(q.lead_off), "out_of_range": any(q.out_of_range),
        })
        for kind in ALERT_KINDS:
            for channel, bad in enumerate(q.flags(kind)):
                alarm = state.alarms.setdefault((kind, channel), _Alarm())
                change = self._step(alarm, bad, t0, len(window))
                if change is not None:
                    yield from _alert_events(stream, kind, channel, change, alarm.since)

    def _step(self, alarm: _Alarm, bad: bool, t0: int, n: int) -> str | None:
        """Hysteresis: ``on_windows`` bad windows start an alert, ``off_windows`` end it."""
        if bad == alarm.active:
            alarm.streak = 0
            return None
        alarm.streak += 1
        needed = self.settings.off_windows if alarm.active else self.settings.on_windows
        if alarm.streak < needed:
            return None
        alarm.active, alarm.streak = bad, 0
        # The alert starts (or ends) where the run of windows that decided it began.
        alarm.since = t0 + n - needed * n
        return "start" if bad else "end"


def _alert_events(stream: str, kind: str, channel: int, state: str, t: int) -> Iterator[Event]:
    body = {"stream": stream, "alert": kind, "state": state, "t": t, "channel": channel}
    for topic in ("alerts", f"stream/{stream}/quality"):
        yield Event("alert", topic, Priority.CRITICAL, body)


async def run_screen(
    inbox: trio.MemoryReceiveChannel[Item],
    outbox: trio.MemorySendChannel[Item],
    *,
    settings: ScreenSettings,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Screen the filtered blocks from *inbox*; pass every item on, then its events.

    Owns both ends: returns, closing *outbox*, when *inbox* ends.
    """
    screener = Screener(settings)
    with inbox, outbox:
        task_status.started()
        async for item in inbox:
            await outbox.send(item)
            if isinstance(item, Filtered):
                for event in screener.feed(item):
                    await outbox.send(Publication(event))
