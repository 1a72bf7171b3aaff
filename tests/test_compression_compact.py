"""Subprotocol ``vital.v1.compact``, sans-IO: Rice-coded sample blocks, the per-connection
table of entries, lossless round trips, shared work, and bad input (1007/1009)."""

from __future__ import annotations

import dataclasses
import itertools
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

import protocol as P
from protocol import CloseCode, CompactDecoder, CompactEncoder, RemoteProtocolError
from protocol._compact import sample_block
from protocol._rice import decode_block, encode_block
from vital_actors.edge.codecs import CompactWireCodec, Outgoing
from vital_actors.sources import load_record

ZSTD = P.ZstdCodec(dictionary=P.ecg_dictionary())


def samples(topic: str, seq: int, t0: int, data: bytes, channels: int = 2,
            **extra: Any) -> P.StreamSamples:
    names = tuple(f"c{i}" for i in range(channels))
    stream = topic.split("/")[1]
    return P.StreamSamples(topic, stream, seq, t0, 360.0, names, "int16",
                           (200.0,) * channels, (1024.0,) * channels, data, P.Priority.HIGH,
                           extra)


def through(messages: list[P.ServerMessage], *, encoders: int = 1) -> list[bytes]:
    """The bodies the first of *encoders* connections gets (all share one memo each)."""
    encs = [CompactEncoder(ZSTD) for _ in range(encoders)]
    out = []
    for m in messages:
        shared: dict[Any, bytes] = {}
        bodies = [e.encode(m, P.encode(m), shared) for e in encs]
        out.append(bodies[0])
    return out


def blocks(shared: dict[Any, bytes]) -> list[bytes]:
    return [v for k, v in shared.items() if isinstance(k, tuple) and k[0] == "compact"]


def decoded(bodies: list[bytes]) -> list[P.ServerMessage]:
    dec = CompactDecoder(zstd=ZSTD)
    return [dec.decode(b) for b in bodies]


# --- sample blocks ----------------------------------------------------------------------


def test_a_block_spells_out_k_and_rice_codes() -> None:
    # history 100, 100; samples 101, 103, 104: predictions 100, 101, 104 (100 + 1 + 3//2)
    ext = np.array([100, 100, 101, 103, 104], "<i2").tobytes()
    block = encode_block(ext, 1)
    # residuals 1, 2, 0 -> zigzag 2, 4, 0; k = 1: 01 0 | 001 0 | 1 0, then padding
    assert block == bytes([1, 0b01000101, 0b00000000])
    assert decode_block(block, ext[:4], 3, 1) == ext[4:]


@given(st.integers(1, 6), st.integers(0, 40), st.data())
def test_blocks_round_trip_any_int16(channels: int, n: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(-32768, 32767), min_size=(n + 2) * channels,
                                max_size=(n + 2) * channels))
    ext = np.array(values, "<i2").tobytes()
    block = encode_block(ext, channels)
    assert decode_block(block, ext[:4 * channels], n, channels) == ext[4 * channels:]


def test_a_block_with_a_bad_k_or_length_is_1007() -> None:
    ext = np.arange(20, dtype="<i2").tobytes()
    block = encode_block(ext, 2)
    for bad in (bytes([18]) + block[1:], block[:-1], block + b"\x00", block[:1]):
        with pytest.raises(RemoteProtocolError) as err:
            decode_block(bad, ext[:8], 8, 2)
        assert err.value.code == CloseCode.INVALID_PAYLOAD


# --- messages ---------------------------------------------------------------------------


def test_ds1_round_trips_in_under_5_bits_per_sample(mitdb: Path) -> None:
    rec = load_record(mitdb / "208", stop=360 * 120)  # 2 min, with its ectopic beats
    x = rec.samples
    messages: list[P.ServerMessage] = [
        samples("stream/208/raw", seq, start, x[start:start + 36].tobytes())
        for seq, start in enumerate(range(0, len(x) - 35, 36))]
    bodies = through(messages)
    assert decoded(bodies) == messages
    bits = sum(len(P.server_frame(b)) for b in bodies) * 8 / (len(messages) * 72)
    assert bits < 5.0


def test_the_header_shrinks_to_one_byte_once_the_entry_is_known() -> None:
    data = np.arange(72, dtype="<i2").tobytes()
    ms: list[P.ServerMessage] = [samples("stream/a/raw", s, 36 * s, data) for s in range(4)]
    bodies = through(ms)
    assert bodies[0][0] == 0x80 | 0x40 and bodies[1][0] == 0x80 | 0x20  # define; deltas
    assert bodies[2][0] == bodies[3][0] == 0x80 | 0x20 | 0x10  # chained, steady
    assert bodies[3][1:] == sample_block(data, 2, data[-8:])
    assert decoded(bodies) == ms


