"""Protocol v1 wire format: codec round trips, rejection codes, reassembly, framing.

Plain synchronous tests: ``protocol`` does no I/O. The rules tested here are the ones
docs/protocol.md states.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from protocol import (
    MAX_CHANNELS,
    OPCODE_BINARY,
    STREAM_ID,
    TOPIC,
    Ack,
    CloseCode,
    Error,
    Event,
    Hello,
    Message,
    MessageAssembler,
    Ping,
    Pong,
    Priority,
    RemoteProtocolError,
    Samples,
    StreamSamples,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_device,
    decode_server,
    decode_subscriber,
    encode,
    server_frame,
)

Decoder = Callable[[bytes], Message]
DECODERS: tuple[Decoder, ...] = (decode_device, decode_subscriber, decode_server)
#: The codes a decoder may raise: everything else (1008, 1009, 1013) is decided elsewhere.
DECODE_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.UNSUPPORTED_DATA, CloseCode.INVALID_PAYLOAD}
EVENT_TYPES = ("beat", "quality", "alert", "status", "progress")
#: Every field name protocol v1 defines; "unknown extra fields" are drawn outside this set.
KNOWN_FIELDS = frozenset({
    "type", "stream", "fs", "channels", "dtype", "gain", "baseline", "device", "resume",
    "seq", "n", "data", "t", "next_seq", "code", "message", "topics", "topic", "t0",
    "priority",
})


def pack(fields: Any) -> bytes:
    payload: bytes = msgpack.packb(fields, use_bin_type=True)
    return payload


def unpack(payload: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(payload, raw=False)
    return fields


def rejected(decode: Decoder, payload: bytes) -> RemoteProtocolError:
    """The error *decode* raises for *payload*; any other exception fails the test."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(payload)
    return info.value


# --- strategies -----------------------------------------------------------------------------

stream_ids = st.from_regex(STREAM_ID, fullmatch=True)
topics = st.from_regex(TOPIC, fullmatch=True)
seqs = st.integers(0, 2**64 - 1)  # msgpack's whole unsigned range
frame_seqs = st.integers(0, 2**64 - 2)  # a device's: the seq after it must be a seq too
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
positive = (st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)
            | st.integers(1, 2**53))
channel_names = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=MAX_CHANNELS,
                         unique=True).map(tuple)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6,
)
extras = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in KNOWN_FIELDS), values,
                         max_size=4)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    channels = draw(channel_names)
    n = len(channels)
    return Hello(
        stream=draw(stream_ids), fs=draw(positive), channels=channels,
        dtype=draw(st.sampled_from(["int16", "float32"])),
        gain=tuple(draw(st.lists(positive, min_size=n, max_size=n))),
        baseline=tuple(draw(st.lists(finite, min_size=n, max_size=n))),
        device=draw(st.none() | st.text(max_size=20)), resume=draw(st.none() | frame_seqs),
    )


pings = st.builds(Ping, t=st.none() | finite)
device_messages = st.one_of(
    hellos(), st.builds(Samples, seq=frame_seqs, n=st.integers(1, 2**32), data=st.binary()), pings,
)
subscriber_messages = st.one_of(
    st.builds(Subscribe, st.lists(topics, min_size=1, max_size=8).map(tuple)),
    st.builds(Unsubscribe, st.lists(topics, min_size=1, max_size=8).map(tuple)),
    pings,
)
control_messages = st.one_of(
    st.builds(Welcome, stream_ids, seqs), st.builds(Ack, seqs),
    st.builds(Pong, t=st.none() | finite), st.builds(Error, st.text(), st.text()),
)


