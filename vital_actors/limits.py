"""Limits on what one peer may take: pure checks, each with its own reason and close code.

``Stats.reject(reason)`` counts every refusal by the reason named here, so each limit
shows as its own counter in /api/v1/stats and /metrics.

=======================  ======  =========================  ==========================
limit                    code    reason                     setting (``limits.``)
=======================  ======  =========================  ==========================
connections per address  HTTP    ``too-many-connections``   ``max_connections_per_ip``
                         429
streams known            1008    ``too-many-streams``       ``max_streams``
messages per second      1008    ``rate-limited``           ``messages_per_s``, burst
silence (slowloris)      1008    ``idle-timeout``           ``idle_timeout_s``
channels at hello        1008    ``too-many-channels``      ``max_channels``
topics of a subscriber   1008    ``too-many-topics``        ``max_topics``
fs at hello              1007    ``fs-out-of-range``        ``min_fs``, ``max_fs``
=======================  ======  =========================  ==========================
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from protocol import CloseCode, Hello, RemoteProtocolError

from .settings import LimitSettings

__all__ = ["ConnectionCounter", "TokenBucket", "check_hello", "check_topics", "idle_error",
           "stream_cap_error"]


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: *rate* tokens a second, at most *burst* saved up.

    Pure: the caller passes the time, so tests need no clock.
    """

    rate: float
    burst: float
    tokens: float = field(init=False)
    last: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend *cost* tokens at time *now*; False (and nothing spent) when short."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def check(self, now: float) -> None:
        """:meth:`take` one token or raise the ``rate-limited`` error (1008)."""
        if not self.take(now):
            raise RemoteProtocolError(
                f"more than {self.rate:g} messages a second (burst {self.burst:g})",
                code=CloseCode.POLICY_VIOLATION, reason="rate-limited")


@dataclass(slots=True)
class ConnectionCounter:
    """Open connections per remote address, capped at *limit* each."""

    limit: int
    open: dict[str, int] = field(default_factory=dict)

    def enter(self, address: str) -> bool:
        """Count one more connection from *address*; False (not counted) when at the cap."""
        n = self.open.get(address, 0)
        if n >= self.limit:
            return False
        self.open[address] = n + 1
        return True

    def leave(self, address: str) -> None:
        n = self.open.get(address, 0) - 1
        if n > 0:
            self.open[address] = n
        else:
            self.open.pop(address, None)


def check_hello(hello: Hello, limits: LimitSettings) -> None:
    """Refuse a hello whose channel count or sampling rate is beyond the limits."""
    if len(hello.channels) > limits.max_channels:
        raise RemoteProtocolError(
            f"{len(hello.channels)} channels; this server takes at most "
            f"{limits.max_channels}", code=CloseCode.POLICY_VIOLATION,
            reason="too-many-channels")
    if not limits.min_fs <= hello.fs <= limits.max_fs:
        raise RemoteProtocolError(
            f"fs {hello.fs:g} Hz is outside {limits.min_fs:g}..{limits.max_fs:g} Hz",
            code=CloseCode.INVALID_PAYLOAD, reason="fs-out-of-range")


def check_topics(followed: Collection[str], topics: Iterable[str], limit: int) -> None:
    """Refuse a subscribe that would make one connection follow more than *limit*
    topics (each is state in the server, and each reply lists them all)."""
    total = len(followed) + len(set(topics).difference(followed))
    if total > limit:
        raise RemoteProtocolError(
            f"{total} topics; one connection follows at most {limit}",
            code=CloseCode.POLICY_VIOLATION, reason="too-many-topics")


def stream_cap_error(limit: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"the server already keeps {limit} streams; no new ones",
                               code=CloseCode.POLICY_VIOLATION, reason="too-many-streams")


def idle_error(seconds: float) -> RemoteProtocolError:
    return RemoteProtocolError(f"nothing received for {seconds:g} s",
                               code=CloseCode.POLICY_VIOLATION, reason="idle-timeout")
