"""The device side of protocol v1 as a sans-IO state machine.

:class:`DeviceSession` takes decoded device messages and says what happened: the stream
started, a frame was accepted, a sequence gap or duplicate was seen, a ping arrived. It
enforces the order (``hello`` first, once) and validates each frame against the hello.
The ingest actor turns these events into channel sends and replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

import numpy as np
import numpy.typing as npt

from ._errors import CloseCode, RemoteProtocolError
from ._messages import DeviceMessage, Hello, Ping, Samples

__all__ = ["DeviceSession", "Duplicate", "Frame", "Gap", "PingReceived", "SessionEvent", "Started"]


@dataclass(frozen=True, slots=True)
class Started:
    hello: Hello


@dataclass(frozen=True, slots=True)
class Frame:
    """An accepted frame. ``samples`` has shape (n, channels) in the hello's dtype."""

    seq: int
    t0: int
    samples: npt.NDArray[np.generic]
    t: float | None = None  # the device's clock at the first sample, if it said


@dataclass(frozen=True, slots=True)
class Gap:
    """Frames ``expected`` .. ``got - 1`` never arrived; the stream goes on from ``got``."""

    expected: int
    got: int

    @property
    def missing(self) -> int:
        return self.got - self.expected


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Frame ``seq`` was already received; it is dropped."""

    seq: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    t: float | None
    rx: float | None = None


SessionEvent = Started | Frame | Gap | Duplicate | PingReceived


class _State(Enum):
    AWAIT_HELLO = auto()
    STREAMING = auto()


class DeviceSession:
    """Validates one device connection's messages.

    Args:
        max_samples: the most samples per channel one frame may carry.
        next_seq: the first sequence number expected (0 for a new stream).
        t0: samples already received on this stream before this connection.
    """

    def __init__(self, *, max_samples: int, next_seq: int = 0, t0: int = 0) -> None:
        self.max_samples = max_samples
        self.next_seq = next_seq
        self.t0 = t0
        self.hello: Hello | None = None
        self._state = _State.AWAIT_HELLO
        self._dtype: np.dtype[np.generic] | None = None

    def receive(self, message: DeviceMessage) -> list[SessionEvent]:
        """Take one decoded message; return what it means. Raises RemoteProtocolError."""
        if isinstance(message, Ping):
            return [PingReceived(message.t, message.rx)]
        if isinstance(message, Hello):
            return [self._start(message)]
        if self._state is _State.AWAIT_HELLO:
            raise RemoteProtocolError("'samples' before 'hello': send 'hello' first",
                                      code=CloseCode.PROTOCOL_ERROR, reason="hello-required")
        return self._frame(message)

    def _start(self, hello: Hello) -> Started:
        if self._state is not _State.AWAIT_HELLO:
            raise RemoteProtocolError("'hello' was already sent on this connection",
                                      code=CloseCode.PROTOCOL_ERROR, reason="duplicate-hello")
        self.hello = hello
        self._dtype = np.dtype(hello.dtype).newbyteorder("<")
        self._state = _State.STREAMING
        return Started(hello)

    def _frame(self, message: Samples) -> list[SessionEvent]:
        assert self.hello is not None and self._dtype is not None
        if message.n > self.max_samples:
            raise RemoteProtocolError(
                f"frame {message.seq} has {message.n} samples per channel; the limit is "
                f"{self.max_samples}", code=CloseCode.MESSAGE_TOO_BIG, reason="frame-too-long",
            )
        channels = len(self.hello.channels)
        expected = message.n * channels * self._dtype.itemsize
        if len(message.data) != expected:
            raise RemoteProtocolError(
                f"frame {message.seq}: {len(message.data)} bytes of data, expected {expected} "
                f"(n={message.n} x {channels} channels x {self._dtype.itemsize} bytes "
                f"{self.hello.dtype})", code=CloseCode.INVALID_PAYLOAD, reason="bad-length",
            )
        samples = np.frombuffer(message.data, dtype=self._dtype).reshape(message.n, channels)
        if samples.dtype.kind == "f" and not np.isfinite(samples).all():
            raise RemoteProtocolError(
                f"frame {message.seq} holds NaN or infinite samples",
                code=CloseCode.INVALID_PAYLOAD, reason="non-finite",
            )
        events: list[SessionEvent] = []
        if message.seq < self.next_seq:
            return [Duplicate(message.seq)]
        if message.seq > self.next_seq:
            events.append(Gap(self.next_seq, message.seq))
        events.append(Frame(message.seq, self.t0, samples, message.t))
        self.next_seq = message.seq + 1
        self.t0 += message.n
        return events
