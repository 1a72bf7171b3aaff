"""The viewer's overlay route: beats and alert spans of a job's events.jsonl."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import trio

from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.web.events import MAX_BEATS, EventsCache, index_events, overlay


def line(**event: Any) -> bytes:
    return json.dumps(event).encode() + b"\n"  # as processing.py writes them


def alert(state: str, start: int, end: int | None, topic: str) -> bytes:
    return line(type="alert", topic=topic, priority=1, stream="r", alert="asystole",
                state=state, t=start if end is None else end, start=start, end=end,
                channel=None)


LINES = [
    line(type="beat", topic="stream/r/beats", priority=2, r=300),
    line(type="quality", topic="stream/r/quality", priority=3, t0=0, n=360, hr=None),
    line(type="beat", topic="stream/r/beats", priority=2, r=100),
    alert("start", 1000, None, "alerts"), alert("start", 1000, None, "stream/r/quality"),
    alert("end", 1000, 2500, "alerts"), alert("end", 1000, 2500, "stream/r/quality"),
    alert("start", 4000, None, "alerts"),  # still on at the end of the recording
]


def test_index_sorts_beats_and_pairs_alert_spans() -> None:
    index = index_events(LINES)
    assert index.beats.tolist() == [100, 300]
    assert index.alerts == [
        {"alert": "asystole", "channel": None, "start": 1000, "end": 2500},
        {"alert": "asystole", "channel": None, "start": 4000, "end": None},
    ]


def test_overlay_keeps_what_overlaps_the_window() -> None:
    index = index_events(LINES)
    got = overlay(index, 200, 1500)
    assert got["beats"] == [300] and got["beat_count"] == 1
    assert [a["start"] for a in got["alerts"]] == [1000]
    assert [a["start"] for a in overlay(index, 3000, 3500)["alerts"]] == []
    assert [a["start"] for a in overlay(index, 9000, 9100)["alerts"]] == [4000]  # open span


def test_overlay_counts_but_does_not_list_too_many_beats() -> None:
    index = index_events([line(type="beat", r=i) for i in range(MAX_BEATS + 1)])
    got = overlay(index, 0, MAX_BEATS + 1)
    assert got["beats"] == [] and got["beat_count"] == MAX_BEATS + 1 and got["beats_truncated"]


def test_cache_reads_again_when_the_file_changes(tmp_path: Path) -> None:
    cache = EventsCache(size=1)
    path = tmp_path / "events.jsonl"
    assert cache.get(path) is None
    path.write_bytes(LINES[0])
    first = cache.get(path)
    assert first is not None and cache.get(path) is first
    path.write_bytes(LINES[0] + LINES[2])
    os.utime(path, (1, 1))
    again = cache.get(path)
    assert again is not None and again.beats.tolist() == [100, 300]


async def test_route_answers_404_for_an_unknown_recording_and_empty_without_events(
        nursery: trio.Nursery) -> None:
    srv = Server(load_settings(server={"port": 0}))
    await nursery.start(srv.run)
    base = f"http://127.0.0.1:{srv.port}"

    def get(path: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(base + path, data=data, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = await trio.to_thread.run_sync(get, "/ui/recordings/rec-nothere/events")
    assert status == 404 and "rec-nothere" in body["error"]
    npy = io.BytesIO()
    np.save(npy, np.zeros((720, 1), "<i2"))
    status, meta = await trio.to_thread.run_sync(
        get, "/api/v1/recordings?fs=360", npy.getvalue())
    assert status == 201
    status, body = await trio.to_thread.run_sync(get, f"/ui/recordings/{meta['id']}/events")
    assert status == 200 and body["available"] is False and body["end"] == 720
    status, body = await trio.to_thread.run_sync(
        get, f"/ui/recordings/{meta['id']}/events?start=x")
    assert status == 400
    srv.shutdown()


async def test_assets_are_revalidated_and_confined_to_the_static_folder(
        nursery: trio.Nursery) -> None:
    srv = Server(load_settings(server={"port": 0}))
    await nursery.start(srv.run)

    def head(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=10) as r:
                r.read()  # all of it: a client gone mid-file leaves quart-trio's file open
                return r.status, r.headers.get("cache-control", "")
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    for path in ("/", "/viewer", "/ui/monitor.js", "/ui/vendor/msgpack.min.js"):
        status, cache = await trio.to_thread.run_sync(head, path)
        assert status == 200 and "no-cache" in cache and "max-age" not in cache, path
    for path in ("/ui/../__init__.py", "/ui/%2e%2e/events.py", "/ui/nothing.js"):
        assert (await trio.to_thread.run_sync(head, path))[0] == 404, path
    srv.shutdown()
