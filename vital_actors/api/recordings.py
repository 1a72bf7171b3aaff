"""HTTP API of the recording store, replays and jobs (issue 5).

Uploads (POST /api/v1/recordings) are served by a small ASGI wrapper around the app,
not by a Quart route: Quart gathers a request body in a buffer that grows as fast as
the network delivers, whereas the raw ASGI ``receive`` parks hypercorn (and so the
socket) until we ask for more. That makes a 2 GB upload cost one chunk of memory.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgpack
import numpy as np
import trio
from pydantic import BaseModel, ConfigDict, Field
from quart import Response, request
from quart_schema import validate_request
from quart_trio import QuartTrio

from ..archive import run_dir, stream_runs
from ..filtering import FilterSettingsError
from ..jobs import JobBoardUnavailableError, JobSpec, QueueFullError
from ..store import Meta, Reader, RecordingNotFoundError, receive_upload
from ..store.formats import FormatError, declared_format
from ..store.live import LiveReader, TrimmedError, disk_frames, live_meta
from ..store.views import view
from ..streams import StreamBusyError
from .uploads import (
    PATCH_PATH,
    RECORDINGS,
    Body,
    Disconnected,
    Resumable,
    fs_range,
    register_uploads,
    respond,
    upload_params,
)

if TYPE_CHECKING:
    from ..graph import Server

__all__ = ["UploadApp", "register"]

UPLOAD_PATH = RECORDINGS
Problem = tuple[dict[str, Any], int]


def _problem(status: int, error: str, reasons: list[str] | None = None) -> Problem:
    return {"error": error, "reasons": reasons or []}, status


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: float = Field(1.0, ge=0, le=1000, description="1.0 real time; 0 as fast as "
                         "backpressure allows")
    loop: bool = False
    stream: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")


class UploadApp:
    """ASGI wrapper: streams POST /api/v1/recordings and PATCH /api/v1/uploads/{id}
    (resumable, api/uploads.py), passes the rest to *inner*."""

    def __init__(self, inner: Any, server: Server, resumable: Resumable) -> None:
        self.inner, self.server, self.resumable = inner, server, resumable

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        patch = PATCH_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == UPLOAD_PATH):
            await self._upload(scope, receive, send)
        elif patch is not None and scope["method"] == "PATCH":
            await self.resumable.patch(scope, receive, send, patch.group(1))
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
                self.server.store, Body(receive), params=upload_params(query),
                declared=declared_format(query.get("format", [None])[-1],
                                         headers.get("content-type")),
                chunk_bytes=s.write_chunk_bytes, max_bytes=s.max_upload_bytes,
                fs_range=fs_range(self.server.settings))
        except FormatError as exc:
            self.server.stats.reject(f"upload-{exc.status}")
            await respond(send, exc.status, {"error": exc.message, "reasons": []})
            return
        except Disconnected:
            return
        await respond(send, 201, json.loads(meta.model_dump_json()),
                      {"location": f"{UPLOAD_PATH}/{meta.id}"})


def _int(name: str, default: int) -> int:
    """Query parameter *name* as an int (*default* when absent).

    Raises:
        ValueError: it is not an integer (the message names it).
    """
    value = request.args.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def register(app: QuartTrio, server: Server) -> None:
    """Add the recording, replay and job routes to *app*; wrap it for uploads."""
    resumable = register_uploads(app, server)
    app.asgi_app = UploadApp(app.asgi_app, server, resumable)  # type: ignore[method-assign,assignment]
    _recordings(app, server)
    _live(app, server)
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
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        return _view(reader, lambda a, b: server.loader.read(rec_id, a, b),
                     partial(server.loader.level, reader))

    @app.get("/api/v1/recordings/<rec_id>/data")
    async def recording_data(rec_id: str) -> Response | Problem:
        """Raw samples [start, end): NPY for Accept application/x-npy, else msgpack."""
        try:
            meta = server.store.meta(rec_id)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {rec_id!r}")
        try:
            return await _data(server, meta, partial(server.loader.read, rec_id))
        except (RecordingNotFoundError, FileNotFoundError):  # deleted while read
            return _problem(404, f"no recording {rec_id!r}: deleted while it was read")

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


def _view(reader: Reader, read: Callable[[int, int], Any],
          levels: Callable[[int, int, int], Any] | None = None) -> Response | Problem:
    """GET …/view of *reader* (a recording or a live run), from the request's query."""
    try:
        channel = _channel(reader.meta.channels, request.args.get("channel", "0"))
        start, end = _int("start", 0), _int("end", reader.frames)
        points = _int("points", 2000)
    except ValueError as exc:
        return _problem(400, "bad view parameters", [str(exc)])
    if not 2 <= points <= 100_000 or end < start:
        return _problem(400, "bad view parameters",
                        ["points must be 2..100000 and end >= start"])
    t0 = time.perf_counter()
    out = view(reader, read, channel=channel, start=start, end=end, points=points,
               levels=levels)
    body = json.dumps(out)
    took = (time.perf_counter() - t0) * 1000  # the view's own cost, JSON included
    return Response(body, content_type="application/json",
                    headers={"server-timing": f"view;dur={took:.3f}"})


