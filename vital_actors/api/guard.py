"""Who may change things over HTTP: an admin token for every request that is not a read,
and CORS headers for the browser Origins the settings list.

The guard is an ASGI wrapper around the whole app (outside the upload wrapper too), so
no route that changes state, however it is served, escapes it. Reads stay open: the
status page, /healthz and /metrics are for dashboards and probes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart_cors import cors
from quart_trio import QuartTrio

from ..auth import TokenError, auth_required, bearer, verify_token

if TYPE_CHECKING:
    from ..graph import Server

__all__ = ["AdminGuard", "install_guard"]

READS = frozenset({"GET", "HEAD", "OPTIONS"})


class AdminGuard:
    """ASGI wrapper: a request other than GET/HEAD/OPTIONS needs an admin token."""

    def __init__(self, inner: Any, server: Server) -> None:
        self.inner, self.server = inner, server
        self.required = auth_required(server.settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.required or scope["method"] in READS:
            await self.inner(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.inner(scope, receive, send)
            return
        status, reason, message = refusal
        self.server.stats.reject(reason)
        body = json.dumps({"error": message, "reasons": [reason]}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
            (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: dict[str, Any]) -> tuple[int, str, str] | None:
        # The query alone: a path is no URL to parse ("//[" would make urlsplit raise).
        target = "?" + scope.get("query_string", b"").decode("latin-1")
        token = bearer(scope["headers"], target)
        if token is None:
            return 401, "token-missing", f"{scope['method']} needs an admin token " \
                "('Authorization: Bearer <token>')"
        secret = self.server.settings.auth.secret
        assert secret is not None  # auth.check_startup made sure
        try:
            grant = verify_token(token, secret.get_secret_value(),
                                 leeway_s=self.server.settings.auth.leeway_s)
        except TokenError as exc:
            return 401, "token-invalid", str(exc)
        if grant.role != "admin":
            return 403, "forbidden", f"a {grant.role} token cannot change the server: " \
                "use an admin token"
        return None


def install_guard(app: QuartTrio, server: Server) -> None:
    """CORS for ``auth.cors_origins`` (quart-cors), then the admin guard outermost."""
    origins = server.settings.auth.cors_origins
    if origins:
        cors(app, allow_origin="*" if "*" in origins else list(origins),
             allow_headers=["Authorization", "Content-Type"],
             allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"])
    app.asgi_app = AdminGuard(app.asgi_app, server)  # type: ignore[method-assign,assignment]