@st.composite
def stream_samples(draw: st.DrawFn) -> StreamSamples:
    channels = draw(channel_names)
    n = len(channels)
    return StreamSamples(
        topic=draw(topics), stream=draw(stream_ids), seq=draw(seqs), t0=draw(seqs),
        fs=draw(positive), channels=channels,
        dtype=draw(st.sampled_from(["int16", "float32", "float64"])),
        gain=tuple(draw(st.lists(positive, min_size=n, max_size=n))),
        baseline=tuple(draw(st.lists(finite, min_size=n, max_size=n))),
        data=draw(st.binary()), priority=draw(st.sampled_from(Priority)), extra=draw(extras),
    )


events = st.builds(
    Event, type=st.sampled_from(EVENT_TYPES), topic=topics,
    priority=st.sampled_from(Priority),
    body=st.dictionaries(st.text(max_size=12).filter(
        lambda k: k not in ("type", "topic", "priority")), values, max_size=6),
)
server_messages = control_messages | stream_samples() | events


# --- round trips ----------------------------------------------------------------------------


@given(device_messages)
def test_device_messages_round_trip(message: Message) -> None:
    assert decode_device(encode(message)) == message


@given(subscriber_messages)
def test_subscriber_messages_round_trip(message: Message) -> None:
    assert decode_subscriber(encode(message)) == message


@given(server_messages)
def test_server_messages_round_trip(message: Message) -> None:
    assert decode_server(encode(message)) == message


def test_every_message_is_one_msgpack_map_with_a_type() -> None:
    wire = unpack(encode(Samples(seq=7, n=1, data=b"\x01\x00")))
    assert wire == {"type": "samples", "seq": 7, "n": 1, "data": b"\x01\x00"}
    assert isinstance(wire["data"], bytes)  # msgpack bin, never an array of numbers


def test_hello_gain_and_baseline_may_be_one_number_for_all_channels() -> None:
    wire = {"type": "hello", "stream": "bed-12", "fs": 250, "channels": ["I", "II", "III"],
            "dtype": "int16", "gain": 200, "baseline": -3.5}
    hello = decode_device(pack(wire))
    assert hello == Hello("bed-12", 250.0, ("I", "II", "III"), "int16", (200.0,) * 3,
                          (-3.5,) * 3)


def test_numbers_may_be_any_msgpack_number() -> None:
    # A C client may pack a float32 (0xca) where Python packs a float64 (0xcb).
    wire = {"type": "hello", "stream": "s", "fs": 250.0, "channels": ["I"], "dtype": "int16",
            "gain": [200.0], "baseline": [0]}
    as_float32 = msgpack.packb(wire, use_bin_type=True, use_single_float=True)
    assert decode_device(as_float32) == decode_device(pack(wire))


def test_event_fields_travel_flat_beside_type_topic_and_priority() -> None:
    quality = Event("quality", "stream/bed-12/quality", Priority.NORMAL, {
        "stream": "bed-12", "t0": 250, "n": 250, "flatline": True, "lead_off": False,
        "out_of_range": False, "std_mv": [0.0, 0.1], "range_mv": [0.0, 0.4],
    })
    wire = unpack(encode(quality))
    assert wire == {"type": "quality", "topic": "stream/bed-12/quality", "priority": 3,
                    **quality.body}
    assert decode_server(encode(quality)) == quality


def test_filtered_samples_carry_filter_version_as_a_top_level_field() -> None:
    message = StreamSamples(
        topic="stream/bed-12/filtered", stream="bed-12", seq=3, t0=750, fs=250.0,
        channels=("I",), dtype="float32", gain=(1.0,), baseline=(0.0,), data=bytes(4),
        extra={"filter_version": 2},
    )
    wire = unpack(encode(message))
    assert wire["filter_version"] == 2
    assert wire["priority"] == Priority.HIGH
    decoded = decode_server(encode(message))
    assert isinstance(decoded, StreamSamples) and decoded.extra == {"filter_version": 2}


def test_encode_ignores_extra_keys_that_collide_with_defined_fields() -> None:
    message = Event("alert", "alerts", Priority.CRITICAL, {"type": "spoof", "priority": 5})
    wire = unpack(encode(message))
    assert (wire["type"], wire["priority"]) == ("alert", Priority.CRITICAL)