async def _data(server: Server, meta: Meta, read: Callable[[int, int], Any]
                ) -> Response | Problem:
    """GET …/data: frames [start, end) through *read*, as NPY or msgpack."""
    try:
        start, end = _int("start", 0), _int("end", meta.frames)
    except ValueError as exc:
        return _problem(400, "bad data parameters", [str(exc)])
    # Within the recording (a range past its end is empty; 1e20 used to reach numpy),
    # and what retention kept of a live run (from meta.first_frame).
    start = min(max(meta.first_frame, start), meta.frames)
    end = min(max(start, end), meta.frames)
    if end - start > server.settings.store.max_data_frames:
        return _problem(413, f"ask for at most {server.settings.store.max_data_frames} "
                        "frames at a time")
    frames = await trio.to_thread.run_sync(read, start, end)
    if "application/x-npy" in request.headers.get("accept", ""):
        buf = io.BytesIO()
        np.save(buf, frames)
        return Response(buf.getvalue(), content_type="application/x-npy")
    body = {"recording": meta.id, "start": start, "n": len(frames),
            "channels": meta.channels, "dtype": meta.dtype, "fs": meta.fs,
            "gain": meta.gain, "baseline": meta.baseline, "data": frames.tobytes()}
    return Response(msgpack.packb(body), content_type="application/msgpack")


def _live(app: QuartTrio, server: Server) -> None:
    """A live stream's archive run, read as a recording that grows (store/live.py)."""

    def reader(stream_id: str) -> LiveReader | Problem:
        try:
            run = _int("run", -1)
        except ValueError as exc:
            return _problem(400, "bad run", [str(exc)])
        try:
            return open_run(server, stream_id, None if run < 0 else run)
        except LookupError as exc:
            return _problem(404, str(exc.args[0]))

    @app.get("/api/v1/streams/<stream_id>/archive")
    async def stream_archive(stream_id: str) -> dict[str, Any] | Problem:
        """The stream's archive run (default: its latest; ?run=) as a recording's
        metadata, ``live: true``, with the runs on disk and whether a device sends."""
        got = reader(stream_id)
        if not isinstance(got, LiveReader):
            return got
        info = server.registry.get(stream_id)
        runs = [int(p.name.removeprefix("run-"))
                for p in stream_runs(server.archive_root / stream_id)]
        connected = info is not None and info.connected and info.run == _run_of(got)
        return {**json.loads(got.meta.model_dump_json()), "stream": stream_id,
                "run": _run_of(got), "runs": runs, "connected": connected}

    @app.get("/api/v1/streams/<stream_id>/view")
    async def stream_view(stream_id: str) -> Response | Problem:
        """As GET /api/v1/recordings/{id}/view, over the frames acked so far."""
        got = reader(stream_id)
        if not isinstance(got, LiveReader):
            return got
        try:
            return _view(got, got.read)
        except (FileNotFoundError, TrimmedError) as exc:
            return _gone(stream_id, got, exc)

    @app.get("/api/v1/streams/<stream_id>/data")
    async def stream_data(stream_id: str) -> Response | Problem:
        """As GET /api/v1/recordings/{id}/data: exactly the samples acked so far."""
        got = reader(stream_id)
        if not isinstance(got, LiveReader):
            return got
        try:
            return await _data(server, got.meta, got.read)
        except (FileNotFoundError, TrimmedError) as exc:
            return _gone(stream_id, got, exc)


