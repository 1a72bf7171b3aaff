"""Auth: tokens and their checks as pure functions, then on a real server on 127.0.0.1 —
refused before the upgrade (401, 403), at hello/subscribe (1008), admin-only writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from httpclient import request
from trio_websocket import ConnectionClosed, ConnectionRejected

import protocol as P
from vital_actors.auth import (
    ANONYMOUS,
    AuthConfigError,
    Grant,
    TokenError,
    authorize_stream,
    authorize_topics,
    bearer,
    check_startup,
    issue_token,
    origin_allowed,
    parse_ttl,
    verify_token,
)
from vital_actors.cli import main
from vital_actors.graph import Server
from vital_actors.sdk import open_connection
from vital_actors.sdk._connection import receive
from vital_actors.settings import load_settings

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-42"


def token(role: str, *scope: str, ttl_s: float = 60, secret: str = SECRET) -> str:
    return issue_token(secret, role=role, scope=scope, ttl_s=ttl_s)


# --- pure ---------------------------------------------------------------------------------


def test_a_token_carries_its_role_and_scope() -> None:
    grant = verify_token(token("device", "ward3-*"), SECRET)
    assert grant == Grant("device", ("ward3-*",))
    assert grant.allows("ward3-bed1") and not grant.allows("ward4-bed1")


@pytest.mark.parametrize(("tok", "why"), [
    (token("device", "x", ttl_s=-10), "expired"),
    (token("device", "x", secret="another-secret-another-secret-xyz"), "Signature"),
    ("not.a.token", "invalid token"),
])
def test_bad_tokens_are_refused_saying_why(tok: str, why: str) -> None:
    with pytest.raises(TokenError, match=why):
        verify_token(tok, SECRET)


def test_a_token_needs_a_known_role_and_a_scope() -> None:
    with pytest.raises(ValueError, match="role"):
        token("root", "x")
    with pytest.raises(ValueError, match="scope"):
        token("device")
    assert verify_token(token("admin"), SECRET).role == "admin"


def test_ttl_units() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "24h", "7d")] == \
        [90, 90, 900, 86400, 604800]
    for bad in ("0h", "inf", "1e400s", "nan"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_token_command_refuses_an_endless_ttl_saying_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_AUTH__SECRET", SECRET)
    with pytest.raises(SystemExit, match="ttl"):
        main(["token", "--role", "admin", "--ttl", "inf"])


def test_bearer_header_wins_then_query() -> None:
    assert bearer([(b"Authorization", b"Bearer abc")], "/v1/ingest?token=q") == "abc"
    assert bearer([], "/v1/ingest?token=q") == "q"
    assert bearer([(b"authorization", b"Basic zzz")], "/v1/ingest") is None


def test_origins() -> None:
    assert origin_allowed(None, "h:1", [])  # not a browser
    assert origin_allowed("http://h:1", "h:1", [])  # same host
    assert not origin_allowed("http://evil", "h:1", [])
    assert origin_allowed("http://ok", "h:1", ["http://ok"])
    assert not origin_allowed("http://h:1", "h:1", ["http://ok"])
    assert origin_allowed("http://any", "h:1", ["*"])


def test_roles_and_scopes_decide_streams_and_topics() -> None:
    device, sub = Grant("device", ("ward3-*",)), Grant("subscriber", ("stream/ward3-*/raw",))
    authorize_stream(device, "ward3-1")
    authorize_topics(sub, ["stream/ward3-1/raw"])
    authorize_topics(ANONYMOUS, ["alerts"])
    forbidden: list[Callable[[], object]] = [
        lambda: authorize_stream(device, "ward4-1"),
        lambda: authorize_stream(sub, "ward3-1"),
        lambda: authorize_topics(sub, ["alerts"]),
        lambda: authorize_topics(device, ["stream/ward3-1/raw"])]
    for call in forbidden:
        with pytest.raises(P.RemoteProtocolError) as err:
            call()
        assert (err.value.code, err.value.reason) == (P.CloseCode.POLICY_VIOLATION, "forbidden")


def test_a_public_address_needs_auth_and_says_how() -> None:
    with pytest.raises(AuthConfigError, match="vital-actors token --role device"):
        check_startup(load_settings(server={"host": "0.0.0.0"}))
    with pytest.raises(AuthConfigError, match="cannot be turned off"):
        check_startup(load_settings(server={"host": "0.0.0.0"},
                                    auth={"required": False, "secret": SECRET}))
    with pytest.raises(AuthConfigError, match="32"):
        check_startup(load_settings(server={"host": "10.0.0.1"}, auth={"secret": "short"}))
    check_startup(load_settings(server={"host": "0.0.0.0"}, auth={"secret": SECRET}))
    check_startup(load_settings())  # loopback: auth optional


def test_serve_refuses_to_start_on_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITAL_AUTH__SECRET", raising=False)
    with pytest.raises(SystemExit, match=r"refusing to start.*vital-actors token"):
        main(["serve", "--host", "0.0.0.0", "--port", "0"])


def test_token_command_prints_a_valid_token(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VITAL_AUTH__SECRET", SECRET)
    main(["token", "--role", "device", "--stream", "ward3-*", "--ttl", "24h"])
    grant = verify_token(capsys.readouterr().out.strip(), SECRET)
    assert grant == Grant("device", ("ward3-*",))


# --- on a real server ---------------------------------------------------------------------


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, auth={
        "required": True, "secret": SECRET, "allowed_origins": ["http://dash.example"],
        "cors_origins": ["http://dash.example"]}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


HELLO = P.Hello("ward3-1", 360.0, ("MLII",), "int16", (200.0,), (0.0,))


async def refused_status(server: Server, path: str, *, tok: str | None = None,
                         headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_connection(url(server), path, token=tok, headers=headers):
            pass
    return rejected.value.status_code


async def test_no_token_or_a_bad_one_gets_401_before_any_upgrade(server: Server) -> None:
    assert await refused_status(server, P.INGEST_PATH) == 401
    assert await refused_status(server, P.SUBSCRIBE_PATH, tok="garbage") == 401
    expired = token("device", "*", ttl_s=-60)
    assert await refused_status(server, P.INGEST_PATH, tok=expired) == 401
    rejected = server.stats.totals.rejected
    assert rejected["token-missing"] == 1 and rejected["token-invalid"] == 2


async def test_a_foreign_origin_gets_403(server: Server) -> None:
    evil = ((b"origin", b"http://evil.example"),)
    assert await refused_status(server, P.INGEST_PATH, tok=token("device", "*"),
                                headers=evil) == 403
    assert server.stats.totals.rejected["origin-refused"] == 1
    ok = ((b"origin", b"http://dash.example"),)
    async with open_connection(url(server), P.INGEST_PATH, token=token("device", "*"),
                               headers=ok) as ws:
        await ws.send_message(P.encode(HELLO))
        assert isinstance(await receive(ws), P.Welcome)


async def test_the_token_may_come_in_the_query(server: Server) -> None:
    path = f"{P.INGEST_PATH}?token={token('device', 'ward3-*')}"
    async with open_connection(url(server), path) as ws:
        await ws.send_message(P.encode(HELLO))
        assert isinstance(await receive(ws), P.Welcome)


async def expect_forbidden(ws: object) -> None:
    from trio_websocket import WebSocketConnection
    assert isinstance(ws, WebSocketConnection)
    error = await receive(ws)
    assert isinstance(error, P.Error) and error.code == "forbidden", error
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    assert closed.value.reason is not None
    assert closed.value.reason.code == P.CloseCode.POLICY_VIOLATION


async def test_a_stream_outside_the_token_or_the_wrong_role_is_closed_1008(
        server: Server) -> None:
    for tok in (token("device", "ward4-*"), token("subscriber", "*")):
        async with open_connection(url(server), P.INGEST_PATH, token=tok) as ws:
            await ws.send_message(P.encode(HELLO))
            await expect_forbidden(ws)
    assert server.registry.get("ward3-1") is None
    assert server.stats.totals.rejected["forbidden"] == 2


async def test_subscribers_get_only_topics_in_their_token(server: Server) -> None:
    tok = token("subscriber", "stream/ward3-*/raw", "streams")
    async with open_connection(url(server), P.SUBSCRIBE_PATH, token=tok) as ws:
        await ws.send_message(P.encode(P.Subscribe(("stream/ward3-1/raw", "streams"))))
        ok = await receive(ws)
        assert isinstance(ok, P.Event) and ok.body["state"] == "subscribed"
        await ws.send_message(P.encode(P.Subscribe(("alerts",))))
        await expect_forbidden(ws)
    async with open_connection(url(server), P.SUBSCRIBE_PATH,
                               token=token("device", "*")) as ws:
        await ws.send_message(P.encode(P.Subscribe(("alerts",))))
        await expect_forbidden(ws)


async def authed(port: int, method: str, path: str, body: object,
                 tok: str | None) -> tuple[int, bytes, dict[str, str]]:
    data = json.dumps(body).encode()
    auth = f"authorization: Bearer {tok}\r\n" if tok else ""
    head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{auth}\r\n"
            ).encode() + data
    return await request(port, method, path, head=head)


async def test_writes_need_an_admin_token_reads_do_not(server: Server) -> None:
    port = server.port or 0
    async with open_connection(url(server), P.INGEST_PATH, token=token("device", "*")) as ws:
        await ws.send_message(P.encode(HELLO))
        await receive(ws)
        patch = {"high_hz": 30.0}
        status, body, _ = await authed(port, "PATCH", "/api/v1/streams/ward3-1", patch, None)
        assert status == 401, body
        status, body, _ = await authed(port, "PATCH", "/api/v1/streams/ward3-1", patch,
                                       token("device", "*"))
        assert status == 403 and b"admin" in body
        status, body, _ = await authed(port, "POST", "/api/v1/recordings", {}, None)
        assert status == 401  # the streamed upload route is behind the guard too
        status, body, _ = await authed(port, "PATCH", "/api/v1/streams/ward3-1", patch,
                                       token("admin"))
        assert status == 200 and json.loads(body)["filter"]["high_hz"] == 30.0
    status, _, _ = await request(port, "GET", "/api/v1/streams/ward3-1")
    assert status == 200


async def test_cors_for_the_listed_origin(server: Server) -> None:
    port = server.port or 0
    head = (f"GET /api/v1/stats HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n"
            "origin: http://dash.example\r\n\r\n").encode()
    status, _, headers = await request(port, "GET", "/api/v1/stats", head=head)
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://dash.example"


async def upgrade_status(port: int, path: str, *headers: str) -> int:
    head = (f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: upgrade\r\n"
            "upgrade: websocket\r\nsec-websocket-version: 13\r\n"
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()
    status, _, _ = await request(port, "GET", path, head=head)
    return status


async def test_an_origin_that_is_not_a_url_gets_403_not_a_dropped_connection(
        nursery: trio.Nursery) -> None:
    srv = Server(load_settings(server={"port": 0}, auth={"required": True, "secret": SECRET}))
    await nursery.start(srv.run)  # no allowed_origins: the server's own host only
    status = await upgrade_status(srv.port or 0, P.INGEST_PATH, "origin: http://[::1",
                                  f"authorization: Bearer {token('device', '*')}")
    assert status == 403
    assert srv.stats.totals.rejected == {"origin-refused": 1}
    srv.shutdown()


@pytest.mark.parametrize("path", ["//[", "/%2F%5B", "//[?token=x"])
async def test_a_write_to_a_path_that_is_not_a_url_gets_401_not_500(server: Server,
                                                                    path: str) -> None:
    status, body, _ = await authed(server.port or 0, "POST", path, {}, None)
    assert status == 401, body
