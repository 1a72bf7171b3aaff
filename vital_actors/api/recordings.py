"""HTTP API of the recording store, replays and jobs (issue 5).

Uploads (POST /api/v1/recordings) are served by a small ASGI wrapper around the app,
not by a Quart route: Quart gathers a request body in a buffer that grows as fast as
the network delivers, whereas the raw ASGI ``receive`` parks hypercorn (and so the
socket) until we ask for more. That makes a 2 GB upload cost one chunk of memory.
"""

from __future__ import annotations

import io
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgpack
import numpy as np
import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Response, request
from quart_schema import validate_request
from quart_trio import QuartTrio

from ..filtering import FilterSettingsError
from ..jobs import JobSpec, QueueFullError
from ..store import FormatError, RecordingNotFoundError, UploadParams, receive_upload
from ..store.formats import declared_format
from ..store.views import view
from ..streams import StreamBusyError

if TYPE_CHECKING:
    from ..graph import Server

__all__ = ["UploadApp", "register"]

UPLOAD_PATH = "/api/v1/recordings"
Problem = tuple[dict[str, Any], int]


def _problem(status: int, error: str, reasons: list[str] | None = None) -> Problem:
    return {"error": error, "reasons": reasons or []}, status


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: float = Field(1.0, ge=0, le=1000, description="1.0 real time; 0 as fast as "
                         "backpressure allows")
    loop: bool = False
    stream: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")


def _params(query: dict[str, list[str]]) -> UploadParams:
    def one(name: str) -> str | None:
        return query.get(name, [None])[-1]

    try:
        fs = float(one("fs")) if one("fs") else None  # type: ignore[arg-type]
        gain = float(one("gain") or 1.0)
        baseline = float(one("baseline") or 0.0)
    except ValueError as exc:
        raise FormatError(400, f"bad query parameter: {exc}") from None
    channels = [c for c in (one("channels") or "").split(",") if c]
    return UploadParams(fs, channels, gain, baseline, one("name"))


