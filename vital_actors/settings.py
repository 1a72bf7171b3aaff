"""Settings in three tiers: built-in defaults < TOML file < ``VITAL_*`` environment.

Runtime changes that are safe (a stream's filter) go through the HTTP API on top of
these. Nested keys use ``__`` in the environment: ``VITAL_FILTER__LOW_HZ=1.0``.
Every channel capacity the server opens is derived here, in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "ArchiveSettings",
    "AuthSettings",
    "BufferSettings",
    "DeflateSettings",
    "FilterSettings",
    "Front",
    "JobSettings",
    "LaneQuotas",
    "LaneSettings",
    "LimitSettings",
    "RecoverySettings",
    "ScreenSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "StoreSettings",
    "Watermarks",
    "ZstdSettings",
    "load_settings",
]


#: The quality chain's front end (``ScreenSettings.front``).
Front = Literal["auto", "numpy", "compiled"]


class SettingsError(Exception):
    """The settings file or environment is invalid; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    handshake_timeout_s: float = Field(10.0, gt=0)
    close_timeout_s: float = Field(2.0, gt=0)
    reuse_port: bool = Field(False, description="share the port with other processes "
                             "(SO_REUSEPORT; set by serve --workers)")
    gc_thresholds: tuple[int, int, int] = Field(
        (10_000, 20, 100), description="gc.set_threshold once serving: the live path "
        "allocates tens of thousands of short-lived containers per second, and CPython's "
        "default (700, 10, 10) then ran a full collection every ~2 s (18-80 ms of CPU each "
        "at 150 devices); see docs/benchmarks.md")


class LimitSettings(_Section):
    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_samples_per_frame: int = Field(8192, ge=1)
    max_head_bytes: int = Field(16384, ge=1024)
    max_streams: int = Field(1000, ge=1, description="streams the server keeps (1008)")
    max_connections_per_ip: int = Field(256, ge=1, description="open connections from one "
                                        "address; more get HTTP 429")
    messages_per_s: float = Field(1000.0, gt=0, description="per-connection message rate "
                                  "(token bucket refill); over it: 1008 rate-limited")
    message_burst: int = Field(2000, ge=1, description="token bucket size")
    idle_timeout_s: float = Field(60.0, gt=0, description="a device that sends nothing for "
                                  "this long is closed (1008 idle-timeout)")
    max_channels: int = Field(16, ge=1, le=16, description="channels per stream at hello")
    max_topics: int = Field(10_000, ge=1, description="topics one subscriber connection "
                            "follows at once; a subscribe beyond: 1008 too-many-topics")
    min_fs: float = Field(1.0, gt=0, description="lowest sampling rate accepted at hello")
    max_fs: float = Field(20_000.0, gt=0, description="highest sampling rate at hello")


class AuthSettings(_Section):
    """Tokens (HS256 JWTs, ``vital-actors token``), Origins and CORS."""

    secret: SecretStr | None = Field(None, description="HMAC key, >= 32 bytes")
    required: bool | None = Field(None, description="null: required unless the server "
                                  "binds a loopback address; it cannot be off otherwise")
    allowed_origins: tuple[str, ...] = Field((), description="browser Origins allowed on "
                                             "WebSockets; empty: same host only; '*': any")
    cors_origins: tuple[str, ...] = Field((), description="Origins the HTTP API answers "
                                          "with CORS headers ('*': any)")
    leeway_s: float = Field(5.0, ge=0, description="clock skew tolerated on exp")


class ArchiveSettings(_Section):
    """The live archive: every device frame on disk before it is acked."""

    enabled: bool = True
    dir: Path | None = Field(None, description="null: <store.dir>/live, or a temporary "
                             "directory when store.dir is null too")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="always: fsync every batch; interval: at most "
        "fsync_interval_s behind; never: the OS decides (survives a crash of the server, "
        "not of the machine)")
    fsync_interval_s: float = Field(1.0, gt=0, le=60)
    commit_delay_s: float = Field(
        0.2, ge=0, le=60, description="interval: the shortest wait after the first "
        "unsynced write before a sync, so that one sync (and one ack per device) serves "
        "the frames of that window; 0: sync whenever the writer is idle")
    retention_s: float | None = Field(
        None, gt=0, description="delete finished runs whose last write is older than "
        "this (never a stream's latest run, which its device resumes, nor an open one), "
        "and the frames older than this from the start of the runs kept (a device that "
        "stays connected keeps one run), always keeping a run's last frame; null: keep "
        "them")
    min_free_bytes: int = Field(
        0, ge=0, description="when the archive's file system has less free space than "
        "this, delete the oldest finished runs (as retention_s chooses them) until it has "
        "it again, and if that is not enough, the oldest frames of the runs kept (always "
        "keeping a run's last frame); 0: never")
    prune_interval_s: float = Field(60.0, gt=0, le=86400, description="how often "
                                    "retention_s and min_free_bytes are applied")


