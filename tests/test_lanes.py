"""Tests for vital_actors.lanes: quotas, watermarks, the drop policy, emergency mode, and
no CRITICAL loss under overload."""

from __future__ import annotations

import random
import re

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from protocol import Event, Priority, StreamSamples
from vital_actors.edge.codecs import Outgoing
from vital_actors.lanes import (
    PRIORITIES,
    Lanes,
    State,
    Verdict,
    admit,
    drop_probability,
    next_state,
)
from vital_actors.settings import LaneSettings, SettingsError, Watermarks, load_settings

W = Watermarks()  # 0.20 / 0.80 / 0.95
SETTINGS = LaneSettings()
CRITICAL, HIGH, NORMAL, LOW, BULK = PRIORITIES


def message(priority: Priority, k: int = 0) -> Outgoing:
    if priority is HIGH:
        return Outgoing.of(StreamSamples("stream/s/raw", "s", k, k, 360.0, ("MLII",), "int16",
                                         (200.0,), (0.0,), b"\0\0"), priority)
    return Outgoing.of(Event("status", "t", priority, {"k": k}), priority)


def k_of(out: Outgoing) -> int:
    m = out.message
    assert isinstance(m, StreamSamples | Event)
    return m.seq if isinstance(m, StreamSamples) else int(m.body["k"])


def state(ls: Lanes) -> State:
    return ls.state  # read through a call: mypy would keep a narrowed attribute


def lanes(buffer: int = 100, *, seed: int = 1) -> Lanes:
    return Lanes(SETTINGS.capacities(buffer), SETTINGS, draw=random.Random(seed).random)


def fill(ls: Lanes, priority: Priority, n: int) -> list[Verdict]:
    return [ls.offer(message(priority, k)) for k in range(n)]


# --- settings ---------------------------------------------------------------------------


def test_default_quotas_split_ten_thousand_messages() -> None:
    s = load_settings()
    assert s.buffers.subscriber == 10_000
    assert s.lanes.capacities(s.buffers.subscriber) == (3000, 4000, 2000, 800, 200)
    assert (s.lanes.watermarks.low, s.lanes.watermarks.high,
            s.lanes.watermarks.critical) == (0.20, 0.80, 0.95)


async def test_each_lane_is_a_memory_channel_whose_capacity_is_its_quota() -> None:
    ls = Lanes(SETTINGS.capacities(10_000), SETTINGS, draw=random.random)
    assert [tx.statistics().max_buffer_size for tx in ls._tx] == [3000, 4000, 2000, 800, 200]
    assert ls.size == 10_000


@pytest.mark.parametrize(("env", "value", "problem"), [
    ("VITAL_LANES__QUOTAS__CRITICAL", "0.5", "quotas must sum to 1, they sum to 1.2"),
    ("VITAL_LANES__WATERMARKS__LOW", "0.9", "low < high < critical"),
    ("VITAL_LANES__WATERMARKS__CRITICAL", "0.7", "low < high < critical"),
    ("VITAL_BUFFERS__SUBSCRIBER", "4", "buffers.subscriber"),
])
def test_invalid_lane_settings_are_refused_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, env: str, value: str, problem: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=re.escape(problem)):
        load_settings()


# --- the pure policy --------------------------------------------------------------------


@pytest.mark.parametrize(("state", "occupancy", "expected"), [
    (State.NORMAL, 0.79, State.NORMAL),
    (State.NORMAL, 0.80, State.BACKPRESSURE),  # on at >= 80 %
    (State.BACKPRESSURE, 0.50, State.BACKPRESSURE),  # hysteresis: stays on
    (State.BACKPRESSURE, 0.21, State.BACKPRESSURE),
    (State.BACKPRESSURE, 0.20, State.NORMAL),  # off at <= 20 %
    (State.BACKPRESSURE, 0.95, State.EMERGENCY),  # emergency at >= 95 %
    (State.NORMAL, 0.97, State.EMERGENCY),
    (State.EMERGENCY, 0.94, State.BACKPRESSURE),
    (State.EMERGENCY, 0.10, State.NORMAL),
])
def test_state_follows_the_watermarks_with_hysteresis(
        state: State, occupancy: float, expected: State) -> None:
    assert next_state(state, occupancy, W) is expected


