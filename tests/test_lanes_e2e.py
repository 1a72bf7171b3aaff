"""End to end: a real server on 127.0.0.1 and real WebSocket clients (trio-websocket).
One subscriber stops reading; the other keeps receiving everything, promptly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from httpclient import get_json, request
from trio_websocket import ConnectionClosed, WebSocketConnection

import protocol as P
from vital_actors.broadcast import Subscriber
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.settings import load_settings

PAD = bytes(range(256)) * 256  # 64 KiB per message: the sockets' buffers fill quickly
TOPICS = ("alerts", "stream/big/raw")


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    # Lanes of (30, 40, 20, 8, 2) messages.
    srv = Server(load_settings(server={"port": 0}, buffers={"subscriber": 100},
                               lanes={"flush_grace_s": 30.0}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


async def subscribe(ws: WebSocketConnection) -> None:
    await ws.send_message(P.encode(P.Subscribe(TOPICS)))
    while True:
        msg = await receive(ws)
        if isinstance(msg, P.Event) and msg.topic == "subscriptions":
            return


def samples(seq: int) -> P.StreamSamples:
    return P.StreamSamples("stream/big/raw", "big", seq, seq * 32768, 360.0, ("MLII",),
                           "int16", (200.0,), (0.0,), PAD)


def alert(k: int) -> P.Event:
    return P.Event("alert", "alerts", P.Priority.CRITICAL,
                   {"stream": "big", "alert": "flatline", "state": "start", "t": k,
                    "channel": 0, "pad": PAD})


async def test_a_stalled_subscriber_loses_high_then_is_evicted_the_other_gets_everything(
        server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    with trio.fail_after(60):
        async with connect(url, P.SUBSCRIBE_PATH) as stalled_ws, \
                connect(url, P.SUBSCRIBE_PATH) as fast_ws:
            await subscribe(stalled_ws)
            await subscribe(fast_ws)
            stalled: Subscriber = min(server.hub.subscribers, key=lambda s: s.id)
            fast_got: list[P.ServerMessage] = []

            async def publish_and_follow(message: P.StreamSamples | P.Event) -> None:
                server.hub.publish(message)
                with trio.fail_after(5):  # the fast one is never held up
                    fast_got.append(await receive(fast_ws))

            # 1. HIGH: the stalled one's sockets fill, then its HIGH lane; then HIGH drops.
            seq = 0
            while stalled.lanes.counts.dropped[1] < 10:
                await publish_and_follow(samples(seq))
                seq += 1
                assert seq < 3000, "the stalled subscriber never dropped a HIGH message"
            assert stalled.evicted is None
            assert stalled.lanes.depths[1] == 40  # its HIGH lane is full
            # 2. CRITICAL: queued, until even its lane is full: then it is evicted.
            k = 0
            while stalled.evicted is None:
                await publish_and_follow(alert(k))
                k += 1
                assert k <= 31
            assert k == 31 and stalled.lanes.counts.dropped[0] == 0
            assert server.stats.totals.evicted_subscribers == 1

            assert [m.seq for m in fast_got if isinstance(m, P.StreamSamples)] == list(
                range(seq))
            assert [m.body["t"] for m in fast_got if isinstance(m, P.Event)] == list(range(k))

            # 3. It reads again: what its socket held, then the error, then 1013.
            got: list[P.ServerMessage] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    got.append(await receive(stalled_ws))
            assert closed.value.reason.code == P.CloseCode.TRY_AGAIN_LATER
            assert isinstance(got[-1], P.Error) and got[-1].code == "too-slow"
            seqs = [m.seq for m in got if isinstance(m, P.StreamSamples)]
            assert seqs == sorted(seqs) and 0 < len(seqs) < seq  # in order, with a gap
            # The fast one is unaffected and still served.
            assert len(server.hub.subscribers) == 1
            await publish_and_follow(alert(99))
            assert isinstance(fast_got[-1], P.Event) and fast_got[-1].body["t"] == 99


async def test_lane_metrics_in_stats_subscribers_and_prometheus(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    assert server.port is not None
    with trio.fail_after(20):
        async with connect(url, P.SUBSCRIBE_PATH) as ws:
            await subscribe(ws)
            sub = next(iter(server.hub.subscribers))
            for seq in range(3):
                server.hub.publish(samples(seq))
                await receive(ws)
            server.hub.publish(alert(0))
            await receive(ws)
            sub.lanes.counts.dropped[4] += 2  # as if two BULK messages had been refused

            (one,) = (await get_json(server.port, "/api/v1/subscribers"))["subscribers"]
            assert (one["id"], one["codec"], one["topics"]) == (sub.id, "plain", sorted(TOPICS))
            assert one["state"] == "normal" and one["evicted"] is None
            assert (one["capacity"], one["depth"], one["sent"], one["dropped"]) == (100, 0, 4, 2)
            assert one["drop_rate"] == pytest.approx(2 / 6)
            assert one["lanes"]["critical"] == {"depth": 0, "capacity": 30, "utilization": 0.0,
                                                "queued": 1, "sent": 1, "dropped": 0}
            assert one["lanes"]["high"]["sent"] == 3 and one["lanes"]["bulk"]["capacity"] == 2
            assert set(one["seconds_in"]) == {"normal", "backpressure", "emergency"}

            lanes = (await get_json(server.port, "/api/v1/stats"))["lanes"]
            assert lanes["states"] == {"normal": 1, "backpressure": 0, "emergency": 0}
            assert lanes["sent"] == {"critical": 1, "high": 3, "normal": 0, "low": 0, "bulk": 0}
            assert lanes["dropped"]["bulk"] == 2

            status, body, _ = await request(server.port, "GET", "/metrics")
            text = body.decode()
            assert status == 200
            assert 'vital_lane_sent_total{priority="high"} 3.0' in text
            assert 'vital_lane_dropped_total{priority="bulk"} 2.0' in text
            assert f'vital_subscriber_lane_depth{{priority="critical",subscriber="{sub.id}"}}' \
                   in text
            assert f'vital_subscriber_state{{state="normal",subscriber="{sub.id}"}} 1.0' in text

            schema = await get_json(server.port, "/openapi.json")
            assert "/api/v1/subscribers" in schema["paths"]



async def test_a_stalled_subscriber_cannot_hold_up_the_shutdown() -> None:
    srv = Server(load_settings(server={"port": 0}, buffers={"subscriber": 100},
                               lanes={"flush_grace_s": 1.0}))
    subscribed = trio.Event()

    async def stalled_client() -> None:
        async with connect(f"ws://127.0.0.1:{srv.port}", P.SUBSCRIBE_PATH) as ws:
            await subscribe(ws)
            subscribed.set()
            await trio.sleep_forever()  # never reads again

    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as serving:
                await serving.start(srv.run)
                outer.start_soon(stalled_client)
                await subscribed.wait()
                (sub,) = srv.hub.subscribers
                seq = 0
                while sub.lanes.depth < 10:  # its sockets are full: its sender waits
                    srv.hub.publish(samples(seq))
                    seq += 1
                    await trio.lowlevel.checkpoint()
                    assert seq < 3000
                stopping_at = trio.current_time()
                srv.shutdown()
            # Server.run has returned: the flush was given up after the 1 s grace.
            assert 1.0 <= trio.current_time() - stopping_at < 5.0
            assert not srv.hub.subscribers
            outer.cancel_scope.cancel()
