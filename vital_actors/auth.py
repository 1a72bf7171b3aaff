"""Who may connect: signed tokens with roles, allowed Origins, and the start-up rule.

A token is a JWT signed with HMAC-SHA256 (PyJWT; no crypto of our own) carrying
``role`` (``device``, ``subscriber`` or ``admin``), ``scope`` (glob patterns: stream ids
for a device, topics for a subscriber) and ``exp``. The front door checks a WebSocket's
token and Origin before the upgrade (:class:`Gate`); the ingest and subscriber actors
check the stream or topics against the token's scope at ``hello`` / ``subscribe``
(:func:`authorize_stream`, :func:`authorize_topics`), and the HTTP API wants an admin
token for every request that changes something.

Everything here but the ContextVar is pure and synchronous.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import jwt

from protocol import CloseCode, RemoteProtocolError

from .limits import ConnectionCounter
from .settings import AuthSettings, Settings
from .stats import Stats

__all__ = [
    "ALGORITHM",
    "ANONYMOUS",
    "GRANT",
    "ROLES",
    "AuthConfigError",
    "Gate",
    "Grant",
    "Refusal",
    "TokenError",
    "add_token_command",
    "auth_required",
    "authorize_stream",
    "authorize_topics",
    "bearer",
    "check_startup",
    "issue_token",
    "origin_allowed",
    "parse_ttl",
    "token_command",
    "verify_token",
]

ALGORITHM = "HS256"
Role = Literal["device", "subscriber", "admin"]
ROLES: tuple[str, ...] = ("device", "subscriber", "admin")
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
HOW_TO = ("create a secret (python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
          "set it as VITAL_AUTH__SECRET, then create tokens with: vital-actors token "
          "--role device --stream 'ward3-*' --ttl 24h")


class AuthConfigError(Exception):
    """The server must not start with these auth settings; the message says how to fix it."""


class TokenError(Exception):
    """A token is missing, malformed, badly signed or expired."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one connection may do. ``scope`` holds glob patterns (``*`` matches anything)."""

    role: Role | Literal["anonymous"]
    scope: tuple[str, ...] = ()
    subject: str | None = None

    def allows(self, name: str) -> bool:
        return self.role in ("anonymous", "admin") or any(fnmatchcase(name, p)
                                                          for p in self.scope)


#: The grant of every connection while auth is off.
ANONYMOUS = Grant("anonymous", ("*",))
#: The grant of the connection the current task serves (set by the front door).
GRANT: ContextVar[Grant] = ContextVar("GRANT", default=ANONYMOUS)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the door refuses a request before any upgrade: an HTTP status and a reason."""

    status: int
    reason: str
    message: str


# --- tokens -------------------------------------------------------------------------------


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` -> seconds. Raises ValueError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unit = text[-1:].lower()
    number = text[:-1] if unit in units else text
    seconds = float(number) * units.get(unit, 1)
    if not 0 < seconds < math.inf:  # an endless ttl has no exp to sign
        raise ValueError(f"a ttl must be positive and finite, got {text!r}")
    return seconds


def issue_token(secret: str, *, role: str, scope: Sequence[str] = (), ttl_s: float,
                subject: str | None = None, now: float | None = None) -> str:
    """A signed token for *role* over *scope*, valid for *ttl_s* seconds."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role != "admin" and not scope:
        raise ValueError(f"a {role} token needs a scope (a stream id, topic or pattern)")
    now = time.time() if now is None else now
    claims: dict[str, object] = {"role": role, "scope": list(scope), "iat": int(now),
                                 "exp": int(now + ttl_s)}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str, *, leeway_s: float = 0.0) -> Grant:
    """The grant *token* carries. Raises :class:`TokenError` saying why it is refused."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=leeway_s,
                            options={"require": ["exp", "role"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    role, scope = claims.get("role"), claims.get("scope", [])
    if role not in ROLES:
        raise TokenError(f"invalid token: unknown role {role!r}")
    if not isinstance(scope, list) or not all(isinstance(p, str) for p in scope):
        raise TokenError("invalid token: 'scope' must be a list of patterns")
    sub = claims.get("sub")
    return Grant(role, tuple(scope), sub if isinstance(sub, str) else None)


def bearer(headers: Iterable[tuple[bytes, bytes]], target: str) -> str | None:
    """The token of a request: ``Authorization: Bearer <t>``, else ``?token=<t>``
    (browsers cannot set headers on a WebSocket)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
    values = parse_qs(urlsplit(target).query).get("token")
    return values[0] if values else None


# --- decisions ----------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(settings: Settings) -> bool:
    """Auth is on when configured so, and always when the server binds a public address."""
    return bool(settings.auth.required) or not _loopback(settings.server.host)


