"""The live screen's CPU per frame by frames per call, with the caches warm or cold.

    python -m loadtests.bench_screen_cache --per-call 30 120 --repeat 3
    python -m loadtests.bench_screen_cache --per-call 30 --cold-only --against /tmp/old
    python -m loadtests.bench_screen_cache --per-call 30 --cold-only --fused
    python -m loadtests.bench_screen_cache --streams 1000 --per-call 50 200 --shuffle
    python -m loadtests.bench_screen_cache --per-call 50 200 --shuffle --front numpy compiled

In the server the screen costs more per frame than in ``bench_quality``'s tight loop
(docs/benchmarks.md): between two of its calls the rest of the server runs, and what
the screen had in the CPU's caches is gone. This feeds the screen (``screen_batch``,
after the filter bank, which is not timed) the 200 DS1 streams of ``bench_quality`` in
calls of N frames each, in arrival order, and between calls either does nothing
(``warm``) or reads an array larger than the caches (``cold``, ``--pollute-mb``).
Only the screen's calls are timed (``process_time``). ``--against DIR`` also runs each
measurement with the code of another checkout (a child process), alternating.
``--fused`` also measures each call filtered right before it (as if one actor did
both), beside the usual (all filtered first). ``--front`` measures the chain with
each front end given (``ScreenSettings.front``), alternating.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import get_args

import numpy as np

from vital_actors.filtering import FilterBank
from vital_actors.messages import Block, Item
from vital_actors.quality import QualityChain
from vital_actors.quality.chain import warm_up
from vital_actors.screening import screen_batch
from vital_actors.settings import Front, ScreenSettings

from .against import run_in
from .bench_quality import Load, load

__all__ = ["main", "screen_us_per_frame"]


def screen_us_per_frame(lo: Load, per_call: int, junk: np.ndarray | None,
                        fused: bool = False, shuffle: bool = False,
                        front: Front = "auto") -> float:
    """µs of CPU per frame of the screen fed *per_call* frames a call; with *junk*, read
    between calls; *fused*: each call's frames filtered right before it (not timed),
    as one actor doing both would, instead of all before the first call; *shuffle*:
    each round's frames in another order (as they arrive in a server), so that a call's
    streams are not the ones that went together in the call before; *front*: the
    chain's front end."""
    bank, chain = FilterBank(), QualityChain(ScreenSettings(front=front))
    rng = np.random.default_rng(0)
    blocks: list[Block] = []
    for k in range(lo.rounds):
        round_ = lo.blocks(k)
        blocks += [round_[i] for i in rng.permutation(len(round_))] if shuffle else round_
    calls = [blocks[a:a + per_call] for a in range(0, len(blocks), per_call)]
    filtered: list[list[Item]] = [] if fused else [list(bank.apply(c)) for c in calls]
    spent = 0.0
    for k, call in enumerate(calls):
        if junk is not None:
            junk.sum()
        items: list[Item] = list(bank.apply(call)) if fused else filtered[k]
        t = time.process_time()
        screen_batch(chain, items)
        spent += time.process_time() - t
    return spent / len(blocks) * 1e6


# Run in a child process with another checkout's code: prints µs per frame.
_CHILD = """
import gc, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from loadtests.bench_quality import load
from loadtests.bench_screen_cache import screen_us_per_frame
lo = load(int(sys.argv[2]), float(sys.argv[3]), 100)
gc.freeze()
junk = None if sys.argv[6] == "warm" else np.ones(round(float(sys.argv[5]) * 1e6 / 8))
print(screen_us_per_frame(lo, int(sys.argv[4]), junk, shuffle=sys.argv[7] == "1"))
"""


def _other(root: str, streams: int, seconds: float, per_call: int, mb: float,
           caches: str, shuffle: bool) -> float:
    return float(run_in(root, _CHILD, streams, seconds, per_call, mb, caches,
                        int(shuffle)).split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--per-call", type=int, nargs="+", default=[30, 120])
    p.add_argument("--pollute-mb", type=float, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cold-only", action="store_true")
    p.add_argument("--against", help="another checkout to run side by side")
    p.add_argument("--fused", action="store_true",
                   help="also with each call filtered right before it")
    p.add_argument("--shuffle", action="store_true",
                   help="each round's frames in a new order (calls' streams vary)")
    p.add_argument("--front", nargs="+", choices=get_args(Front), default=["auto"],
                   help="the chain's front end(s); several: measured alternating")
    args = p.parse_args()
    lo = load(args.streams, args.seconds, 100)
    for front in args.front:  # numba's compile or cache load, before any timing
        warm_up(ScreenSettings(front=front))
    gc.freeze()
    junk = np.ones(round(args.pollute_mb * 1e6 / 8))
    print(f"{'frames/call':>11} {'caches':>6} {'code':>8} {'µs/frame (each run)':>24}")
    ways = (("cold", junk),) if args.cold_only else (("warm", None), ("cold", junk))
    for n in args.per_call:
        for name, pollute in ways:
            this = ["this"] if args.front == ["auto"] else args.front
            runs: dict[str, list[float]] = {**{k: [] for k in this}, "other": []}
            for _ in range(args.repeat):
                for code, front in zip(this, args.front, strict=True):
                    runs[code].append(screen_us_per_frame(lo, n, pollute,
                                                          shuffle=args.shuffle, front=front))
                if args.against:
                    runs["other"].append(_other(args.against, args.streams, args.seconds,
                                                n, args.pollute_mb, name, args.shuffle))
            if args.fused:
                runs["fused"] = [screen_us_per_frame(lo, n, pollute, fused=True,
                                                     shuffle=args.shuffle)
                                 for _ in range(args.repeat)]
            for code, got in runs.items():
                if got:
                    print(f"{n:11d} {name:>6} {code:>8} "
                          f"{' '.join(f'{x:7.1f}' for x in got):>24}")


if __name__ == "__main__":
    main()
