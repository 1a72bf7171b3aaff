"""Frame rate and drawing cost of the live monitor page in headless Chromium, and how
fast the recording viewer gets its data while zooming and panning.

    python -m loadtests.bench_monitor --streams 8 32 --seconds 10 [--viewer-hours 4]

For each N: a fresh server in process, N simulated devices (synthetic ECG, 360 Hz x 2
channels, 100 ms frames, real time), and the monitor page at ``/`` in Debian's
chromium driven by Playwright. After a warm-up the page's own counters are read over
the window: animation frames per second (``vitalMonitor.frames``), the time the page
spent drawing per frame (``vitalMonitor.tickTimes``: ring buffers to canvas, all
strips), samples drawn per second, and messages received per second. Headless Chromium
renders in software here (no GPU), so this is the slow case for canvas work.

With ``--viewer-hours H``: MIT-BIH 101 (30 min, 2 leads) tiled to H hours is uploaded,
the viewer opens it, and a user's gestures are replayed: 12 wheel steps in, 150 ms
apart, then 10 drags; each envelope request the page makes is timed from request to
data in hand (``vitalViewer.views[].ms``, envelope and overlay together).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from vital_actors.clients import run_devices
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import synthetic_ecg

__all__ = ["main"]

CHROMIUM = "/usr/bin/chromium"
READ = ("({frames: vitalMonitor.frames, messages: vitalMonitor.messages, "
        "drawn: Object.values(vitalMonitor.streams).reduce((a, s) => a + s.drawn, 0), "
        "ticks: vitalMonitor.tickTimes.slice(), "
        "streams: Object.keys(vitalMonitor.streams).length})")


def _measure(url: str, streams: int, warmup: float, seconds: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_function(f"() => Object.keys(vitalMonitor.streams).length >= {streams}",
                                   timeout=30_000)
            time.sleep(warmup)
            t0, a = time.monotonic(), page.evaluate(READ)
            time.sleep(seconds)
            t1, b = time.monotonic(), page.evaluate(READ)
        finally:
            browser.close()
    dt = t1 - t0
    ticks = sorted(b["ticks"])
    return {"streams": b["streams"], "fps": (b["frames"] - a["frames"]) / dt,
            "msg_s": (b["messages"] - a["messages"]) / dt,
            "samples_s": (b["drawn"] - a["drawn"]) / dt,
            "draw_ms_mean": statistics.fmean(ticks),
            "draw_ms_p99": ticks[int(0.99 * (len(ticks) - 1))], "draw_ms_max": ticks[-1]}


async def _one(streams: int, warmup: float, seconds: float) -> dict[str, Any]:
    srv = Server(load_settings(server={"port": 0}))
    recs = [(f"bed-{i:02d}", synthetic_ecg(seconds=120, seed=i, heart_rate=60 + i))
            for i in range(streams)]
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        nursery.start_soon(partial(run_devices, f"ws://127.0.0.1:{srv.port}", recs,
                                   stagger_s=0.02))
        got = await trio.to_thread.run_sync(_measure, f"http://127.0.0.1:{srv.port}/",
                                            streams, warmup, seconds)
        srv.shutdown()
        nursery.cancel_scope.cancel()
    return got


def _gestures(url: str) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_function("() => vitalViewer.views.length >= 1", timeout=30_000)
            box = page.locator("#chart").bounding_box()
            assert box is not None
            x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            for _ in range(12):
                page.mouse.wheel(0, -300)
                time.sleep(0.15)
            for _ in range(10):
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x - 300, y, steps=5)
                page.mouse.up()
                time.sleep(0.15)
            time.sleep(1.0)
            views: list[dict[str, Any]] = page.evaluate("vitalViewer.views")
        finally:
            browser.close()
    return views


def _upload(url: str, hours: float) -> str:
    import io
    import json
    import urllib.request

    import numpy as np

    from vital_actors.sources import data_dir, load_record

    root = data_dir()
    if root is None:
        raise SystemExit("--viewer-hours needs ../shared/data/mitdb")
    rec = load_record(root / "mitdb" / "101")
    reps = max(1, round(hours * 3600 / rec.duration))
    buf = io.BytesIO()
    np.save(buf, np.tile(rec.samples, (reps, 1)))
    query = "fs=360&gain=200&baseline=1024&channels=MLII,V1&name=101x" + str(reps)
    req = urllib.request.Request(f"{url}/api/v1/recordings?{query}", data=buf.getvalue())
    with urllib.request.urlopen(req, timeout=300) as r:
        return str(json.loads(r.read())["id"])


async def _viewer(hours: float) -> list[dict[str, Any]]:
    srv = Server(load_settings(server={"port": 0}))
    async with trio.open_nursery() as nursery:
        await nursery.start(srv.run)
        base = f"http://127.0.0.1:{srv.port}"
        rec_id = await trio.to_thread.run_sync(_upload, base, hours)
        views = await trio.to_thread.run_sync(_gestures, f"{base}/viewer?recording={rec_id}")
        srv.shutdown()
    return views


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--viewer-hours", type=float, default=0.0)
    args = ap.parse_args(argv)
    if args.viewer_hours:
        views = trio.run(_viewer, args.viewer_hours)
        ms = sorted(v["ms"] for v in views)
        modes = {m: sum(v["mode"] == m for v in views) for m in ("minmax", "lttb", "raw")}
        print(f"viewer: {len(ms)} envelope requests; ms p50 {statistics.median(ms):.1f}, "
              f"p95 {ms[int(0.95 * (len(ms) - 1))]:.1f}, max {ms[-1]:.1f}; modes {modes}; "
              f"narrowest window {min(v['end'] - v['start'] for v in views)} frames")
    if args.streams:
        print("| streams | fps | draw ms/frame mean | p99 | max | samples drawn/s | msg/s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.streams:
        r = trio.run(_one, n, args.warmup, args.seconds)
        print(f"| {r['streams']} | {r['fps']:.1f} | {r['draw_ms_mean']:.2f} | "
              f"{r['draw_ms_p99']:.2f} | {r['draw_ms_max']:.2f} | {r['samples_s']:.0f} | "
              f"{r['msg_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
