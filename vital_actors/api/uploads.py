"""Resumable uploads over HTTP (tus-like; the wire rules are in docs/protocol.md §12).

- ``POST /api/v1/uploads?<the query of POST /api/v1/recordings>`` with ``Upload-Length``
  (and optionally ``Upload-Checksum: sha256 <hex>`` of the whole file): 201, Location.
- ``HEAD`` / ``GET /api/v1/uploads/{id}``: ``Upload-Offset``, the bytes stored durably.
- ``PATCH /api/v1/uploads/{id}`` with ``Upload-Offset`` (where the stored bytes end)
  and the next bytes: 204 with the new ``Upload-Offset``; the PATCH that completes the
  upload answers 201 with the recording's metadata. A PATCH cut short keeps what
  arrived (fsynced) unless it carried its own ``Upload-Checksum``.
- ``DELETE /api/v1/uploads/{id}``: abandon it.

PATCH bodies are read from the raw ASGI ``receive`` (see UploadApp): memory is one
write chunk, however long the body. A PATCH for an upload that another PATCH still
holds (a client resuming before the server noticed its old connection drop) takes it
over: the old one is cancelled, keeps what it stored, and the new one starts after it.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..store import FormatError, UploadParams, receive_upload
from ..store.formats import declared_format
from ..store.resumable import OffsetError, PatchWriter, Session, parse_checksum

if TYPE_CHECKING:
    from ..graph import Server
    from ..settings import Settings

__all__ = ["PATCH_PATH", "RECORDINGS", "Body", "Disconnected", "Resumable",
           "fs_range", "register_uploads", "respond", "upload_params"]

RECORDINGS = "/api/v1/recordings"
PATCH_PATH = re.compile(r"^/api/v1/uploads/([^/]+)/?$")
_Problem = tuple[dict[str, Any], int]
_Answer = tuple[int, dict[str, Any] | None, dict[str, str]]  # status, JSON body, headers


def fs_range(settings: Settings) -> tuple[float, float]:
    """The sampling rates an upload may have: a device's (``limits.min_fs .. max_fs``)."""
    return settings.limits.min_fs, settings.limits.max_fs


def upload_params(query: dict[str, list[str]]) -> UploadParams:
    """The query of an upload (fs, channels, gain, baseline, name) as UploadParams."""
    def one(name: str) -> str | None:
        return query.get(name, [None])[-1]

    def number(name: str, default: float | None) -> float | None:
        value = one(name)
        try:
            return float(value) if value else default
        except ValueError:
            raise FormatError(400, f"bad query parameter {name}={value!r}: not a "
                              "number") from None

    fs, gain, baseline = number("fs", None), number("gain", 1.0), number("baseline", 0.0)
    assert gain is not None and baseline is not None
    channels = [c for c in (one("channels") or "").split(",") if c]
    return UploadParams(fs, channels, gain, baseline, one("name"))


class Disconnected(Exception):
    """The client went away before its request body ended."""


class Body:
    """A request body as an async iterator over the ASGI ``receive`` messages."""

    def __init__(self, receive: Any) -> None:
        self.receive, self.done = receive, False

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise Disconnected  # a truncated body
        self.done = not message.get("more_body", False)
        data: bytes = message.get("body", b"")
        return data