class RecoverySettings(_Section):
    """Subscriber recovery (issue 6): each topic's recent messages, kept in memory."""

    enabled: bool = Field(True, description="positions on messages and replay on "
                          "subscribe.since; false: neither (protocol v1 without them)")
    seconds: float = Field(30.0, ge=0, le=3600, description="how long the ring keeps a "
                           "message (0: no ring; raw topics still recover from the archive)")
    max_bytes: int = Field(64 << 20, ge=0, le=1 << 34, description="the ring's bound over "
                           "all topics (msgpack bytes); the oldest messages go first")
    archive: bool = Field(True, description="replay raw topics from the live archive when "
                          "the ring no longer holds what a subscriber missed")
    replay_batch: int = Field(64, ge=1, le=4096, description="messages one replay step "
                              "reads from the archive")


class BufferSettings(_Section):
    """Capacities of the bounded channels (messages), named once here."""

    ingest: int = Field(256, ge=1, description="ingest connections -> filter (shared)")
    filtered: int = Field(256, ge=1, description="filter -> screen")
    screened: int = Field(1024, ge=1, description="screen -> broadcast")
    subscriber: int = Field(10_000, ge=5, description="broadcast -> one subscriber's sender, "
                            "all five priority lanes together (split by lanes.quotas)")
    max_batch: int = Field(512, ge=1, description="blocks the filter takes per batch")
    linger_ms: float = Field(5.0, ge=0, le=50, description="how long the filter and the "
                             "screen wait for more blocks before a batch that is not full")
    archive: int = Field(1024, ge=1, description="ingest connections -> archive writer")


class LaneQuotas(_Section):
    """Shares of a subscriber's buffer (``buffers.subscriber``) per priority lane."""

    critical: float = Field(0.30, gt=0, le=1)
    high: float = Field(0.40, gt=0, le=1)
    normal: float = Field(0.20, gt=0, le=1)
    low: float = Field(0.08, gt=0, le=1)
    bulk: float = Field(0.02, gt=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        total = self.critical + self.high + self.normal + self.low + self.bulk
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"quotas must sum to 1, they sum to {total:g}")
        return self


class Watermarks(_Section):
    """Occupancy of a subscriber's whole buffer (0..1) where its state changes."""

    low: float = Field(0.20, ge=0, lt=1, description="backpressure ends at or below this")
    high: float = Field(0.80, gt=0, lt=1, description="backpressure starts at or above this")
    critical: float = Field(0.95, gt=0, le=1,
                            description="emergency (only CRITICAL and HIGH enter) from here")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high < self.critical:
            raise ValueError(f"watermarks must be ordered low < high < critical, got "
                             f"{self.low} / {self.high} / {self.critical}")
        return self


class LaneSettings(_Section):
    """Each subscriber's outgoing buffer, split into five priority lanes by quota."""

    quotas: LaneQuotas = LaneQuotas()
    watermarks: Watermarks = Watermarks()
    flush_grace_s: float = Field(5.0, gt=0, description="once a subscriber's lanes end "
                                 "(eviction, shutdown), how long its pending writes may "
                                 "take before its connection is aborted")
    seed: int | None = Field(None, description="seed of the drop draws; null: from the OS")
    write_linger_ms: float = Field(
        2.0, ge=0, le=50, description="a busy subscriber's sender waits this long after a "
        "message wakes it, so that one write carries what comes meanwhile (not for "
        "CRITICAL messages); 0: write at once")
    write_linger_above: float = Field(
        200.0, ge=0, description="messages/s (over the last second) above which a "
        "subscriber counts as busy: a dashboard on every stream, not one stream's viewer")

    def capacities(self, buffer: int) -> tuple[int, ...]:
        """Lane capacities for a buffer of *buffer* messages, CRITICAL first (each >= 1)."""
        q = self.quotas
        return tuple(max(1, round(buffer * share))
                     for share in (q.critical, q.high, q.normal, q.low, q.bulk))


class DeflateSettings(_Section):
    """permessage-deflate (RFC 7692) on both WebSocket paths, when the client offers it."""

    enabled: bool = True
    level: int = Field(6, ge=0, le=9, description="zlib level")
    window_bits: int = Field(12, ge=9, le=15, description="server_max_window_bits")
    mem_level: int = Field(5, ge=1, le=9, description="zlib memLevel")
    min_bytes: int = Field(1024, ge=0, description="smaller messages go uncompressed (RSV1 0)")
    context_takeover: bool = Field(
        False, description="keep the server's window between messages: smaller, but then "
        "each connection compresses every message itself (no shared frames)")


