"""Load scenarios as files: a TOML file names the load, the targets and the timing.

    name = "live"
    targets = ["relay", "vital-raw"]
    devices = [50, 200]          # one run per count (per target, per repetition)
    clients = ["lean"]           # the generator's client stacks: "lean", "trio-websocket"
    [load]
    source = "mitdb"             # or "synthetic"
    frame_ms = 100
    subscribers_per_stream = 1   # M: each follows one stream
    wall_subscribers = 0         # W: each follows every stream
    stalled_subscribers = 0      # subscribe to a stream and never read
    slow_subscribers = 0         # read at most slow_rate messages/s
    slow_rate = 5.0
    churn_per_s = 0.0            # short-lived extra devices and subscribers per second
    ramp_s = 0.0                 # devices start spread over this long (an overload ramp)
    idle_subscribers = 0         # connected, subscribed to nothing busy: memory per idle one
    fs = 360.0                   # synthetic source only (MIT-BIH is 360 Hz x 2 channels)
    channels = 2
    jobs = 0                     # processing jobs (filter + screening) running alongside
    job_minutes = 10.0           # on an uploaded synthetic recording this long
    [timing]
    warmup_s = 4
    measure_s = 20
    ...

Every key is optional but ``targets`` and ``devices``; unknown keys are errors, so a
typo never silently runs another scenario.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "Load", "Scenario", "ScenarioError", "Timing", "load_scenario"]

#: The load generator's client stacks (``loadtests.clients``): the lean one on plain
#: trio socket streams (the default) and the trio-websocket one it replaced, kept to
#: measure the generator's own cost side by side.
CLIENTS = ("lean", "trio-websocket")


class ScenarioError(ValueError):
    """The scenario file is not valid; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class Load:
    source: str = "mitdb"
    records: int = 8
    frame_ms: float = 100.0
    subscribers_per_stream: int = 1
    wall_subscribers: int = 0
    stalled_subscribers: int = 0
    slow_subscribers: int = 0
    slow_rate: float = 5.0
    churn_per_s: float = 0.0
    ramp_s: float = 0.0
    idle_subscribers: int = 0
    fs: float = 360.0  # synthetic source only (MIT-BIH is 360 Hz x 2)
    channels: int = 2
    jobs: int = 0  # processing jobs started alongside, on an uploaded recording
    job_minutes: float = 10.0  # length of that recording

    @property
    def frame_s(self) -> float:
        return self.frame_ms / 1000

    @property
    def listeners(self) -> int:
        """Measured subscribers per device's frames: M of its own plus W on the wall."""
        return self.subscribers_per_stream + self.wall_subscribers


@dataclass(frozen=True, slots=True)
class Timing:
    """Frames for *warmup_s* + *measure_s* + *tail_s*, then up to *grace_s* for
    stragglers. The tail keeps the first devices' goodbyes out of the window."""

    warmup_s: float = 4.0
    measure_s: float = 20.0
    tail_s: float = 1.0
    grace_s: float = 5.0

    @property
    def sending_s(self) -> float:
        return self.warmup_s + self.measure_s + self.tail_s


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    targets: tuple[str, ...]
    devices: tuple[int, ...]
    load: Load = field(default_factory=Load)
    timing: Timing = field(default_factory=Timing)
    repeat: int = 1
    p99_goal_ms: float = 50.0
    clients: tuple[str, ...] = ("lean",)

    def with_overrides(self, **changes: Any) -> Scenario:
        return replace(self, **changes)


def _section(cls: type[Load] | type[Timing], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ScenarioError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ScenarioError(f"[{where}]: unknown keys {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        if isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if ok and isinstance(default, int) and not isinstance(default, bool):
                ok = isinstance(value, int)
        if not ok:
            raise ScenarioError(f"[{where}].{key} = {value!r}: expected "
                                f"{type(default).__name__} >= 0")
        values[key] = value
    return cls(**values)


def parse_scenario(raw: dict[str, Any], *, name: str) -> Scenario:
    """A :class:`Scenario` from a parsed TOML document."""
    top = {"name", "targets", "devices", "load", "timing", "repeat", "p99_goal_ms", "clients"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ScenarioError(f"unknown keys {unknown}; known: {sorted(top)}")
    targets, devices = raw.get("targets"), raw.get("devices")
    if not isinstance(targets, list) or not targets or not all(
            isinstance(t, str) for t in targets):
        raise ScenarioError("targets must be a non-empty list of names")
    if not isinstance(devices, list) or not devices or not all(
            isinstance(n, int) and n > 0 for n in devices):
        raise ScenarioError("devices must be a non-empty list of positive integers")
    clients = raw.get("clients", ["lean"])
    if not isinstance(clients, list) or not clients or not set(clients) <= set(CLIENTS):
        raise ScenarioError(f"clients must be a non-empty list of {list(CLIENTS)}")
    load = _section(Load, raw.get("load", {}), "load")
    if load.source not in ("mitdb", "synthetic"):
        raise ScenarioError(f"[load].source must be 'mitdb' or 'synthetic', got {load.source!r}")
    if load.source == "mitdb" and (load.fs, load.channels) != (360.0, 2):
        raise ScenarioError("[load] fs and channels apply to source = 'synthetic' only "
                            "(MIT-BIH is 360 Hz x 2 channels)")
    if load.fs <= 0 or load.channels < 1:
        raise ScenarioError("[load] needs fs > 0 and channels >= 1")
    if load.frame_ms <= 0 or load.listeners < 1:
        raise ScenarioError("[load] needs frame_ms > 0 and at least one measured subscriber "
                            "(subscribers_per_stream + wall_subscribers >= 1)")
    repeat = raw.get("repeat", 1)
    if not isinstance(repeat, int) or repeat < 1:
        raise ScenarioError("repeat must be a positive integer")
    return Scenario(name=str(raw.get("name", name)), targets=tuple(targets),
                    devices=tuple(devices), load=load,
                    timing=_section(Timing, raw.get("timing", {}), "timing"), repeat=repeat,
                    p99_goal_ms=float(raw.get("p99_goal_ms", 50.0)), clients=tuple(clients))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the scenario file at *path*.

    Raises:
        ScenarioError: the file is missing, not TOML, or not a valid scenario.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}") from None
    return parse_scenario(raw, name=path.stem)
