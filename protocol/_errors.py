"""Errors of the wire protocol, with the WebSocket close code each one calls for."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) used by protocol v1."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """Base class: a message or sequence of messages that protocol v1 does not allow.

    Attributes:
        code: the close code to send when this error ends a connection.
        reason: a short machine-readable reason, sent as ``error.code``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: CloseCode = CloseCode.PROTOCOL_ERROR,
        reason: str = "protocol-error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We tried to send something illegal: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal; ``code`` and ``reason`` hint at the reply."""
