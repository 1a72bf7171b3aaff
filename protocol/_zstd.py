"""Subprotocol ``vital.v1.msgpack+zstd``: every message is one zstd frame of msgpack (sans-IO).

Sample data of ``int16`` messages from the server may be delta-encoded before
compression (``enc: "delta"``) when that compresses smaller. An optional dictionary
trained on ECG frames (package data, named by its zstd dictionary id) shrinks small
messages further. See docs/protocol.md section 11 for the normative description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import cast

import msgpack
import numpy as np
import zstandard

from ._codec import _to_map, decode_server, encode
from ._errors import CloseCode, RemoteProtocolError
from ._messages import Message, ServerMessage, StreamSamples

__all__ = [
    "ECG_DICTIONARY_ID",
    "ZSTD_SUBPROTOCOL",
    "ZstdCodec",
    "ZstdDictionary",
    "delta8_decode",
    "delta8_encode",
    "delta_decode",
    "delta_encode",
    "ecg_dictionary",
    "undelta",
]

ZSTD_SUBPROTOCOL = "vital.v1.msgpack+zstd"
#: zstd dictionary id of the shipped ECG dictionary ("ECG" 0x01; in the private range).
ECG_DICTIONARY_ID = 0x45434701
DELTA = "delta"
DELTA8 = "delta8"
_UNKNOWN = zstandard.CONTENTSIZE_UNKNOWN


@dataclasses.dataclass(frozen=True, slots=True)
class ZstdDictionary:
    """A zstd dictionary: its id (as in its header and every frame using it) and bytes."""

    id: int
    data: bytes

    def zstd(self) -> zstandard.ZstdCompressionDict:
        return zstandard.ZstdCompressionDict(self.data)


@cache
def ecg_dictionary() -> ZstdDictionary:
    """The ECG dictionary shipped with the package (protocol/data/ecg-dict-v1.zstd-dict)."""
    data = resources.files("protocol").joinpath("data/ecg-dict-v1.zstd-dict").read_bytes()
    dictionary = ZstdDictionary(zstandard.ZstdCompressionDict(data).dict_id(), data)
    assert dictionary.id == ECG_DICTIONARY_ID, dictionary.id
    return dictionary


def delta_encode(data: bytes, channels: int) -> bytes:
    """int16 LE samples interleaved by channel -> first sample, then differences mod 2^16."""
    x = np.frombuffer(data, dtype="<i2")
    d = x.copy()
    # Interleaved: the previous sample of the same channel is *channels* values back.
    np.subtract(x[channels:], x[:-channels], out=d[channels:])  # wraps mod 2^16
    return d.tobytes()


def delta_decode(data: bytes, channels: int) -> bytes:
    """The inverse of :func:`delta_encode`: a running sum per channel, mod 2^16."""
    d = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    return np.cumsum(d, axis=0, dtype="<i2").tobytes()


def delta8_encode(data: bytes, channels: int) -> bytes | None:
    """Like :func:`delta_encode`, but each difference in one signed byte: the first sample
    of each channel as int16 LE, then int8 differences. None if one does not fit."""
    d = np.frombuffer(delta_encode(data, channels), dtype="<i2")[channels:]
    if d.size and (int(d.min()) < -128 or int(d.max()) > 127):
        return None
    return data[:2 * channels] + d.astype(np.int8).tobytes()


def delta8_decode(data: bytes, channels: int) -> bytes:
    """The inverse of :func:`delta8_encode`."""
    d = np.empty((len(data) - channels) // channels * channels, dtype="<i2")
    d[:channels] = np.frombuffer(data[:2 * channels], dtype="<i2")
    d[channels:] = np.frombuffer(data[2 * channels:], dtype=np.int8)
    return delta_decode(d.tobytes(), channels)


def _delta_payload(message: StreamSamples) -> bytes | None:
    """The msgpack of *message* with its samples delta-encoded, one byte per difference
    when they all fit (``delta8``), else two (``delta``); None if not int16."""
    channels = len(message.channels)
    if message.dtype != "int16" or not message.data or len(message.data) % (2 * channels):
        return None
    fields = _to_map(message)
    packed = delta8_encode(message.data, channels)
    if packed is not None:
        fields["data"], fields["enc"] = packed, DELTA8
    else:
        fields["data"], fields["enc"] = delta_encode(message.data, channels), DELTA
    return cast(bytes, msgpack.packb(fields, use_bin_type=True))


def _undo(enc: object, data: bytes, channels: int) -> bytes | None:
    if enc == DELTA and len(data) % (2 * channels) == 0:
        return delta_decode(data, channels)
    if enc == DELTA8 and len(data) >= 2 * channels and len(data) % channels == 0:
        return delta8_decode(data, channels)
    return None


def undelta(message: ServerMessage) -> ServerMessage:
    """*message* with delta-encoded samples restored (any other message as it is).

    Raises:
        RemoteProtocolError: 1007 for an unknown ``enc``, or data of the wrong length.
    """
    if not isinstance(message, StreamSamples) or message.extra.get("enc") is None:
        return message
    enc = message.extra["enc"]
    data = _undo(enc, message.data, len(message.channels)) if message.dtype == "int16" \
        else None
    if data is None:
        raise RemoteProtocolError(f"sample encoding {enc!r} is unknown or does not fit "
                                  f"{len(message.data)} bytes of {message.dtype}",
                                  code=CloseCode.INVALID_PAYLOAD, reason="invalid-payload")
    extra = {k: v for k, v in message.extra.items() if k != "enc"}
    return dataclasses.replace(message, data=data, extra=extra)


class ZstdCodec:
    """Compression and bounded decompression of ``vital.v1.msgpack+zstd`` messages.

    Args:
        level: zstd compression level (3 is zstd's default).
        dictionary: compress with this dictionary (None: without one).
        known: dictionaries the decompressor may meet, by id (frames name theirs).
        max_size: the largest decompressed message accepted.
        delta: try delta encoding of int16 samples, keeping it when smaller.
    """

    def __init__(self, *, level: int = 3, dictionary: ZstdDictionary | None = None,
                 known: Mapping[int, ZstdDictionary] | None = None,
                 max_size: int = 1 << 20, delta: bool = True) -> None:
        self.level = level
        self.dictionary = dictionary
        self.max_size = max_size
        self.delta = delta
        zdict = dictionary.zstd() if dictionary is not None else None
        if zdict is not None:
            zdict.precompute_compress(level=level)
        self._c = zstandard.ZstdCompressor(level=level, dict_data=zdict)
        dicts = dict(known or {})
        if dictionary is not None:
            dicts[dictionary.id] = dictionary
        self._d = {0: zstandard.ZstdDecompressor()}
        self._d.update({i: zstandard.ZstdDecompressor(dict_data=d.zstd())
                        for i, d in dicts.items()})

    @property
    def dictionary_id(self) -> int | None:
        return None if self.dictionary is None else self.dictionary.id

    def compress(self, payload: bytes) -> bytes:
        """One zstd frame holding *payload*."""
        return self._c.compress(payload)

    def compress_message(self, message: Message, payload: bytes | None = None) -> bytes:
        """*message* (whose msgpack encoding is *payload*, if known) as one zstd frame.

        int16 ``samples`` are compressed twice, plain and delta-encoded; the smaller wins.
        """
        plain = self.compress(encode(message) if payload is None else payload)
        if not self.delta or not isinstance(message, StreamSamples):
            return plain
        delta = _delta_payload(message)
        if delta is None:
            return plain
        packed = self.compress(delta)
        return packed if len(packed) < len(plain) else plain

    def decompress(self, data: bytes) -> bytes:
        """The msgpack payload of one received zstd frame, at most ``max_size`` bytes.

        Raises:
            RemoteProtocolError: 1007 for anything but exactly one valid zstd frame (or
                an unknown dictionary); 1009 when it would exceed ``max_size``.
        """
        try:
            params = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise _invalid(f"not a zstd frame: {exc}") from None
        dctx = self._d.get(params.dict_id)
        if dctx is None:
            raise _invalid(f"zstd frame needs dictionary {params.dict_id}, which this peer "
                           f"does not know (known: {sorted(i for i in self._d if i)})")
        if params.content_size != _UNKNOWN and params.content_size > self.max_size:
            raise _too_big(self.max_size)
        try:
            return dctx.decompress(data, max_output_size=self.max_size,
                                   allow_extra_data=False)
        except zstandard.ZstdError as exc:
            if params.content_size == _UNKNOWN and self._exceeds(dctx, data):
                raise _too_big(self.max_size) from None
            raise _invalid(f"invalid zstd frame: {exc}") from None

    def _exceeds(self, dctx: zstandard.ZstdDecompressor, data: bytes) -> bool:
        size = 0
        try:
            for chunk in dctx.read_to_iter(data, write_size=1 << 16):
                size += len(chunk)
                if size > self.max_size:
                    return True
        except zstandard.ZstdError:
            pass
        return False

    def decode_server(self, data: bytes) -> ServerMessage:
        """For clients: a server message from its zstd frame, samples un-delta'd."""
        return undelta(decode_server(self.decompress(data)))


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=CloseCode.INVALID_PAYLOAD, reason="invalid-zstd")


def _too_big(limit: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"a zstd message decompresses beyond the limit of {limit} "
                               "bytes", code=CloseCode.MESSAGE_TOO_BIG, reason="too-big")
