"""Compression at the WebSocket edge: negotiation, shared frames, and bad compressed input
closing only the connection that sent it (real server on 127.0.0.1, wsproto clients);
``vital.v1.compact`` through the server and the SDK subscriber."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
import zstandard
from httpclient import request
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
)
from wsproto.extensions import Extension, PerMessageDeflate

import protocol as P
from vital_actors.clients import connect, receive, run_device, send
from vital_actors.edge.codecs import DeflateCodec, Outgoing, TakeoverDeflateCodec, ZstdWireCodec
from vital_actors.edge.handshake import Compression
from vital_actors.edge.websocket import WebSocket, accept
from vital_actors.graph import Server
from vital_actors.sdk.subscriber import open_subscriber, run_subscriber_client
from vital_actors.settings import DeflateSettings, ZstdSettings, load_settings
from vital_actors.sources import Recording, load_record

BIG = P.Event("status", "streams", P.Priority.NORMAL, {"note": "x" * 2000})
FRAME = np.arange(72, dtype="<i2").tobytes()  # 36 samples x 2 channels
HELLO = P.Hello("dev", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))
ZSTD = P.ZstdCodec(dictionary=P.ecg_dictionary())


@dataclass
class Closed:
    code: int
    reason: str


class Raw:
    """A wsproto client over TCP; *zstd* compresses what it sends and decodes replies."""

    def __init__(self, stream: trio.SocketStream, conn: WSConnection, accepted: AcceptConnection,
                 zstd: P.ZstdCodec | None) -> None:
        self.stream, self.conn, self.accepted, self.zstd = stream, conn, accepted, zstd
        self._parts: list[bytes] = []

    @classmethod
    async def open(cls, port: int, path: str, *, subprotocols: list[str] | None = None,
                   extensions: list[Extension] | None = None,
                   zstd: P.ZstdCodec | None = None) -> Raw:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(conn.send(Request(
            host="127.0.0.1", target=path, subprotocols=subprotocols or [P.SUBPROTOCOL],
            extensions=extensions or [])))
        while True:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            for event in conn.events():
                assert isinstance(event, AcceptConnection), event
                return cls(stream, conn, event, zstd)

    async def send(self, message: P.Message) -> None:
        payload = P.encode(message)
        await self.send_bytes(self.zstd.compress(payload) if self.zstd else payload)

    async def send_bytes(self, payload: bytes) -> None:
        await self.stream.send_all(self.conn.send(BytesMessage(data=payload)))

    async def receive(self) -> P.ServerMessage | Closed:
        with trio.fail_after(10):
            while True:
                for event in self.conn.events():
                    if isinstance(event, CloseConnection):
                        return Closed(event.code, event.reason or "")
                    assert isinstance(event, BytesMessage), event
                    self._parts.append(bytes(event.data))
                    if event.message_finished:
                        data, self._parts = b"".join(self._parts), []
                        return self.zstd.decode_server(data) if self.zstd \
                            else P.decode_server(data)
                data = await self.stream.receive_some(65536)
                if not data:
                    return Closed(1006, "")
                self.conn.receive_data(data)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, deflate={"min_bytes": 0}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


Opener = Callable[..., Awaitable[Raw]]


@pytest.fixture
async def raw(server: Server) -> AsyncIterator[Opener]:
    """Opens :class:`Raw` clients to *server*; closes them before the server stops."""
    opened: list[Raw] = []

    async def open_(path: str, **kwargs: Any) -> Raw:
        client = await Raw.open(server.port or 0, path, **kwargs)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.stream.aclose()


def extension_header(accepted: AcceptConnection) -> str:
    return ", ".join(v.decode() for k, v in accepted.extra_headers
                     if k.lower() == b"sec-websocket-extensions")


# --- negotiation, end to end -------------------------------------------------------------


@pytest.mark.parametrize("path", [P.INGEST_PATH, P.SUBSCRIBE_PATH])
async def test_deflate_is_negotiated_on_both_paths(raw: Opener, path: str) -> None:
    client = await raw(path, extensions=[PerMessageDeflate()])
    [ext] = client.accepted.extensions
    assert isinstance(ext, PerMessageDeflate)
    assert ext.server_no_context_takeover and ext.server_max_window_bits == 12
    if path == P.INGEST_PATH:  # the client compresses too: the server inflates
        await client.send(HELLO)
        assert await client.receive() == P.Welcome("dev", 0)
        await client.send(P.Samples(0, 36, FRAME))
        assert await client.receive() == P.Ack(0)
    else:
        await client.send(P.Subscribe(("streams",)))
        reply = await client.receive()
        assert isinstance(reply, P.Event) and reply.body["topics"] == ["streams"]


async def test_no_offer_no_extension(raw: Opener) -> None:
    client = await raw(P.INGEST_PATH)
    assert client.accepted.extensions == [] and extension_header(client.accepted) == ""
    await client.send(HELLO)
    assert await client.receive() == P.Welcome("dev", 0)


async def handshake_reply(port: int, extensions: str,
                          protocols: str = P.SUBPROTOCOL) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET /v1/ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + protocols.encode()
            + b"\r\nSec-WebSocket-Extensions: " + extensions.encode() + b"\r\n\r\n")
        head = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
    return head.lower()


@pytest.mark.parametrize(("offer", "expected"), [
    ("permessage-deflate; x_unknown=1", None),
    ("permessage-deflate; server_max_window_bits=8", None),
    ("permessage-deflate; mux, permessage-deflate; server_max_window_bits=10",
     b"permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
    ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
     b"permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
])
async def test_offers_are_declined_or_the_first_acceptable_wins(
        server: Server, offer: str, expected: bytes | None) -> None:
    head = await handshake_reply(server.port or 0, offer)
    assert head.startswith(b"http/1.1 101")  # declining an offer never refuses the socket
    line = next((ln for ln in head.split(b"\r\n")
                 if ln.startswith(b"sec-websocket-extensions:")), None)
    assert (line.split(b":", 1)[1].strip() if line else None) == expected


async def test_zstd_subprotocol_declines_deflate(server: Server) -> None:
    head = await handshake_reply(server.port or 0, "permessage-deflate",
                                 protocols=f"{P.ZSTD_SUBPROTOCOL}, {P.SUBPROTOCOL}")
    assert b"sec-websocket-protocol: vital.v1.msgpack+zstd" in head
    assert b"sec-websocket-extensions" not in head


# --- zstd, end to end --------------------------------------------------------------------


async def test_zstd_device_and_subscriber(raw: Opener) -> None:
    dictionary = P.ecg_dictionary()
    sub = await raw(P.SUBSCRIBE_PATH, subprotocols=[P.ZSTD_SUBPROTOCOL],
                         zstd=P.ZstdCodec())  # no dictionary asked: none used
    await sub.send(P.Subscribe(("stream/dev/raw",)))
    assert isinstance(await sub.receive(), P.Event)
    dev = await raw(f"{P.INGEST_PATH}?zstd_dict={dictionary.id}",
                         subprotocols=[P.ZSTD_SUBPROTOCOL], zstd=ZSTD)
    assert dev.accepted.subprotocol == P.ZSTD_SUBPROTOCOL
    await dev.send(HELLO)
    assert await dev.receive() == P.Welcome("dev", 0, zstd_dict=dictionary.id)
    await dev.send(P.Samples(0, 36, FRAME))
    assert await dev.receive() == P.Ack(0)
    while not isinstance(got := await sub.receive(), P.StreamSamples):
        pass
    assert got.data == FRAME and set(got.extra) == {"epoch", "offset"}  # un-delta'd by the
    # client codec; only its position on the topic (issue 6) is extra


# --- bad compressed input ends only its own connection -------------------------------------


@pytest.mark.parametrize("kind", ["deflate-bomb", "invalid-zstd", "zstd-bomb",
                                  "unknown-dictionary"])
async def test_bad_compressed_input_closes_only_that_connection(
        raw: Opener, kind: str) -> None:
    good = await raw(P.INGEST_PATH, extensions=[PerMessageDeflate()])
    await good.send(HELLO)
    assert await good.receive() == P.Welcome("dev", 0)
    if kind == "deflate-bomb":
        bad = await raw(P.INGEST_PATH, extensions=[PerMessageDeflate()])
        await bad.send_bytes(bytes(8 << 20))  # wsproto deflates it to ~8 KB on the wire
        expected = (P.CloseCode.MESSAGE_TOO_BIG, "too-big")
    else:
        bad = await raw(P.INGEST_PATH, subprotocols=[P.ZSTD_SUBPROTOCOL])
        payload = {"invalid-zstd": b"\x28\xb5\x2f\xfd junk",
                   "zstd-bomb": zstandard.ZstdCompressor().compress(bytes(8 << 20)),
                   "unknown-dictionary": zstandard.ZstdCompressor(dict_data=zstandard.
                       train_dictionary(1024, [b"%d abc" % i for i in range(500)],
                                        dict_id=7)).compress(b"abc")}[kind]
        await bad.send_bytes(payload)
        expected = ((P.CloseCode.MESSAGE_TOO_BIG, "too-big") if kind == "zstd-bomb"
                    else (P.CloseCode.INVALID_PAYLOAD, "invalid-zstd"))
        bad.zstd = P.ZstdCodec()
    error = await bad.receive()
    assert isinstance(error, P.Error) and error.code == expected[1], error
    closed = await bad.receive()
    assert isinstance(closed, Closed) and closed.code == expected[0]
    await good.send(P.Samples(0, 36, FRAME))  # the other device goes on
    assert await good.receive() == P.Ack(0)


# --- compress once: shared frames --------------------------------------------------------


async def handshake(compression: Compression, *, subprotocols: list[str],
                    extensions: list[Extension], target: str = P.SUBSCRIBE_PATH,
                    ) -> tuple[WebSocket, WSConnection, trio.abc.Stream]:
    up_tx, up_rx = trio.testing.memory_stream_one_way_pair()
    down_tx, down_rx = trio.testing.memory_stream_one_way_pair()
    conn = WSConnection(ConnectionType.CLIENT)
    head = conn.send(Request(host="t", target=target, subprotocols=subprotocols,
                             extensions=extensions))
    ws = await accept(trio.StapledStream(down_tx, up_rx), head, remote="t:1",
                      subprotocols=compression.subprotocols, max_message_bytes=1 << 20,
                      compression=compression)
    assert ws is not None
    conn.receive_data(bytes(await down_rx.receive_some(65536)))
    assert isinstance(next(conn.events()), AcceptConnection)
    return ws, conn, trio.StapledStream(up_tx, down_rx)


async def test_one_compression_per_message_however_many_subscribers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    compress = P.Deflater.compress

    def counting(self: P.Deflater, data: bytes) -> bytes:
        calls.append(1)
        return compress(self, data)

    monkeypatch.setattr(P.Deflater, "compress", counting)
    compression = Compression(deflate=DeflateSettings(), zstd=ZstdSettings())
    sockets = [(await handshake(compression, subprotocols=[P.SUBPROTOCOL],
                                extensions=[PerMessageDeflate()]))[0] for _ in range(50)]
    assert len({ws.codec.key for ws in sockets}) == 1
    out = Outgoing.of(BIG, P.Priority.NORMAL)
    frames = [out.frame_for(ws.codec) for ws in sockets]
    assert all(f is frames[0] for f in frames) and len(calls) == 1
    assert frames[0][0] == 0xC2  # FIN, RSV1, binary
    zsockets = [(await handshake(compression, subprotocols=[P.ZSTD_SUBPROTOCOL],
                                 extensions=[]))[0] for _ in range(3)]
    zframes = [out.frame_for(ws.codec) for ws in zsockets]
    assert all(f is zframes[0] for f in zframes) and zframes[0] is not frames[0]


async def test_each_subscriber_decodes_the_shared_frame() -> None:
    compression = Compression(deflate=DeflateSettings())
    out = Outgoing.of(BIG, P.Priority.NORMAL)
    for _ in range(3):
        ws, conn, stream = await handshake(compression, subprotocols=[P.SUBPROTOCOL],
                                           extensions=[PerMessageDeflate()])
        await ws.send_frame(out.frame_for(ws.codec))
        conn.receive_data(bytes(await stream.receive_some(65536)))
        [event] = conn.events()
        assert isinstance(event, BytesMessage) and P.decode_server(bytes(event.data)) == BIG


async def test_context_takeover_on_means_one_stream_per_connection() -> None:
    compression = Compression(deflate=DeflateSettings(context_takeover=True))
    conns = [await handshake(compression, subprotocols=[P.SUBPROTOCOL],
                             extensions=[PerMessageDeflate()]) for _ in range(2)]
    assert isinstance(conns[0][0].codec, TakeoverDeflateCodec)
    assert conns[0][0].codec.key != conns[1][0].codec.key
    ws, conn, stream = conns[0]
    sizes = []
    for _ in range(2):
        await ws.send(BIG)
        data = bytes(await stream.receive_some(65536))
        sizes.append(len(data))
        conn.receive_data(data)
        [event] = conn.events()
        assert isinstance(event, BytesMessage) and P.decode_server(bytes(event.data)) == BIG
    assert sizes[1] < sizes[0] // 2  # the second refers back to the first


def test_messages_under_the_minimum_size_go_uncompressed() -> None:
    codec = DeflateCodec(level=6, window_bits=12, mem_level=5, min_bytes=1024)
    small, big = P.Ack(3), BIG
    assert codec.frame(small, P.encode(small)) == P.server_frame(P.encode(small))
    frame = codec.frame(big, P.encode(big))
    assert frame[0] == 0xC2 and len(frame) < len(P.encode(big))
    body = frame[4:] if frame[1] == 126 else frame[2:]
    inflated = zlib.decompressobj(-12).decompress(body + b"\x00\x00\xff\xff")
    assert inflated == P.encode(big)


def test_small_shared_frames_use_rle_and_still_inflate_alone() -> None:
    codec = DeflateCodec(level=6, window_bits=12, mem_level=5, min_bytes=0)
    rng = np.random.default_rng(2)
    for n in (36, 360):  # a 100 ms frame (~320 bytes: Z_RLE), a 1 s frame (default)
        data = np.cumsum(rng.integers(-5, 6, size=2 * n)).astype("<i2").tobytes()
        m = P.StreamSamples("stream/d/raw", "d", 1, 0, 360.0, ("a", "b"), "int16",
                            (200.0, 200.0), (0.0, 0.0), data)
        payload = P.encode(m)
        frames = [codec.frame(m, payload) for _ in range(2)]
        assert frames[0] == frames[1]  # no context between messages: shareable
        body = frames[0][4:] if frames[0][1] == 126 else frames[0][2:]
        rle = zlib.compressobj(6, zlib.DEFLATED, -12, 5, zlib.Z_RLE)
        assert (body == (rle.compress(payload) + rle.flush(zlib.Z_FULL_FLUSH))[:-4]) == (n == 36)
        inflated = zlib.decompressobj(-12).decompress(body + b"\x00\x00\xff\xff")
        assert inflated == payload




async def test_python_clients_speak_zstd(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    rec = Recording("synthetic", 360.0, ("MLII", "V1"), (200.0, 200.0), (0, 0),
                    np.zeros((360, 2), dtype=np.int16))
    async with connect(url, P.SUBSCRIBE_PATH, zstd=True) as sub:
        assert sub.subprotocol == P.ZSTD_SUBPROTOCOL
        await send(sub, P.Subscribe(("stream/z/raw",)))
        assert isinstance(await receive(sub), P.Event)
        report = await run_device(url, "z", rec, speed=0, loop=False, zstd=True)
        assert report.acked == report.frames_sent - 1 == 9 and not report.errors
        got = await receive(sub)
        while not isinstance(got, P.StreamSamples):
            got = await receive(sub)
        assert got.data == bytes(36 * 2 * 2)


def test_what_the_settings_let_a_handshake_agree() -> None:
    both = Compression(DeflateSettings(), ZstdSettings())
    assert both.subprotocols == (P.SUBPROTOCOL, P.ZSTD_SUBPROTOCOL, P.COMPACT_SUBPROTOCOL)
    assert Compression(DeflateSettings()).subprotocols == (P.SUBPROTOCOL,)
    plain = Compression(None, ZstdSettings()).agree(P.SUBPROTOCOL, "/v1/ingest",
                                                    max_message_bytes=1024)
    assert plain.codec.key == "plain" and plain.deflate is None and plain.inbound is None
    ids = {}
    for zstd, target in ((ZstdSettings(), f"/v1/subscribe?zstd_dict={P.ECG_DICTIONARY_ID}"),
                         (ZstdSettings(), "/v1/subscribe"),
                         (ZstdSettings(), "/v1/subscribe?zstd_dict=12345"),
                         (ZstdSettings(dictionary=False),
                          f"/v1/subscribe?zstd_dict={P.ECG_DICTIONARY_ID}")):
        agreed = Compression(None, zstd).agree(P.ZSTD_SUBPROTOCOL, target,
                                               max_message_bytes=1024)
        assert isinstance(agreed.codec, ZstdWireCodec) and agreed.inbound is not None
        ids[(zstd.dictionary, target)] = agreed.codec.dictionary_id
    assert list(ids.values()) == [P.ECG_DICTIONARY_ID, None, None, None]


async def test_the_dictionary_is_served_over_http(server: Server) -> None:
    dictionary = P.ecg_dictionary()
    status, body, headers = await request(server.port or 0, "GET",
                                          f"/api/v1/zstd/dictionaries/{dictionary.id}")
    assert status == 200 and body == dictionary.data
    assert headers["content-type"] == "application/octet-stream"
    status, _, _ = await request(server.port or 0, "GET", "/api/v1/zstd/dictionaries/7")
    assert status == 404


# --- vital.v1.compact through the server and the SDK subscriber ----------------------


async def _samples(messages: trio.MemoryReceiveChannel[P.ServerMessage],
                   count: int) -> list[P.StreamSamples]:
    got: list[P.StreamSamples] = []
    async for message in messages:
        if isinstance(message, P.StreamSamples):
            got.append(message)
            if len(got) == count:
                return got
    raise AssertionError("the subscription ended early")


async def _subscribed(messages: trio.MemoryReceiveChannel[P.ServerMessage]) -> None:
    async for message in messages:
        if isinstance(message, P.Event) and message.topic == "subscriptions":
            return


async def test_compact_subscriber_gets_the_device_samples_bit_for_bit(
        server: Server, mitdb: Path) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    rec = load_record(mitdb / "119", stop=360 * 3)  # 3 s: 30 frames of 100 ms
    topic = "stream/c119/raw"
    with trio.fail_after(30):
        async with open_subscriber(url, [topic], compact=True) as compact, \
                open_subscriber(url, [topic]) as plain:
            await _subscribed(compact)
            await _subscribed(plain)
            assert sorted(s.codec for s in server.hub.subscribers) == ["compact", "plain"]
            before = server.stats.totals.bytes_out
            report = await run_device(url, "c119", rec, speed=0, loop=False)
            assert not report.errors
            small = await _samples(compact, report.frames_sent)
            big = await _samples(plain, report.frames_sent)
    assert small == big  # every field: topic, seq, t0, gain, ..., offset and epoch
    data = b"".join(m.data for m in small)
    assert data == np.ascontiguousarray(rec.samples, dtype="<i2").tobytes()
    assert server.stats.totals.bytes_out - before > 0


async def _corrupt_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                          ) -> int:
    """Accepts one compact subscriber, sends it a message naming an undefined entry, and
    returns the close code the client answers with."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    conn = WSConnection(ConnectionType.SERVER)
    code = None
    async with stream:
        while code is None:
            data = await stream.receive_some(65536)
            if not data:
                break
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, Request):
                    assert P.COMPACT_SUBPROTOCOL in event.subprotocols
                    reply = conn.send(AcceptConnection(subprotocol=P.COMPACT_SUBPROTOCOL))
                    await stream.send_all(reply + conn.send(BytesMessage(b"\x85\x00")))
                elif isinstance(event, CloseConnection):
                    code = event.code
    for listener in listeners:
        await listener.aclose()
    assert code is not None
    return code


async def test_a_corrupt_compact_message_closes_the_connection_with_1007(
        nursery: trio.Nursery) -> None:
    done = trio.Event()
    codes: list[int] = []

    async def serve(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        codes.append(await _corrupt_server(task_status=task_status))
        done.set()

    port = await nursery.start(serve)
    tx, rx = trio.open_memory_channel[P.ServerMessage](10)
    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: run_subscriber_client(
                f"ws://127.0.0.1:{port}", ["stream/x/raw"], tx, compact=True))
            await done.wait()
            inner.cancel_scope.cancel()
    rx.close()
    assert codes == [P.CloseCode.INVALID_PAYLOAD]
