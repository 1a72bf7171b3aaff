"""The live monitor in headless Chromium against a real server and simulated devices:
the page loads, a device's waveform is drawn, the heart rate shown fits the record, the
page reconnects and subscribes again, and a device that goes flat raises a visible
alert within 5 s. Screenshots are saved as artifacts (tests/browser_helpers.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest
import trio
from browser_helpers import INK_JS, Artifacts, BrowserRun, chromium, in_browser

from vital_actors.auth import issue_token
from vital_actors.clients import run_device
from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import Recording, load_record, synthetic_ecg

if TYPE_CHECKING:
    from playwright.sync_api import Page

T = TypeVar("T")


@pytest.fixture
def browser() -> str:
    """Chromium's path; skips (fails on CI) before the trio fixtures start anything."""
    return chromium()


@pytest.fixture
async def server(browser: str, nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = Server(load_settings(server={"port": 0}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Artifacts:
    return Artifacts.for_test(request.node.name, tmp_path)


def http(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def stat(stream: str, key: str) -> str:
    """A JS expression: the page's figure *key* of *stream* (undefined before it shows)."""
    return f"(vitalMonitor.streams[{stream!r}] || {{}}).{key}"


async def test_monitor_page_loads_with_its_assets(server: Server, artifacts: Artifacts) -> None:
    run = BrowserRun()

    def look(page: Page) -> dict[str, Any]:
        page.goto(http(server) + "/")
        page.wait_for_function("() => window.vitalMonitor && vitalMonitor.connection === 'open'")
        page.wait_for_function("() => vitalMonitor.frames > 2")  # animating
        artifacts.screenshot(page, "monitor-empty")
        return {
            "title": page.title(),
            "empty": page.is_visible("#empty"),
            "api": page.get_attribute("a[href='/docs']", "href"),
            "compression": page.get_attribute("#connection", "title"),
            "msgpack": page.evaluate("typeof MessagePack.decode"),
        }

    got = await in_browser(look, run=run)
    assert got["title"] == "vital-actors · live monitor"
    assert got["empty"] and got["api"] == "/docs"
    assert got["msgpack"] == "function"  # the vendored build, served by the package
    # The browser's own WebSocket negotiated our subprotocol and permessage-deflate.
    assert got["compression"].startswith("vital.v1.msgpack; permessage-deflate")
    assert run.errors == []


async def test_monitor_draws_a_device_and_shows_a_plausible_heart_rate(
        server: Server, mitdb: Path, artifacts: Artifacts) -> None:
    rec = load_record(mitdb / "101", stop=360 * 60)  # MIT-BIH 101: regular, about 70 bpm
    run = BrowserRun()

    def watch(page: Page) -> dict[str, Any]:
        page.goto(http(server) + "/")
        page.wait_for_function(f"() => {stat('101', 'drawn')} > 720")
        ink = page.evaluate(INK_JS, "101")
        # Ten quality windows: a full 10-s window behind the median heart rate.
        page.wait_for_function(f"() => {stat('101', 'qualities')} >= 10")
        page.wait_for_function(f"() => typeof {stat('101', 'hr')} === 'number'")
        hr_text = page.inner_text(".strip[data-stream='101'] .hr-value")
        quality = page.inner_text(".strip[data-stream='101'] .quality")
        artifacts.screenshot(page, "monitor-101")
        # Drop the connection: the page reconnects, subscribes again, and draws on.
        before = page.evaluate(stat("101", "received"))
        page.evaluate("vitalMonitor.drop()")
        page.wait_for_function("() => vitalMonitor.connections >= 2 "
                               "&& vitalMonitor.connection === 'open'")
        page.wait_for_function(f"() => {stat('101', 'received')} > {before} + 720")
        return {"ink": ink, "hr": hr_text, "quality": quality,
                "count": page.inner_text("#count"),
                "fps": page.evaluate("vitalMonitor.fps")}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_device, f"ws://127.0.0.1:{server.port}", "101", rec,
                                   speed=3.0, loop=False))
        got = await in_browser(watch, run=run)
        nursery.cancel_scope.cancel()
    assert got["ink"] > 500  # the trace is on the canvas
    assert 60 <= int(got["hr"]) <= 85, got  # 101's first minute: about 65-75 bpm
    assert got["quality"].split()[0] in {"good", "acceptable"}
    assert got["count"] == "1 stream"
    print(f"heart rate shown for MIT-BIH 101: {got['hr']} bpm, {got['quality']}")
    assert run.errors == []


def _after(rec: Recording, seconds: float, *, noise_mv: float) -> Recording:
    """*rec* for *seconds*, then no beat: its baseline with white noise of *noise_mv*
    (0: a flat line, as from a device whose input went dead)."""
    n = round(seconds * rec.fs)
    rng = np.random.default_rng(3)
    tail = rng.normal(0.0, noise_mv, rec.samples.shape) * np.array(rec.gain)
    tail = np.rint(tail + np.array(rec.baseline)).astype(np.int16)
    samples = np.concatenate([rec.samples[:n], tail])
    return Recording(rec.name, rec.fs, rec.channels, rec.gain, rec.baseline, samples)


def alert_js(stream: str, kind: str) -> str:
    return f"() => vitalMonitor.alerts().some(a => a.stream === {stream!r} && a.alert === {kind!r})"


async def test_a_device_that_goes_flat_raises_a_visible_alert_within_5_s(
        server: Server, artifacts: Artifacts) -> None:
    """bed-7 goes flat (a dead input): flatline within 5 s. bed-8 goes on with noise but
    no beat: asystole, which by definition needs 4 s (screen.asystole_s) without a beat
    and is decided at 1-s steps."""
    ecg_s = 3.5
    ecg = synthetic_ecg(seconds=20, heart_rate=70, seed=8)
    flat, beatless = _after(ecg, ecg_s, noise_mv=0.0), _after(ecg, ecg_s, noise_mv=0.03)
    run = BrowserRun()
    ready, start = trio.Event(), []

    def watch(page: Page) -> dict[str, Any]:
        page.goto(http(server) + "/")
        page.wait_for_function("() => vitalMonitor.connection === 'open'")
        page.check("#sound")  # a click: the page may play sound from now on
        trio.from_thread.run_sync(ready.set)
        seen = {}
        for stream in ("bed-7", "bed-8"):
            page.wait_for_selector(f"#alerts .alert[data-stream='{stream}']", state="visible")
            seen[stream] = time.monotonic()
        page.wait_for_function(alert_js("bed-8", "asystole"))
        artifacts.screenshot(page, "monitor-alerts")
        return {"seen": seen, "alerts": page.inner_text("#alerts"),
                "beeps": page.evaluate("vitalMonitor.beeps"),
                "strip": page.get_attribute(".strip[data-stream='bed-7']", "class"),
                "badges": {s: page.inner_text(f".strip[data-stream='{s}'] .strip-alerts")
                           for s in ("bed-7", "bed-8")}}

    async def device(stream: str, rec: Recording) -> None:
        await ready.wait()
        start.append(time.monotonic())  # the device paces its frames from here
        await run_device(f"ws://127.0.0.1:{server.port}", stream, rec, speed=1.0, loop=False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(device, "bed-7", flat)
        nursery.start_soon(device, "bed-8", beatless)
        got = await in_browser(watch, run=run)
        nursery.cancel_scope.cancel()
    flat_at = min(start) + ecg_s
    print(f"alert after the signal went flat: flatline {got['seen']['bed-7'] - flat_at:.2f} s,"
          f" asystole {got['seen']['bed-8'] - flat_at:.2f} s")
    assert 0 < got["seen"]["bed-7"] - flat_at <= 5.0, got
    assert 0 < got["seen"]["bed-8"] - flat_at <= 4.0 + 1.0 + 1.5, got  # asystole_s + a step
    assert "alarm" in got["strip"].split()
    assert got["beeps"] >= 1  # the alarm sound played (WebAudio)
    assert "FLATLINE" in got["badges"]["bed-7"] and "ASYSTOLE" in got["badges"]["bed-8"], got
    assert run.errors == []


async def test_what_was_published_while_the_page_was_away_is_replayed(
        server: Server, artifacts: Artifacts) -> None:
    """The page loses its connection for 4-6 s (the backoff set to its longest), and
    bed-5 goes flat meanwhile: on reconnecting, the page subscribes with `since` and
    gets the flatline alert raised while it was away, and every message of
    stream/bed-5/quality (quality events and alerts): an unbroken run of offsets."""
    flat_after_s = 3.0
    rec = _after(synthetic_ecg(seconds=30, heart_rate=70, seed=5), flat_after_s, noise_mv=0.0)
    run = BrowserRun()
    ready, start = trio.Event(), []
    record = """() => {
        const s = vitalMonitor.sub(), f = s.onMessage;
        window.seenQ = [];
        s.onMessage = (m) => {
            if (m.topic === "stream/bed-5/quality") window.seenQ.push(m.offset);
            f(m);
        };
    }"""

    def watch(page: Page) -> dict[str, Any]:
        page.goto(http(server) + "/")
        page.wait_for_function("() => vitalMonitor.connection === 'open'")
        page.evaluate(record)
        trio.from_thread.run_sync(ready.set)
        page.wait_for_function(f"() => {stat('bed-5', 'qualities')} >= 3")
        page.evaluate("vitalMonitor.sub().attempt = 5; vitalMonitor.drop()")  # 4-6 s
        dropped = time.monotonic()
        page.wait_for_function("() => vitalMonitor.connections >= 2 "
                               "&& vitalMonitor.connection === 'open'", timeout=15000)
        back = time.monotonic()
        page.wait_for_function(alert_js("bed-5", "flatline"), timeout=3000)
        page.wait_for_function("() => window.seenQ.length >= 12", timeout=10000)
        artifacts.screenshot(page, "monitor-replayed")
        return {"dropped": dropped, "back": back, "seen": page.evaluate("window.seenQ"),
                "recovered": page.evaluate("vitalMonitor.sub().recovered")}

    async def device() -> None:
        await ready.wait()
        start.append(time.monotonic())
        await run_device(f"ws://127.0.0.1:{server.port}", "bed-5", rec, speed=1.0,
                         loop=False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(device)
        got = await in_browser(watch, run=run)
        nursery.cancel_scope.cancel()
    away = got["back"] - got["dropped"]
    print(f"away {away:.1f} s; quality offsets seen {got['seen']}")
    assert away >= 3.5, got  # long enough for quality events and the alert to be missed
    assert got["recovered"]["alerts"] is True, got
    assert got["recovered"]["stream/bed-5/quality"] is True, got
    seen = sorted(got["seen"])  # an alert (CRITICAL) may overtake a quality event
    assert seen == list(range(seen[0], seen[0] + len(seen))), got["seen"]  # none lost
    assert run.errors == [] or all("WebSocket" in e for e in run.errors), run.errors


async def test_with_auth_the_page_passes_the_token_from_its_url(
        browser: str, nursery: trio.Nursery, artifacts: Artifacts) -> None:
    secret = "a-test-secret-of-at-least-32-bytes!!"
    srv = Server(load_settings(server={"port": 0}, auth={"required": True, "secret": secret}))
    await nursery.start(srv.run)
    token = issue_token(secret, role="subscriber", scope=["*"], ttl_s=600)
    run = BrowserRun()

    def visit(page: Page) -> dict[str, Any]:
        page.goto(http(srv) + "/")  # the page itself is open; its WebSocket is not
        page.wait_for_function("() => vitalMonitor.connection === 'closed'")
        refused = page.evaluate("vitalMonitor.connections")
        page.goto(http(srv) + "/?token=" + token)
        page.wait_for_function("() => vitalMonitor.subscribed.includes('alerts')")
        artifacts.screenshot(page, "monitor-with-token")
        return {"refused": refused, "viewer": page.get_attribute("a[href^='/viewer']", "href")}

    got = await in_browser(visit, run=run)
    srv.shutdown()
    assert got["refused"] == 0
    assert got["viewer"] == f"/viewer?token={token}"  # links keep the token
    # The only errors: the browser's report of the refused handshake (401) before.
    assert all("401" in e or "WebSocket" in e for e in run.errors), run.errors


async def _across_a_restart(nursery: trio.Nursery, run: BrowserRun, *, before: Recording,
                            after: Recording, until: str, then: Callable[[Page], T]) -> T:
    """Device bed-1 plays *before* to a first server until the page shows *until* (a JS
    predicate); that server stops (1001) and a new one starts on the same port, where
    bed-1 plays *after*; once the page has reconnected, *then(page)* says what it shows."""
    first = Server(load_settings(server={"port": 0}))
    port = await nursery.start(first.run)
    restarted = trio.Event()

    def watch(page: Page) -> T:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function(until)
        trio.from_thread.run_sync(first.shutdown)
        page.wait_for_function("() => vitalMonitor.connection !== 'open'")
        trio.from_thread.run(restarted.wait)
        page.wait_for_function("() => vitalMonitor.connections >= 2 "
                               "&& vitalMonitor.connection === 'open'")
        return then(page)

    async def device(srv: Server, rec: Recording) -> None:
        with contextlib.suppress(Exception):  # the first server closes it (1001)
            await run_device(f"ws://127.0.0.1:{srv.port}", "bed-1", rec, speed=1.0)

    servers: list[Server] = []
    async with trio.open_nursery() as devices:
        async def restart() -> None:
            await first.stopping.wait()
            await trio.sleep(0.5)  # down for a moment: the page backs off and retries
            second = Server(load_settings(server={"port": port}))
            servers.append(second)
            await nursery.start(second.run)
            devices.start_soon(device, second, after)
            restarted.set()

        devices.start_soon(device, first, before)
        devices.start_soon(restart)
        got = await in_browser(watch, run=run)
        devices.cancel_scope.cancel()
    servers[0].shutdown()
    return got


async def test_the_page_comes_back_after_a_server_restart(
        browser: str, nursery: trio.Nursery, artifacts: Artifacts) -> None:
    """The server stops (1001) and a new one starts on the same port: the page
    reconnects by itself, subscribes again, and draws the stream's fresh run."""
    rec = synthetic_ecg(seconds=60, heart_rate=70, seed=2)
    run = BrowserRun()

    def after(page: Page) -> dict[str, Any]:
        before = page.evaluate(stat("bed-1", "received"))
        page.wait_for_function(f"() => {stat('bed-1', 'received')} > {before} + 360")
        artifacts.screenshot(page, "monitor-after-restart")
        return {"strip": page.get_attribute(".strip[data-stream='bed-1']", "class")}

    got = await _across_a_restart(nursery, run, before=rec, after=rec, then=after,
                                  until=f"() => {stat('bed-1', 'received')} > 360")
    assert "offline" not in got["strip"].split()
    assert run.errors == [] or all("WebSocket" in e for e in run.errors), run.errors


async def test_alerts_of_a_run_before_a_server_restart_do_not_stay_on(
        browser: str, nursery: trio.Nursery, artifacts: Artifacts) -> None:
    """bed-1 goes flat on the first server (flatline); the server restarts, forgetting
    its screening, and bed-1 comes back with a good signal. The new server counts runs
    from 1 again, so the run number alone does not tell a fresh run: the page must not
    keep the old server's flatline on (no one would ever end it)."""
    flat = _after(synthetic_ecg(seconds=30, heart_rate=70, seed=4), 2.0, noise_mv=0.0)
    run = BrowserRun()

    def after(page: Page) -> dict[str, Any]:
        before = page.evaluate(stat("bed-1", "received"))
        page.wait_for_function(f"() => {stat('bed-1', 'qualities')} >= 1 && "
                               f"{stat('bed-1', 'received')} > {before} + 3 * 360")
        artifacts.screenshot(page, "monitor-alerts-after-restart")
        return {"alerts": page.evaluate("vitalMonitor.alerts().map(a => a.alert)"),
                "banner": page.inner_text("#alerts")}

    got = await _across_a_restart(nursery, run, before=flat, then=after,
                                  after=synthetic_ecg(seconds=60, heart_rate=70, seed=2),
                                  until=alert_js("bed-1", "flatline"))
    assert got["alerts"] == [], got
    assert run.errors == [] or all("WebSocket" in e for e in run.errors), run.errors
