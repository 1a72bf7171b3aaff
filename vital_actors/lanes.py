"""A subscriber's outgoing buffer: five bounded priority lanes, watermarks, drop policy.

    hub ──offer() (never waits)──▶ [CRITICAL 3000][HIGH 4000][NORMAL 2000][LOW 800][BULK 200]
                                                   │ highest priority first
                                                   ▼
                                   take() ◀── the connection's sender task

Each lane is a trio memory channel whose capacity *is* its quota of the buffer
(``buffers.subscriber`` x ``lanes.quotas``). The hub offers every message with
``send_nowait``; :func:`admit` (pure) decides from the priority, the lane's room and
the buffer's state whether it is queued, dropped, or whether the subscriber is
hopelessly behind and must be evicted (a CRITICAL message that finds its lane full).
:func:`next_state` moves the state between normal, backpressure and emergency on the
watermarks, with hysteresis.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocol import Priority

from .edge.codecs import Outgoing
from .settings import LaneSettings, Watermarks

__all__ = [
    "DEFAULT_PRIORITIES",
    "PRIORITIES",
    "LaneCounts",
    "Lanes",
    "State",
    "Verdict",
    "admit",
    "drop_probability",
    "next_state",
]

#: The lanes, most urgent first; a message's lane index is ``priority - 1``.
PRIORITIES: tuple[Priority, ...] = tuple(Priority)

#: The priority a producer gives each message type unless it has a reason not to.
DEFAULT_PRIORITIES: dict[str, Priority] = {
    "alert": Priority.CRITICAL,
    "samples": Priority.HIGH, "beat": Priority.HIGH,
    "quality": Priority.NORMAL, "status": Priority.NORMAL,
    "stats": Priority.LOW,
    "history": Priority.BULK, "result": Priority.BULK, "progress": Priority.BULK,
}


class State(enum.StrEnum):
    NORMAL = "normal"
    BACKPRESSURE = "backpressure"
    EMERGENCY = "emergency"


class Verdict(enum.Enum):
    QUEUE = "queue"
    DROP = "drop"
    EVICT = "evict"  # a CRITICAL message found its lane full: the subscriber must go


def next_state(state: State, occupancy: float, w: Watermarks) -> State:
    """The buffer's state once it holds *occupancy* (0..1) of its capacity.

    Backpressure starts at ``w.high`` and ends only at ``w.low`` (hysteresis, so it does
    not flap); emergency holds from ``w.critical`` and falls back to backpressure.
    """
    if occupancy >= w.critical:
        return State.EMERGENCY
    if occupancy <= w.low:
        return State.NORMAL
    if state is State.NORMAL and occupancy < w.high:
        return State.NORMAL
    return State.BACKPRESSURE


def drop_probability(priority: Priority, occupancy: float, w: Watermarks) -> float:
    """How likely a message is dropped under backpressure: 0 for CRITICAL and HIGH, 1 for
    BULK; for NORMAL it rises linearly from 0 at ``w.low`` to 1 at ``w.critical``, and
    LOW drops twice as readily."""
    if priority <= Priority.HIGH:
        return 0.0
    if priority is Priority.BULK:
        return 1.0
    x = min(1.0, max(0.0, (occupancy - w.low) / (w.critical - w.low)))
    return x if priority is Priority.NORMAL else min(1.0, 2 * x)


def admit(priority: Priority, *, state: State, occupancy: float, lane_full: bool,
          draw: float, watermarks: Watermarks) -> Verdict:
    """Whether a message of *priority* enters a buffer in *state* at *occupancy*.

    Args:
        lane_full: its lane has no room.
        draw: uniform in [0, 1); the message is dropped when it falls below the drop
            probability (injected, so that the decision is a pure function).
    """
    if priority is Priority.CRITICAL:
        return Verdict.EVICT if lane_full else Verdict.QUEUE
    if lane_full:
        return Verdict.DROP
    if state is State.NORMAL or priority is Priority.HIGH:
        return Verdict.QUEUE
    if state is State.EMERGENCY:
        return Verdict.DROP
    if draw < drop_probability(priority, occupancy, watermarks):
        return Verdict.DROP
    return Verdict.QUEUE


@dataclass(slots=True)
class LaneCounts:
    """Counters per priority (index ``priority - 1``) and time per state, in seconds."""

    queued: list[int]
    sent: list[int]
    dropped: list[int]
    seconds: dict[State, float]

    @classmethod
    def zero(cls) -> LaneCounts:
        return cls([0] * 5, [0] * 5, [0] * 5, dict.fromkeys(State, 0.0))

    def add(self, other: LaneCounts) -> None:
        for mine, theirs in ((self.queued, other.queued), (self.sent, other.sent),
                             (self.dropped, other.dropped)):
            for i, n in enumerate(theirs):
                mine[i] += n
        for state, s in other.seconds.items():
            self.seconds[state] += s


class Lanes:
    """One subscriber's five lanes. The hub calls :meth:`offer` (never blocks); the
    connection's sender calls :meth:`take` and then :meth:`mark_sent`.

    Args:
        capacities: per lane, CRITICAL first (``LaneSettings.capacities``).
        draw: uniform random numbers in [0, 1) for the drop decisions.
        clock: for the time spent in each state (``trio.current_time`` by default).
    """

    def __init__(self, capacities: tuple[int, ...], settings: LaneSettings, *,
                 draw: Callable[[], float],
                 clock: Callable[[], float] = trio.current_time) -> None:
        pairs = [trio.open_memory_channel[Outgoing](c) for c in capacities]
        self._tx = [tx for tx, _ in pairs]
        self._rx = [rx for _, rx in pairs]
        self.capacities = capacities
        self.size = sum(capacities)
        self.watermarks = settings.watermarks
        self.depths = [0] * len(capacities)
        self.depth = 0
        self.state = State.NORMAL
        self.counts = LaneCounts.zero()
        self.closed = False
        self.evicted: str | None = None  # why, once evicted
        self.ended = trio.Event()  # set by close (shutdown or eviction)
        self._draw = draw
        self._clock = clock
        self._since = clock()
        self._waiting = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()  # producers that wait for room (replays)

    def offer(self, out: Outgoing) -> Verdict:
        """Queue *out* in its lane if the policy admits it; never blocks.

        Raises:
            trio.ClosedResourceError: the lanes were closed.
            trio.BrokenResourceError: the sender has gone.
        """
        i = out.priority - 1
        verdict = admit(out.priority, state=self.state, occupancy=self.depth / self.size,
                        lane_full=self.depths[i] >= self.capacities[i], draw=self._draw(),
                        watermarks=self.watermarks)
        if verdict is Verdict.QUEUE:
            self._tx[i].send_nowait(out)
            self.depths[i] += 1
            self.depth += 1
            self.counts.queued[i] += 1
            self._moved()
            if self._waiting:
                self._waiting.unpark()
        elif verdict is Verdict.DROP:
            self.counts.dropped[i] += 1
        return verdict

    def take_nowait(self) -> Outgoing:
        """The most urgent message waiting.

        Raises:
            trio.WouldBlock: none waits.
            trio.EndOfChannel: closed and empty, or evicted (what waits is stale).
        """
        if self.evicted is None:
            for i, rx in enumerate(self._rx):
                if self.depths[i]:
                    out = rx.receive_nowait()
                    self.depths[i] -= 1
                    self.depth -= 1
                    self._moved()
                    if self._room:
                        self._room.unpark_all()
                    return out
            if not self.closed:
                raise trio.WouldBlock
        raise trio.EndOfChannel

    async def take(self) -> Outgoing:
        """Like :meth:`take_nowait`, but waits for a message."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while True:
            try:
                out = self.take_nowait()
            except trio.WouldBlock:
                await self._waiting.park()
                parked = True
                continue
            if not parked:  # a schedule point still owed; one that cannot lose *out*
                await trio.lowlevel.cancel_shielded_checkpoint()
            return out  # (after a park, nothing awaited since: no second round trip)

    async def wait_for_room(self, priority: Priority, *, below: int | None = None) -> None:
        """Return once *priority*'s lane holds fewer than *below* messages (default: its
        capacity) and the buffer stays in normal state with one more, or the lanes are
        closed. A producer that must not lose messages (a replay) waits here, then
        offers: never dropped, and never crowding out what the policy would admit."""
        await trio.lowlevel.checkpoint()
        while not self.closed and not self.has_room(priority, below=below):
            await self._room.park()
        # No checkpoint after the last check: the caller offers before anyone else runs.

    def has_room(self, priority: Priority, *, below: int | None = None) -> bool:
        """Whether an offer of *priority* is queued now and leaves the buffer in normal
        state (see :meth:`wait_for_room`): a replay's message that tipped it into
        backpressure would cost live NORMAL and LOW messages their place."""
        i = priority - 1
        limit = self.capacities[i] if below is None else below
        return (self.depths[i] < limit and self.state is State.NORMAL
                and (self.depth + 1) / self.size < self.watermarks.high)

    def mark_sent(self, out: Outgoing) -> None:
        self.counts.sent[out.priority - 1] += 1

    def close(self) -> None:
        """No more offers; :meth:`take` returns what waits, then ends."""
        self.closed = True
        self.ended.set()
        for tx in self._tx:
            tx.close()
        self._waiting.unpark_all()
        self._room.unpark_all()

    def evict(self, reason: str) -> None:
        """Close, and end :meth:`take` at once: the subscriber is hopelessly behind."""
        self.evicted = reason
        self.close()

    def close_receiving(self) -> None:
        """The sender has gone: later offers raise ``trio.BrokenResourceError``."""
        for rx in self._rx:
            rx.close()

    def seconds_in(self) -> dict[State, float]:
        """Time spent in each state so far, the current one included."""
        out = dict(self.counts.seconds)
        out[self.state] += self._clock() - self._since
        return out

    def snapshot(self) -> LaneCounts:
        """A copy of the counters, with the time in the current state counted up to now."""
        c = self.counts
        return LaneCounts(list(c.queued), list(c.sent), list(c.dropped), self.seconds_in())

    def _moved(self) -> None:
        state = next_state(self.state, self.depth / self.size, self.watermarks)
        if state is not self.state:
            now = self._clock()
            self.counts.seconds[self.state] += now - self._since
            self.state, self._since = state, now