async def respond(send: Any, status: int, body: dict[str, Any] | None,
                  extra: dict[str, str] | None = None) -> None:
    """Answer over raw ASGI: *body* as JSON (None: no body), *extra* headers."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-length", str(len(data)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _int_header(headers: dict[str, str], name: str) -> int:
    try:
        value = int(headers[name.lower()])
    except (KeyError, ValueError):
        raise FormatError(400, f"{name} must be a non-negative integer") from None
    if value < 0:
        raise FormatError(400, f"{name} must be a non-negative integer")
    return value


class Resumable:
    """The PATCH side (raw ASGI) and finishing of resumable uploads."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._holders: dict[str, tuple[trio.CancelScope, trio.Event]] = {}

    @property
    def root(self) -> Any:
        return self.server.store.uploads

    async def patch(self, scope: dict[str, Any], receive: Any, send: Any,
                    upload_id: str) -> None:
        held = self._holders.get(upload_id)
        if held is not None:  # a client resuming before we saw its old connection go
            held[0].cancel()
            await held[1].wait()
        mine = trio.CancelScope(), trio.Event()
        self._holders[upload_id] = mine
        body = Body(receive)
        answer: _Answer | None = None
        try:
            with mine[0]:
                answer = await self._patch(body, _headers(scope), upload_id)
        except Disconnected:
            return  # what arrived is stored; nobody is left to answer
        except FormatError as exc:
            self.server.stats.reject(f"upload-{exc.status}")
            have = getattr(exc, "have", None)
            answer = exc.status, {"error": exc.message, "reasons": []}, \
                {} if have is None else {"upload-offset": str(have)}
        finally:
            mine[1].set()
            if self._holders.get(upload_id) is mine:
                del self._holders[upload_id]
        if answer is None:  # taken over by a newer PATCH
            answer = await self._taken_over(body, upload_id)
            if answer is None:
                return
        await respond(send, *answer)

    async def _taken_over(self, body: Body, upload_id: str) -> _Answer | None:
        """The answer for a PATCH that a newer one took over: none once its client is
        seen gone (the usual case: it was resuming after a cut), else 409 with the
        offset, after the rest of its body (not stored).

        It does not answer before it knows: an answer written just as hypercorn sees
        the connection's end races hypercorn's own close (send_eof against send_all
        on one socket), which raises BusyResourceError out of hypercorn's serve.
        """
        try:
            async for _ in body:
                pass
        except Disconnected:
            return None
        try:
            session = await trio.to_thread.run_sync(Session.open, self.root, upload_id)
        except KeyError:
            return 404, {"error": f"no upload {upload_id!r}", "reasons": []}, {}
        have = session.state.offset
        return 409, {"error": f"this PATCH was taken over by a newer one for the same "
                     f"upload; HEAD the upload and continue from {have}",
                     "reasons": []}, {"upload-offset": str(have)}

    async def _patch(self, body: Body, headers: dict[str, str], upload_id: str) -> _Answer:
        try:
            session = await trio.to_thread.run_sync(Session.open, self.root, upload_id)
        except KeyError:
            raise FormatError(404, f"no upload {upload_id!r}") from None
        offset = _int_header(headers, "Upload-Offset")
        want = parse_checksum(headers.get("upload-checksum"))
        if session.complete:  # nothing more to take: the answer, (again) if need be
            if offset != session.state.length:
                raise OffsetError(offset, session.state.length)
            return await self._finish(session)
        writer = await trio.to_thread.run_sync(session.writer, offset, want)
        try:
            await _receive_into(writer, body,
                                self.server.settings.store.write_chunk_bytes)
        except BaseException:  # cut, too long, or taken over: keep what arrived, then end
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(partial(writer.commit, whole=False))
            raise
        await trio.to_thread.run_sync(partial(writer.commit, whole=True))
        if not session.complete:
            return 204, None, {"upload-offset": str(session.state.offset)}
        return await self._finish(session)

    async def _finish(self, session: Session) -> _Answer:
        """Decode the complete upload into a recording, once; keep the answer.

        Shielded: a client cut off while it waits comes back, and its PATCH (taking
        the upload over) waits for this answer instead of starting the decoding again.
        """
        with trio.CancelScope(shield=True):
            if session.state.status is None:
                status, answer = await self._decode(session)
                await trio.to_thread.run_sync(session.done, status, answer)
        done, final = session.state.status, session.state.answer
        assert done is not None and final is not None
        extra = {"upload-offset": str(session.state.length)}
        if done == 201:
            extra["location"] = f"{RECORDINGS}/{final['id']}"
        return done, final, extra

    async def _decode(self, session: Session) -> tuple[int, dict[str, Any]]:
        s = self.server.settings.store
        query = parse_qs(session.state.query)
        try:
            meta = await receive_upload(
                self.server.store, session.body(s.write_chunk_bytes),
                params=upload_params(query),
                declared=declared_format(query.get("format", [None])[-1],
                                         session.state.content_type),
                chunk_bytes=s.write_chunk_bytes, max_bytes=s.max_upload_bytes,
                sha256=session.state.sha256, fs_range=fs_range(self.server.settings))
        except FormatError as exc:
            self.server.stats.reject(f"upload-{exc.status}")
            return exc.status, {"error": exc.message, "reasons": []}
        return 201, json.loads(meta.model_dump_json())


