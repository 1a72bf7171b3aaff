"""Fuzzing the device path with hypothesis: the decoders, the session and a live ingest
connection. Every input is either accepted or answered with RemoteProtocolError (an
``error`` and a close code); nothing else escapes, nothing crashes.

CI runs a modest number of examples; ``python -m loadtests.fuzz`` sets
``VITAL_FUZZ_EXAMPLES`` (100,000 for the decoders, a twentieth of that for the session
and a live connection) and reports the run.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsclient import Closed, open_pair

import protocol as P
from vital_actors.ingest import run_ingest
from vital_actors.messages import Item
from vital_actors.settings import FilterSettings, LimitSettings
from vital_actors.stats import Stats
from vital_actors.streams import StreamRegistry

EXAMPLES = int(os.environ.get("VITAL_FUZZ_EXAMPLES", "100"))
SESSIONS = max(50, EXAMPLES // 20)  # a session or live connection per example costs more
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow])
CODES = {int(c) for c in P.CloseCode}

# Values of every msgpack type, nested a little.
leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
        | st.binary(max_size=64))
value = leaf | st.lists(leaf, max_size=3) | st.dictionaries(st.text(max_size=4), leaf,
                                                            max_size=2)
KEYS = ["type", "stream", "fs", "channels", "dtype", "gain", "baseline", "device", "resume",
        "seq", "n", "data", "t", "rx", "topics"]
TYPES = ["hello", "samples", "ping", "subscribe", "unsubscribe", "pong", "welcome", "x"]


@st.composite
def device_maps(draw: st.DrawFn) -> bytes:
    """msgpack maps shaped like protocol messages, with fields right, wrong or missing."""
    d: dict[str, Any] = draw(st.dictionaries(st.sampled_from(KEYS), value, max_size=8))
    if draw(st.booleans()):
        d["type"] = draw(st.sampled_from(TYPES))
    if draw(st.booleans()):  # plausible values, so the decoder gets past the first check
        d.update(stream=draw(st.sampled_from(["s1", "bad id", ""])),
                 fs=draw(st.sampled_from([360, 0, -1.5, float("nan"), 1e9])),
                 channels=draw(st.sampled_from([["a"], ["a", "a"], [], ["a", "b"]])),
                 dtype=draw(st.sampled_from(["int16", "float32", "float64", "x"])),
                 gain=draw(st.sampled_from([200, [1, 2], 0, "g"])), baseline=0,
                 seq=draw(st.integers(-2, 2**64 - 1)), n=draw(st.integers(-1, 10)),
                 data=draw(st.binary(max_size=40)))
    payload: bytes = msgpack.packb(d, use_bin_type=True)
    return payload


payloads = st.binary(max_size=256) | device_maps()


@FUZZ
@given(payloads)
def test_decoders_accept_or_raise_remote_protocol_error(payload: bytes) -> None:
    for decode in (P.decode_device, P.decode_subscriber, P.decode_server):
        try:
            decode(payload)
        except P.RemoteProtocolError as exc:
            assert int(exc.code) in CODES and exc.reason and exc.message


def _valid_frame(seq: int, n: int, channels: int, dtype: str) -> P.Samples:
    return P.Samples(seq, n, np.zeros((n, channels), dtype).tobytes())


@settings(max_examples=SESSIONS, deadline=None, derandomize=EXAMPLES <= 100,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads | st.builds(lambda s, n: P.encode(_valid_frame(s, n, 2, "<i2")),
                                     st.integers(0, 20), st.integers(1, 40)),
                max_size=12))
def test_the_session_accepts_or_raises_remote_protocol_error(messages: list[bytes]) -> None:
    session = P.DeviceSession(max_samples=32)
    session.receive(P.Hello("s1", 360.0, ("a", "b"), "int16", (1.0, 1.0), (0.0, 0.0)))
    before = session.next_seq
    for payload in messages:
        try:
            events = session.receive(P.decode_device(payload))
        except P.RemoteProtocolError:
            continue
        for event in events:
            if isinstance(event, P.Frame):
                assert event.samples.shape[1] == 2 and 1 <= event.samples.shape[0] <= 32
        assert session.next_seq >= before  # seq never goes back
        before = session.next_seq


HELLO = P.encode(P.Hello("s1", 360.0, ("a", "b"), "int16", (1.0, 1.0), (0.0, 0.0)))


async def _ingest_once(messages: list[bytes]) -> None:
    ws, client = await open_pair(max_message_bytes=4096)
    tx, rx = trio.open_memory_channel[Item](1000)
    stats = Stats()
    limits = LimitSettings(max_samples_per_frame=32, max_message_bytes=4096)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_ingest(ws, tx, registry=StreamRegistry(
            FilterSettings()), stats=stats, limits=limits))
        replies: list[object] = []
        try:
            for payload in messages:
                await client.send_bytes(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed first: fine, its reasons follow
        with trio.move_on_after(5):  # (autojump clock) the server went quiet
            while not replies or not isinstance(replies[-1], Closed):
                replies.append(await client.receive())
        nursery.cancel_scope.cancel()
    rx.close()
    if replies and isinstance(replies[-1], Closed) and replies[-1].code != 1006:
        errors = [r for r in replies if isinstance(r, P.Error)]
        # Every close the server began carries its reason first and a known code.
        assert errors and replies[-1].code in CODES, replies
        assert sum(stats.totals.rejected.values()) == 1


@settings(max_examples=SESSIONS, deadline=None, derandomize=EXAMPLES <= 100,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads, max_size=6), st.booleans())
def test_a_live_ingest_connection_answers_every_bad_input_with_an_error(
        messages: list[bytes], hello_first: bool) -> None:
    trio.run(_ingest_once, [HELLO, *messages] if hello_first else messages,
             clock=trio.testing.MockClock(autojump_threshold=0))
