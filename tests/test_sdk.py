"""The client SDK: backoff, the device's bounded buffer, refusals that end it, and a
subscriber that comes back after the server restarts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

import protocol as P
from vital_actors.auth import issue_token
from vital_actors.graph import Server
from vital_actors.sdk import Backoff, DeviceClient, FatalError, open_subscriber
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
