"""Compression codecs, sans-IO: permessage-deflate negotiation and bounded inflation, the
zstd subprotocol codec (delta encoding, dictionary, bounded decompression)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

import protocol as P
from protocol import CloseCode, RemoteProtocolError
from protocol._zstd import _delta_payload

WIN = 12


def offer(params: str, *, takeover: bool = False) -> P.DeflateParams | None:
    return P.negotiate_deflate(f"permessage-deflate{params}", window_bits=WIN,
                               context_takeover=takeover)


# --- negotiation ------------------------------------------------------------------------


def test_a_bare_offer_gets_no_server_context_takeover_and_our_window() -> None:
    params = offer("")
    assert params is not None
    assert params.response() == "server_no_context_takeover; server_max_window_bits=12"


@pytest.mark.parametrize(("params", "response"), [
    ("; client_max_window_bits",
     "server_no_context_takeover; server_max_window_bits=12"),
    ("; client_max_window_bits=10",
     "server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"),
    ("; server_max_window_bits=10",
     "server_no_context_takeover; server_max_window_bits=10"),
    ('; server_max_window_bits="15"',
     "server_no_context_takeover; server_max_window_bits=12"),
    ("; client_no_context_takeover; server_no_context_takeover",
     "server_no_context_takeover; server_max_window_bits=12; client_no_context_takeover"),
    ("; Client_Max_Window_Bits",  # parameter names are case-insensitive
     "server_no_context_takeover; server_max_window_bits=12"),
])
def test_accepted_offers(params: str, response: str) -> None:
    accepted = offer(params)
    assert accepted is not None
    assert accepted.response() == response


@pytest.mark.parametrize("params", [
    "; x_unknown",                                   # unknown parameter
    "; mux=1",
    "; server_max_window_bits=10; server_max_window_bits=11",  # duplicate
    "; server_max_window_bits=8",                    # zlib cannot honour 8
    "; server_max_window_bits=16",
    "; server_max_window_bits",                      # needs a value
    "; server_max_window_bits=010",
    "; client_max_window_bits=7",
    "; client_max_window_bits=abc",
    "; server_no_context_takeover=1",                # takes no value
])
def test_offers_with_unknown_or_invalid_parameters_are_declined(params: str) -> None:
    assert offer(params) is None


def test_another_extension_name_is_declined() -> None:
    assert P.negotiate_deflate("x-webkit-deflate-frame", window_bits=WIN,
                               context_takeover=False) is None


def test_context_takeover_is_kept_unless_the_client_forbids_it() -> None:
    kept = offer("", takeover=True)
    assert kept is not None and not kept.server_no_context_takeover
    forbidden = offer("; server_no_context_takeover", takeover=True)
    assert forbidden is not None and forbidden.server_no_context_takeover


# --- deflate ----------------------------------------------------------------------------


def inflate(data: bytes, window: int = 15) -> bytes:
    return zlib.decompressobj(-window).decompress(data + b"\x00\x00\xff\xff")


def test_without_takeover_every_message_inflates_on_its_own() -> None:
    d = P.Deflater(level=6, window_bits=WIN, mem_level=5, context_takeover=False)
    messages = [b"vital %d " % i * 50 for i in range(3)] * 2
    frames = [d.compress(m) for m in messages]
    assert [inflate(f, WIN) for f in frames] == messages  # a fresh inflater each time
    assert frames[0] == frames[3]  # nothing carried over: same input, same bytes


def test_with_takeover_later_messages_refer_back_and_shrink() -> None:
    d = P.Deflater(level=6, window_bits=WIN, mem_level=5, context_takeover=True)
    message = bytes(range(256)) * 2
    first, second = d.compress(message), d.compress(message)
    assert len(second) < len(first) // 4
    z = zlib.decompressobj(-WIN)
    assert [z.decompress(f + b"\x00\x00\xff\xff") for f in (first, second)] == [message] * 2


def test_inflater_round_trips_fragments_and_resets_without_client_takeover() -> None:
    payload = b"samples " * 400
    data = P.Deflater(level=1, window_bits=15, mem_level=8, context_takeover=False
                      ).compress(payload)
    inflater = P.Inflater(max_size=1 << 20, context_takeover=False)
    for _ in range(2):
        out = b"".join(inflater.feed(data[i:i + 7]) for i in range(0, len(data), 7))
        assert out + inflater.end() == payload


def bomb(megabytes: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    return b"".join(z.compress(chunk) for _ in range(megabytes)) + z.flush(zlib.Z_SYNC_FLUSH)


def test_a_deflate_bomb_stops_at_the_limit_with_memory_bounded() -> None:
    data = bomb(200)  # 200 MiB of zeros in ~200 KB
    inflater = P.Inflater(max_size=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as info:
            for i in range(0, len(data), 65536):
                inflater.feed(data[i:i + 65536])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG and info.value.reason == "too-big"
    assert peak < 4 << 20  # the limit (1 MiB) plus a chunk, never the 200 MiB


def test_invalid_deflate_data_is_1007() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        P.Inflater(max_size=1024).feed(b"\xff\xff\xff\xff")
    assert info.value.code == CloseCode.INVALID_PAYLOAD


# --- zstd -------------------------------------------------------------------------------


def raw_message(n: int = 36, dtype: P.Dtype = "int16", **extra: object) -> P.StreamSamples:
    t = np.arange(n)
    x = np.stack([1024 + 300 * np.sin(t / 7), 1024 + 100 * np.cos(t / 5)], axis=1)
    data = x.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    return P.StreamSamples("stream/bed-7/raw", "bed-7", 3, 108, 360.0, ("MLII", "V1"),
                           dtype, (200.0, 200.0), (1024.0, 1024.0), data, extra=extra)


def test_zstd_samples_round_trip_delta_encoded_when_smaller() -> None:
    codec = P.ZstdCodec()
    message = raw_message(360)
    frame = codec.compress_message(message)
    on_wire = P.decode_server(codec.decompress(frame))
    assert isinstance(on_wire, P.StreamSamples) and on_wire.extra == {"enc": "delta8"}
    assert codec.decode_server(frame) == message
    assert len(frame) < len(P.ZstdCodec(delta=False).compress_message(message))


def test_zstd_keeps_plain_samples_when_delta_is_not_smaller() -> None:
    noise = np.random.default_rng(1).integers(-2**15, 2**15, 72, dtype="<i2").tobytes()
    message = dataclasses.replace(raw_message(), data=noise)
    codec = P.ZstdCodec()
    frame = codec.compress_message(message)
    assert "enc" not in P.decode_server(codec.decompress(frame)).extra  # type: ignore[union-attr]
    assert codec.decode_server(frame) == message


def test_zstd_leaves_float_samples_and_events_alone() -> None:
    codec = P.ZstdCodec()
    for message in (raw_message(dtype="float32"),
                    P.Event("status", "streams", P.Priority.NORMAL, {"state": "gap"})):
        frame = codec.compress_message(message)
        assert P.decode_server(codec.decompress(frame)) == message


@given(st.lists(st.tuples(st.integers(-2**15, 2**15 - 1), st.integers(-2**15, 2**15 - 1)),
                min_size=1, max_size=50))
def test_delta_round_trips_with_wraparound(rows: list[tuple[int, int]]) -> None:
    data = np.array(rows, dtype="<i2").tobytes()
    assert P.delta_decode(P.delta_encode(data, 2), 2) == data


@given(st.integers(-2**15, 2**15 - 1), st.lists(st.integers(-128, 127), max_size=60))
def test_delta8_round_trips_when_every_difference_fits_a_byte(
        start: int, steps: list[int]) -> None:
    x = (start + np.cumsum([0, *steps])).astype(np.int64)
    data = ((x + 2**15) % 2**16 - 2**15).astype("<i2").tobytes()  # wraps like int16
    packed = P.delta8_encode(data, 1)
    assert packed is not None and len(packed) == 2 + len(steps)
    assert P.delta8_decode(packed, 1) == data


def test_samples_go_delta8_when_they_fit_else_delta() -> None:
    codec = P.ZstdCodec()
    smooth = raw_message(360)  # differences of a few units
    walk = np.cumsum(np.random.default_rng(2).integers(-1000, 1000, (360, 2)), axis=0)
    steep = dataclasses.replace(smooth, data=walk.astype("<i2").tobytes())
    for message, enc in ((smooth, "delta8"), (steep, "delta")):
        frame = codec.compress_message(message)
        sent = P.decode_server(codec.decompress(frame))
        assert isinstance(sent, P.StreamSamples) and sent.extra == {"enc": enc}
        assert codec.decode_server(frame) == message


@pytest.mark.parametrize(("enc", "data"), [("delta8", b"\x01\x00\x02"), ("delta", b"\x01"),
                                           ("rle", b"\x00\x00\x00\x00")])
def test_undelta_refuses_unknown_encodings_and_bad_lengths(enc: str, data: bytes) -> None:
    message = dataclasses.replace(raw_message(), data=data, extra={"enc": enc})
    with pytest.raises(RemoteProtocolError) as info:
        P.undelta(message)
    assert info.value.code == CloseCode.INVALID_PAYLOAD


def test_the_dictionary_ships_and_its_id_is_in_every_frame() -> None:
    dictionary = P.ecg_dictionary()
    assert dictionary.id == P.ECG_DICTIONARY_ID and len(dictionary.data) == 4096
    codec = P.ZstdCodec(dictionary=dictionary)
    message = raw_message()
    frame = codec.compress_message(message)
    assert zstandard.get_frame_parameters(frame).dict_id == dictionary.id
    assert len(frame) < len(P.ZstdCodec().compress_message(message))
    assert codec.decode_server(frame) == message
    with pytest.raises(RemoteProtocolError) as info:
        P.ZstdCodec().decompress(frame)  # a peer without the dictionary
    assert info.value.code == CloseCode.INVALID_PAYLOAD
    assert str(dictionary.id) in info.value.message


def test_welcome_names_the_dictionary() -> None:
    welcome = P.Welcome("bed-7", 0, zstd_dict=P.ECG_DICTIONARY_ID)
    assert P.decode_server(P.encode(welcome)) == welcome
    assert b"zstd_dict" not in P.encode(P.Welcome("bed-7", 0))


@pytest.mark.parametrize("data", [
    b"", b"not zstd", b"\x28\xb5\x2f\xfd\x00garbage",
    zstandard.ZstdCompressor().compress(b"\x81\xa4type\xa4ping")[:-2],  # truncated
    zstandard.ZstdCompressor().compress(b"\x81\xa4type\xa4ping") + b"extra",
])
def test_invalid_zstd_is_1007(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        P.ZstdCodec().decompress(data)
    assert info.value.code == CloseCode.INVALID_PAYLOAD and info.value.reason == "invalid-zstd"


@pytest.mark.parametrize("content_size", [True, False])
def test_a_zstd_bomb_is_1009_with_memory_bounded(content_size: bool) -> None:
    z = zstandard.ZstdCompressor(write_content_size=content_size).compressobj()
    data = b"".join(z.compress(bytes(1 << 20)) for _ in range(200)) + z.flush()
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError) as info:
            P.ZstdCodec(max_size=1 << 20).decompress(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    assert peak < 4 << 20


# --- the worked example of docs/protocol.md section 11 ------------------------------------

ZSTD_BLOCK = re.compile(r"<!-- zstd-bytes: (?P<name>[\w-]+) -->\n```text\n(?P<body>.*?)```",
                        re.S)


def test_the_zstd_worked_example_in_the_docs() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    shown = {m["name"]: bytes.fromhex(" ".join(line.strip().split("  ")[0]
                                                for line in m["body"].splitlines()))
             for m in ZSTD_BLOCK.finditer(doc)}
    data = struct.pack("<6h", 100, -50, 120, -40, -5, 300)
    raw = P.StreamSamples("stream/bed-12/raw", "bed-12", 0, 0, 250.0, ("I", "II"), "int16",
                          (200.0, 200.0), (0.0, 0.0), data)
    delta = dataclasses.replace(raw, data=P.delta_encode(data, 2), extra={"enc": "delta"})
    payload = _delta_payload(raw)  # what the server compresses
    assert payload is not None and len(payload) == 191
    assert payload.endswith(bytes.fromhex("a3656e63a564656c7461"))
    assert P.decode_server(payload) == delta
    smooth = struct.pack("<6h", 100, -50, 120, -40, 115, -45)
    assert P.delta8_encode(data, 2) is None  # 340 does not fit a byte
    assert shown == {
        "delta-data": P.delta_encode(data, 2),
        "delta8-data": P.delta8_encode(smooth, 2),
        "frame-header": P.ZstdCodec().compress(payload)[:6],
        "frame-header-with-dictionary":
            P.ZstdCodec(dictionary=P.ecg_dictionary()).compress(payload)[:10],
    }
    assert P.undelta(delta) == raw
    digest = hashlib.sha256(P.ecg_dictionary().data).hexdigest()
    assert digest in doc and str(P.ECG_DICTIONARY_ID) in doc
