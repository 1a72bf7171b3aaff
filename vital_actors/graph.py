"""The actor graph: the one place that opens channels and the root nursery.

    device ─ws─▶ ingest xN ─┐ ingest (shared inlet, cloned per device)
                            ▼
                          filter ──filtered──▶ screen ──screened──▶ broadcast
                                                                       │ hub: subscriber xM
                                                                       ▼ (one buffer each)
                                                              subscriber ─ws─▶ dashboard

Shutdown flows downstream: stop accepting; close device connections (1001), which
closes their inlet clones; the pipeline drains and ends; broadcast closes every
subscriber buffer, and each subscriber connection flushes and closes with 1001.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from protocol import INGEST_PATH, SUBSCRIBE_PATH, CloseCode

from .api.app import create_app
from .archive import ArchiveItem, run_archive, scan
from .auth import Gate, check_startup
from .broadcast import Hub, publish_filtered, run_broadcast, run_hub_rates
from .bus import BusHub, RedisBus, RedisJobBoard
from .edge.door import Route, serve_door
from .edge.handshake import Compression
from .edge.websocket import WebSocket
from .filtering import FilterBank, run_filter
from .history import ArchiveHistory, archive_token
from .ingest import run_ingest
from .jobs import JobRunner
from .lag import LoopLag, run_lag_probe
from .loader import ChunkLoader
from .messages import Item
from .quality.chain import warm_up
from .replay import Replays
from .screening import run_screen
from .settings import Settings
from .stats import Stats, run_rates
from .store import RecordingStore
from .streams import StreamRegistry
from .subscribers import run_subscriber

__all__ = ["Server"]

_log = logging.getLogger(__name__)
API_RESTARTS = 5
API_RESTART_WINDOW_S = 60.0


class Server:
    """The whole server. ``await nursery.start(server.run)`` returns the bound port."""

    # Recordings (issue 5): these exist while run() runs, in settings.store.dir or a
    # temporary directory.
    store: RecordingStore
    loader: ChunkLoader
    jobs: JobRunner
    replays: Replays

    def __init__(self, settings: Settings) -> None:
        check_startup(settings)  # refuses a public address without auth (AuthConfigError)
        self.settings = settings
        self.stats = Stats()
        self.gate = Gate(settings, self.stats)
        self.registry = StreamRegistry(settings.filter)
        hub_class = Hub if settings.bus.url is None else BusHub
        self.hub = hub_class(buffer=settings.buffers.subscriber, settings=settings.lanes,
                             stats=self.stats, recovery=settings.recovery,
                             registry=self.registry)
        # Beyond one process (issue 9): live topics and stream leases over Redis.
        self.bus = None if settings.bus.url is None else RedisBus(settings.bus)
        if isinstance(self.hub, BusHub):
            self.hub.bus = self.bus
        self.registry.owner = self.bus
        self.filter_bank = FilterBank()
        self.loop_lag = LoopLag()
        self.port: int | None = None
        self.stopping = trio.Event()  # set when shutdown begins
        self._devices: set[trio.CancelScope] = set()
        self._channels: dict[str, trio.MemorySendChannel[Item]] = {}
        self._archive: trio.MemorySendChannel[ArchiveItem] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.server.host}:{self.port}"

    def channel_depths(self) -> dict[str, tuple[int, int]]:
        """Each pipeline channel's (messages waiting, capacity), and the archive's (with
        the archive on): a full archive channel parks ingest."""
        out = {}
        senders: list[tuple[str, trio.MemorySendChannel[Any]]] = list(self._channels.items())
        if self._archive is not None:
            senders.append(("archive", self._archive))
        for name, tx in senders:
            s = tx.statistics()
            out[name] = (s.current_buffer_used, int(s.max_buffer_size))
        return out

    def shutdown(self) -> None:
        """Begin a clean stop (idempotent); :meth:`run` returns when it is done."""
        self.stopping.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        ingest_tx, ingest_rx = trio.open_memory_channel[Item](s.buffers.ingest)
        filtered_tx, filtered_rx = trio.open_memory_channel[Item](s.buffers.filtered)
        screened_tx, screened_rx = trio.open_memory_channel[Item](s.buffers.screened)
        self._channels = {"ingest": ingest_tx, "filtered": filtered_tx,
                          "screened": screened_tx}
        api_stop = trio.Event()
        with tempfile.TemporaryDirectory(prefix="vital-") as tmp:
            api_socket = str(Path(tmp) / "api.sock")
            self._open_store(Path(tmp) / "store")
            archive_rx = self._open_archive(Path(tmp) / "live")
            recordings = trio.CancelScope()
            replay_tx, progress_tx = ingest_tx.clone(), screened_tx.clone()
            async with trio.open_nursery() as root:
                await root.start(self._recordings, recordings, replay_tx, progress_tx)
                if archive_rx is not None:
                    await root.start(partial(
                        run_archive, archive_rx, root=self.archive_root, fsync=s.archive.fsync,
                        interval_s=s.archive.fsync_interval_s,
                        commit_delay_s=s.archive.commit_delay_s, max_batch=s.buffers.max_batch,
                        retention_s=s.archive.retention_s,
                        min_free_bytes=s.archive.min_free_bytes,
                        prune_interval_s=s.archive.prune_interval_s, stats=self.stats))
                await root.start(partial(run_filter, ingest_rx, filtered_tx,
                                         max_batch=s.buffers.max_batch, bank=self.filter_bank,
                                         linger=s.buffers.linger_ms / 1000,
                                         publish=partial(publish_filtered, self.hub,
                                                         filtered_dtype=s.filtered_dtype)))
                # The compiled front end is compiled (~6 s the first time) or loaded
                # from numba's cache (~0.2 s) here, before any device is accepted, not
                # on the first frame; in a thread, so the loop keeps running.
                await trio.to_thread.run_sync(warm_up, s.screen)
                await root.start(partial(run_screen, filtered_rx, screened_tx,
                                         settings=s.screen, max_batch=s.buffers.max_batch,
                                         linger=s.buffers.linger_ms / 1000))
                await root.start(partial(run_broadcast, screened_rx, hub=self.hub,
                                         filtered_dtype=s.filtered_dtype, raw=False,
                                         filtered=False))
                bus = trio.CancelScope()
                if self.bus is not None:
                    await root.start(_cancellable, bus, self.bus.run, self.hub, self.registry)
                services = trio.CancelScope()
                root.start_soon(self._services, services, api_socket, api_stop)
                async with trio.open_nursery() as connections:
                    routes: dict[str, Route] = {
                        INGEST_PATH: partial(self._device, ingest_tx),
                        SUBSCRIBE_PATH: self._subscriber,
                    }
                    # serve_door runs in `connections` once started, so its own scope
                    # (not one around the start call) is what stops the accepting.
                    accepting = trio.CancelScope()
                    compression = Compression.from_settings(s)
                    self.port = await connections.start(partial(
                        _cancellable, accepting, serve_door, host=s.server.host,
                        port=s.server.port, routes=routes, subprotocols=compression.subprotocols,
                        upstream_path=api_socket, head_limit=s.limits.max_head_bytes,
                        handshake_timeout=s.server.handshake_timeout_s,
                        max_message_bytes=s.limits.max_message_bytes, gate=self.gate,
                        stats=self.stats, handler_nursery=connections, compression=compression,
                        reuse_port=s.server.reuse_port))
                    task_status.started(self.port)
                    await self.stopping.wait()
                    accepting.cancel()
                    api_stop.set()  # hypercorn closes its connections: the splices end
                    for scope in list(self._devices):
                        scope.cancel()
                    recordings.cancel()  # replays end; jobs stop at a chunk's checkpoint
                    ingest_tx.close()  # the pipeline ends once every device clone closes
                    if self._archive is not None:
                        self._archive.close()  # the archive syncs and ends after them too
                services.cancel()
                bus.cancel()  # what the pipeline still drains reaches local subscribers only

    def _open_archive(self, fallback: Path) -> trio.MemoryReceiveChannel[ArchiveItem] | None:
        """Restore the streams the live archive holds; its channel (None when disabled)."""
        s = self.settings
        self.archive_root = s.archive.dir or (s.store.dir / "live" if s.store.dir else fallback)
        if not s.archive.enabled:
            return None
        if s.recovery.archive:  # raw topics' epochs survive a restart over this archive
            self.hub.epoch_token = archive_token(self.archive_root)
            self.hub.history = ArchiveHistory(self.archive_root, self.hub.epoch_token)
        for stored in scan(self.archive_root):
            self.registry.restore(stored.hello, run=stored.run, next_seq=stored.next_seq,
                                  t0=stored.t0)
        self._archive, archive_rx = trio.open_memory_channel[ArchiveItem](s.buffers.archive)
        return archive_rx

    def _open_store(self, fallback: Path) -> None:
        s = self.settings
        self.store = RecordingStore(s.store.dir or fallback)
        self.loader = ChunkLoader(self.store, cache_bytes=s.store.cache_bytes,
                                  chunk_bytes=s.store.chunk_bytes)
        # With the bus (issue 9) and a store.dir (shared by the nodes) the job queue is
        # shared: any node runs any job. A temporary store is this node's alone: so are
        # its jobs.
        board = (None if self.bus is None or s.store.dir is None
                 else RedisJobBoard(s.bus, node=self.bus.node))
        self.jobs = JobRunner(self.store, s.jobs, s.screen, board=board)
        self.replays = Replays(self.loader, self.registry, self.stats, live=self.hub)

    async def _recordings(self, scope: trio.CancelScope, inlet: trio.MemorySendChannel[Item],
                          progress: trio.MemorySendChannel[Item], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Replays (into a clone of the ingest inlet) and the job runner (progress into a
        clone of the broadcaster's inbox), until *scope* is cancelled."""
        with inlet, progress, scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.replays.run, inlet)
                await nursery.start(self.jobs.run, progress)
                task_status.started()

    async def _services(self, scope: trio.CancelScope, api_socket: str,
                        api_stop: trio.Event) -> None:
        config = Config()
        config.bind = [f"unix:{api_socket}"]
        config.accesslog = None
        config.errorlog = None
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(run_lag_probe, self.loop_lag))
                nursery.start_soon(partial(run_rates, self.stats,
                                           interval=self.settings.stats_interval_s))
                nursery.start_soon(partial(run_hub_rates, self.hub,
                                           interval=self.settings.stats_interval_s))
                await self._serve_api(config, api_stop)
                nursery.cancel_scope.cancel()

    async def _serve_api(self, config: Config, api_stop: trio.Event) -> None:
        """Run the HTTP API's hypercorn until *api_stop*, starting it again if it dies.

        A race inside hypercorn (its close's ``send_eof`` against an answer's
        ``send_all`` on a connection the client just cut) raises BusyResourceError out
        of its serve and ends every HTTP connection with it. The HTTP API is started
        again on the same socket (in-flight requests are cut; resumable uploads carry
        on from their stored offset); the live streams never notice. More than
        ``API_RESTARTS`` deaths in ``API_RESTART_WINDOW_S`` is a bug, not a race: it is
        raised.
        """
        deaths: list[float] = []
        while True:
            try:
                await hypercorn_serve(create_app(self), config,
                                      shutdown_trigger=api_stop.wait)
                return
            except Exception:
                now = trio.current_time()
                deaths = [t for t in deaths if now - t < API_RESTART_WINDOW_S] + [now]
                if api_stop.is_set() or len(deaths) > API_RESTARTS:
                    raise
                _log.exception("the HTTP API's hypercorn died; starting it again")
                self.stats.totals.api_restarts += 1

    async def _device(self, inlet: trio.MemorySendChannel[Item], ws: WebSocket) -> None:
        try:
            outbox = inlet.clone()
            archive = self._archive.clone() if self._archive is not None else None
        except trio.ClosedResourceError:  # accepted just as the server began to stop
            await ws.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        with trio.CancelScope() as scope:
            self._devices.add(scope)
            try:
                await run_ingest(ws, outbox, registry=self.registry, stats=self.stats,
                                 limits=self.settings.limits, archive=archive,
                                 live=self.hub, patience=self.settings.server.close_timeout_s)
            finally:
                self._devices.discard(scope)
        if scope.cancelled_caught:
            await ws.close(CloseCode.GOING_AWAY, "server shutting down")
        else:
            await ws.close()

    async def _subscriber(self, ws: WebSocket) -> None:
        await run_subscriber(ws, hub=self.hub, stats=self.stats, registry=self.registry,
                             limits=self.settings.limits)


async def _cancellable(scope: trio.CancelScope, service: Callable[..., Awaitable[None]],
                       /, *args: Any, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
                       **kwargs: Any) -> None:
    """Run *service* (started with a port) inside *scope*, so the caller can stop it."""
    with scope:
        await service(*args, task_status=task_status, **kwargs)