def test_drop_probability_rises_with_occupancy_and_falls_with_priority() -> None:
    grid = [0.2, 0.4, 0.6, 0.8, 0.95]
    normal = [drop_probability(NORMAL, x, W) for x in grid]
    low = [drop_probability(LOW, x, W) for x in grid]
    assert normal == sorted(normal) and normal[0] == 0.0 and normal[-1] == 1.0
    assert all(lo >= no for lo, no in zip(low, normal, strict=True))
    assert low[1] > normal[1] > 0
    assert [drop_probability(p, 0.9, W) for p in (CRITICAL, HIGH, BULK)] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(("priority", "state", "lane_full", "draw", "verdict"), [
    # CRITICAL: always queued; a full lane means the subscriber is hopelessly behind.
    (CRITICAL, State.EMERGENCY, False, 0.0, Verdict.QUEUE),
    (CRITICAL, State.NORMAL, True, 0.99, Verdict.EVICT),
    # HIGH: queued while its lane has room, even in an emergency.
    (HIGH, State.EMERGENCY, False, 0.0, Verdict.QUEUE),
    (HIGH, State.NORMAL, True, 0.99, Verdict.DROP),
    # NORMAL / LOW: always in normal state; by the draw under backpressure.
    (NORMAL, State.NORMAL, False, 0.0, Verdict.QUEUE),
    (NORMAL, State.BACKPRESSURE, False, 0.1, Verdict.DROP),  # p(0.6) = 0.53
    (NORMAL, State.BACKPRESSURE, False, 0.9, Verdict.QUEUE),
    (LOW, State.BACKPRESSURE, False, 0.9, Verdict.DROP),  # p = 1 for LOW at 0.6
    (LOW, State.EMERGENCY, False, 0.99, Verdict.DROP),
    (NORMAL, State.EMERGENCY, False, 0.99, Verdict.DROP),
    # BULK: dropped whenever backpressure is on.
    (BULK, State.NORMAL, False, 0.0, Verdict.QUEUE),
    (BULK, State.BACKPRESSURE, False, 0.99, Verdict.DROP),
    (BULK, State.NORMAL, True, 0.99, Verdict.DROP),
])
def test_admit_per_priority(priority: Priority, state: State, lane_full: bool, draw: float,
                            verdict: Verdict) -> None:
    assert admit(priority, state=state, occupancy=0.6, lane_full=lane_full, draw=draw,
                 watermarks=W) is verdict


# --- lanes ------------------------------------------------------------------------------


async def test_take_returns_the_most_urgent_first_in_order_within_a_lane() -> None:
    ls = lanes()
    for k, p in enumerate([BULK, LOW, HIGH, NORMAL, CRITICAL, HIGH, CRITICAL]):
        assert ls.offer(message(p, k)) is Verdict.QUEUE
    order = [ls.take_nowait() for _ in range(7)]
    assert [(o.priority, k_of(o)) for o in order] == [
        (CRITICAL, 4), (CRITICAL, 6), (HIGH, 2), (HIGH, 5), (NORMAL, 3), (LOW, 1), (BULK, 0)]
    with pytest.raises(trio.WouldBlock):
        ls.take_nowait()


async def test_depth_counters_match_the_channels_statistics() -> None:
    ls = lanes()
    fill(ls, HIGH, 10)
    fill(ls, CRITICAL, 3)
    ls.take_nowait()
    assert ls.depths == [tx.statistics().current_buffer_used for tx in ls._tx] == [
        2, 10, 0, 0, 0]
    assert ls.depth == 12


async def test_a_waiting_sender_wakes_for_an_offer_and_ends_after_close(
        autojump_clock: MockClock) -> None:
    ls = lanes()
    got: list[Outgoing] = []

    async def sender() -> None:
        while True:
            try:
                got.append(await ls.take())
            except trio.EndOfChannel:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        ls.offer(message(NORMAL))
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        fill(ls, BULK, 2)
        ls.close()  # what waits is still delivered, then take ends
    assert [o.priority for o in got] == [NORMAL, BULK, BULK]


async def test_watermarks_switch_backpressure_on_at_80_and_off_at_20_percent(
        autojump_clock: MockClock) -> None:
    ls = lanes(100)  # lanes (30, 40, 20, 8, 2)
    fill(ls, HIGH, 40)
    fill(ls, CRITICAL, 30)
    fill(ls, NORMAL, 9)
    assert (ls.depth, ls.state) == (79, State.NORMAL)
    await trio.sleep(1)
    ls.offer(message(NORMAL))
    assert (ls.depth, ls.state) == (80, State.BACKPRESSURE)
    await trio.sleep(2)
    for _ in range(59):
        ls.take_nowait()
    assert (ls.depth, ls.state) == (21, State.BACKPRESSURE)  # hysteresis
    ls.take_nowait()
    assert (ls.depth, ls.state) == (20, State.NORMAL)
    await trio.sleep(3)
    seconds = ls.seconds_in()
    assert seconds == {State.NORMAL: pytest.approx(4.0), State.BACKPRESSURE: pytest.approx(2.0),
                       State.EMERGENCY: 0.0}


async def test_a_replay_never_tips_the_buffer_into_backpressure() -> None:
    ls = Lanes(SETTINGS.capacities(100), SETTINGS, draw=lambda: 0.5)  # (30, 40, 20, 8, 2)
    fill(ls, HIGH, 40)
    fill(ls, CRITICAL, 30)
    fill(ls, NORMAL, 9)
    assert (ls.depth, ls.state) == (79, State.NORMAL)
    if ls.has_room(BULK):  # what a replay checks before it offers
        ls.offer(message(BULK))
    # The live NORMAL message the policy admits at 79 % is not pushed out by the replay.
    assert ls.offer(message(NORMAL)) is Verdict.QUEUE
    assert ls.counts.dropped == [0] * 5


