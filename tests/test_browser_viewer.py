"""The recording viewer in headless Chromium against a real server: upload with a
progress bar, zooming fetches finer envelopes, a job's live progress bar and its cancel
button, and beats overlaid on a processed recording (tests/browser_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio
from browser_helpers import Artifacts, BrowserRun, chromium, in_browser

from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import synthetic_ecg

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Pixels of the chart in the trace's green.
CHART_INK = """() => {
  const c = document.getElementById("chart");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 150 && d[i] < 120) n++;
  return n;
}"""


@pytest.fixture
def browser() -> str:
    """Chromium's path; skips (fails on CI) before the trio fixtures start anything."""
    return chromium()


@pytest.fixture
async def server(browser: str, nursery: trio.Nursery) -> AsyncIterator[Server]:
    # Small chunks make a job slow enough (hundreds of checkpoints) to cancel mid-run.
    srv = Server(load_settings(server={"port": 0}, jobs={"chunk_frames": 256}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Artifacts:
    return Artifacts.for_test(request.node.name, tmp_path)


def job_state(page: Page, index: int) -> str:
    return page.inner_text(f"#jobs tbody tr:nth-last-child({index + 1}) td.state")


async def test_viewer_uploads_zooms_processes_and_cancels(
        server: Server, artifacts: Artifacts, tmp_path: Path) -> None:
    rec = synthetic_ecg(seconds=600, heart_rate=75, seed=5)  # 10 min, 2 leads at 360 Hz
    mv = ((rec.samples.astype(np.float64) - rec.baseline) / rec.gain).astype("<f4")
    npy = tmp_path / "ten-minutes.npy"
    np.save(npy, mv)
    short = tmp_path / "one-minute.npy"
    minute = mv[: 60 * 360].copy()
    minute[45 * 360:] = 0.0  # the last 15 s flat: the job raises a flatline alert there
    np.save(short, minute)
    run = BrowserRun()

    def use(page: Page) -> dict[str, Any]:
        out: dict[str, Any] = {}
        page.goto(f"http://127.0.0.1:{server.port}/viewer")
        page.fill("#fs", "360")
        page.set_input_files("#file", str(npy))
        page.click("#upload")
        page.wait_for_selector("#upload-status[data-uploaded]")
        out["uploaded"] = page.get_attribute("#upload-status", "data-uploaded")
        out["progress"] = page.eval_on_selector("#upload-progress", "p => p.value")
        page.wait_for_function("() => vitalViewer.views.length >= 1")
        out["first"] = page.evaluate("vitalViewer.views[0]")
        out["ink_whole"] = page.evaluate(CHART_INK)
        artifacts.screenshot(page, "viewer-whole")
        # Zoom in around the middle: each step redraws at once, then fetches finer data.
        fetches = page.evaluate("vitalViewer.fetches")
        box = page.locator("#chart").bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(8):
            page.mouse.wheel(0, -250)
        page.wait_for_function("() => { const v = vitalViewer.views.at(-1); "
                               "return v.mode !== 'minmax' && v.end - v.start < 20000; }")
        out["fetches"] = page.evaluate("vitalViewer.fetches") - fetches
        out["last"] = page.evaluate("vitalViewer.views.at(-1)")
        out["ink_zoomed"] = page.evaluate(CHART_INK)
        artifacts.screenshot(page, "viewer-zoomed")
        # A job: its progress bar moves, and cancel stops it.
        page.click("#process")
        page.wait_for_function("() => Object.values(vitalViewer.jobs).some("
                               "j => j.state === 'running' && j.progress > 0)")
        artifacts.screenshot(page, "viewer-job-running")
        page.click("#jobs tbody tr:first-child button.cancel")
        page.wait_for_function("() => Object.values(vitalViewer.jobs).some("
                               "j => j.state === 'cancelled')")
        out["cancelled"] = page.inner_text("#jobs tbody tr:first-child td.state")
        # A short one runs to the end; its result has beats to overlay.
        page.set_input_files("#file", str(short))
        page.click("#upload")
        page.wait_for_function("() => document.getElementById('upload-status').dataset"
                               f".uploaded !== {out['uploaded']!r}")
        page.wait_for_function("() => vitalViewer.recording === document.getElementById("
                               "'upload-status').dataset.uploaded")
        page.click("#process")
        page.wait_for_selector("#jobs tbody tr:first-child td a")  # the result, when done
        page.click("#jobs tbody tr:first-child td a")
        page.wait_for_function("() => vitalViewer.events && vitalViewer.events.beats > 0")
        out["events_whole"] = page.evaluate("vitalViewer.events")
        artifacts.screenshot(page, "viewer-result-whole")
        for _ in range(3):
            page.click("#zoom-in")
        page.wait_for_function("() => vitalViewer.views.at(-1).end - vitalViewer.views.at(-1)"
                               ".start < 21600")
        out["events"] = page.evaluate("vitalViewer.events")
        out["result"] = page.evaluate("vitalViewer.recording")
        artifacts.screenshot(page, "viewer-result-beats")
        return out

    got = await in_browser(use, run=run, viewport=(1280, 900))
    assert got["uploaded"] in {m.id for m in server.store}
    assert got["progress"] == 1
    first, last = got["first"], got["last"]
    assert first["mode"] == "minmax" and (first["start"], first["end"]) == (0, 216_000)
    assert got["fetches"] >= 1 and last["end"] - last["start"] < 20_000
    assert got["ink_whole"] > 1000 and got["ink_zoomed"] > 200
    assert got["cancelled"] == "cancelled"
    cancelled, done = sorted(server.jobs.jobs.values(), key=lambda j: j.created)
    assert cancelled.state == "cancelled" and 0 < cancelled.frames_done < cancelled.frames_total
    assert done.state == "done" and got["result"] == done.result
    assert 50 <= got["events_whole"]["beats"] <= 60  # 75 bpm for 45 s
    assert got["events_whole"]["alerts"] >= 1  # drawn as a red band with its name
    assert 0 < got["events"]["beats"] < got["events_whole"]["beats"]  # zoomed in: fewer
    assert run.errors == []


async def test_a_job_that_ended_is_not_brought_back_by_a_late_update(server: Server) -> None:
    # A progress event sent before a cancel can reach the page after the cancelled one
    # (events come on the WebSocket, answers over HTTP): the row stayed "running".
    run = BrowserRun()

    def use(page: Page) -> list[str]:
        page.goto(f"http://127.0.0.1:{server.port}/viewer")
        page.wait_for_function("() => window.vitalViewer !== undefined")
        seen = []
        for update in ({"state": "running", "progress": 0.2},
                       {"state": "cancelled", "progress": 0.3},
                       {"state": "running", "progress": 0.25}):  # late
            page.evaluate("u => showJob({id: 'job-x', ...u})", update)
            seen.append(job_state(page, 0))
        return seen

    assert await in_browser(use, run=run) == ["running", "cancelled", "cancelled"]
    # (the page's poll of the made-up job's state is a 404: that is no page error)
    assert not [e for e in run.errors if e.startswith("uncaught")]
