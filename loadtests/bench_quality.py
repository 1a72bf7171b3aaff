"""Speed of the filter + detect + SQI chain, batched over many streams, on one core.

    python -m loadtests.bench_quality                       # 200 streams, 60 s each
    python -m loadtests.bench_quality --streams 200 --seconds 60 --frame-ms 100 1000
    # against another checkout (a git worktree of an older commit), side by side:
    python -m loadtests.bench_quality --seconds 30 --ways chain --against /tmp/old --repeat 3

Each stream replays a DS1 record (cycling through the 22, each from a different
offset) at 360 Hz, 2 leads. Per frame round, every stream's block goes through what
the live pipeline runs: ``FilterBank.apply`` (the band-pass, all streams in one call)
and ``screen_batch`` (the quality chain: detectors A and B, SQIs, rates, alerts, and the
events wrapped for the broadcaster). Three ways, side by side in one run:

- ``filter``: the filter bank alone (the cost the chain adds to);
- ``chain``: filter + quality chain batched over all streams (the live screen);
- ``chain/1``: the same chain fed one stream's frame per call (no batching).

Samples are per channel (a 2-lead frame of 360 time points is 720 samples).

``--gc-freeze`` calls ``gc.freeze()`` once the streams are loaded, before measuring:
what a server that froze its start-up objects would spend (full collections then
skip the ~125,000 objects of the imported modules).

``--against DIR`` runs each measurement also with the code of the checkout in DIR (in
a child process, alternating with this one, ``--repeat`` times each; the fastest run
of each is reported): on a shared machine only figures taken side by side compare.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol import Hello
from vital_actors.filtering import FilterBank
from vital_actors.messages import Block, Item
from vital_actors.quality import QualityChain
from vital_actors.screening import screen_batch
from vital_actors.settings import FilterSettings, ScreenSettings
from vital_actors.sources import data_dir, list_records, load_record, synthetic_ecg
from vital_actors.streams import StreamInfo, StreamRegistry

from .against import run_in

__all__ = ["main"]

I16 = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Load:
    infos: list[StreamInfo]
    signals: list[I16]
    frame: int

    @property
    def rounds(self) -> int:
        return min(len(s) for s in self.signals) // self.frame

    def blocks(self, k: int) -> list[Block]:
        t = k * self.frame
        return [Block(info, info.run, k, t, sig[t:t + self.frame], 0.0)
                for info, sig in zip(self.infos, self.signals, strict=True)]


def load(streams: int, seconds: float, frame_ms: float) -> Load:
    root = data_dir()
    folder = root / "mitdb" if root is not None else None
    paths = list_records(folder) if folder is not None and folder.is_dir() else []
    registry = StreamRegistry(FilterSettings())
    infos, signals = [], []
    n = round(seconds * 360)
    recs = [load_record(p) for p in paths] or [synthetic_ecg(seconds=seconds + 60, seed=s)
                                              for s in range(10)]
    for i in range(streams):
        rec = recs[i % len(recs)]
        start = (i // len(recs)) * 7919 % max(1, len(rec.samples) - n)
        hello = Hello(f"s{i}", rec.fs, rec.channels, "int16", rec.gain,
                      tuple(float(b) for b in rec.baseline))
        infos.append(registry.attach(hello))
        signals.append(np.ascontiguousarray(rec.samples[start:start + n]))
    return Load(infos, signals, max(1, round(frame_ms / 1000 * 360)))


def run_filter(lo: Load) -> int:
    bank = FilterBank()
    for k in range(lo.rounds):
        bank.apply(lo.blocks(k))
    return 0


def run_chain(lo: Load) -> int:
    bank, chain, events = FilterBank(), QualityChain(ScreenSettings()), 0
    for k in range(lo.rounds):
        items: list[Item] = list(bank.apply(lo.blocks(k)))
        events += len(screen_batch(chain, items)) - len(items)
    return events


def run_unbatched(lo: Load) -> int:
    bank, chain, events = FilterBank(), QualityChain(ScreenSettings()), 0
    for k in range(lo.rounds):
        for f in bank.apply(lo.blocks(k)):
            events += len(screen_batch(chain, [f])) - 1
    return events


def _time(fn: Callable[[Load], int], lo: Load) -> tuple[float, int]:
    t = time.process_time()
    events = fn(lo)
    return time.process_time() - t, events


WAYS: dict[str, Callable[[Load], int]] = {
    "filter": run_filter, "chain": run_chain, "chain/1": run_unbatched}

# Run in a child process with another checkout's code (its loadtests.bench_quality):
# prints "cpu events" for one way.
_CHILD = """
import gc, sys, time
sys.path.insert(0, sys.argv[1])
import loadtests.bench_quality as b
lo = b.load(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
if sys.argv[6] == "freeze":
    gc.freeze()
fn = {"filter": b.run_filter, "chain": b.run_chain, "chain/1": b.run_unbatched}[sys.argv[5]]
t = time.process_time()
events = fn(lo)
print(time.process_time() - t, events)
"""


def _time_other(root: str, streams: int, seconds: float, frame_ms: float,
                way: str, freeze: bool) -> tuple[float, int]:
    cpu, events = run_in(root, _CHILD, streams, seconds, frame_ms, way,
                         "freeze" if freeze else "-").split()[-2:]
    return float(cpu), int(events)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--frame-ms", type=float, nargs="+", default=[1000.0, 100.0])
    p.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    p.add_argument("--against", metavar="DIR", help="another checkout to run side by side")
    p.add_argument("--repeat", type=int, default=1, help="runs of each, the fastest counts")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() after loading, before measuring")
    args = p.parse_args()
    print(f"{args.streams} streams x {args.seconds:.0f} s at 360 Hz, 2 leads "
          f"(CPU time of the process, one core{', gc.freeze()' if args.gc_freeze else ''})")
    print(f"{'frame':>7} {'way':>8} {'code':>6} {'cpu s':>7} {'M samples/s':>12} "
          f"{'us/frame':>9} {'events':>8}")
    for frame_ms in args.frame_ms:
        lo = load(args.streams, args.seconds, frame_ms)
        if args.gc_freeze:
            gc.freeze()
        samples = lo.rounds * lo.frame * 2 * args.streams
        frames = lo.rounds * args.streams
        for name in args.ways:
            runs: dict[str, list[tuple[float, int]]] = {"this": [], "other": []}
            for _ in range(args.repeat):  # alternating, so both see the same load
                runs["this"].append(_time(WAYS[name], lo))
                if args.against:
                    runs["other"].append(_time_other(args.against, args.streams,
                                                     args.seconds, frame_ms, name,
                                                     args.gc_freeze))
            for code, found in runs.items():
                if not found:
                    continue
                cpu, events = min(found)
                print(f"{frame_ms:>5.0f}ms {name:>8} {code:>6} {cpu:>7.2f} "
                      f"{samples / cpu / 1e6:>12.2f} {cpu / frames * 1e6:>9.1f} {events:>8}",
                      flush=True)


if __name__ == "__main__":
    main()
