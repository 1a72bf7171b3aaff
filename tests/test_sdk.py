"""The client SDK: backoff, the reconnect loop, the device's bounded buffer, refusals
that end it, and a subscriber that comes back after the server restarts."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected

import protocol as P
from vital_actors.auth import issue_token
from vital_actors.graph import Server
from vital_actors.sdk import Backoff, DeviceClient, FatalError, open_subscriber
from vital_actors.sdk._connection import reconnecting
from vital_actors.settings import load_settings

HELLO = P.Hello("sdk1", 250.0, ("I",), "int16", (100.0,), (0.0,))
SECRET = "sdk-test-secret-sdk-test-secret-0123456789"


def test_backoff_grows_to_its_cap_with_jitter_below_each_step() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.5,
                      rng=random.Random(1))
    delays = backoff.delays()
    got = [next(delays) for _ in range(8)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(s / 2 <= d <= s for d, s in zip(got, steps, strict=True))
    assert len(set(got)) == len(got)  # jittered: no two clients in lockstep


STEADY = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.0)  # 1, 2, 4, 4, ...


class Sessions:
    """Sessions that end as *ends* says, one each (an exception to raise, or None to
    return), noting when each one starts and its ending; the one after them cancels
    :attr:`scope`. Those numbered in *working* receive something before they end."""

    def __init__(self, ends: list[BaseException | None],
                 working: frozenset[int] = frozenset()) -> None:
        self.ends, self.working = ends, working
        self.scope = trio.CancelScope()
        self.starts: list[float] = []
        self.downs: list[BaseException] = []
        self.worked = False

    async def run(self) -> None:
        i = len(self.starts)
        self.starts.append(trio.current_time())
        self.worked = i in self.working
        if i == len(self.ends):
            self.scope.cancel()
            await trio.sleep_forever()
        end = self.ends[i]
        if end is not None:
            raise end

    async def down(self, exc: BaseException) -> None:
        self.downs.append(exc)

    def gaps(self) -> list[float]:
        return [b - a for a, b in pairwise(self.starts)]


async def test_reconnecting_sleeps_the_backoffs_delays_and_starts_over_after_one_worked(
        autojump_clock: trio.testing.MockClock) -> None:
    sessions = Sessions([OSError("refused")] * 6, working=frozenset({4}))
    with sessions.scope:
        await reconnecting(sessions.run, backoff=STEADY, worked=lambda: sessions.worked,
                           on_down=sessions.down)
    assert sessions.gaps() == pytest.approx([1, 2, 4, 4, 1, 2])
    assert sessions.downs == sessions.ends


async def test_a_clean_session_starts_the_delays_over_and_the_next_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    sessions = Sessions([OSError(), OSError(), None, OSError()])
    with sessions.scope:
        await reconnecting(sessions.run, backoff=STEADY, on_down=sessions.down)
    assert sessions.gaps() == pytest.approx([1, 2, 0, 1])
    assert len(sessions.downs) == 3  # a clean session is no ending


async def test_a_group_of_endings_ends_a_session_like_its_first(
        autojump_clock: trio.testing.MockClock) -> None:
    gone = trio.BrokenResourceError("gone")
    sessions = Sessions([ExceptionGroup("a nursery's", [gone, OSError()])])
    with sessions.scope:
        await reconnecting(sessions.run, backoff=STEADY, on_down=sessions.down)
    assert sessions.downs == [gone]


async def test_a_fatal_ending_raises_fatal_error_from_it(
        autojump_clock: trio.testing.MockClock) -> None:
    policy = ConnectionClosed(CloseReason(1008, "forbidden"))
    sessions = Sessions([OSError(), policy])
    with pytest.raises(FatalError) as raised, sessions.scope:
        await reconnecting(sessions.run, backoff=STEADY, on_down=sessions.down,
                           last_error=lambda: "forbidden")  # the server's error.code
    assert str(raised.value) == "forbidden" and raised.value.__cause__ is policy
    assert len(sessions.downs) == 1

    rejected = ConnectionRejected(401, (), None)
    refused = Sessions([rejected])
    with pytest.raises(FatalError) as raised, refused.scope:
        await reconnecting(refused.run, backoff=STEADY)
    assert str(raised.value) == str(rejected) and raised.value.__cause__ is rejected

    never = Sessions([rejected, rejected])  # unless nothing is fatal (simulated devices)
    with never.scope:
        await reconnecting(never.run, backoff=STEADY, on_down=never.down,
                           fatal=lambda exc, last_error: False)
    assert never.gaps() == pytest.approx([1, 2]) and never.downs == [rejected, rejected]


async def test_an_exception_that_is_no_ending_propagates(
        autojump_clock: trio.testing.MockClock) -> None:
    buggy = Sessions([OSError(), ValueError("bug")])
    with pytest.raises(ValueError, match="bug"), buggy.scope:
        await reconnecting(buggy.run, backoff=STEADY)
    own = Sessions([OSError()])  # the caller's own endings, instead of the connection's
    with pytest.raises(OSError), own.scope:
        await reconnecting(own.run, backoff=STEADY, endings=(ValueError,))


async def test_cancelling_stops_reconnecting_in_a_delay_or_in_a_session(
        autojump_clock: trio.testing.MockClock) -> None:
    sessions = Sessions([OSError()] * 3)
    start = trio.current_time()
    with trio.move_on_after(2.5):  # in the delay after the second session
        await reconnecting(sessions.run, backoff=STEADY, on_down=sessions.down)
    await trio.sleep(10)
    assert sessions.starts == pytest.approx([start, start + 1])
    assert len(sessions.downs) == 2

    parked = Sessions([])
    with trio.move_on_after(1):  # in a session
        await reconnecting(parked.run, backoff=STEADY, on_down=parked.down)
    assert len(parked.starts) == 1 and parked.downs == []


async def test_send_parks_when_the_buffer_is_full_and_resumes_on_an_ack() -> None:
    client = DeviceClient("ws://127.0.0.1:9", HELLO, max_unacked=3)
    for _ in range(3):
        await client.send(np.zeros((10, 1), "int16"))
    done = trio.Event()

    async def fourth() -> None:
        await client.send(np.zeros((10, 1), "int16"))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fourth)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and client.unacked == 3
        client._acked(0)  # what the reader does with an ack
        await done.wait()
    assert client.unacked == 3 and client.next_seq == 4


async def test_a_refused_token_ends_the_device_with_fatal_error(nursery: trio.Nursery) -> None:
    server = Server(load_settings(server={"port": 0}, auth={"required": True,
                                                            "secret": SECRET}))
    await nursery.start(server.run)
    url = f"ws://127.0.0.1:{server.port}"
    for token in ("not-a-token", issue_token(SECRET, role="device", scope=["other-*"],
                                             ttl_s=60)):
        client = DeviceClient(url, HELLO, token=token, backoff=Backoff(initial=0.01))
        with pytest.raises(FatalError), trio.fail_after(10):
            await client.run()
    server.shutdown()


async def test_the_subscriber_comes_back_after_a_restart(tmp_path: Path) -> None:
    url_port: dict[str, Any] = {"server": {"port": 0}, "archive": {"dir": tmp_path}}
    first = Server(load_settings(**url_port))
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        port = first.port
        url = f"ws://127.0.0.1:{port}"
        async with open_subscriber(url, ["streams"], backoff=Backoff(initial=0.02,
                                                                      maximum=0.1)) as rx:
            subscribed = await rx.receive()
            assert isinstance(subscribed, P.Event) and subscribed.topic == "subscriptions"
            first.shutdown()
            states = []
            with trio.fail_after(10):
                async for message in rx:  # the server goes away ...
                    if isinstance(message, P.Event) and message.topic == "client":
                        states.append(message.body["state"])
                        break
                second = Server(load_settings(server={"port": port}, archive={"dir": tmp_path}))
                await nursery.start(second.run)
                device = DeviceClient(url, HELLO)
                await nursery.start(device.run)  # ... and a device appears on the new one
                async for message in rx:
                    if isinstance(message, P.Event) and message.topic == "client":
                        states.append(message.body["state"])
                    if isinstance(message, P.Event) and message.body.get("state") == \
                            "connected" and message.body.get("stream") == "sdk1":
                        break
        assert states == ["disconnected", "reconnected"]
        second.shutdown()
        nursery.cancel_scope.cancel()
