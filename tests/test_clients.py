"""vital_actors.clients: simulated devices start staggered and retry, with growing delays,
whatever ended their connection (the server is replaced by a stand-in here): the
demo's devices must outlive a server that restarts, stalls or misbehaves."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected

from protocol import RemoteProtocolError
from vital_actors import clients
from vital_actors.sources import Recording, synthetic_ecg


async def test_simulated_devices_start_staggered_and_retry_every_failure_with_backoff(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    welcome = RuntimeError("expected welcome")
    failures = [OSError("refused"), welcome,
                ConnectionRejected(401, (), None),  # a refused token too: none is fatal
                trio.TooSlowError(),  # a server that does not answer the handshake
                ExceptionGroup("in the connection's nursery", [welcome]),
                RemoteProtocolError("not msgpack")]
    # What each failure is reported as: a nursery's group as the failure inside it.
    reported = [*failures[:4], welcome, failures[5]]
    starts: dict[str, list[float]] = {"a": [], "b": []}
    errors: list[tuple[str, BaseException]] = []

    async def stand_in(ws_url: str, stream: str, rec: Recording, **_: Any
                       ) -> clients.DeviceReport:
        starts[stream].append(trio.current_time())
        raise failures[len(starts[stream]) % len(failures)]

    monkeypatch.setattr(clients, "run_device", stand_in)
    rec = synthetic_ecg(seconds=1)
    start = trio.current_time()
    with trio.move_on_after(60):
        await clients.run_devices("ws://127.0.0.1:9", [("a", rec), ("b", rec)],
                                  stagger_s=0.5,
                                  on_error=lambda stream, exc: errors.append((stream, exc)))
    assert starts["a"][0] == pytest.approx(start)
    assert starts["b"][0] == pytest.approx(start + 0.5)
    steps = [0.5, 1, 2, 4, 8, 10, 10, 10]  # jittered down to half, never starting over
    for stream in "ab":
        gaps = [b - a for a, b in pairwise(starts[stream])]
        assert len(gaps) >= len(steps)
        assert all(s / 2 <= g <= s for g, s in zip(gaps, steps, strict=False))
        assert [exc for s, exc in errors if s == stream] == [
            reported[i % len(failures)] for i in range(1, len(starts[stream]) + 1)]


async def test_a_simulated_device_starts_its_delays_over_after_a_session_that_sent(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[float] = []

    async def stand_in(ws_url: str, stream: str, rec: Recording, *,
                       report: clients.DeviceReport, **_: Any) -> clients.DeviceReport:
        starts.append(trio.current_time())
        if len(starts) == 5:  # one session gets through and sends before it breaks
            report.frames_sent += 3
        raise OSError("refused")

    monkeypatch.setattr(clients, "run_device", stand_in)
    with trio.move_on_after(30):
        await clients.run_devices("ws://127.0.0.1:9", [("a", synthetic_ecg(seconds=1))],
                                  stagger_s=0)
    gaps = [b - a for a, b in pairwise(starts)]
    steps = [0.5, 1, 2, 4, 0.5, 1, 2]  # after the fifth session: from the start again
    assert len(gaps) >= len(steps)
    assert all(s / 2 <= g <= s for g, s in zip(gaps, steps, strict=False))
