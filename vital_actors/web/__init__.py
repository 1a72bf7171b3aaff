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


async def _page(name: str) -> Response:
    response = await send_from_directory(STATIC, name)
    response.cache_control.no_cache = True  # revalidate: a new version shows at once
    return response


def register(app: QuartTrio, server: Server) -> None:
    """Serve the monitor at ``/``, the viewer at ``/viewer``, assets under ``/ui/``."""
    web = Blueprint("web", __name__, static_folder="static", static_url_path="/ui")
    cache = EventsCache()

    @web.get("/")
    async def monitor() -> Response:
        """The live monitor (HTML): streams, waveforms, heart rate, quality, alerts."""
        return await _page("monitor.html")

    @web.get("/viewer")
    async def viewer() -> Response:
        """The recording viewer (HTML): zoom and pan, beats and alerts, jobs, upload."""
        return await _page("viewer.html")

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
