"""Each device's clock against ours, from ping/pong exchanges (NTP-like, as LSL does).

One exchange gives four times: the device sends a ping at ``t0`` (its clock), we receive
it at ``t1`` and answer at ``t2`` (our clock), the device gets the pong at ``t3`` and
reports it as ``rx`` in its next ping. Then, as in NTP,

    offset = ((t1 - t0) + (t2 - t3)) / 2      our clock minus the device's
    rtt    = (t3 - t0) - (t2 - t1)            the network's share of the round trip

and the offset is exact when the path is symmetric; its error is at most rtt / 2. So we
keep the last exchanges, trust the half with the smallest rtt, and fit
``offset(t) = offset + drift * (t - t_ref)`` through them by least squares (drift in
seconds per second; 1e-6 is 1 ppm). Everything here is pure and takes no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ClockEstimate", "ClockTracker", "Exchange", "estimate"]


@dataclass(frozen=True, slots=True)
class Exchange:
    t0: float  # device: ping sent
    t1: float  # server: ping received
    t2: float  # server: pong sent
    t3: float  # device: pong received

    @property
    def offset(self) -> float:
        return ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2

    @property
    def rtt(self) -> float:
        return (self.t3 - self.t0) - (self.t2 - self.t1)


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Server time = device time + offset + drift * (server time - at)."""

    offset: float  # s, at server time ``at``
    drift: float  # s/s
    rtt: float  # s, the median of the exchanges used
    at: float  # server time of the newest exchange
    exchanges: int

    def to_server(self, device_t: float) -> float:
        """A device timestamp on our clock."""
        approx = device_t + self.offset
        return device_t + self.offset + self.drift * (approx - self.at)


def estimate(exchanges: Sequence[Exchange], *, keep: float = 0.5,
             min_span_s: float = 10.0) -> ClockEstimate | None:
    """The estimate from *exchanges* (None without any usable one).

    Exchanges with a negative rtt (a clock that jumped, a bad report) are dropped; of the
    rest the fraction *keep* with the smallest rtt is fitted. Drift needs exchanges at
    least *min_span_s* apart (over less, jitter would pass for drift); until then it is 0.
    """
    good = [e for e in exchanges if e.rtt >= 0]
    if not good:
        return None
    best = sorted(good, key=lambda e: e.rtt)[: max(1, round(len(good) * keep))]
    t = np.array([(e.t1 + e.t2) / 2 for e in best])
    y = np.array([e.offset for e in best])
    at = max((e.t1 + e.t2) / 2 for e in good)
    if len(best) >= 3 and np.ptp(t) >= min_span_s:
        drift, intercept = np.polyfit(t - at, y, 1)
    else:
        drift, intercept = 0.0, float(np.mean(y))
    return ClockEstimate(offset=float(intercept), drift=float(drift),
                         rtt=float(np.median([e.rtt for e in best])), at=float(at),
                         exchanges=len(good))


class ClockTracker:
    """The exchanges of one device connection: pings in, estimates out.

    Call :meth:`ping` with each ping's ``t`` and ``rx`` and our receive time; it returns
    the ``t1``, ``t2`` to put in the pong and completes the previous exchange.
    """

    def __init__(self, window: int = 64) -> None:
        self.exchanges: deque[Exchange] = deque(maxlen=window)
        self._open: tuple[float, float, float] | None = None  # t0, t1, t2 awaiting rx
        self.estimate: ClockEstimate | None = None

    def ping(self, t: float | None, rx: float | None, *, received: float,
             now: float) -> None:
        if self._open is not None and rx is not None:
            t0, t1, t2 = self._open
            self.exchanges.append(Exchange(t0, t1, t2, rx))
            self.estimate = estimate(self.exchanges)
        self._open = (t, received, now) if t is not None else None