# --- unknown extra fields -------------------------------------------------------------------


@given(device_messages, extras)
def test_unknown_fields_from_a_device_are_ignored(message: Message,
                                                  extra: dict[str, Any]) -> None:
    assert decode_device(pack({**extra, **unpack(encode(message))})) == message


@given(subscriber_messages, extras)
def test_unknown_fields_from_a_subscriber_are_ignored(message: Message,
                                                      extra: dict[str, Any]) -> None:
    assert decode_subscriber(pack({**extra, **unpack(encode(message))})) == message


@given(control_messages, extras)
def test_unknown_fields_from_the_server_are_ignored(message: Message,
                                                    extra: dict[str, Any]) -> None:
    assert decode_server(pack({**extra, **unpack(encode(message))})) == message


@given(stream_samples(), extras)
def test_unknown_fields_on_samples_are_kept_in_extra(message: StreamSamples,
                                                     extra: dict[str, Any]) -> None:
    decoded = decode_server(pack({**extra, **unpack(encode(message))}))
    assert isinstance(decoded, StreamSamples)
    assert decoded.extra == {**extra, **message.extra}


# --- reassembly -----------------------------------------------------------------------------

SAMPLES = Samples(seq=41, n=8, data=bytes(range(32)))
PAYLOAD = encode(SAMPLES)


def test_a_message_split_at_any_offset_assembles_to_the_same_payload() -> None:
    for offset in range(len(PAYLOAD) + 1):
        assembler = MessageAssembler(max_size=len(PAYLOAD))
        assert assembler.feed(PAYLOAD[:offset], final=False) is None
        payload = assembler.feed(PAYLOAD[offset:], final=True)
        assert payload == PAYLOAD
        assert decode_device(payload) == SAMPLES


@given(st.lists(st.integers(0, len(PAYLOAD)), max_size=len(PAYLOAD) * 2))
def test_a_message_in_many_fragments_assembles_to_the_same_payload(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(PAYLOAD)]
    fragments = [PAYLOAD[a:b] for a, b in pairwise(bounds)]
    assembler = MessageAssembler(max_size=len(PAYLOAD))
    assert all(assembler.feed(f, final=False) is None for f in fragments[:-1])
    payload = assembler.feed(fragments[-1], final=True)
    assert payload is not None
    assert decode_device(payload) == SAMPLES


def test_the_assembler_starts_afresh_after_each_message() -> None:
    assembler = MessageAssembler(max_size=len(PAYLOAD))
    for _ in range(3):
        assert assembler.feed(PAYLOAD[:5], final=False) is None
        assert assembler.feed(PAYLOAD[5:], final=True) == PAYLOAD


def test_a_message_over_the_size_limit_is_refused_with_1009() -> None:
    assert MessageAssembler(max_size=len(PAYLOAD)).feed(PAYLOAD, final=True) == PAYLOAD
    with pytest.raises(RemoteProtocolError) as info:
        MessageAssembler(max_size=len(PAYLOAD) - 1).feed(PAYLOAD, final=True)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG and int(info.value.code) == 1009


def test_the_size_limit_counts_the_whole_message_and_fails_before_its_end() -> None:
    assembler = MessageAssembler(max_size=10)
    for _ in range(2):
        assert assembler.feed(b"x" * 5, final=False) is None
    with pytest.raises(RemoteProtocolError) as info:  # not final: no waiting for the rest
        assembler.feed(b"x", final=False)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    assert assembler.feed(b"y" * 10, final=True) == b"y" * 10  # nothing left over


# --- rejection ------------------------------------------------------------------------------

HELLO: dict[str, Any] = {"type": "hello", "stream": "bed-12", "fs": 250, "channels": ["I", "II"],
                         "dtype": "int16", "gain": [200, 200], "baseline": [0, 0]}