async def test_under_backpressure_bulk_is_dropped_and_normal_low_by_occupancy() -> None:
    ls = lanes(10_000, seed=3)
    fill(ls, CRITICAL, 3000)
    fill(ls, HIGH, 4000)
    fill(ls, NORMAL, 1000)
    assert ls.state is State.BACKPRESSURE and ls.depth == 8000
    assert fill(ls, BULK, 5) == [Verdict.DROP] * 5  # though its lane is empty
    for _ in range(4000):  # all CRITICAL, 1000 HIGH: occupancy 0.4 is still backpressure
        ls.take_nowait()
    assert ls.state is State.BACKPRESSURE
    verdicts: dict[Priority, list[Verdict]] = {NORMAL: [], LOW: []}
    for _ in range(400):  # p(NORMAL) = 0.27, p(LOW) = 0.53 at occupancy 0.4
        for p in (NORMAL, LOW):
            verdicts[p].append(ls.offer(message(p)))
            if verdicts[p][-1] is Verdict.QUEUE:
                ls.take_nowait()  # a HIGH one: holds the occupancy steady
    assert ls.depth == 4000
    dropped = {p: v.count(Verdict.DROP) / len(v) for p, v in verdicts.items()}
    assert 0.19 < dropped[NORMAL] < 0.35
    assert 0.43 < dropped[LOW] < 0.63
    assert ls.counts.dropped == [0, 0, verdicts[NORMAL].count(Verdict.DROP),
                                 verdicts[LOW].count(Verdict.DROP), 5]


async def test_in_emergency_only_critical_and_high_enter() -> None:
    ls = lanes(100)  # lanes (30, 40, 20, 8, 2)
    fill(ls, NORMAL, 10)
    fill(ls, LOW, 5)
    fill(ls, CRITICAL, 30)
    fill(ls, HIGH, 35)
    assert (ls.depth, ls.state) == (80, State.BACKPRESSURE)
    fill(ls, HIGH, 5)
    fill(ls, NORMAL, 10)  # some get through by the draw: fill up with what must enter
    while ls.depth < 95:
        ls.offer(message(NORMAL))
    assert ls.state is State.EMERGENCY
    assert [ls.offer(message(p)) for p in (NORMAL, LOW, BULK)] == [Verdict.DROP] * 3
    for _ in range(5):
        ls.take_nowait()  # five CRITICAL slots free up
    assert state(ls) is State.BACKPRESSURE  # below 95 %: back to backpressure
    fill(ls, CRITICAL, 5)
    assert state(ls) is State.EMERGENCY
    assert ls.offer(message(CRITICAL)) is Verdict.EVICT  # its lane is full again
    assert ls.counts.dropped[0] == ls.counts.dropped[1] == 0
    assert ls.counts.dropped[3] >= 1 and ls.counts.dropped[4] == 1


async def test_no_critical_message_is_lost_in_a_tenfold_overload(
        autojump_clock: MockClock) -> None:
    """Messages arrive ten times faster than the socket takes them; one in ten is CRITICAL.
    Every CRITICAL message is sent, in order, and the others give way."""
    ls = lanes(1000, seed=5)
    mix = [CRITICAL, HIGH, HIGH, HIGH, NORMAL, NORMAL, LOW, LOW, BULK, BULK]
    sent: list[Outgoing] = []
    offered = 0

    async def slow_socket() -> None:  # one message per millisecond
        while True:
            try:
                out = await ls.take()
            except trio.EndOfChannel:
                return
            await trio.sleep(0.001)
            ls.mark_sent(out)
            sent.append(out)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_socket)
        for tick in range(3000):  # 3 s: ten messages per millisecond
            for k, p in enumerate(mix):
                verdict = ls.offer(message(p, 10 * tick + k))
                assert verdict is not Verdict.EVICT
                offered += 1
            await trio.sleep(0.001)
        assert ls.counts.dropped[1] > 0  # it was overloaded: even HIGH gave way
        ls.close()
    critical = [o.message.body["k"] for o in sent if o.priority is CRITICAL
                and isinstance(o.message, Event)]
    assert critical == list(range(0, 30000, 10))  # all of them, in order
    assert ls.counts.dropped[0] == 0 and ls.counts.dropped[4] > 0
    assert sum(ls.counts.sent) == len(sent) == sum(ls.counts.queued)
    assert sum(ls.counts.dropped) + sum(ls.counts.queued) == offered


async def test_a_subscriber_overloaded_with_critical_messages_is_evicted_never_silent() -> None:
    ls = lanes(100)
    verdicts = fill(ls, CRITICAL, 31)
    assert verdicts == [Verdict.QUEUE] * 30 + [Verdict.EVICT]
    assert ls.counts.dropped[0] == 0
    ls.evict("too slow")
    with pytest.raises(trio.EndOfChannel):
        ls.take_nowait()  # what waits is stale: the sender goes straight to the error
    with pytest.raises(trio.ClosedResourceError):
        ls.offer(message(HIGH))