def test_gaps_counters_extras_topics_and_events_round_trip() -> None:
    rng = np.random.default_rng(3)

    def d(n: int) -> bytes:
        return rng.integers(-300, 300, size=n * 2, dtype="<i2").tobytes()

    ms: list[P.ServerMessage] = [
        samples("stream/a/raw", 0, 0, d(36), offset=10, epoch="e1"),
        P.Event("beat", "stream/a/beats", P.Priority.HIGH, {"t": 1}),
        samples("stream/b/raw", 5, 180, d(36), channels=2),
        samples("stream/a/raw", 1, 36, d(36), offset=11, epoch="e1"),
        samples("stream/a/raw", 3, 108, d(36), offset=13, epoch="e1"),  # a gap: standalone
        samples("stream/a/raw", 4, 144, d(1), offset=14, epoch="e1"),  # one sample
        samples("stream/a/raw", 5, 145, b"", offset=15, epoch="e1"),  # none
        samples("stream/a/raw", 6, 145, d(2), offset=16, epoch="e2"),  # a new epoch
        samples("stream/b/raw", 6, 216, d(36), channels=2),
        dataclasses.replace(samples("stream/f/filtered", 0, 0, b""), dtype="float32",
                            data=b"\x00" * 8),
        P.Pong(1.5),
    ]
    bodies = through(ms)
    assert decoded(bodies) == ms
    assert bodies[7][0] & 0x40  # the epoch changed: the entry is defined again


def test_connections_share_the_block_and_differ_in_headers() -> None:
    data = np.arange(72, dtype="<i2").tobytes()
    early, late = CompactEncoder(ZSTD), CompactEncoder(ZSTD)
    decs = CompactDecoder(zstd=ZSTD), CompactDecoder(zstd=ZSTD)
    for s in range(3):
        m = samples("stream/a/raw", s, 36 * s, data)
        shared: dict[Any, bytes] = {}
        a = early.encode(m, P.encode(m), shared)
        memo = dict(shared)
        if s == 2:  # the late one joins now: a definition, then the same block
            b = late.encode(m, P.encode(m), shared)
            assert len(b) > len(a) and b[0] & 0x40
            assert decs[1].decode(b) == m
        assert decs[0].decode(a) == m
        assert len(blocks(memo)) == 1  # one sample block, however many connections
    # The block is made once per (message, history): a late joiner that is standalone
    # adds the standalone block, computed once for all the late joiners.
    m = samples("stream/a/raw", 3, 108, data)
    shared = {}
    bodies = [e.encode(m, P.encode(m), shared) for e in (early, late, CompactEncoder(ZSTD))]
    block = shared[("compact", data[-8:])]
    assert len(blocks(shared)) == 2 and bodies[0].endswith(block) and bodies[1].endswith(block)


def test_the_table_evicts_its_oldest_entry_when_full() -> None:
    enc, dec = CompactEncoder(ZSTD, max_entries=2), CompactDecoder(zstd=ZSTD)
    data = np.arange(8, dtype="<i2").tobytes()
    for round_ in range(3):
        for topic in ("stream/a/raw", "stream/b/raw", "stream/c/raw"):
            m = samples(topic, round_, 4 * round_, data)
            body = enc.encode(m, P.encode(m), {})
            assert body[0] & 0x0F < 2 and dec.decode(body) == m


@settings(max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(["stream/a/raw", "stream/b/raw"]),
                          st.integers(0, 3), st.integers(0, 40),
                          st.integers(-32768, 32767), st.integers(0, 4000)),
                min_size=1, max_size=30))
def test_any_sequence_of_messages_round_trips(steps: list[tuple[str, int, int, int,
                                                                int]]) -> None:
    seqs: dict[str, int] = {}
    ms: list[P.ServerMessage] = []
    for topic, gap, n, level, spread in steps:
        seq = seqs.get(topic, -1) + 1 + gap
        seqs[topic] = seq
        rng = np.random.default_rng(seq)
        x = np.clip(level + rng.integers(-spread, spread + 1, size=n * 2), -32768, 32767)
        ms.append(samples(topic, seq, 36 * seq, x.astype("<i2").tobytes(),
                          epoch=f"run.{seq // 20}", offset=seq + 1000))
    assert decoded(through(ms, encoders=2)) == ms


# --- bad input --------------------------------------------------------------------------


def _valid_bodies() -> list[bytes]:
    data = np.arange(-36, 36, dtype="<i2").tobytes()
    ms: list[P.ServerMessage] = [samples("stream/a/raw", s, 36 * s, data) for s in range(3)]
    return through([*ms, P.Event("status", "streams", P.Priority.NORMAL, {"x": "y" * 50})])