SAMPLES_MAP: dict[str, Any] = {"type": "samples", "seq": 0, "n": 1, "data": bytes(4)}
SUBSCRIBE: dict[str, Any] = {"type": "subscribe", "topics": ["alerts"]}
STREAM_SAMPLES: dict[str, Any] = unpack(encode(StreamSamples(
    topic="stream/bed-12/raw", stream="bed-12", seq=0, t0=0, fs=250.0, channels=("I",),
    dtype="int16", gain=(200.0,), baseline=(0.0,), data=bytes(2),
)))
ALERT: dict[str, Any] = unpack(encode(Event("alert", "alerts", Priority.CRITICAL, {})))


def changed(base: Mapping[str, Any], **fields: Any) -> bytes:
    return pack({**base, **fields})


def without(base: Mapping[str, Any], key: str) -> bytes:
    return pack({k: v for k, v in base.items() if k != key})


def test_the_valid_bases_of_the_rejection_cases_decode() -> None:
    decode_device(pack(HELLO))
    decode_device(pack(SAMPLES_MAP))
    decode_subscriber(pack(SUBSCRIBE))
    decode_server(pack(STREAM_SAMPLES))
    decode_server(pack(ALERT))


NOT_MSGPACK = {
    "empty": b"",
    "truncated-map": pack(HELLO)[:-1],
    "trailing-bytes": pack(HELLO) + b"\x00",
    "reserved-byte-0xc1": b"\xc1",
    "int-map-key": b"\x81\x01\x02",
    "invalid-utf8-string": b"\x81\xa4type\xa2\xff\xfe",
    "bad-timestamp-ext": b"\xc7\x00\xff",
}
NOT_A_MAP = {"array": pack(["hello"]), "int": pack(1), "str": pack("hello"),
             "nil": pack(None), "bin": pack(b"\x81")}
NO_TYPE = {"missing": without(HELLO, "type"), "int": changed(HELLO, type=1),
           "bin": changed(HELLO, type=b"hello"), "nil": changed(HELLO, type=None)}


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("payload", [*NOT_MSGPACK.values(), *NOT_A_MAP.values(),
                                     *NO_TYPE.values()],
                         ids=[*NOT_MSGPACK, *(f"not-a-map-{k}" for k in NOT_A_MAP),
                              *(f"type-{k}" for k in NO_TYPE)])
def test_what_is_not_a_typed_msgpack_map_is_invalid_payload(decode: Decoder,
                                                            payload: bytes) -> None:
    code = rejected(decode, payload).code
    assert code == CloseCode.INVALID_PAYLOAD and int(code) == 1007


@pytest.mark.parametrize("decode", DECODERS)
def test_every_truncation_of_a_message_is_invalid_payload(decode: Decoder) -> None:
    payload = pack(HELLO)
    for end in range(len(payload)):
        assert rejected(decode, payload[:end]).code == CloseCode.INVALID_PAYLOAD


@pytest.mark.parametrize(("decode", "kind"), [
    (decode_device, "nope"), (decode_device, "welcome"), (decode_device, "subscribe"),
    (decode_device, "HELLO"), (decode_subscriber, "hello"), (decode_subscriber, "samples"),
    (decode_server, "hello"), (decode_server, "subscribe"), (decode_server, "ping"),
])
def test_an_unknown_type_is_a_protocol_error(decode: Decoder, kind: str) -> None:
    error = rejected(decode, changed(HELLO, type=kind))
    assert (error.code, error.reason) == (CloseCode.PROTOCOL_ERROR, "unknown-type")
    assert error.code == 1002


@pytest.mark.parametrize("dtype", ["float64", "int32", "uint16", "int8", ""])
def test_a_device_dtype_other_than_int16_or_float32_is_unsupported_data(dtype: str) -> None:
    error = rejected(decode_device, changed(HELLO, dtype=dtype))
    assert (error.code, error.reason) == (CloseCode.UNSUPPORTED_DATA, "unsupported-dtype")
    assert error.code == 1003


