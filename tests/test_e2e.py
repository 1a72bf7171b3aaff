"""End to end: a real server on 127.0.0.1, real WebSocket clients (trio-websocket),
real HTTP through the same port, real MIT-BIH data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import scipy.signal
import trio
from httpclient import get_json, request
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
)

import protocol as P
from vital_actors.clients import connect, receive
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import frame_sizes, frames, load_record, synthetic_ecg

SUBPROTOCOLS = [P.SUBPROTOCOL]


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, filtered_dtype="float64"))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def subscribe(ws: WebSocketConnection, *topics: str) -> None:
    await ws.send_message(P.encode(P.Subscribe(topics)))
    while True:
        msg = await receive(ws)
        if isinstance(msg, P.Event) and msg.topic == "subscriptions":
            assert set(topics) <= set(msg.body["topics"])
            return


async def hello(ws: WebSocketConnection, stream: str, *, fs: float = 360.0,
                dtype: str = "int16", resume: int | None = None) -> P.Welcome:
    await ws.send_message(P.encode(P.Hello(stream, fs, ("MLII", "V1"), dtype,  # type: ignore[arg-type]
                                           (200.0, 200.0), (1024.0, 1024.0), resume=resume)))
    welcome = await receive(ws)
    assert isinstance(welcome, P.Welcome), welcome
    return welcome


async def collect(ws: WebSocketConnection, until: Callable[[list[P.ServerMessage]], bool],
                  *, seconds: float = 20) -> list[P.ServerMessage]:
    got: list[P.ServerMessage] = []
    with trio.fail_after(seconds):
        while not until(got):
            got.append(await receive(ws))
    return got


def samples_of(messages: list[P.ServerMessage], topic: str) -> list[P.StreamSamples]:
    return [m for m in messages if isinstance(m, P.StreamSamples) and m.topic == topic]


def total(messages: list[P.ServerMessage], topic: str, channels: int = 2) -> int:
    return sum(len(m.data) // (channels * np.dtype(m.dtype).itemsize)
               for m in samples_of(messages, topic))


def decode(ms: list[P.StreamSamples]) -> np.ndarray[Any, Any]:
    assert [m.t0 for m in ms] == list(np.cumsum([0] + [
        len(m.data) // (2 * np.dtype(m.dtype).itemsize) for m in ms])[:-1])
    return np.vstack([np.frombuffer(m.data, np.dtype(m.dtype).newbyteorder("<")).reshape(-1, 2)
                      for m in ms])


async def send_all_frames(ws: WebSocketConnection, samples: np.ndarray[Any, Any],
                          sizes: list[int], *, first: int = 0) -> None:
    """Send frames (numbered from *first*) while reading acks; return when the last
    one is acknowledged."""
    last = first + len(sizes) - 1
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            for seq, chunk in enumerate(frames(samples, sizes), start=first):
                data = np.ascontiguousarray(chunk, "<i2").tobytes()
                await ws.send_message(P.encode(P.Samples(seq, len(chunk), data)))
        nursery.start_soon(send)
        with trio.fail_after(30):
            while (msg := await receive(ws)) != P.Ack(last):
                assert isinstance(msg, P.Ack), msg


async def test_filtered_stream_equals_offline_sosfilt(server: Server, mitdb: Path) -> None:
    rec = load_record(mitdb / "101", stop=60 * 360)  # 60 s of record 101
    sizes = list(frame_sizes(len(rec.samples), rng=np.random.default_rng(101), max_frame=700))
    n = len(rec.samples)
    async with connect(url(server), P.SUBSCRIBE_PATH) as sub:
        await subscribe(sub, "stream/101/filtered", "stream/101/raw")
        async with connect(url(server), P.INGEST_PATH) as dev:
            await hello(dev, "101")
            await send_all_frames(dev, rec.samples, sizes)
        got = await collect(sub, lambda g: total(g, "stream/101/filtered") >= n)
    raw, filtered = samples_of(got, "stream/101/raw"), samples_of(got, "stream/101/filtered")
    assert [m.seq for m in filtered] == list(range(len(sizes)))
    assert np.array_equal(decode(raw), rec.samples)

    info = await get_json(server.port or 0, "/api/v1/streams/101")
    assert info["samples_received"] == n and info["last_seq"] == len(sizes) - 1
    sos = np.array(info["filter"]["sos"])
    x = (rec.samples.astype(np.float64) - 1024.0) / 200.0
    reference = scipy.signal.sosfilt(sos, x, axis=0)
    assert np.abs(decode(filtered) - reference).max() <= 1e-9 * np.ptp(x)


def _bad_cases() -> list[tuple[str, Callable[[], list[bytes | str]], int, str]]:
    def h(dtype: str = "int16", stream: str = "bad") -> bytes:
        payload: bytes = msgpack.packb({"type": "hello", "stream": stream, "fs": 360,
                                        "channels": ["a"], "dtype": dtype, "gain": 200,
                                        "baseline": 0})
        return payload
    nan = np.array([1.0, np.nan], "<f4").tobytes()
    return [
        ("not msgpack", lambda: [b"\xc1\xc1"], 1007, "invalid-payload"),
        ("not a map", lambda: [msgpack.packb([1, 2])], 1007, "invalid-payload"),
        ("unknown type", lambda: [msgpack.packb({"type": "selfdestruct"})], 1002,
         "unknown-type"),
        ("samples before hello", lambda: [P.encode(P.Samples(0, 1, b"\0\0"))], 1002,
         "hello-required"),
        ("unsupported dtype", lambda: [h("int32")], 1003, "unsupported-dtype"),
        ("text message", lambda: [h(), "hello?"], 1003, "text-message"),
        ("too big", lambda: [h(), b"\x00" * (2 << 20)], 1009, "too-big"),
        ("wrong length", lambda: [h(), P.encode(P.Samples(0, 3, b"\0\0"))], 1007, "bad-length"),
        ("NaN", lambda: [h("float32"), P.encode(P.Samples(0, 2, nan))], 1007, "non-finite"),
        ("stream busy", lambda: [h(stream="good")], 1008, "stream-busy"),
    ]


async def test_bad_input_closes_only_that_connection(server: Server) -> None:
    """Each bad device gets an error message and its close code; 'good' keeps flowing."""
    frame = np.zeros((36, 2), "<i2").tobytes()
    async with connect(url(server), P.SUBSCRIBE_PATH) as sub, \
            connect(url(server), P.INGEST_PATH) as good:
        await subscribe(sub, "stream/good/raw")
        await hello(good, "good")
        seq = 0

        async def good_frame_arrives() -> None:
            nonlocal seq
            await good.send_message(P.encode(P.Samples(seq, 36, frame)))
            got = await collect(sub, lambda g: bool(samples_of(g, "stream/good/raw")))
            assert samples_of(got, "stream/good/raw")[-1].seq == seq
            assert await receive(good) == P.Ack(seq)
            seq += 1

        await good_frame_arrives()
        for name, payloads, code, reason in _bad_cases():
            async with connect(url(server), P.INGEST_PATH) as bad:
                for payload in payloads():
                    await bad.send_message(payload)
                messages = []
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                    while True:
                        messages.append(await receive(bad))
                assert closed.value.reason is not None, name
                assert closed.value.reason.code == code, name
                errors = [m for m in messages if isinstance(m, P.Error)]
                assert errors and errors[0].code == reason, (name, messages)
            await good_frame_arrives()
        stats = await get_json(server.port or 0, "/api/v1/stats")
        assert stats["rejected"]["invalid-payload"] == 2


async def test_a_device_at_a_rate_the_screen_does_not_take_streams_unscreened(
        server: Server) -> None:
    """fs = 2.5 Hz is within the limits (1-20,000 Hz) but not screenable (its QRS band
    would be empty: the filter design raised and took the server down). Its samples
    flow; it gets no beats or quality; a 360-Hz device alongside is screened."""
    async with connect(url(server), P.SUBSCRIBE_PATH) as sub:
        await subscribe(sub, "stream/slow/raw", "stream/slow/quality", "stream/ok/quality")
        async with connect(url(server), P.INGEST_PATH) as slow, \
                connect(url(server), P.INGEST_PATH) as ok:
            await slow.send_message(P.encode(P.Hello("slow", 2.5, ("I",), "int16",
                                                     (200.0,), (0.0,))))
            assert isinstance(await receive(slow), P.Welcome)
            await hello(ok, "ok")
            x = synthetic_ecg(fs=360.0, seconds=4, seed=1).samples
            await send_all_frames(slow, np.zeros((40, 1), np.int16), [5] * 8)
            await send_all_frames(ok, x, [360] * 4)
            got = await collect(sub, lambda g: total(g, "stream/slow/raw", 1) >= 40 and any(
                isinstance(m, P.Event) and m.type == "quality" and m.body["stream"] == "ok"
                for m in g))
    assert not [m for m in got if isinstance(m, P.Event) and m.topic == "stream/slow/quality"]
    assert (await request(server.port or 0, "GET", "/healthz"))[0] == 200


async def test_gap_and_duplicate_are_reported(server: Server) -> None:
    frame = np.zeros((10, 2), "<i2").tobytes()
    async with connect(url(server), P.SUBSCRIBE_PATH) as sub, \
            connect(url(server), P.INGEST_PATH) as dev:
        await subscribe(sub, "stream/g/raw")
        await hello(dev, "g")
        for seq in (0, 1, 4, 4, 5):
            await dev.send_message(P.encode(P.Samples(seq, 10, frame)))
        assert [await receive(dev) for _ in range(5)] == [P.Ack(s) for s in (0, 1, 4, 4, 5)]
        # Statuses (NORMAL) and samples (HIGH) travel in different lanes: wait for both.
        got = await collect(sub, lambda g: len(samples_of(g, "stream/g/raw")) == 4 and any(
            isinstance(m, P.Event) and m.body.get("state") == "duplicate" for m in g))
    states = [(m.body["state"], m.body.get("missing")) for m in got
              if isinstance(m, P.Event) and m.type == "status"]
    assert ("gap", 2) in states and ("duplicate", None) in states
    assert [m.seq for m in samples_of(got, "stream/g/raw")] == [0, 1, 4, 5]
    info = await get_json(server.port or 0, "/api/v1/streams/g")
    assert (info["gaps"], info["missing_frames"], info["duplicates"]) == (1, 2, 1)


async def test_patch_filter_validates(server: Server) -> None:
    port = server.port or 0
    async with connect(url(server), P.INGEST_PATH) as dev:
        await hello(dev, "101")

        for bad, why in (({"low_hz": 50.0}, "below high_hz"),
                         ({"high_hz": 200.0}, "Nyquist"),
                         ({"notch_hz": 55.0}, "50, 60"),
                         ({"order": 0}, "greater than or equal to 1"),
                         ({"gain": 3}, "xtra")):
            status, body, _ = await request(port, "PATCH", "/api/v1/streams/101", bad)
            assert status == 422, (bad, body)
            assert why in " ".join(json.loads(body)["reasons"]), (bad, body)
        status, body, _ = await request(port, "PATCH", "/api/v1/streams/nope", {"order": 2})
        assert status == 404
        before = (await get_json(port, "/api/v1/streams/101"))["filter"]
        status, body, _ = await request(port, "PATCH", "/api/v1/streams/101",
                                        {"notch_hz": 60.0, "high_hz": 100.0})
        assert status == 200, body
        after = json.loads(body)["filter"]
        assert after["version"] != before["version"] and len(after["sos"]) == 5


async def test_filter_change_restarts_from_rest(server: Server, mitdb: Path) -> None:
    port = server.port or 0
    rec = load_record(mitdb / "101", stop=20 * 360)
    half = len(rec.samples) // 2
    async with connect(url(server), P.SUBSCRIBE_PATH) as sub, \
            connect(url(server), P.INGEST_PATH) as dev:
        await subscribe(sub, "stream/101/filtered")
        await hello(dev, "101")
        await send_all_frames(dev, rec.samples[:half], [360] * (half // 360))
        first = await collect(sub, lambda g: total(g, "stream/101/filtered") >= half)
        status, body, _ = await request(port, "PATCH", "/api/v1/streams/101",
                                        {"notch_hz": 60.0, "low_hz": 1.0})
        assert status == 200, body
        new = json.loads(body)["filter"]
        rest = rec.samples[half:]
        await dev.send_message(P.encode(P.Samples(half // 360, len(rest),
                                                  np.ascontiguousarray(rest, "<i2").tobytes())))
        second = await collect(sub, lambda g: total(g, "stream/101/filtered") >= len(rest))
    old_version = samples_of(first, "stream/101/filtered")[0].extra["filter_version"]
    after = samples_of(second, "stream/101/filtered")
    assert {m.extra["filter_version"] for m in after} == {new["version"]} != {old_version}
    x = (rest.astype(np.float64) - 1024.0) / 200.0
    reference = scipy.signal.sosfilt(np.array(new["sos"]), x, axis=0)
    got = np.vstack([np.frombuffer(m.data, "<f8").reshape(-1, 2) for m in after])
    assert np.abs(got - reference).max() <= 1e-9 * np.ptp(x)


async def test_handshake_without_subprotocol_is_refused(server: Server) -> None:
    upgrade = (b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    status, body, _ = await request(server.port or 0, "GET", "/", raw=None, head=upgrade)
    assert status == 400
    assert b"vital.v1.msgpack" in body


async def test_late_subscriber_learns_connected_streams(server: Server) -> None:
    async with connect(url(server), P.INGEST_PATH) as d:
        await hello(d, "early")
        async with connect(url(server), P.SUBSCRIBE_PATH) as sub:
            await sub.send_message(P.encode(P.Subscribe(("streams",))))
            got = await collect(sub, lambda g: any(isinstance(m, P.Event)
                                                   and m.body.get("stream") == "early"
                                                   for m in g))
    event = next(m for m in got if isinstance(m, P.Event) and m.body.get("stream") == "early")
    assert event.body["state"] == "connected" and event.body["fs"] == 360.0


async def test_http_api_on_the_same_port(server: Server) -> None:
    port = server.port or 0
    assert (await get_json(port, "/healthz")) == {"status": "ok"}
    status, body, headers = await request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"vital_messages_in_total" in body and b'vital_channel_capacity{channel="ingest"} 256' \
        in body
    spec = await get_json(port, "/openapi.json")
    assert {"/api/v1/streams", "/api/v1/streams/{stream_id}", "/api/v1/stats"} <= set(
        spec["paths"])
    assert "patch" in spec["paths"]["/api/v1/streams/{stream_id}"]
    stats = await get_json(port, "/api/v1/stats")
    assert stats["channels"]["screened"]["capacity"] == 1024
    assert stats["channels"]["archive"] == {"depth": 0, "capacity": 1024}  # ingest's other exit
    assert b'vital_channel_capacity{channel="archive"} 1024' in body
    status, _, _ = await request(port, "GET", "/api/v1/streams/missing")
    assert status == 404
    status, body, _ = await request(port, "GET", "/")
    assert status == 200 and b"vital-actors" in body


async def _read_to_eof(port: int, head: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        answer = b""
        while data := await stream.receive_some(65536):
            answer += data
    return answer


async def test_api_connection_ends_after_the_answer_when_asked(server: Server) -> None:
    # hypercorn answers "Connection: close" but leaves the connection open
    # (pgjones/hypercorn#330); the front door ends it after the answer.
    port = server.port or 0
    with trio.fail_after(10):
        answer = await _read_to_eof(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
                                          b"connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}\n')
        answer = await _read_to_eof(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b" 200 " in answer.split(b"\r\n")[0] and b'"ok"' in answer
        answer = await _read_to_eof(port, b"POST /api/v1/streams/x/nothing HTTP/1.1\r\n"
                                          b"host: x\r\ncontent-length: 2\r\n"
                                          b"connection: close\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 40")


async def test_shutdown_closes_websockets_with_1001() -> None:
    srv = Server(load_settings(server={"port": 0}))
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        async with connect(url(srv), P.INGEST_PATH) \
                as dev, connect(url(srv), P.SUBSCRIBE_PATH) as sub:
            await hello(dev, "s")
            await subscribe(sub, "stream/s/raw")
            srv.shutdown()
            for ws in (dev, sub):
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                    while True:
                        await receive(ws)
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1001
    # run() returned: the nursery closed with every actor done.