class ZstdSettings(_Section):
    """Subprotocol vital.v1.msgpack+zstd (docs/protocol.md section 11)."""

    enabled: bool = True
    level: int = Field(3, ge=1, le=22)
    dictionary: bool = Field(True, description="use the shipped ECG dictionary with clients "
                             "that ask for it (zstd_dict=<id> in the URL query)")
    delta: bool = Field(True, description="delta-encode int16 samples when that is smaller")


class FilterSettings(_Section):
    """A stream's causal filter: Butterworth band-pass and optional mains notch."""

    # JSON has no infinity: a job's job.json or a stream's answer would say null.
    model_config = ConfigDict(allow_inf_nan=False)
    low_hz: float = Field(0.5, gt=0)
    high_hz: float = Field(40.0, gt=0)
    order: int = Field(4, ge=1, le=8)
    notch_hz: float | None = Field(None, description="50 or 60 Hz mains notch; null for none")
    notch_q: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low_hz >= self.high_hz:
            raise ValueError(f"low_hz ({self.low_hz}) must be below high_hz ({self.high_hz})")
        if self.notch_hz is not None and self.notch_hz not in (50.0, 60.0):
            raise ValueError(f"notch_hz must be 50, 60 or null, got {self.notch_hz}")
        return self

    def problems_at(self, fs: float) -> list[str]:
        """Reasons these settings cannot run at sampling rate *fs* (empty when they can)."""
        nyquist = fs / 2
        out = [f"{name} ({hz} Hz) must be below the Nyquist frequency {nyquist} Hz"
               for name, hz in (("high_hz", self.high_hz), ("notch_hz", self.notch_hz))
               if hz is not None and hz >= nyquist]
        return out


class ScreenSettings(_Section):
    """Quality screening: beats, SQIs per window, alerts (docs/quality.md)."""

    window_s: float = Field(1.0, gt=0, description="step of the quality events and alarms")
    sqi_window_s: float = Field(10.0, gt=0, description="length of the SQI window")
    detect_channel: int = Field(0, ge=0, description="channel the QRS detector runs on "
                                "(clamped to the stream's last channel)")
    flatline_mv: float = Field(0.01, ge=0, description="a second whose signal has a "
                               "standard deviation (mV) below this is flat")
    out_of_range_mv: float = Field(5.0, gt=0, description="a flat second whose mean is beyond "
                                   "this sits at a rail: lead off")
    lead_off_fraction: float = Field(0.5, gt=0, le=1, description="share of clipped samples "
                                     "in a second meaning lead off")
    on_windows: int = Field(2, ge=1, description="bad seconds in a row before a lead alert")
    off_windows: int = Field(2, ge=1, description="good seconds in a row before it ends")
    asystole_s: float = Field(4.0, gt=0, description="no beat for this long: asystole")
    brady_bpm: float = Field(40.0, gt=0, description="10-s median HR below this: bradycardia")
    tachy_bpm: float = Field(150.0, gt=0, description="10-s median HR above this: tachycardia")
    rate_hold_s: int = Field(10, ge=1, description="seconds a rate must persist to alert")
    rate_clear_s: int = Field(5, ge=1, description="seconds back in range to clear it")
    rate_margin_bpm: float = Field(5.0, ge=0, description="hysteresis of the rate limits")
    min_fs: float = Field(50.0, gt=12.5, description="streams sampled below this (Hz) are "
                          "not screened: no beats, quality or alerts (validated 125-1000)")
    max_fs: float = Field(2000.0, gt=0, description="nor above this (Hz)")
    front: Front = Field(
        "auto", description="the chain's per-sample front end: compiled (numba, ~3x less "
        "CPU), numpy (quality/front.py, the reference), or auto: compiled when numba "
        "imports; both give the same events bit for bit")

    @model_validator(mode="after")
    def _front_available(self) -> Self:
        if self.front == "compiled":
            from .quality.front_jit import available  # imports numba: only when asked

            if not available():
                raise ValueError("front = 'compiled' needs numba, which does not import "
                                 "here: install it, or use 'auto' or 'numpy'")
        return self