INVALID_DEVICE = {
    # bool is an int in Python and msgpack has its own bool: never a number here.
    "hello-fs-bool": changed(HELLO, fs=True),
    "hello-gain-bool": changed(HELLO, gain=[200, True]),
    "hello-resume-bool": changed(HELLO, resume=True),
    "samples-seq-bool": changed(SAMPLES_MAP, seq=True),
    "samples-n-bool": changed(SAMPLES_MAP, n=True),
    "ping-t-bool": pack({"type": "ping", "t": False}),
    # missing fields
    **{f"hello-missing-{k}": without(HELLO, k)
       for k in ("stream", "fs", "channels", "dtype", "gain", "baseline")},
    **{f"samples-missing-{k}": without(SAMPLES_MAP, k) for k in ("seq", "n", "data")},
    # wrong types
    "hello-stream-int": changed(HELLO, stream=12),
    "hello-fs-string": changed(HELLO, fs="250"),
    "hello-channels-string": changed(HELLO, channels="I"),
    "hello-channel-int": changed(HELLO, channels=["I", 2]),
    "hello-dtype-int": changed(HELLO, dtype=16),
    "hello-gain-string": changed(HELLO, gain="200"),
    "hello-gain-nil": changed(HELLO, gain=None),
    "hello-baseline-nested": changed(HELLO, baseline=[[0], [0]]),
    "hello-device-int": changed(HELLO, device=7),
    "hello-resume-float": changed(HELLO, resume=3.0),
    "samples-seq-float": changed(SAMPLES_MAP, seq=1.0),
    "samples-seq-string": changed(SAMPLES_MAP, seq="0"),
    "samples-n-float": changed(SAMPLES_MAP, n=1.5),
    "samples-data-str": changed(SAMPLES_MAP, data="\x00\x00\x00\x00"),
    "samples-data-array": changed(SAMPLES_MAP, data=[0, 0, 0, 0]),
    "ping-t-string": pack({"type": "ping", "t": "now"}),
    # values out of range
    "hello-stream-empty": changed(HELLO, stream=""),
    "hello-stream-leading-dash": changed(HELLO, stream="-bed"),
    "hello-stream-slash": changed(HELLO, stream="ward/bed"),
    "hello-stream-space": changed(HELLO, stream="bed 12"),
    "hello-stream-65-chars": changed(HELLO, stream="b" * 65),
    "hello-fs-zero": changed(HELLO, fs=0),
    "hello-fs-negative": changed(HELLO, fs=-250.0),
    "hello-fs-nan": changed(HELLO, fs=math.nan),
    "hello-fs-inf": changed(HELLO, fs=math.inf),
    "hello-channels-empty": changed(HELLO, channels=[]),
    "hello-channels-17": changed(HELLO, channels=[f"c{i}" for i in range(17)],
                                 gain=1, baseline=0),
    "hello-channels-repeated": changed(HELLO, channels=["I", "I"]),
    "hello-gain-one-of-two": changed(HELLO, gain=[200]),
    "hello-gain-three-of-two": changed(HELLO, gain=[200, 200, 200]),
    "hello-gain-zero": changed(HELLO, gain=0),
    "hello-gain-negative": changed(HELLO, gain=[200, -200]),
    "hello-gain-nan": changed(HELLO, gain=[200, math.nan]),
    "hello-baseline-inf": changed(HELLO, baseline=-math.inf),
    "hello-baseline-one-of-two": changed(HELLO, baseline=[0]),
    "hello-resume-negative": changed(HELLO, resume=-1),
    "samples-seq-negative": changed(SAMPLES_MAP, seq=-1),
    # the seq after it (the server's welcome.next_seq) would not fit in 64 bits
    "samples-seq-last-uint64": changed(SAMPLES_MAP, seq=2**64 - 1),
    "hello-resume-last-uint64": changed(HELLO, resume=2**64 - 1),
    "samples-n-zero": changed(SAMPLES_MAP, n=0),
    "samples-n-negative": changed(SAMPLES_MAP, n=-3),
}


