"""The browser pages: the live monitor at ``/`` and the recording viewer at ``/viewer``.

Both are static files (HTML, CSS, plain JavaScript) under ``static/``, shipped as
package data; the browser does the work over the public API: the WebSocket
``/v1/subscribe`` (msgpack, decoded by the vendored ``@msgpack/msgpack`` build in
``static/vendor/``, see ``web/build.mjs``) and the HTTP routes under ``/api/v1``, plus
one read-only helper route of ours for the viewer's beat and alert overlay
(:mod:`.events`). Nothing here touches the actors. A token in the page's URL
(``/?token=...``) is passed along by the scripts; the pages themselves are reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, request, send_from_directory
from quart_trio import QuartTrio

from ..store import RecordingNotFoundError
from .events import EventsCache, overlay

if TYPE_CHECKING:
    from ..graph import Server

__all__ = ["STATIC", "register"]

STATIC = Path(__file__).parent / "static"


async def _file(name: str) -> Response:
    """A file of ``static/``, revalidated on every use (ETag: a 304 costs little), so the
    pages and scripts of a new version show together, never an old script in a new
    page (Quart's default would let browsers cache them for 12 hours)."""
    response = await send_from_directory(STATIC, name)
    response.cache_control.no_cache = True
    response.cache_control.max_age = None
    response.expires = None
    return response


def register(app: QuartTrio, server: Server) -> None:
    """Serve the monitor at ``/``, the viewer at ``/viewer``, assets under ``/ui/``."""
    web = Blueprint("web", __name__)
    cache = EventsCache()

    @web.get("/")
    async def monitor() -> Response:
        """The live monitor (HTML): streams, waveforms, heart rate, quality, alerts."""
        return await _file("monitor.html")

    @web.get("/viewer")
    async def viewer() -> Response:
        """The recording viewer (HTML): zoom and pan, beats and alerts, jobs, upload."""
        return await _file("viewer.html")

    @web.get("/ui/<path:name>")
    async def asset(name: str) -> Response:
        """Scripts, styles and the vendored msgpack build (404 for anything else)."""
        return await _file(name)

    @web.get("/ui/recordings/<rec_id>/events")
    async def events(rec_id: str) -> dict[str, Any] | tuple[dict[str, Any], int]:
        """Beats and alert spans of a job's result recording over [start, end)."""
        try:
            meta = server.store.meta(rec_id)
            start = int(request.args.get("start", 0))
            end = int(request.args.get("end", meta.frames))
        except RecordingNotFoundError:
            return {"error": f"no recording {rec_id!r}", "reasons": []}, 404
        except ValueError as exc:
            return {"error": "bad parameters", "reasons": [str(exc)]}, 400
        path = server.store.path(rec_id) / "events.jsonl"
        index = await trio.to_thread.run_sync(cache.get, path)
        if index is None:
            return {"start": start, "end": end, "beat_count": 0, "beats": [],
                    "beats_truncated": False, "alerts": [], "available": False}
        return {**overlay(index, start, end), "available": True}

    app.register_blueprint(web)