async def _receive_into(writer: PatchWriter, body: Any, chunk: int) -> None:
    """Write *body* through *writer*, *chunk* bytes at a time in a worker thread."""
    buf = bytearray()
    async for data in body:
        buf += data
        if len(buf) >= chunk:
            await trio.to_thread.run_sync(writer.write, bytes(buf))
            buf.clear()
    if buf:
        await trio.to_thread.run_sync(writer.write, bytes(buf))


def register_uploads(app: QuartTrio, server: Server) -> Resumable:
    """Add POST/GET/HEAD/DELETE /api/v1/uploads; PATCH goes through the returned
    :class:`Resumable` (UploadApp routes it there)."""
    def state(upload_id: str) -> Session | _Problem:
        try:
            return Session.open(server.store.uploads, upload_id)
        except KeyError:
            return {"error": f"no upload {upload_id!r}", "reasons": []}, 404

    @app.post("/api/v1/uploads")
    async def create_upload() -> Response | _Problem:
        """Begin a resumable upload: ``Upload-Length`` header (bytes), optional
        ``Upload-Checksum: sha256 <hex>`` of the whole file, and the query of POST
        /api/v1/recordings (format, fs, channels, gain, baseline, name). 201 with its
        Location; then PATCH the bytes (docs/protocol.md §12)."""
        limit = server.settings.store.max_upload_bytes
        try:
            length = _int_header({k.lower(): v for k, v in request.headers.items()},
                                 "Upload-Length")
            if length > limit:
                raise FormatError(413, f"upload of {length} bytes is over the limit of "
                                  f"{limit} bytes")
            if length == 0:
                raise FormatError(422, "empty upload")
            query = request.query_string.decode("latin-1")
            parsed = parse_qs(query)
            upload_params(parsed)  # 400 now rather than after 2 GB
            declared_format(parsed.get("format", [None])[-1], request.content_type)
            sha = parse_checksum(request.headers.get("upload-checksum"))
        except FormatError as exc:
            server.stats.reject(f"upload-{exc.status}")
            return {"error": exc.message, "reasons": []}, exc.status
        session = await trio.to_thread.run_sync(partial(
            Session.create, server.store.uploads, length=length, query=query,
            content_type=request.content_type, sha256=sha))
        body = json.loads(session.state.model_dump_json())
        return Response(json.dumps(body), status=201, content_type="application/json",
                        headers={"location": f"/api/v1/uploads/{session.state.id}",
                                 "upload-offset": "0", "upload-length": str(length)})

    @app.get("/api/v1/uploads/<upload_id>")
    async def get_upload(upload_id: str) -> Response | _Problem:
        """An upload's state; ``Upload-Offset`` (also on HEAD) is where to continue."""
        got = state(upload_id)
        if not isinstance(got, Session):
            return got
        return Response(got.state.model_dump_json(), content_type="application/json",
                        headers={"upload-offset": str(got.state.offset),
                                 "upload-length": str(got.state.length),
                                 "cache-control": "no-store"})

    @app.patch("/api/v1/uploads/<upload_id>")
    async def patch_upload(upload_id: str) -> _Problem:
        """Append bytes: ``Upload-Offset`` header (where the stored bytes end), optional
        ``Upload-Checksum: sha256 <hex>`` of this body; 204 with the new Upload-Offset,
        201 with the recording when complete, 409 wrong offset, 460 wrong checksum
        (docs/protocol.md §12). Streamed by UploadApp, which answers every PATCH here
        before Quart would buffer its body: this route only puts it in the OpenAPI."""
        return {"error": "PATCH /api/v1/uploads/{id} is served by the upload wrapper",
                "reasons": [upload_id]}, 500

    @app.delete("/api/v1/uploads/<upload_id>")
    async def delete_upload(upload_id: str) -> tuple[str, int] | _Problem:
        got = state(upload_id)
        if not isinstance(got, Session):
            return got
        await trio.to_thread.run_sync(got.delete)
        return "", 204

    return Resumable(server)