@pytest.mark.parametrize("payload", INVALID_DEVICE.values(), ids=INVALID_DEVICE.keys())
def test_bad_device_fields_are_invalid_payload(payload: bytes) -> None:
    error = rejected(decode_device, payload)
    assert (error.code, error.reason) == (CloseCode.INVALID_PAYLOAD, "invalid-payload")
    assert error.message  # a human-readable reason for the error message


INVALID_SUBSCRIBER = {
    "topics-missing": without(SUBSCRIBE, "topics"),
    "topics-string": changed(SUBSCRIBE, topics="alerts"),
    "topics-empty": changed(SUBSCRIBE, topics=[]),
    "topics-int": changed(SUBSCRIBE, topics=[1]),
    "topics-257": changed(SUBSCRIBE, topics=["alerts"] * 257),
    "topic-unknown-kind": changed(SUBSCRIBE, topics=["stream/bed-12/ecg"]),
    "topic-bad-stream-id": changed(SUBSCRIBE, topics=["stream/-x/raw"]),
    "topic-no-stream-id": changed(SUBSCRIBE, topics=["stream//raw"]),
    "topic-no-job-id": changed(SUBSCRIBE, topics=["job/"]),
    "topic-trailing-space": changed(SUBSCRIBE, topics=["alerts "]),
    "topic-trailing-slash": changed(SUBSCRIBE, topics=["streams/"]),
    "unsubscribe-topics-string": pack({"type": "unsubscribe", "topics": "alerts"}),
}


@pytest.mark.parametrize("payload", INVALID_SUBSCRIBER.values(), ids=INVALID_SUBSCRIBER.keys())
def test_bad_subscriber_fields_are_invalid_payload(payload: bytes) -> None:
    assert rejected(decode_subscriber, payload).code == CloseCode.INVALID_PAYLOAD


INVALID_SERVER = {
    "ack-seq-bool": pack({"type": "ack", "seq": True}),
    "welcome-next-seq-missing": pack({"type": "welcome", "stream": "s"}),
    "error-code-int": pack({"type": "error", "code": 1007, "message": "bad"}),
    "samples-priority-bool": changed(STREAM_SAMPLES, priority=True),
    "samples-priority-0": changed(STREAM_SAMPLES, priority=0),
    "samples-priority-6": changed(STREAM_SAMPLES, priority=6),
    "samples-priority-missing": without(STREAM_SAMPLES, "priority"),
    "samples-dtype-int8": changed(STREAM_SAMPLES, dtype="int8"),
    "samples-t0-bool": changed(STREAM_SAMPLES, t0=False),
    "samples-data-str": changed(STREAM_SAMPLES, data="xx"),
    "alert-topic-missing": without(ALERT, "topic"),
    "alert-priority-string": changed(ALERT, priority="critical"),
}


@pytest.mark.parametrize("payload", INVALID_SERVER.values(), ids=INVALID_SERVER.keys())
def test_bad_server_fields_are_invalid_payload(payload: bytes) -> None:
    assert rejected(decode_server, payload).code == CloseCode.INVALID_PAYLOAD


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_remote_protocol_error(payload: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(payload)
        except RemoteProtocolError as error:
            assert error.code in DECODE_CODES


TYPES = ("hello", "samples", "ping", "subscribe", "unsubscribe", "welcome", "ack", "pong",
         "error", *EVENT_TYPES, "nope")
fields = st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS - {"type"})), values, max_size=10)


@given(st.sampled_from(TYPES), fields)
def test_typed_maps_of_arbitrary_fields_never_raise_anything_else(
    kind: str, body: dict[str, Any]
) -> None:
    payload = pack({**body, "type": kind})
    for decode in DECODERS:
        try:
            decode(payload)
        except RemoteProtocolError as error:
            assert error.code in DECODE_CODES


# --- server frames --------------------------------------------------------------------------


