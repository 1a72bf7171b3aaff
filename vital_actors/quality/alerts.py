"""CRITICAL alerts: hysteresis state machines stepped once per quality step.

:class:`Alarm` is one alert (one type, maybe one channel). Each step it gets whether
the onset condition holds, whether the clearing condition holds, and whether the step
is suppressed (quality unusable). It starts after ``on`` onset steps in a row and ends
after ``off`` clearing steps in a row; a suppressed step resets the count towards a
change and changes nothing, so noise neither raises nor clears rhythm alarms.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALERT_TYPES", "Alarm", "Change"]

ALERT_TYPES = ("asystole", "bradycardia", "tachycardia", "lead_off", "flatline")


@dataclass(frozen=True, slots=True)
class Change:
    """An alert starting or ending: ``start`` is where it began (sample index),
    ``end`` where it cleared (None while active)."""

    state: str  # "start" | "end"
    start: int
    end: int | None


@dataclass(slots=True)
class Alarm:
    on: int
    off: int
    active: bool = False
    streak: int = 0
    start: int = 0

    def step(self, onset: bool, clear: bool, t: int, *, began: int | None = None,
             suppressed: bool = False) -> Change | None:
        """One step at sample index *t*. *began* dates the onset (default: the first
        step of the streak, that is *t* less the streak's length in steps, which the
        caller passes as *began*)."""
        if suppressed:
            self.streak = 0
            return None
        wants = clear if self.active else onset
        if not wants:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < (self.off if self.active else self.on):
            return None
        self.streak = 0
        if self.active:
            self.active = False
            return Change("end", self.start, t if began is None else began)
        self.active = True
        self.start = t if began is None else began
        return Change("start", self.start, None)