def check_startup(settings: Settings) -> None:
    """Refuse to start without a usable secret where auth is required.

    Raises:
        AuthConfigError: with the steps that fix it.
    """
    a, host = settings.auth, settings.server.host
    if not auth_required(settings):
        return
    if a.required is False:
        raise AuthConfigError(f"auth cannot be turned off when binding {host!r} (not a "
                              f"loopback address); {HOW_TO}")
    secret = a.secret.get_secret_value() if a.secret is not None else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        why = "no auth secret is set" if not secret else (
            f"the auth secret is {len(secret.encode())} bytes; it needs {MIN_SECRET_BYTES}")
        raise AuthConfigError(f"auth is required when binding {host!r} but {why}: {HOW_TO}")


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """A request without ``Origin`` (not a browser) passes; a browser's must be listed in
    *allowed* (``*`` for any) or, with an empty list, be the server's own host."""
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # not a URL ("http://[::1"): not our host either
        return False
    return not allowed and host is not None and netloc == host


def admit(settings: AuthSettings, *, required: bool, path: str, target: str,
          headers: Sequence[tuple[bytes, bytes]]) -> Grant | Refusal:
    """The door's decision on one WebSocket request, before the upgrade."""
    head = {k.lower(): v.decode("latin-1") for k, v in headers}
    if not origin_allowed(head.get(b"origin"), head.get(b"host"), settings.allowed_origins):
        return Refusal(403, "origin-refused", f"origin {head.get(b'origin')!r} is not allowed")
    if not required:
        return ANONYMOUS
    token = bearer(headers, target)
    if token is None:
        return Refusal(401, "token-missing", f"{path} needs a token: 'Authorization: Bearer "
                       "<token>' or '?token=<token>'")
    assert settings.secret is not None  # check_startup made sure
    try:
        return verify_token(token, settings.secret.get_secret_value(),
                            leeway_s=settings.leeway_s)
    except TokenError as exc:
        return Refusal(401, "token-invalid", str(exc))


def _forbidden(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=CloseCode.POLICY_VIOLATION, reason="forbidden")


def authorize_stream(grant: Grant, stream: str) -> None:
    """A device may send *stream* only with a device (or admin) token covering it."""
    if grant.role not in ("device", "admin", "anonymous"):
        raise _forbidden(f"a {grant.role} token cannot send streams: use a device token")
    if not grant.allows(stream):
        raise _forbidden(f"this token may not send stream {stream!r} (scope: "
                         f"{', '.join(grant.scope)})")


def authorize_topics(grant: Grant, topics: Iterable[str]) -> None:
    """A subscriber may follow only topics its subscriber (or admin) token covers."""
    if grant.role not in ("subscriber", "admin", "anonymous"):
        raise _forbidden(f"a {grant.role} token cannot subscribe: use a subscriber token")
    refused = [t for t in topics if not grant.allows(t)]
    if refused:
        raise _forbidden(f"this token may not subscribe to {', '.join(refused)} (scope: "
                         f"{', '.join(grant.scope)})")


class Gate:
    """The front door's policy: connections per address, then Origin and token of each
    WebSocket upgrade. Every refusal is counted in *stats* by its reason."""

    def __init__(self, settings: Settings, stats: Stats) -> None:
        self.settings = settings.auth
        self.required = auth_required(settings)
        self.stats = stats
        self.connections = ConnectionCounter(settings.limits.max_connections_per_ip)

    def enter(self, address: str) -> Refusal | None:
        if self.connections.enter(address):
            return None
        self.stats.reject("too-many-connections")
        return Refusal(429, "too-many-connections", f"more than {self.connections.limit} "
                       f"connections from {address}")

    def leave(self, address: str) -> None:
        self.connections.leave(address)

    def admit(self, path: str, target: str,
              headers: Sequence[tuple[bytes, bytes]]) -> Grant | Refusal:
        result = admit(self.settings, required=self.required, path=path, target=target,
                       headers=headers)
        if isinstance(result, Refusal):
            self.stats.reject(result.reason)
        return result


# --- vital-actors token -------------------------------------------------------------------


def add_token_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``vital-actors token`` to the CLI's subcommands."""
    t = sub.add_parser("token", help="create a signed token (secret: VITAL_AUTH__SECRET "
                       "or auth.secret in --settings)")
    t.add_argument("--role", choices=ROLES, required=True)
    t.add_argument("--stream", action="append", default=[],
                   help="device: stream id or glob pattern (repeatable), e.g. 'ward3-*'")
    t.add_argument("--topic", action="append", default=[],
                   help="subscriber: topic or glob pattern (repeatable), e.g. 'stream/ward3-*/raw'")
    t.add_argument("--ttl", default="24h", help="lifetime: 90s, 15m, 24h, 7d (default 24h)")
    t.add_argument("--subject", help="who the token is for (the 'sub' claim)")
    t.add_argument("--settings", type=Path, help="TOML settings file")


def token_command(args: argparse.Namespace, settings: Settings) -> str:
    """The token ``vital-actors token`` prints. Raises SystemExit with a clear message."""
    secret = settings.auth.secret.get_secret_value() if settings.auth.secret else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"no usable auth secret (need >= {MIN_SECRET_BYTES} bytes): {HOW_TO}")
    scope = args.stream if args.role == "device" else args.topic
    if (args.role == "device" and args.topic) or (args.role == "subscriber" and args.stream):
        raise SystemExit("--stream is for device tokens, --topic for subscriber tokens")
    try:
        return issue_token(secret, role=args.role, scope=scope, ttl_s=parse_ttl(args.ttl),
                           subject=args.subject)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