def parse_header(frame: bytes) -> tuple[int, int, int, int, int, bytes]:
    """(FIN, RSV1-3, opcode, MASK, payload length, payload) per RFC 6455 section 5.2."""
    first, second = frame[0], frame[1]
    length, at = second & 0x7F, 2
    if length == 126:
        (length,), at = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), at = struct.unpack("!Q", frame[2:10]), 10
    return first >> 7, (first >> 4) & 0b111, first & 0x0F, second >> 7, length, frame[at:]


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_server_frame_header_uses_the_shortest_length_form(size: int, header: bytes) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = server_frame(payload)
    assert frame == header + payload
    fin, rsv, opcode, mask, length, body = parse_header(frame)
    assert (fin, rsv, opcode, mask, length, body) == (1, 0, OPCODE_BINARY, 0, size, payload)


def test_server_frame_sets_rsv1_and_the_text_opcode_when_asked() -> None:
    assert server_frame(b"z", rsv1=True)[:2] == b"\xc2\x01"
    assert parse_header(server_frame(b"z", rsv1=True))[1] == 0b100
    assert server_frame(b"{}", opcode=0x1) == b"\x81\x02{}"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_websocket_client_reads_server_frames_back(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(server_frame(payload))
    (frame,) = client.received_frames()
    assert (frame.opcode, frame.payload, frame.message_finished) == (Opcode.BINARY, payload,
                                                                     True)


# --- the worked example in docs/protocol.md -------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
EXAMPLE_DATA = struct.pack("<6h", 100, -50, 120, -40, -5, 300)
EXAMPLE_HELLO = Hello(stream="bed-12", fs=250.0, channels=("I", "II"), dtype="int16",
                      gain=(200, 200), baseline=(0, 0))
EXAMPLE_RAW = StreamSamples(
    topic="stream/bed-12/raw", stream="bed-12", seq=0, t0=0, fs=250.0, channels=("I", "II"),
    dtype="int16", gain=(200.0, 200.0), baseline=(0.0, 0.0), data=EXAMPLE_DATA,
)
EXAMPLES = {
    "hello": encode(EXAMPLE_HELLO),
    "samples": encode(Samples(seq=0, n=3, data=EXAMPLE_DATA)),
    "welcome-frame": server_frame(encode(Welcome("bed-12", 0))),
    "ack-frame": server_frame(encode(Ack(0))),
    "raw-frame-header": server_frame(encode(EXAMPLE_RAW))[:4],
}
HEX_BLOCK = re.compile(r"<!-- bytes: (?P<name>[\w-]+) -->\n```text\n(?P<body>.*?)```", re.S)


def doc_examples() -> list[tuple[str, bytes]]:
    """(name, bytes) of each hex block; a line's bytes end where two spaces begin a note."""
    return [
        (m["name"], bytes.fromhex(" ".join(line.strip().split("  ")[0]
                                           for line in m["body"].splitlines())))
        for m in HEX_BLOCK.finditer(DOC.read_text(encoding="utf-8"))
    ]


def test_the_worked_example_in_the_docs_is_what_encode_and_server_frame_produce() -> None:
    found = doc_examples()
    assert {name for name, _ in found} == set(EXAMPLES)
    for name, shown in found:
        assert shown == EXAMPLES[name], name


def test_the_worked_example_decodes_to_the_documented_values() -> None:
    assert decode_device(EXAMPLES["hello"]) == EXAMPLE_HELLO
    raw = server_frame(encode(EXAMPLE_RAW))
    assert len(raw) - 4 == 181
    assert decode_server(raw[4:]) == EXAMPLE_RAW


def test_the_documented_masked_device_frame_carries_the_samples_message() -> None:
    payload, key = EXAMPLES["samples"], b"\x37\xfa\x21\x3d"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(b"\x82\xa9" + key + masked)
    (frame,) = server.received_frames()
    assert (frame.opcode, frame.payload) == (Opcode.BINARY, payload)
