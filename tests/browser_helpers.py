"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright's sync API runs its own asyncio loop, so a test hands it a plain function
of a page (:func:`in_browser`) that runs in one worker thread from start to end while
the real server and the simulated devices run in the test's trio loop. The browser is
never downloaded (no ``playwright install``): we launch the system's chromium. Under
``CI=true`` a missing chromium or playwright fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["INK_JS", "Artifacts", "BrowserRun", "chromium", "in_browser"]

T = TypeVar("T")

# Pixels of a stream's canvas in the trace's green: how much waveform is drawn.
INK_JS = """(id) => {
  const c = document.querySelector(`canvas.wave[data-stream="${id}"]`);
  if (!c || !c.width) return 0;
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 1] > 150 && d[i] < 120) n++;
  return n;
}"""


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: .ci/run and the test extra must provide it")
    pytest.skip(what)


def chromium() -> str:
    """The path of the system's Chromium (Debian package ``chromium``)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    return path  # type: ignore[return-value]


@dataclass
class Artifacts:
    """Where screenshots go: $VITAL_ARTIFACTS/<test> if set, else the test's tmp_path."""

    root: Path
    saved: list[Path] = field(default_factory=list)

    @classmethod
    def for_test(cls, name: str, tmp_path: Path) -> Artifacts:
        base = os.environ.get("VITAL_ARTIFACTS")
        root = Path(base) / name if base else tmp_path / "artifacts"
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    def screenshot(self, page: Page, name: str) -> Path:
        path = self.root / f"{name}.png"
        page.screenshot(path=str(path))
        self.saved.append(path)
        print(f"screenshot: {path}")  # shown with -s, and in the report of a failure
        return path


@dataclass
class BrowserRun:
    """What a page said while the test ran: console errors and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)


def _run(fn: Callable[[Page], T], executable: str, run: BrowserRun,
         viewport: dict[str, int]) -> T:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
            page.set_default_timeout(15_000)
            page.on("console", lambda m: run.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: run.errors.append(f"uncaught: {e}"))
            return fn(page)
        finally:
            browser.close()


async def in_browser(fn: Callable[[Page], T], *, run: BrowserRun | None = None,
                     viewport: tuple[int, int] = (1280, 800)) -> T:
    """Run *fn(page)* in headless Chromium in a worker thread; return what it returns.

    Every Playwright call must come from the thread that started it, so the whole of
    *fn* runs there; it waits with Playwright's own timeouts (15 s by default).
    """
    executable = chromium()
    w, h = viewport
    return await trio.to_thread.run_sync(_run, fn, executable, run or BrowserRun(),
                                         {"width": w, "height": h})


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll *predicate* (in the browser thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
