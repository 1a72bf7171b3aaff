"""What a WebSocket handshake settles about compression: the codec and the extensions.

The subprotocol is chosen first (the first one the client offers that the server
knows). Under ``vital.v1.msgpack+zstd`` and ``vital.v1.compact`` (offered with zstd:
it falls back to zstd for what is not int16 samples) messages are compressed by the
subprotocol and permessage-deflate is declined (compressing them again gains nothing);
under ``vital.v1.msgpack`` permessage-deflate is accepted when the client offers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from urllib.parse import parse_qs, urlsplit

from protocol import (
    COMPACT_SUBPROTOCOL,
    ECG_DICTIONARY_ID,
    SUBPROTOCOL,
    ZSTD_SUBPROTOCOL,
    ZstdCodec,
    ZstdDictionary,
    ecg_dictionary,
)

from ..settings import DeflateSettings, Settings, ZstdSettings
from .codecs import (
    PLAIN,
    CompactWireCodec,
    DeflateCodec,
    TakeoverDeflateCodec,
    WireCodec,
    ZstdWireCodec,
)
from .deflate import ServerDeflate

__all__ = ["NO_COMPRESSION", "Agreement", "Compression"]

Inbound = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class Agreement:
    """The outcome of one handshake."""

    codec: WireCodec
    inbound: Inbound | None = None  # turns a received message into msgpack (zstd)
    deflate: ServerDeflate | None = None  # the extension offered to wsproto, if any
    deflate_settings: DeflateSettings | None = None

    def settle(self) -> Agreement:
        """After the handshake: the deflate codec if the client's offer was accepted."""
        ext, s = self.deflate, self.deflate_settings
        if ext is None or ext.params is None or s is None:
            return self
        params = ext.params
        if params.server_no_context_takeover:
            codec: WireCodec = DeflateCodec(s.level, params.server_max_window_bits,
                                            s.mem_level, s.min_bytes)
        else:
            codec = TakeoverDeflateCodec(level=s.level, window_bits=params.server_max_window_bits,
                                         mem_level=s.mem_level, min_bytes=s.min_bytes)
        return Agreement(codec, self.inbound, ext, s)


@dataclass(frozen=True, slots=True)
class Compression:
    """The server's compression settings, as the edge needs them."""

    deflate: DeflateSettings | None = None
    zstd: ZstdSettings | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> Compression:
        return cls(s.deflate if s.deflate.enabled else None, s.zstd if s.zstd.enabled else None)

    @property
    def subprotocols(self) -> tuple[str, ...]:
        if self.zstd is None:
            return (SUBPROTOCOL,)
        return (SUBPROTOCOL, ZSTD_SUBPROTOCOL, COMPACT_SUBPROTOCOL)

    def agree(self, subprotocol: str, target: str, *, max_message_bytes: int) -> Agreement:
        """The codec for *subprotocol*; the deflate extension to offer wsproto, if any."""
        if subprotocol == COMPACT_SUBPROTOCOL and self.zstd is not None:
            # Clients send plain msgpack; the server's samples go compact, the rest zstd.
            dictionary = _dictionary(self.zstd, target)
            return Agreement(CompactWireCodec(level=self.zstd.level, dictionary=dictionary))
        if subprotocol == ZSTD_SUBPROTOCOL and self.zstd is not None:
            z = self.zstd
            codec = ZstdWireCodec(z.level, _dictionary(z, target), z.delta)
            return Agreement(codec, _zstd_inbound(max_message_bytes))
        if self.deflate is None:
            return Agreement(PLAIN)
        ext = ServerDeflate(window_bits=self.deflate.window_bits,
                            context_takeover=self.deflate.context_takeover,
                            max_size=max_message_bytes)
        return Agreement(PLAIN, None, ext, self.deflate)


NO_COMPRESSION = Compression()


def _dictionary(z: ZstdSettings, target: str) -> ZstdDictionary | None:
    """The shipped dictionary if the server uses one and the client asked for it."""
    return ecg_dictionary() if z.dictionary and _dictionary_asked(target) == ECG_DICTIONARY_ID \
        else None


def _dictionary_asked(target: str) -> int | None:
    values = parse_qs(urlsplit(target).query).get("zstd_dict", [])
    # ASCII digits only: str.isdigit() also holds for "²", which int() refuses.
    return int(values[0]) if values and values[0].isascii() and values[0].isdigit() else None


@cache
def _zstd_inbound(max_size: int) -> Inbound:
    known: dict[int, ZstdDictionary] = {ecg_dictionary().id: ecg_dictionary()}
    return ZstdCodec(known=known, max_size=max_size).decompress