class StoreSettings(_Section):
    """Recordings on disk (issue 5): uploads, job results, the chunk cache."""

    dir: Path | None = Field(None, description="store directory; null: a temporary one that "
                             "is deleted when the server stops")
    max_upload_bytes: int = Field(2 * 1024**3 + 2**20, ge=1024, description="request body cap")
    write_chunk_bytes: int = Field(1 << 20, ge=4096,
                                   description="body bytes gathered before one decode+write")
    cache_bytes: int = Field(64 << 20, ge=1 << 16, description="LRU chunk cache bound")
    chunk_bytes: int = Field(1 << 20, ge=4096, description="target size of one cached chunk")
    max_data_frames: int = Field(1 << 22, ge=1, description="most frames one /data returns")


class JobSettings(_Section):
    """Batch processing of recordings (issue 5)."""

    max_concurrent: int = Field(1, ge=1, description="jobs running at once (2 cores)")
    chunk_frames: int = Field(1 << 18, ge=256, description="frames per processing chunk")
    max_queued: int = Field(1000, ge=1, description="jobs waiting before POST is refused")
    switch_interval_ms: float = Field(1.0, gt=0, le=5, description="sys.setswitchinterval "
                                      "while jobs can run: how soon a job thread yields the GIL")


class BusSettings(_Section):
    """The Redis bus between processes and nodes (off without a URL)."""

    url: str | None = Field(None, description="redis://host:port; null: one process, "
                            "in-process channels only")
    node: str | None = Field(None, description="this node's id; null: hostname-pid")
    prefix: str = Field("vital:", min_length=1, description="prefix of every Redis key")
    lease_s: float = Field(5.0, gt=0, description="stream ownership lease; a dead node's "
                           "streams move after at most this long")
    outbox: int = Field(10_000, ge=1, description="messages waiting to be published")
    publish_batch: int = Field(256, ge=1, description="messages published (and recorded) "
                               "per round trip to Redis at most")
    publish_linger_s: float = Field(0.005, ge=0, description="how long the bus publisher "
                                    "lets a batch gather before it sends it (0: at once)")
    retry_s: float = Field(0.5, gt=0, description="pause before reconnecting to Redis")
    interest_s: float = Field(1.0, gt=0, description="how often nodes advertise and learn "
                              "which topics their subscribers follow")
    job_poll_s: float = Field(0.25, gt=0, description="how often a node with a free job "
                              "slot looks for a job queued on another node")
    history: bool = Field(True, description="record followed topics in Redis Streams, so a "
                          "subscriber recovers on another node; false: live pub/sub only")
    history_maxlen: int = Field(10_000, ge=10, description="messages each topic's history "
                                "stream keeps in Redis (XADD MAXLEN ~)")
    history_s: float = Field(60.0, gt=0, description="a topic's history stream expires this "
                             "long after its last message")

    @model_validator(mode="after")
    def _redis_url(self) -> Self:
        if self.url is not None and not self.url.startswith("redis://"):
            raise ValueError(f"bus.url must start with redis://, got {self.url!r}")
        return self


class Settings(BaseSettings):
    """All settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="VITAL_", env_nested_delimiter="__", extra="forbid", frozen=True,
    )

    server: ServerSettings = ServerSettings()
    limits: LimitSettings = LimitSettings()
    buffers: BufferSettings = BufferSettings()
    filter: FilterSettings = FilterSettings()
    filtered_dtype: Literal["float32", "float64"] = "float32"
    screen: ScreenSettings = ScreenSettings()
    lanes: LaneSettings = LaneSettings()
    deflate: DeflateSettings = DeflateSettings()
    zstd: ZstdSettings = ZstdSettings()
    stats_interval_s: float = Field(1.0, gt=0)
    store: StoreSettings = StoreSettings()
    jobs: JobSettings = JobSettings()
    bus: BusSettings = BusSettings()
    auth: AuthSettings = AuthSettings()
    archive: ArchiveSettings = ArchiveSettings()
    recovery: RecoverySettings = RecoverySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Later sources lose: init (runtime) > environment > TOML file > defaults.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load defaults, then the TOML file at *path* (or ``$VITAL_SETTINGS_FILE``), then env.

    *overrides* win over all three (used by tests and the CLI's flags).

    Raises:
        SettingsError: naming each invalid key and why.
    """
    path = path if path is not None else os.environ.get("VITAL_SETTINGS_FILE") or None
    cls: type[Settings] = Settings
    if path is not None:
        if not Path(path).is_file():
            raise SettingsError(f"settings file {str(path)!r} does not exist")
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": Path(path)})
        cls = type("FileSettings", (Settings,), {"model_config": config})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    except (OSError, ValueError) as exc:  # a TOML syntax error
        raise SettingsError(f"cannot read settings: {exc}") from None
