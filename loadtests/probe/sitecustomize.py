"""A probe of the server under load, loaded by Python at start-up when this directory is
on PYTHONPATH (``sitecustomize``); it acts only in a ``serve`` process with
``VITAL_PROBE_OUT`` set, and writes there at exit:

- every garbage collection's CPU time per generation (``gc.callbacks``), and when each
  one over 5 ms ran (seconds since start-up) and whether the start-up heap was frozen;
- every trio task step's CPU time by task name (a ``trio.abc.Instrument``): where the
  event loop's CPU goes, and which steps are long;
- the live screen's batches: how many frames each ``screen_batch`` call got, and the
  CPU per frame of those calls (and how much of it garbage collections took).

    PYTHONPATH=loadtests/probe VITAL_PROBE_OUT=/tmp/probe \\
        vital-actors loadtest knee --devices 200 --targets vital-raw --seconds 15

The instrument costs a few µs per step, so figures taken with it are for shares, not
for the knee.
"""

from __future__ import annotations

import os
import sys

if "serve" in sys.argv and os.environ.get("VITAL_PROBE_OUT"):
    import atexit
    import collections
    import gc
    import time
    from typing import Any

    import trio

    _out = os.environ["VITAL_PROBE_OUT"]
    _cpu: dict[str, float] = collections.defaultdict(float)
    _steps: collections.Counter[str] = collections.Counter()
    _long: collections.Counter[tuple[str, int]] = collections.Counter()
    _gc: dict[int, list[float]] = collections.defaultdict(list)
    _gc_start = [0.0]
    _gc_in_screen = [0.0]  # ms of collections that ran inside screen calls
    _in_screen = [False]
    _born = time.monotonic()
    _long_gc: list[str] = []

    def _on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_start[0] = time.thread_time()
        else:
            ms = (time.thread_time() - _gc_start[0]) * 1000
            _gc[info["generation"]].append(ms)
            _gc_in_screen[0] += ms if _in_screen[0] else 0.0
            if ms > 5:
                _long_gc.append(f"  gen{info['generation']} {ms:6.1f} ms at "
                                f"{time.monotonic() - _born:6.1f} s, "
                                f"{'after' if gc.get_freeze_count() else 'before'} the freeze")

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.t = time.thread_time()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            ms = (time.thread_time() - self.t) * 1000
            name = task.name.split(".")[-1]
            _cpu[name] += ms
            _steps[name] += 1
            for bound in (1, 5, 10, 20):
                if ms > bound:
                    _long[(name, bound)] += 1

    import numpy as np

    import vital_actors.screening as _screening
    from vital_actors.messages import Filtered

    _batches: list[int] = []
    _screen_s = [0.0]
    _screen_batch = _screening.screen_batch

    def _timed_screen(chain: Any, batch: Any) -> Any:
        t = time.thread_time()
        _in_screen[0] = True
        try:
            return _screen_batch(chain, batch)
        finally:
            _in_screen[0] = False
            _screen_s[0] += time.thread_time() - t
            _batches.append(sum(isinstance(i, Filtered) for i in batch))

    # run_screen binds the module's screen_batch when it starts, after this.
    _screening.screen_batch = _timed_screen

    _run = trio.run

    def _probed_run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), _Steps()]
        return _run(*args, **kwargs)

    def _dump() -> None:
        os.makedirs(_out, exist_ok=True)
        total = sum(_cpu.values()) or 1.0
        with open(os.path.join(_out, f"probe-{os.getpid()}.txt"), "w") as f:
            f.write("task steps: name, CPU ms, share, steps, µs/step, steps over 1/5/10/20 ms\n")
            for name, ms in sorted(_cpu.items(), key=lambda kv: -kv[1])[:16]:
                longs = " ".join(str(_long[(name, b)]) for b in (1, 5, 10, 20))
                f.write(f"  {name:28s} {ms:9.0f} {100 * ms / total:5.1f} % {_steps[name]:8d} "
                        f"{1000 * ms / _steps[name]:8.1f}  {longs}\n")
            for gen, v in sorted(_gc.items()):
                v.sort()
                f.write(f"gc gen{gen}: {len(v)} collections, CPU {sum(v):.0f} ms, "
                        f"longest {v[-1]:.1f} ms\n")
            f.write("collections over 5 ms:\n" + "".join(f"{x}\n" for x in _long_gc))
            if _batches:
                b = np.array(_batches)
                f.write(f"screen: {len(b)} calls, {b.sum()} frames, frames per call mean "
                        f"{b.mean():.1f}, p10/p50/p90 {np.percentile(b, 10):.0f}/"
                        f"{np.median(b):.0f}/{np.percentile(b, 90):.0f}; CPU "
                        f"{_screen_s[0]:.2f} s, {1e6 * _screen_s[0] / max(b.sum(), 1):.1f} "
                        f"µs per frame, of which collections {_gc_in_screen[0]:.0f} ms, "
                        f"{1e3 * _gc_in_screen[0] / max(b.sum(), 1):.1f} µs per frame\n")

    gc.callbacks.append(_on_gc)
    trio.run = _probed_run  # type: ignore[assignment]
    atexit.register(_dump)
