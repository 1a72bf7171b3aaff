"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once and shared.

A server frame is unmasked, so the same bytes can be written to every subscriber: the
broadcaster frames each outgoing message once, however many subscribers it has.
"""

from __future__ import annotations

import struct

__all__ = ["OPCODE_BINARY", "OPCODE_TEXT", "server_frame"]

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def server_frame(payload: bytes, *, opcode: int = OPCODE_BINARY, rsv1: bool = False) -> bytes:
    """Return one final, unmasked frame carrying *payload*.

    Args:
        payload: the message body (already compressed when *rsv1* is set).
        opcode: 0x1 text or 0x2 binary.
        rsv1: set for a permessage-deflate compressed message (RFC 7692).
    """
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload
