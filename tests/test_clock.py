"""Clock estimation: the pure estimator on simulated devices, then a real exchange."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from httpclient import get_json

import protocol as P
from vital_actors.archive import read_records, run_dir
from vital_actors.clock import ClockTracker, Exchange, estimate
from vital_actors.graph import Server
from vital_actors.sdk import DeviceClient
from vital_actors.settings import load_settings


def simulate(*, offset: float, drift: float, n: int, seed: int,
             delay: tuple[float, float] = (0.001, 0.05)) -> list[Exchange]:
    """Exchanges with a device whose clock is ``server - offset - drift * server``, over
    a network with random one-way delays (asymmetric)."""
    rng = random.Random(seed)

    def device(server_t: float) -> float:
        return server_t - offset - drift * server_t

    out = []
    for k in range(n):
        sent = 1000.0 + 5.0 * k  # server time the ping leaves the device
        t1 = sent + rng.uniform(*delay)
        t2 = t1 + 0.0001
        arrived = t2 + rng.uniform(*delay)
        out.append(Exchange(device(sent), t1, t2, device(arrived)))
    return out


def test_a_symmetric_exchange_gives_the_offset_exactly() -> None:
    e = Exchange(t0=10.0, t1=13.01, t2=13.02, t3=10.03)  # 10 ms each way, offset 3 s
    assert e.offset == pytest.approx(3.0) and e.rtt == pytest.approx(0.02)


@pytest.mark.parametrize("drift", [0.0, 50e-6, -120e-6])
def test_offset_and_drift_are_recovered_within_the_path_asymmetry(drift: float) -> None:
    exchanges = simulate(offset=3.2, drift=drift, n=64, seed=1)
    est = estimate(exchanges)
    assert est is not None and est.exchanges == 64
    latest = exchanges[-1].t1
    truth = 3.2 + drift * latest  # server - device at the latest exchange
    assert abs(est.offset - truth) < 0.01  # well within rtt / 2 of the best exchanges
    assert abs(est.drift - drift) < 20e-6
    assert 0 < est.rtt < 0.1
    # A device timestamp maps onto the server's clock.
    server_t = latest + 1.0
    device_t = server_t - 3.2 - drift * server_t
    assert est.to_server(device_t) == pytest.approx(server_t, abs=0.01)


def test_exchanges_with_negative_rtt_are_ignored() -> None:
    good = simulate(offset=1.0, drift=0.0, n=4, seed=2)
    bad = Exchange(t0=0.0, t1=100.0, t2=100.0, t3=-5.0)
    assert estimate([bad]) is None
    est = estimate([*good, bad])
    assert est is not None and est.exchanges == 4 and abs(est.offset - 1.0) < 0.05


def test_tracker_pairs_each_pong_time_with_the_ping_before() -> None:
    tracker = ClockTracker()
    tracker.ping(10.0, None, received=13.01, now=13.02)
    assert tracker.estimate is None  # the device has not yet said when the pong came
    tracker.ping(15.0, 10.03, received=18.01, now=18.02)
    assert tracker.estimate is not None and tracker.estimate.offset == pytest.approx(3.0)
    tracker.ping(None, 15.03, received=20.0, now=20.0)  # completes the second exchange
    assert len(tracker.exchanges) == 2
    tracker.ping(25.0, 99.0, received=28.0, now=28.0)  # no open exchange: rx ignored
    assert len(tracker.exchanges) == 2


async def test_stream_info_shows_the_clock_and_frames_are_stamped(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    server = Server(load_settings(server={"port": 0}, archive={"dir": tmp_path}))
    await nursery.start(server.run)
    hello = P.Hello("c1", 250.0, ("I",), "int16", (100.0,), (0.0,))
    client = DeviceClient(f"ws://127.0.0.1:{server.port}", hello, ping_interval_s=0.02)
    async with trio.open_nursery() as inner:
        await inner.start(client.run)
        with trio.fail_after(10):
            while (info := server.registry.get("c1")) is None or \
                    info.clock is None or info.clock.exchanges < 3:  # noqa: ASYNC110
                await trio.sleep(0.02)
        device_t = time.time() - 30.0  # a frame from the device's buffer, 30 s old
        await client.send(np.zeros((25, 1), "<i2"), t=device_t)
        # A t off the clock of the device's own pings (1970): were it kept, retention
        # would trim the frame at once. Then a clock that steps back 10 s.
        await client.send(np.zeros((25, 1), "<i2"), t=1_000_000.0)
        await client.send(np.zeros((25, 1), "<i2"), t=device_t - 10.0)
        await client.drain()
        sent = time.time()
        inner.cancel_scope.cancel()
    body = await get_json(server.port or 0, "/api/v1/streams/c1")
    clock = body["clock"]
    assert clock["exchanges"] >= 3 and 0 <= clock["rtt_s"] < 0.5
    assert abs(clock["offset_s"]) < 0.1  # same machine, same clock
    server.shutdown()
    (*_, t1), (*_, t2), (*_, t3) = read_records(run_dir(tmp_path, "c1", 0))
    assert t1 == pytest.approx(device_t, abs=0.1)  # mapped through the (near 0) offset
    assert sent - 5 < t2 <= sent  # stamped at its arrival
    assert t3 == t2  # stamps never go back: retention bisects them
