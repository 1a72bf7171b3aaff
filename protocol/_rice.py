"""Sample blocks of ``vital.v1.compact``: a fixed ECG predictor and Rice codes (sans-IO).

One block codes the int16 samples of one message, channel by channel: each sample is
predicted from the two before it on its channel, ``p = x1 + ((x1 - x2) >> 1)`` (the
previous sample plus half the last slope, rounded down), and the residual ``x - p`` is
zigzag mapped to ``u >= 0`` and written as a Rice code with the channel's parameter
*k*: ``u >> k`` zero bits, a one bit, then the low *k* bits of ``u``. See
docs/protocol.md section 11.5 for the normative layout.

Encoding is the server's hot path (once per message, shared by every subscriber):
numpy makes the residuals, and the codes come from per-*k* tables of bit strings
joined by ``str.join`` -- on 100 ms frames that is cheaper than bit twiddling in numpy,
whose per-call cost dominates arrays of 36 samples.
"""

from __future__ import annotations

import sys
from array import array

import numpy as np

from ._errors import CloseCode, RemoteProtocolError

__all__ = ["MAX_K", "decode_block", "encode_block"]

#: The largest Rice parameter: residuals of int16 samples zigzag to below 2**18.
MAX_K = 17
_TABLE_K = 7  # codes of k <= 7 come from tables; larger k (rare in ECG) are formatted
_TABLE_Q = 32  # a table holds the residuals whose quotient is below this
_SWAP = sys.byteorder == "big"  # array("h") is native-endian; the wire is little-endian


def _code(u: int, k: int) -> str:
    rest = format(u & ((1 << k) - 1), f"0{k}b") if k else ""
    return "0" * (u >> k) + "1" + rest


def _table(k: int) -> list[str]:
    """The Rice code of every zigzag value of quotient < ``_TABLE_Q``, as a bit string."""
    return [_code(u, k) for u in range(_TABLE_Q << k)]


_TABLES: list[list[str]] = []  # filled on first use: building them takes ~50 ms


def _tables() -> list[list[str]]:
    if not _TABLES:
        _TABLES.extend(_table(k) for k in range(_TABLE_K + 1))
    return _TABLES


def encode_block(ext: bytes, channels: int) -> bytes:
    """The block coding samples 2.. of *ext*, predicted from the two before each.

    Args:
        ext: int16 little-endian samples interleaved by channel: the two samples of
            history (per channel), then the samples to code.
        channels: the number of channels *C*.

    Returns:
        One *k* byte per channel, then the Rice codes of channel 0's residuals, then
        channel 1's, ..., the last byte padded with zero bits. Empty if there is no
        sample to code.
    """
    c = channels
    e = np.frombuffer(ext, "<i2")
    d = np.subtract(e[c:], e[:-c], dtype=np.int32)
    r = d[c:] - (d[:-c] >> 1)
    u: list[int] = ((r << 1) ^ (r >> 31)).tolist()  # zigzag: 0, -1, 1, -2 ... -> 0, 1, 2, 3
    m = len(u) // c
    if m == 0:
        return b""
    ks = bytearray(c)
    parts = []
    tables = _TABLES or _tables()
    for ch in range(c):
        us = u[ch::c]
        # Rice's k for a geometric source: about log2 of the mean zigzag value (<= 17).
        k = (sum(us) // m).bit_length() - 1
        if k < 0:
            k = 0
        ks[ch] = k
        try:
            parts.append("".join(map(tables[k].__getitem__, us)))
        except IndexError:  # a large k, or a value beyond its table
            parts.append("".join([_code(v, k) for v in us]))
    bits = "".join(parts)
    pad = -len(bits) % 8
    return bytes(ks) + (int(bits, 2) << pad).to_bytes((len(bits) + pad) >> 3, "big")


def decode_block(block: bytes, history: bytes, count: int, channels: int) -> bytes:
    """The inverse of :func:`encode_block`: *count* samples per channel as int16 LE.

    Args:
        block: the whole block (it must end exactly where its codes end, but for padding).
        history: the two samples per channel before the first coded one (int16 LE).

    Raises:
        RemoteProtocolError: 1007 when the block is too short or too long, a *k* is out
            of range, or a sample leaves the int16 range.
    """
    c = channels
    if count == 0:
        if block:
            raise _invalid("a block with no samples to code must be empty")
        return b""
    if len(block) < c:
        raise _invalid("the sample block ends before its Rice parameters")
    ks = block[:c]
    if max(ks) > MAX_K:
        raise _invalid(f"Rice parameter {max(ks)} is out of range (0..{MAX_K})")
    nbits = 8 * (len(block) - c)
    bits = format(int.from_bytes(block[c:], "big"), f"0{nbits}b") if nbits else ""
    hist = array("h", history)
    out = array("h", bytes(2 * c * count))
    if _SWAP:
        hist.byteswap()
    pos = 0
    for ch in range(c):
        k = ks[ch]
        x2, x1 = hist[ch], hist[c + ch]
        for i in range(count):
            stop = bits.find("1", pos)
            if stop < 0 or stop + 1 + k > nbits:
                raise _invalid("the Rice codes end before the last sample")
            u = ((stop - pos) << k) | (int(bits[stop + 1:stop + 1 + k], 2) if k else 0)
            pos = stop + 1 + k
            x = x1 + ((x1 - x2) >> 1) + (u >> 1 if not u & 1 else -(u >> 1) - 1)
            if not -32768 <= x <= 32767:
                raise _invalid(f"a decoded sample ({x}) is outside the int16 range")
            out[i * c + ch] = x
            x2, x1 = x1, x
    if (nbits - pos) >= 8:
        raise _invalid(f"{(nbits - pos) // 8} bytes after the last Rice code")
    if _SWAP:
        out.byteswap()
    return out.tobytes()


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid compact sample block: {message}",
                               code=CloseCode.INVALID_PAYLOAD, reason="invalid-compact")
