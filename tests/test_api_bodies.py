"""JSON request bodies that do not parse get a 400 with the API's JSON error, on every
route that takes one (a real server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from httpclient import request

import protocol as P
from vital_actors.graph import Server
from vital_actors.settings import load_settings


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, store={"dir": tmp_path / "store"}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/recordings/rec-x/replay",
                                  "/api/v1/streams/s/PATCH"])
@pytest.mark.parametrize(("data", "words"), [(b"\xff\xfe{}", "UTF-8"),
                                             (b'{"recording": ', "JSON")],
                         ids=["not-utf8", "cut"])
async def test_a_json_body_that_does_not_parse_is_400_with_the_reason(
        server: Server, path: str, data: bytes, words: str) -> None:
    method = "POST"
    if path.endswith("/PATCH"):
        method, path = "PATCH", path.removesuffix("/PATCH")
    head = (f"{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n")
    status, body, headers = await request(server.port or 0, method, path,
                                          head=head.encode() + data)
    assert status == 400 and headers["content-type"] == "application/json", body
    answer = json.loads(body)
    assert words in answer["error"] + " ".join(answer["reasons"]), answer
    assert (await request(server.port or 0, "GET", "/healthz"))[0] == 200


async def test_a_stream_filter_with_an_infinite_number_is_422_and_changes_nothing(
        server: Server) -> None:
    # JSON has no infinity (Python's json writes Infinity): the answer would say null.
    info = server.registry.attach(P.Hello("s", 360.0, ("I",), "int16", (200.0,), (0.0,)))
    before = info.filter
    status, body, _ = await request(server.port or 0, "PATCH", "/api/v1/streams/s",
                                    {"notch_hz": 60, "notch_q": float("inf")})
    assert status == 422 and "finite" in body.decode(), body
    assert info.filter is before
