"""The load generator's sans-IO WebSocket client (loadtests/wsframes.py), against wsproto
as the reference peer: handshake, masked client frames, and the server-frame parser
over any split of the bytes, fragmented messages, ping and close."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from loadtests import wsframes as wf

SUBPROTOCOL = "vital.v1.msgpack"
#: The machine is shared: time limits would make these flaky, not stricter.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _server(shake: wf.ClientHandshake, *, subprotocol: str | None = SUBPROTOCOL
            ) -> tuple[WSConnection, bytes]:
    """A wsproto server that got *shake*'s request and accepted it; its reply bytes."""
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(shake.request())
    request = next(server.events())
    assert isinstance(request, Request)
    assert request.subprotocols == [SUBPROTOCOL] and request.target == "/v1/subscribe"
    return server, server.send(AcceptConnection(subprotocol=subprotocol))


def _open() -> WSConnection:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    server, reply = _server(shake)
    assert shake.receive_data(reply) == b""
    return server


# --- handshake -------------------------------------------------------------------------------


@RELAXED
@given(st.integers(1, 200), st.binary(max_size=40))
def test_handshake_accepts_wsprotos_101_and_returns_the_bytes_after_it(cut: int,
                                                                       after: bytes) -> None:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    _, reply = _server(shake)
    data = reply + after
    cut = min(cut, len(reply) - 1)  # the 101 split in two reads
    assert shake.receive_data(data[:cut]) is None
    assert shake.receive_data(data[cut:]) == after


def test_handshake_refusal_carries_the_status_and_the_body() -> None:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(shake.request())
    next(server.events())
    reply = server.send(RejectConnection(status_code=400, has_body=True,
                                         headers=[(b"content-length", b"14")]))
    reply += server.send(RejectData(data=b"no subprotocol"))
    with pytest.raises(wf.HandshakeError, match="HTTP 400 no subprotocol") as info:
        shake.receive_data(reply)
    assert info.value.status == 400 and info.value.body == b"no subprotocol"


def test_handshake_requires_the_subprotocol_it_asked_for() -> None:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    _, reply = _server(shake, subprotocol=None)
    with pytest.raises(wf.HandshakeError, match="subprotocol ''"):
        shake.receive_data(reply)


def test_handshake_rejects_a_wrong_accept_token() -> None:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    _, reply = _server(shake)
    head, _, rest = reply.partition(b"Sec-WebSocket-Accept: ")
    forged = head + b"Sec-WebSocket-Accept: " + b"A" * 28 + rest[28:]
    with pytest.raises(wf.HandshakeError, match="Accept"):
        shake.receive_data(forged)


def test_handshake_fails_when_the_server_hangs_up() -> None:
    shake = wf.ClientHandshake("127.0.0.1:1", "/v1/subscribe", SUBPROTOCOL)
    with pytest.raises(wf.HandshakeError, match="closed"):
        shake.receive_data(b"")


# --- client frames ---------------------------------------------------------------------------

