"""permessage-deflate (RFC 7692), sans-IO: negotiation, compression, bounded inflation.

The server side only. :func:`negotiate` answers one client offer; :class:`Deflater`
compresses whole messages, either each on its own (no context takeover: any fresh
inflater decodes it, so one compressed frame can go to every subscriber) or as one
stream per connection (context takeover); :class:`Inflater` decompresses a client's
messages and refuses to produce more than a bound, so a compression bomb costs at most
that much memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ._errors import CloseCode, RemoteProtocolError

__all__ = ["PERMESSAGE_DEFLATE", "DeflateParams", "Deflater", "Inflater", "negotiate_deflate"]

PERMESSAGE_DEFLATE = "permessage-deflate"
#: What RFC 7692 section 7.2.1 says a compressed message loses at its end.
TAIL = b"\x00\x00\xff\xff"
MIN_WINDOW_BITS = 9  # zlib cannot make raw deflate streams with an 8-bit window
MAX_WINDOW_BITS = 15
_PARAMS = ("server_no_context_takeover", "client_no_context_takeover",
           "server_max_window_bits", "client_max_window_bits")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What a connection agreed: RFC 7692 section 7.1, from the server's side."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int | None  # None: not in the response; the client uses 15

    def response(self) -> str:
        """The parameters of the ``Sec-WebSocket-Extensions`` response, without the name."""
        parts = [f"server_max_window_bits={self.server_max_window_bits}"]
        if self.server_no_context_takeover:
            parts.insert(0, "server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


def _parse(offer: str) -> dict[str, str | None] | None:
    """``name; a; b=1`` -> {a: None, b: "1"}; None if the syntax or a name is not allowed."""
    name, *items = (part.strip() for part in offer.split(";"))
    if name.lower() != PERMESSAGE_DEFLATE:
        return None
    params: dict[str, str | None] = {}
    for item in items:
        key, eq, value = (s.strip() for s in item.partition("="))
        key = key.lower()
        if key not in _PARAMS or key in params:  # RFC 7692 7.1: decline unknown/duplicate
            return None
        params[key] = value.strip('"') if eq else None
    return params


def _bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or value != str(int(value)):
        return None
    bits = int(value)
    return bits if 8 <= bits <= MAX_WINDOW_BITS else None


def negotiate_deflate(offer: str, *, window_bits: int,
                      context_takeover: bool) -> DeflateParams | None:
    """The parameters to accept *offer* with, or None to decline it (RFC 7692 section 7).

    Args:
        offer: one offer, ``permessage-deflate`` and its parameters.
        window_bits: the server's LZ77 window (it may use less if the client asks).
        context_takeover: whether the server may keep its context between messages;
            when False (or the client asks) every response has
            ``server_no_context_takeover``.
    """
    params = _parse(offer)
    if params is None:
        return None
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        if flag in params and params[flag] is not None:
            return None
    server_bits = window_bits
    if "server_max_window_bits" in params:
        asked = _bits(params["server_max_window_bits"])
        if asked is None or asked < MIN_WINDOW_BITS:
            return None
        server_bits = min(server_bits, asked)
    client_bits = None
    if "client_max_window_bits" in params and params["client_max_window_bits"] is not None:
        client_bits = _bits(params["client_max_window_bits"])
        if client_bits is None:
            return None
    return DeflateParams(
        server_no_context_takeover=("server_no_context_takeover" in params
                                    or not context_takeover),
        client_no_context_takeover="client_no_context_takeover" in params,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )


class Deflater:
    """Compresses whole messages to permessage-deflate payloads (without the tail).

    Args:
        level: zlib level 0-9.
        window_bits: LZ77 window, 9-15.
        mem_level: zlib memLevel 1-9 (memory for the match finder).
        context_takeover: keep the window between messages (one stream per connection,
            smaller output); else each message stands alone and fits any connection.
        strategy: zlib's strategy (``zlib.Z_RLE`` matches only runs: cheaper, but
            larger output on all but small messages).
    """

    def __init__(self, *, level: int, window_bits: int, mem_level: int,
                 context_takeover: bool, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level, strategy)
        # A full flush forgets the window: the next message cannot refer back.
        self._flush = zlib.Z_SYNC_FLUSH if context_takeover else zlib.Z_FULL_FLUSH

    def compress(self, payload: bytes) -> bytes:
        data = self._z.compress(payload) + self._z.flush(self._flush)
        assert data.endswith(TAIL)
        return data[:-4]


class Inflater:
    """Decompresses a peer's messages, never producing more than *max_size* bytes of one.

    Feed each compressed frame's payload with :meth:`feed` and call :meth:`end` at the
    end of the message; together they return the message. With *context_takeover*
    False the window is dropped after each message (the peer promised not to use it).

    Raises:
        RemoteProtocolError: 1009 when a message inflates beyond *max_size*; 1007 when
            the data is not valid deflate.
    """

    def __init__(self, *, max_size: int, context_takeover: bool = True) -> None:
        self.max_size = max_size
        self.context_takeover = context_takeover
        self._z = zlib.decompressobj(-MAX_WINDOW_BITS)
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.max_size - self._size + 1)
        except zlib.error as exc:
            raise RemoteProtocolError(f"invalid permessage-deflate data: {exc}",
                                      code=CloseCode.INVALID_PAYLOAD,
                                      reason="invalid-payload") from None
        self._size += len(out)
        if self._size > self.max_size or self._z.unconsumed_tail:
            raise RemoteProtocolError(
                f"a compressed message inflates beyond the limit of {self.max_size} bytes",
                code=CloseCode.MESSAGE_TOO_BIG, reason="too-big")
        return out

    def end(self) -> bytes:
        out = self.feed(TAIL)
        self._size = 0
        if not self.context_takeover or self._z.eof:  # eof: the peer ended its stream
            self._z = zlib.decompressobj(-MAX_WINDOW_BITS)
        return out