def test_every_truncation_is_refused_with_1007() -> None:
    bodies = _valid_bodies()
    for i, body in enumerate(bodies):
        for cut in range(len(body)):
            dec = CompactDecoder(zstd=ZSTD)
            for before in bodies[:i]:
                dec.decode(before)
            with pytest.raises(RemoteProtocolError) as err:
                dec.decode(body[:cut])
            assert err.value.code == CloseCode.INVALID_PAYLOAD, (i, cut)


@given(st.binary(max_size=64))
def test_garbage_is_a_protocol_error_never_a_crash(data: bytes) -> None:
    dec = CompactDecoder(zstd=ZSTD)
    for body in _valid_bodies()[:1]:
        dec.decode(body)
    try:
        dec.decode(data)
    except RemoteProtocolError as exc:
        assert exc.code in (CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG,
                            CloseCode.PROTOCOL_ERROR)


def test_a_sample_bomb_is_1009_before_any_allocation() -> None:
    dec = CompactDecoder(zstd=ZSTD, max_size=1 << 16)
    dec.decode(_valid_bodies()[0])
    # entry 0, not steady: n = 2**40 samples, deltas 1 and 36
    bomb = bytes([0x80 | 0x20]) + bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]) + b"\x02\x48"
    with pytest.raises(RemoteProtocolError) as err:
        dec.decode(bomb)
    assert err.value.code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("body", [
    b"\x8f\x80\x08",  # entry 1024: beyond the table
    b"\x8f\x03",  # index 3 written as a varint
    b"\x85\x00",  # entry 5 never defined
    b"\xc0\x81\x40" + b"\x00" * 8193,  # a definition over 4096 bytes
    b"\xc0\x01\x01",  # a definition that is not a map
    b"\x02abc",  # an unknown kind
    b"",
])
def test_bad_headers_are_1007(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        CompactDecoder(zstd=ZSTD).decode(body)
    assert err.value.code == CloseCode.INVALID_PAYLOAD


# --- the worked example of docs/protocol.md section 11.6 --------------------------------

COMPACT_BLOCK = re.compile(r"<!-- compact-bytes: (?P<name>\w+) -->\n```text\n(?P<body>.*?)```",
                           re.S)


def test_the_compact_worked_example_in_the_docs() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
    shown = {m["name"]: bytes.fromhex(" ".join(line.strip().split("  ")[0]
                                                for line in m["body"].splitlines()))
             for m in COMPACT_BLOCK.finditer(doc)}

    def frame(seq: int, t0: int, *values: int) -> P.StreamSamples:
        return P.StreamSamples("stream/bed-12/raw", "bed-12", seq, t0, 250.0, ("I", "II"),
                               "int16", (200.0, 200.0), (0.0, 0.0),
                               struct.pack(f"<{len(values)}h", *values))

    ms: list[P.ServerMessage] = [frame(0, 0, 100, -50, 120, -40, -5, 300),
                                 frame(1, 3, -3, 290, 0, 280, 2, 275),
                                 frame(2, 6, 4, 272, 5, 270, 5, 269)]
    enc = CompactEncoder(None)
    bodies = [enc.encode(m, P.encode(m), {}) for m in ms]
    assert shown == dict(zip(("first", "second", "third"), bodies, strict=True))
    assert decoded(bodies) == ms


@settings(max_examples=40)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=12))
def test_frames_split_anywhere_on_the_wire_decode_the_same(cuts: list[int]) -> None:
    rng = np.random.default_rng(len(cuts))
    ms: list[P.ServerMessage] = [
        samples("stream/a/raw", s, 36 * s, rng.integers(-99, 99, 72, dtype="<i2").tobytes())
        for s in range(6)]
    ms.insert(3, P.Event("status", "streams", P.Priority.NORMAL, {"state": "x" * 300}))
    codec = CompactWireCodec(level=3, dictionary=None)
    wire = b"".join(Outgoing.of(m, P.Priority.HIGH).frame_for(codec) for m in ms)
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/v1/subscribe",
                                            subprotocols=[P.COMPACT_SUBPROTOCOL])))
    next(server.events())
    client.receive_data(server.send(AcceptConnection(subprotocol=P.COMPACT_SUBPROTOCOL)))
    next(client.events())
    ends = [*itertools.accumulate(cuts), len(wire)]
    dec, got, parts = CompactDecoder(), [], []
    for start, end in itertools.pairwise([0, *sorted(min(e, len(wire)) for e in ends)]):
        client.receive_data(wire[start:end])
        for event in client.events():
            assert isinstance(event, BytesMessage)
            parts.append(bytes(event.data))
            if event.message_finished:
                got.append(dec.decode(b"".join(parts)))
                parts = []
    assert got == ms
