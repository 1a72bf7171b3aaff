"""Interoperability of the WebSocket edge with independent clients: the ``websockets``
library (permessage-deflate, zstd subprotocol) and Chromium's built-in WebSocket (headless
Chromium; Debian's ``chromium`` package, installed by .ci/run)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from websockets.sync.client import connect

import protocol as P
from vital_actors.graph import Server
from vital_actors.settings import Settings, load_settings

FRAME = np.tile(np.arange(360, dtype="<i2"), 2).tobytes()  # 360 samples x 2 channels
TOPICS = tuple(f"stream/bed-{i}/raw" for i in range(100))  # a `subscriptions` reply > 1 KiB


def hello(stream: str) -> P.Hello:
    return P.Hello(stream, 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (1024.0, 1024.0))


def _browser_origins() -> dict[str, Any]:
    # A page opened from a file has Origin "null"; let it in where Origins are checked.
    return {"auth": {"allowed_origins": ["*"]}} if "auth" in Settings.model_fields else {}


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}, **_browser_origins()))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


# --- the websockets library -----------------------------------------------------------------


def _websockets_device(url: str) -> tuple[str, list[P.ServerMessage]]:
    with connect(f"{url}{P.INGEST_PATH}", subprotocols=[P.SUBPROTOCOL],  # type: ignore[list-item]
                 compression="deflate", open_timeout=10, close_timeout=2) as ws:
        assert ws.response is not None
        ext = ws.response.headers["Sec-WebSocket-Extensions"]
        ws.send(P.encode(hello("ws-lib")))  # websockets compresses what it sends
        ws.send(P.encode(P.Samples(0, 360, FRAME)))
        got = [P.decode_server(ws.recv(timeout=10)) for _ in range(2)]  # type: ignore[arg-type]
    return ext, got


def _websockets_subscriber(url: str) -> tuple[str, P.ServerMessage]:
    with connect(f"{url}{P.SUBSCRIBE_PATH}", subprotocols=[P.SUBPROTOCOL],  # type: ignore[list-item]
                 open_timeout=10, close_timeout=2) as ws:
        assert ws.response is not None
        ext = ws.response.headers["Sec-WebSocket-Extensions"]
        ws.send(P.encode(P.Subscribe(TOPICS)))
        return ext, P.decode_server(ws.recv(timeout=10))  # type: ignore[arg-type]


def _websockets_zstd(url: str) -> tuple[str | None, list[P.ServerMessage]]:
    codec = P.ZstdCodec(dictionary=P.ecg_dictionary())
    with connect(f"{url}{P.INGEST_PATH}?zstd_dict={P.ECG_DICTIONARY_ID}",
                 subprotocols=[P.ZSTD_SUBPROTOCOL, P.SUBPROTOCOL],  # type: ignore[list-item]
                 open_timeout=10, close_timeout=2) as ws:
        ws.send(codec.compress(P.encode(hello("ws-zstd"))))
        ws.send(codec.compress(P.encode(P.Samples(0, 360, FRAME))))
        got = [codec.decode_server(ws.recv(timeout=10)) for _ in range(2)]  # type: ignore[arg-type]
        return ws.subprotocol, got


async def test_websockets_library_deflate_both_ways(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    ext, got = await trio.to_thread.run_sync(_websockets_device, url)
    assert ext == "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    assert got == [P.Welcome("ws-lib", 0), P.Ack(0)]  # small: sent uncompressed
    ext, reply = await trio.to_thread.run_sync(_websockets_subscriber, url)
    assert ext.startswith("permessage-deflate")
    assert len(P.encode(reply)) > 1024  # over deflate.min_bytes: sent compressed
    assert isinstance(reply, P.Event) and reply.body["topics"] == sorted(TOPICS)


async def test_websockets_library_zstd(server: Server) -> None:
    subprotocol, got = await trio.to_thread.run_sync(_websockets_zstd,
                                                     f"ws://127.0.0.1:{server.port}")
    assert subprotocol == P.ZSTD_SUBPROTOCOL
    assert got == [P.Welcome("ws-zstd", 0, zstd_dict=P.ECG_DICTIONARY_ID), P.Ack(0)]


# --- headless Chromium ----------------------------------------------------------------------

PAGE = """<!doctype html><html><body><script>
const hex = b => Array.from(new Uint8Array(b), x => x.toString(16).padStart(2, '0')).join('');
const unhex = h => new Uint8Array(h.match(/../g).map(x => parseInt(x, 16)));
const results = {};
let pending = 0;
function finish() {
  if (--pending === 0) fetch(REPORT, {method: 'POST', body: JSON.stringify(results)});
}
function open(c) {
  const r = results[c.name] = {messages: []};
  const ws = new WebSocket(c.url, ['vital.v1.msgpack']);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    r.protocol = ws.protocol; r.extensions = ws.extensions;
    for (const m of c.send) ws.send(unhex(m));
  };
  ws.onmessage = e => {
    r.messages.push(hex(e.data));
    if (r.messages.length === c.expect) { ws.close(); finish(); }
  };
  ws.onerror = () => { r.error = true; };
}
const CONF = %s;
const REPORT = %s;
pending = CONF.length;
CONF.forEach(open);
</script></body></html>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


async def _collect_report(listener: trio.SocketListener) -> dict[str, Any]:
    """Read one HTTP POST (the page's report) and answer it."""
    stream = await listener.accept()
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        size = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < size:
            body += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\naccess-control-allow-origin: *\r\n"
                              b"content-length: 0\r\nconnection: close\r\n\r\n")
    return dict(json.loads(body))


async def test_chromium_websocket_with_permessage_deflate(server: Server, tmp_path: Path) -> None:
    browser = chromium()
    base = f"ws://127.0.0.1:{server.port}"
    conf = [
        {"name": "ingest", "url": base + P.INGEST_PATH, "expect": 2,
         "send": [P.encode(hello("chromium")).hex(), P.encode(P.Samples(0, 360, FRAME)).hex()]},
        {"name": "subscribe", "url": base + P.SUBSCRIBE_PATH, "expect": 1,
         "send": [P.encode(P.Subscribe(TOPICS)).hex()]},
    ]
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    report = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/report"
    page = tmp_path / "page.html"
    page.write_text(PAGE % (json.dumps(conf), json.dumps(report)))
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", page.as_uri()]
    with trio.fail_after(60):
        async with listener, trio.open_nursery() as nursery:
            # Our own child process: cancelling the nursery terminates it.
            nursery.start_soon(partial(trio.run_process, command, capture_stdout=True,
                                       capture_stderr=True, check=False))
            results = await _collect_report(listener)
            nursery.cancel_scope.cancel()
    expected_ext = "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    for name in ("ingest", "subscribe"):
        assert results[name]["protocol"] == P.SUBPROTOCOL
        assert results[name]["extensions"] == expected_ext
    ingest = [P.decode_server(bytes.fromhex(m)) for m in results["ingest"]["messages"]]
    assert ingest == [P.Welcome("chromium", 0), P.Ack(0)]  # Chromium deflated the 1.5 KB frame
    [reply] = [P.decode_server(bytes.fromhex(m)) for m in results["subscribe"]["messages"]]
    assert isinstance(reply, P.Event) and reply.body["topics"] == sorted(TOPICS)
