"""DeviceSession: the order of a device's messages, frame validation, sequence accounting."""

from __future__ import annotations

import math
import struct

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    CloseCode,
    DeviceSession,
    Duplicate,
    Frame,
    Gap,
    Hello,
    Ping,
    PingReceived,
    RemoteProtocolError,
    Samples,
    SessionEvent,
    Started,
    decode_device,
    encode,
)

HELLO = Hello(stream="bed-12", fs=250.0, channels=("I", "II"), dtype="int16",
              gain=(200.0, 200.0), baseline=(0.0, 0.0))
HELLO_F32 = Hello(stream="bed-13", fs=250.0, channels=("I", "II", "III"), dtype="float32",
                  gain=(1.0,) * 3, baseline=(0.0,) * 3)


def samples(seq: int, values: npt.ArrayLike, dtype: str = "<i2") -> Samples:
    """A frame carrying *values*, shaped (n, channels), interleaved little-endian."""
    array = np.asarray(values, dtype=dtype)
    return Samples(seq=seq, n=array.shape[0], data=array.tobytes())


def started(*, max_samples: int = 64, hello: Hello = HELLO, **kwargs: int) -> DeviceSession:
    session = DeviceSession(max_samples=max_samples, **kwargs)
    session.receive(hello)
    return session


def frames(events: list[SessionEvent]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def refusal(session: DeviceSession, message: Samples | Hello) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        session.receive(message)
    return info.value


# --- order ----------------------------------------------------------------------------------


def test_hello_first_starts_the_stream() -> None:
    session = DeviceSession(max_samples=64)
    assert session.receive(HELLO) == [Started(HELLO)]
    assert session.hello == HELLO
    (frame,) = session.receive(samples(0, [[1, 2]]))
    assert isinstance(frame, Frame)
    assert (frame.seq, frame.t0) == (0, 0)


def test_a_second_hello_is_a_protocol_error() -> None:
    error = refusal(started(), HELLO)
    assert (error.code, error.reason) == (CloseCode.PROTOCOL_ERROR, "duplicate-hello")
    assert error.code == 1002


def test_samples_before_hello_are_a_protocol_error() -> None:
    error = refusal(DeviceSession(max_samples=64), samples(0, [[1, 2]]))
    assert (error.code, error.reason) == (CloseCode.PROTOCOL_ERROR, "hello-required")
    assert error.code == 1002


def test_ping_is_answered_before_and_after_hello() -> None:
    session = DeviceSession(max_samples=64)
    assert session.receive(Ping(1.5)) == [PingReceived(1.5)]
    session.receive(HELLO)
    assert session.receive(Ping()) == [PingReceived(None)]


# --- frame validation -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7, 9, 10, 16])
def test_data_length_must_be_n_times_channels_times_itemsize(size: int) -> None:
    # n=2, 2 channels of int16: exactly 8 bytes.
    error = refusal(started(), Samples(seq=0, n=2, data=bytes(size)))
    assert (error.code, error.reason) == (CloseCode.INVALID_PAYLOAD, "bad-length")
    assert error.code == 1007
    assert "expected 8" in error.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float32_samples_are_invalid_payload(bad: float) -> None:
    values = [[0.5, -0.25, 1.0], [0.0, bad, 2.0]]
    error = refusal(started(hello=HELLO_F32), samples(0, values, "<f4"))
    assert (error.code, error.reason) == (CloseCode.INVALID_PAYLOAD, "non-finite")
    assert error.code == 1007


def test_finite_float32_samples_are_accepted_as_sent() -> None:
    values = [[0.5, -0.25, 1.0], [3.4e38, -1e-30, 0.0]]
    (frame,) = started(hello=HELLO_F32).receive(samples(0, values, "<f4"))
    assert isinstance(frame, Frame)
    assert frame.samples.dtype == np.dtype("<f4")
    assert frame.samples.tolist() == np.asarray(values, "<f4").tolist()


def test_too_many_samples_per_frame_is_too_big() -> None:
    session = started(max_samples=4)
    assert frames(session.receive(samples(0, [[1, 2]] * 4)))
    error = refusal(session, samples(1, [[1, 2]] * 5))
    assert (error.code, error.reason) == (CloseCode.MESSAGE_TOO_BIG, "frame-too-long")
    assert error.code == 1009


# --- sequence -------------------------------------------------------------------------------


def test_a_gap_is_reported_and_the_stream_continues_with_t0_counting_received_samples() -> None:
    session = started()
    assert frames(session.receive(samples(0, [[1, 1]] * 3)))[0].t0 == 0
    events = session.receive(samples(3, [[2, 2]] * 2))  # frames 1 and 2 never came
    assert events[0] == Gap(expected=1, got=3)
    assert events[0].missing == 2
    (frame,) = frames(events)
    assert (frame.seq, frame.t0) == (3, 3)
    (later,) = session.receive(samples(4, [[3, 3]]))
    assert isinstance(later, Frame)
    assert (later.seq, later.t0) == (4, 5)
    assert (session.next_seq, session.t0) == (5, 6)


def test_a_duplicate_is_dropped_and_reported() -> None:
    session = started()
    session.receive(samples(0, [[1, 1]] * 3))
    session.receive(samples(1, [[2, 2]] * 3))
    assert session.receive(samples(0, [[9, 9]] * 3)) == [Duplicate(0)]
    assert session.receive(samples(1, [[9, 9]] * 2)) == [Duplicate(1)]
    assert (session.next_seq, session.t0) == (2, 6)  # nothing counted
    (frame,) = session.receive(samples(2, [[3, 3]]))
    assert isinstance(frame, Frame)
    assert (frame.seq, frame.t0) == (2, 6)


def test_a_frame_below_the_next_expected_seq_is_a_duplicate_even_after_a_gap() -> None:
    session = started()
    session.receive(samples(0, [[1, 1]]))
    session.receive(samples(5, [[1, 1]]))
    assert session.receive(samples(3, [[1, 1]])) == [Duplicate(3)]


def test_a_resumed_session_continues_from_the_stream_position() -> None:
    session = started(next_seq=10, t0=2500)
    assert session.receive(samples(9, [[1, 1]])) == [Duplicate(9)]
    (frame,) = session.receive(samples(10, [[1, 1]] * 2))
    assert isinstance(frame, Frame)
    assert (frame.seq, frame.t0) == (10, 2500)
    assert session.t0 == 2502


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 5)), max_size=30))
def test_sequence_accounting_matches_a_model(arrivals: list[tuple[int, int]]) -> None:
    session = started()
    next_seq = t0 = 0
    for seq, n in arrivals:
        events = session.receive(samples(seq, [[seq, -seq]] * n))
        if seq < next_seq:
            assert events == [Duplicate(seq)]
            continue
        gap = [Gap(next_seq, seq)] if seq > next_seq else []
        assert events[:-1] == gap
        frame = events[-1]
        assert isinstance(frame, Frame)
        assert (frame.seq, frame.t0, frame.samples.shape) == (seq, t0, (n, 2))
        next_seq, t0 = seq + 1, t0 + n
    assert (session.next_seq, session.t0) == (next_seq, t0)