_sizes = st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]) | st.integers(0, 2000)
_payloads = st.lists(st.builds(lambda n, seed: (seed * (n // len(seed) + 1))[:n],
                               _sizes, st.binary(min_size=1, max_size=16)),
                     min_size=1, max_size=8)


@settings(RELAXED, max_examples=60)
@given(_payloads)
def test_masked_client_frames_decode_to_the_same_messages_in_wsproto(
        payloads: list[bytes]) -> None:
    server = _open()
    frames = wf.client_frames(payloads)
    for frame, payload in zip(frames, payloads, strict=True):
        assert frame[1] & 0x80  # masked: the key, then the payload XOR the key
        n = len(payload)
        key = np.frombuffer(frame[len(frame) - n - 4:len(frame) - n], np.uint8)
        masked = np.frombuffer(frame[len(frame) - n:], np.uint8)
        assert (masked ^ np.resize(key, n)).tobytes() == payload
    server.receive_data(b"".join(frames))
    got = [e for e in server.events()]
    assert all(isinstance(e, BytesMessage) and e.message_finished for e in got)
    assert [bytes(e.data) for e in got if isinstance(e, BytesMessage)] == payloads


def test_every_frame_gets_its_own_key() -> None:
    frames = wf.client_frames([b"x" * 10] * 50)
    assert len({f[2:6] for f in frames}) == 50


def test_masking_with_a_known_key_matches_rfc_6455() -> None:
    # RFC 6455 5.7: a masked "Hello" with key 37 fa 21 3d
    frame = wf.client_frames([b"Hello"], opcode=wf.OP_TEXT, keys=bytes.fromhex("37fa213d"))[0]
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")


def test_client_close_and_pong_are_understood_by_wsproto() -> None:
    server = _open()
    server.receive_data(wf.client_frame(b"abc", opcode=wf.OP_PONG)
                        + wf.client_frame(wf.close_payload(1000, "bye"), opcode=wf.OP_CLOSE))
    events = list(server.events())
    assert isinstance(events[0], Pong) and events[0].payload == b"abc"
    assert isinstance(events[1], CloseConnection) and (events[1].code, events[1].reason) == (
        1000, "bye")


# --- the parser of server frames -------------------------------------------------------------

_item = st.one_of(
    st.tuples(st.just("message"), st.lists(st.binary(max_size=300), min_size=1, max_size=4)),
    st.tuples(st.just("big"), st.sampled_from([126, 65535, 65536, 70000])),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("text"), st.text(max_size=50)),
)


@settings(RELAXED, max_examples=80)
@given(st.lists(_item, max_size=10), st.lists(st.integers(0, 200_000), max_size=12),
       st.sampled_from([1000, 1001, 1002, 1003, *range(1007, 1015)]) | st.integers(3000, 4999))
def test_parser_reads_wsproto_server_frames_split_anywhere(
        items: list[tuple[str, object]], cuts: list[int], code: int) -> None:
    server = _open()
    wire = b""
    expected: list[bytes | wf.Text | wf.Ping | wf.Pong | wf.Close] = []
    for kind, value in items:
        if kind == "message":  # fragmented into len(value) frames
            parts = list(value)  # type: ignore[call-overload]
            for k, part in enumerate(parts):
                wire += server.send(Message(data=part, message_finished=k == len(parts) - 1))
            expected.append(b"".join(parts))
        elif kind == "big":
            data = bytes(range(256)) * (int(value) // 256 + 1)  # type: ignore[call-overload]
            wire += server.send(Message(data=data[:value]))
            expected.append(data[:value])
        elif kind == "ping":
            wire += server.send(Ping(payload=value))  # type: ignore[arg-type]
            expected.append(wf.Ping(value))  # type: ignore[arg-type]
        else:
            wire += server.send(TextMessage(data=value))  # type: ignore[arg-type]
            expected.append(wf.Text(value))  # type: ignore[arg-type]
    wire += server.send(CloseConnection(code=code, reason="done"))
    expected.append(wf.Close(code, "done"))
    wire += b"\x82\x01x"  # after the close: ignored
    parser, got = wf.FrameParser(), []
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        got.extend(parser.feed(wire[a:b]))
    assert got == expected
    assert parser.closed


def test_parser_reads_a_close_without_a_code() -> None:
    assert wf.FrameParser().feed(b"\x88\x00") == [wf.Close(wf.NO_STATUS, "")]


@pytest.mark.parametrize(("wire", "code", "why"), [
    (b"\x82\x81abcdx", 1002, "masked"),
    (b"\xc2\x01x", 1002, "RSV"),
    (b"\x83\x00", 1002, "opcode"),
    (b"\x82\x7e\x00\x05hello", 1002, "shortest"),
    (b"\x82\x7f" + (5).to_bytes(8, "big") + b"hello", 1002, "shortest"),
    (b"\x82\x7f" + (1 << 63).to_bytes(8, "big"), 1002, "top bit"),
    (b"\x09\x00", 1002, "control"),
    (b"\x89\x7e\x00\x7e" + b"x" * 126, 1002, "control"),
    (b"\x80\x01x", 1002, "continuation"),
    (b"\x02\x01x\x82\x01y", 1002, "inside"),
    (b"\x81\x02\xc3\x28", 1007, "UTF-8"),
    (b"\x88\x02\x03\xed", 1002, "close code"),  # 1005 may not be sent
    (b"\x88\x01\x03", 1002, "close code"),
    (b"\x88\x04\x03\xe8\xc3\x28", 1007, "UTF-8"),
])
def test_parser_rejects_what_rfc_6455_forbids(wire: bytes, code: int, why: str) -> None:
    with pytest.raises(wf.ProtocolError, match=why) as info:
        wf.FrameParser().feed(wire)
    assert info.value.code == code


def test_parser_refuses_a_message_over_its_limit_with_1009() -> None:
    parser = wf.FrameParser(max_message=1000)
    with pytest.raises(wf.ProtocolError) as info:
        parser.feed(b"\x82\x7e" + (1001).to_bytes(2, "big"))
    assert info.value.code == 1009
    parser = wf.FrameParser(max_message=1000)
    parser.feed(b"\x02\x7e" + (600).to_bytes(2, "big") + b"x" * 600)
    with pytest.raises(wf.ProtocolError) as info:
        parser.feed(b"\x80\x7e" + (600).to_bytes(2, "big") + b"x" * 600)
    assert info.value.code == 1009
