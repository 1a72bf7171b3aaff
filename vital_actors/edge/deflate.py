"""permessage-deflate for wsproto, on its public extension API (``wsproto.extensions``).

wsproto's own ``PerMessageDeflate`` inflates without a bound and accepts offers with
unknown parameters; this one negotiates with :func:`protocol.negotiate_deflate` and
inflates with :class:`protocol.Inflater`, which stops at the message size limit. The
server's outgoing data frames never pass through here: they are compressed once per
message by :class:`~vital_actors.edge.codecs.DeflateCodec` and written as they are.
"""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from protocol import (
    PERMESSAGE_DEFLATE,
    CloseCode,
    DeflateParams,
    Inflater,
    RemoteProtocolError,
    negotiate_deflate,
)

__all__ = ["ServerDeflate"]

_Proto = FrameDecoder | FrameProtocol


class ServerDeflate(Extension):
    """The server end of permessage-deflate on one connection.

    Args:
        window_bits: the server's window (``server_max_window_bits``, unless the client
            asks for less).
        context_takeover: whether the server may keep its window between messages.
        max_size: the most bytes one incoming message may inflate to (else 1009).
    """

    name = PERMESSAGE_DEFLATE

    def __init__(self, *, window_bits: int, context_takeover: bool, max_size: int) -> None:
        self.window_bits = window_bits
        self.context_takeover = context_takeover
        self.max_size = max_size
        #: What was agreed; None until (unless) an offer is accepted.
        self.params: DeflateParams | None = None
        #: Why the last incoming message was refused (wsproto only passes a close code).
        self.error: RemoteProtocolError | None = None
        self._inflater: Inflater | None = None
        self._data_frame = False  # the frame being read is a data frame, not control
        self._compressed = False  # the message being read has RSV1 set on its first frame

    def enabled(self) -> bool:
        return self.params is not None

    def offer(self) -> bool:
        return False  # a server does not offer

    def accept(self, offer: str) -> str | None:
        """The response parameters for the first acceptable *offer*; None declines it."""
        if self.params is not None:  # the client listed fallbacks: the first one won
            return None
        params = negotiate_deflate(offer, window_bits=self.window_bits,
                                   context_takeover=self.context_takeover)
        if params is None:
            return None
        self.params = params
        self._inflater = Inflater(max_size=self.max_size,
                                  context_takeover=not params.client_no_context_takeover)
        return params.response()

    def frame_inbound_header(self, proto: _Proto, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        self._data_frame = not opcode.iscontrol()
        if rsv.rsv1 and (opcode.iscontrol() or opcode is Opcode.CONTINUATION):
            return self._fail(RemoteProtocolError(
                "RSV1 may only be set on the first frame of a data message (RFC 7692 6.1)"))
        if opcode is not Opcode.CONTINUATION and self._data_frame:
            self._compressed = rsv.rsv1
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(self, proto: _Proto, data: bytes) -> bytes | CloseReason:
        if not (self._data_frame and self._compressed):
            return data
        assert self._inflater is not None
        try:
            return self._inflater.feed(data)
        except RemoteProtocolError as exc:
            return self._fail(exc)

    def frame_inbound_complete(self, proto: _Proto, fin: bool) -> bytes | CloseReason | None:
        if not (self._data_frame and self._compressed and fin):
            return None
        assert self._inflater is not None
        self._compressed = False
        try:
            return self._inflater.end()
        except RemoteProtocolError as exc:
            return self._fail(exc)

    def _fail(self, exc: RemoteProtocolError) -> CloseReason:
        self.error = exc
        try:
            return CloseReason(int(exc.code))
        except ValueError:
            return CloseReason(int(CloseCode.PROTOCOL_ERROR))

    def __repr__(self) -> str:
        return f"<ServerDeflate {self.params.response() if self.params else 'not agreed'}>"