def _gone(stream_id: str, reader: LiveReader, exc: OSError | TrimmedError) -> Problem:
    """The answer when archive retention deleted what a request was reading: the whole
    run (404: it renames a run away in one step, so a read finds all of it or none), or
    the frames it asked for from the start of a run it keeps (410)."""
    if isinstance(exc, TrimmedError):
        return _problem(410, str(exc))
    return _problem(404, f"stream {stream_id!r} has no archived run {_run_of(reader)}: "
                    "deleted by archive retention")


_STREAM = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def _run_of(reader: LiveReader) -> int:
    return int(reader.path.name.removeprefix("run-"))


def open_run(server: Server, stream_id: str, run: int | None) -> LiveReader:
    """A reader of *stream_id*'s archive run *run* (None: the latest), up to the frames
    acked to its device (all of them once it is closed).

    Raises:
        LookupError: no such stream, run or archive.
    """
    if not server.settings.archive.enabled:
        raise LookupError("the live archive is disabled (archive.enabled = false)")
    folder = server.archive_root / stream_id
    if not _STREAM.match(stream_id) or not folder.is_dir():
        raise LookupError(f"no archived stream {stream_id!r}")
    info = server.registry.get(stream_id)
    if run is None:
        runs = stream_runs(folder)
        run = info.run if info is not None else int(runs[-1].name.removeprefix("run-")) \
            if runs else 0
    path = run_dir(server.archive_root, stream_id, run)
    if not (path / "meta.json").exists():
        raise LookupError(f"stream {stream_id!r} has no archived run {run}")
    acked = None
    if info is not None and info.durable is not None and info.durable[0] == run:
        acked = info.durable[1].samples
    try:
        if acked is None:  # closed, or restored and nothing new durable yet: all on disk
            hello = json.loads((path / "meta.json").read_text())
            acked = disk_frames(path, len(hello["channels"]), hello["dtype"])
        return LiveReader(path, live_meta(path, frames=acked, id=stream_id))
    except FileNotFoundError:  # archive retention deleted it just now
        raise LookupError(f"stream {stream_id!r} has no archived run {run}: deleted by "
                          "archive retention") from None


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
        """Queue a processing job: filter + screening in chunks into a result recording.
        With the bus, any node with a free slot runs it."""
        try:
            job = await server.jobs.create(data)
        except RecordingNotFoundError:
            return _problem(404, f"no recording {data.recording!r}")
        except FilterSettingsError as exc:
            return _problem(422, "invalid filter settings", exc.problems)
        except (QueueFullError, JobBoardUnavailableError) as exc:
            return _problem(503, str(exc))
        return public(job), 201

    @app.get("/api/v1/jobs")
    async def jobs() -> dict[str, Any] | Problem:
        try:
            return {"jobs": [public(j) for j in await server.jobs.all_jobs()]}
        except JobBoardUnavailableError as exc:
            return _problem(503, str(exc))

    @app.get("/api/v1/jobs/<job_id>")
    async def job(job_id: str) -> dict[str, Any] | Problem:
        try:
            found = await server.jobs.get(job_id)
        except JobBoardUnavailableError as exc:
            return _problem(503, str(exc))
        return public(found) if found else _problem(404, f"no job {job_id!r}")

    @app.post("/api/v1/jobs/<job_id>/cancel")
    async def cancel(job_id: str) -> dict[str, Any] | Problem:
        """Stop a job: a queued one now, a running one after its current chunk (on
        whichever node runs it)."""
        try:
            found = await server.jobs.stop(job_id)
        except JobBoardUnavailableError as exc:
            return _problem(503, str(exc))
        return public(found) if found else _problem(404, f"no job {job_id!r}")