class UploadApp:
    """ASGI wrapper: streams POST /api/v1/recordings, passes the rest to *inner*."""

    def __init__(self, inner: Any, server: Server) -> None:
        self.inner, self.server = inner, server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == UPLOAD_PATH):
            await self._upload(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _upload(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        s = self.server.settings.store
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        try:
            length = int(headers.get("content-length", "-1"))
            if length > s.max_upload_bytes:
                raise FormatError(413, f"upload of {length} bytes is over the limit of "
                                  f"{s.max_upload_bytes} bytes")
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            meta = await receive_upload(
                self.server.store, _Body(receive), params=_params(query),
                declared=declared_format(query.get("format", [None])[-1],
                                         headers.get("content-type")),
                chunk_bytes=s.write_chunk_bytes, max_bytes=s.max_upload_bytes)
        except FormatError as exc:
            self.server.stats.reject(f"upload-{exc.status}")
            await _respond(send, exc.status, {"error": exc.message, "reasons": []})
            return
        except _Disconnected:
            return
        await _respond(send, 201, json.loads(meta.model_dump_json()),
                       location=f"{UPLOAD_PATH}/{meta.id}")


class _Disconnected(Exception):
    pass


class _Body:
    """The request body as an async iterator over the ASGI ``receive`` messages."""

    def __init__(self, receive: Any) -> None:
        self.receive, self.done = receive, False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected  # the client went away mid-upload: a truncated body
        self.done = not message.get("more_body", False)
        data: bytes = message.get("body", b"")
        return data


async def _respond(send: Any, status: int, body: dict[str, Any], *,
                   location: str | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]
    if location:
        headers.append((b"location", location.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _int(name: str, default: int) -> int:
    value = request.args.get(name)
    return default if value in (None, "") else int(value)


def register(app: QuartTrio, server: Server) -> None:
    """Add the recording, replay and job routes to *app*; wrap it for uploads."""
    app.asgi_app = UploadApp(app.asgi_app, server)  # type: ignore[method-assign,assignment]
    _recordings(app, server)
    _jobs(app, server)


def _recordings(app: QuartTrio, server: Server) -> None:
    @app.get("/api/v1/recordings")
    async def recordings() -> dict[str, Any]:
        """Every committed recording's metadata (upload with POST, a streamed body)."""
        return {"recordings": [json.loads(m.model_dump_json()) for m in server.store]}

    @app.get("/api/v1/recordings/<rec_id>")
    async def recording(rec_id: str) -> dict[str, Any] | Problem:
        try:
            return json.loads(server.store.meta(rec_id).model_dump_json())  # type: ignore[no-any-return]
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")

    @app.delete("/api/v1/recordings/<rec_id>")
    async def delete_recording(rec_id: str) -> tuple[str, int] | Problem:
        try:
            server.store.delete(rec_id)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        server.loader.cache.forget(rec_id)
        return "", 204

    @app.get("/api/v1/recordings/<rec_id>/view")
    async def recording_view(rec_id: str) -> Response | Problem:
        """min/max envelope (or LTTB points up close) of one channel over [start, end)."""
        try:
            reader = server.store.reader(rec_id)
            channel = _channel(reader.meta.channels, request.args.get("channel", "0"))
            start, end = _int("start", 0), _int("end", reader.frames)
            points = _int("points", 2000)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        except ValueError as exc:
            return _problem(400, "bad view parameters", [str(exc)])
        if not 2 <= points <= 100_000 or end < start:
            return _problem(400, "bad view parameters",
                            ["points must be 2..100000 and end >= start"])
        t0 = time.perf_counter()
        out = view(reader, lambda a, b: server.loader.read(rec_id, a, b), channel=channel,
                   start=start, end=end, points=points)
        body = json.dumps(out)
        took = (time.perf_counter() - t0) * 1000  # the view's own cost, JSON included
        return Response(body, content_type="application/json",
                        headers={"server-timing": f"view;dur={took:.3f}"})

    @app.get("/api/v1/recordings/<rec_id>/data")
    async def recording_data(rec_id: str) -> Response | Problem:
        """Raw samples [start, end): NPY for Accept application/x-npy, else msgpack."""
        try:
            meta = server.store.meta(rec_id)
            start, end = _int("start", 0), _int("end", meta.frames)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        except ValueError as exc:
            return _problem(400, "bad data parameters", [str(exc)])
        if end - start > server.settings.store.max_data_frames:
            return _problem(413, f"ask for at most {server.settings.store.max_data_frames} "
                            "frames at a time")
        frames = await trio.to_thread.run_sync(server.loader.read, rec_id, start, end)
        if "application/x-npy" in request.headers.get("accept", ""):
            buf = io.BytesIO()
            np.save(buf, frames)
            return Response(buf.getvalue(), content_type="application/x-npy")
        body = {"recording": rec_id, "start": max(0, start), "n": len(frames),
                "channels": meta.channels, "dtype": meta.dtype, "fs": meta.fs,
                "gain": meta.gain, "baseline": meta.baseline, "data": frames.tobytes()}
        return Response(msgpack.packb(body), content_type="application/msgpack")

    @app.post("/api/v1/recordings/<rec_id>/replay")
    @validate_request(ReplayIn)
    async def replay(rec_id: str, data: ReplayIn) -> tuple[dict[str, Any], int] | Problem:
        """Play a recording into the live pipeline as stream ``replay-<id>`` (or *stream*)."""
        try:
            r = server.replays.start(rec_id, speed=data.speed, loop=data.loop,
                                     stream=data.stream)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        except StreamBusyError as exc:
            return _problem(409, str(exc))
        return r.public(), 201

    @app.get("/api/v1/replays")
    async def replays() -> dict[str, Any]:
        return {"replays": [r.public() for r in server.replays.replays.values()]}

    @app.delete("/api/v1/replays/<stream>")
    async def stop_replay(stream: str) -> dict[str, Any] | Problem:
        try:
            return server.replays.stop(stream).public()
        except KeyError:
            return _problem(404, f"no replay on stream {stream!r}")


def _channel(names: list[str], value: str) -> int:
    if value in names:
        return names.index(value)
    index = int(value)
    if not 0 <= index < len(names):
        raise ValueError(f"channel {value!r} is not one of {names} or 0..{len(names) - 1}")
    return index


def _jobs(app: QuartTrio, server: Server) -> None:
    def public(job: Any) -> dict[str, Any]:
        return json.loads(job.model_dump_json())  # type: ignore[no-any-return]

    @app.post("/api/v1/jobs")
    @validate_request(JobSpec)
    async def submit(data: JobSpec) -> tuple[dict[str, Any], int] | Problem:
        """Queue a processing job: filter + screening in chunks into a result recording."""
        try:
            job = server.jobs.submit(data)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {data.recording!r}")
        except FilterSettingsError as exc:
            return _problem(422, "invalid filter settings", exc.problems)
        except QueueFullError as exc:
            return _problem(503, str(exc))
        return public(job), 201

    @app.get("/api/v1/jobs")
    async def jobs() -> dict[str, Any]:
        return {"jobs": [public(j) for j in server.jobs.jobs.values()]}

    @app.get("/api/v1/jobs/<job_id>")
    async def job(job_id: str) -> dict[str, Any] | Problem:
        found = server.jobs.jobs.get(job_id)
        return public(found) if found else _problem(404, f"no job {job_id!r}")

    @app.post("/api/v1/jobs/<job_id>/cancel")
    async def cancel(job_id: str) -> dict[str, Any] | Problem:
        """Stop a job: a queued one now, a running one after its current chunk."""
        if job_id not in server.jobs.jobs:
            return _problem(404, f"no job {job_id!r}")
        return public(server.jobs.cancel(job_id))