# --- sample layout --------------------------------------------------------------------------


def test_frames_decode_to_interleaved_little_endian_int16_rows() -> None:
    # Built by hand, not by numpy: sample 0 of I, sample 0 of II, sample 1 of I, ...
    data = struct.pack("<6h", 100, -50, 120, -40, -5, 32767)
    assert data[:4] == b"\x64\x00\xce\xff"
    payload = encode(Samples(seq=0, n=3, data=data))
    message = decode_device(payload)
    (frame,) = started().receive(message)
    assert isinstance(frame, Frame)
    assert frame.samples.shape == (3, 2)
    assert frame.samples.dtype == np.dtype("<i2")
    assert frame.samples.tolist() == [[100, -50], [120, -40], [-5, 32767]]
    assert frame.samples[:, 1].tolist() == [-50, -40, 32767]  # channel II


@given(st.lists(st.lists(st.integers(-(2**15), 2**15 - 1), min_size=2, max_size=2),
                min_size=1, max_size=64))
def test_any_int16_frame_decodes_to_its_rows(rows: list[list[int]]) -> None:
    data = b"".join(struct.pack("<2h", *row) for row in rows)
    (frame,) = started().receive(decode_device(encode(Samples(0, len(rows), data))))
    assert isinstance(frame, Frame)
    assert frame.samples.tolist() == rows
