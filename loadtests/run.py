"""Live path load test: N devices x 1 subscriber each, our server against a bare relay.

    timeout -s INT 900 python -m loadtests.run --devices 50 200 --seconds 20 \\
        --out loadtests/out

For each repetition, each N and each target (in that nesting, so that the figures
compared in a ratio are taken close together), one fresh server process. Prints and
writes (``results.json``, ``report.md``) the figures and their ratios to the relay.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from .harness import Scenario, load_recordings, run_scenario
from .report import Row, median_rows, ratio_table, table
from .targets import TARGETS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[50, 200], metavar="N",
                   help="device counts (one subscriber per device); default 50 200")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS),
                   help="servers to measure (default: all)")
    p.add_argument("--seconds", type=float, default=20.0, help="measuring window (s)")
    p.add_argument("--warmup", type=float, default=4.0, help="excluded from the figures (s)")
    p.add_argument("--tail", type=float, default=1.0,
                   help="keep sending after the window, so that no device has left (s)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="at most this long for late messages after the last frame (s)")
    p.add_argument("--frame-ms", type=float, default=100.0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each (target, N)")
    p.add_argument("--records", type=int, default=8, help="distinct MIT-BIH records to replay")
    p.add_argument("--out", type=Path, default=Path("loadtests/out"))
    return p


async def _run(args: argparse.Namespace, scenario: Scenario) -> list[Row]:
    recordings, source = load_recordings(args.records, seconds=scenario.sending_s + 30)
    print(f"signal: {source}", flush=True)
    rows: list[Row] = []
    for rep in range(args.repeat):
        for n in args.devices:
            for name in args.targets:
                target = TARGETS[name]
                log = args.out / f"{name}-n{n}-r{rep + 1}.log"
                print(f"run {rep + 1}/{args.repeat}: {name} N={n} ...", flush=True)
                row = await run_scenario(target, n, recordings, scenario, log=log)
                print(f"  {row.delivered_per_s:.0f} msg/s  p50 {row.p50_ms:.2f} ms  "
                      f"p99 {row.p99_ms:.2f} ms  server CPU {row.server_cpu:.0f}%  "
                      f"lost {row.lost}/{row.sent}", flush=True)
                rows.append(row)
    return rows


def _environment(args: argparse.Namespace, scenario: Scenario) -> dict[str, object]:
    return {
        "command": shlex.join(["python", "-m", "loadtests.run", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "scenario": scenario.__repr__(),
        "devices": args.devices, "targets": args.targets, "repeat": args.repeat,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    scenario = Scenario(frame_s=args.frame_ms / 1000, warmup_s=args.warmup,
                        measure_s=args.seconds, tail_s=args.tail, grace_s=args.grace)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = trio.run(partial(_run, args, scenario))
    summary = median_rows(rows)
    report = (f"{table(summary)}\n\nRatios to the bare relay at the same N:\n\n"
              f"{ratio_table(summary)}\n")
    env = _environment(args, scenario)
    (args.out / "results.json").write_text(json.dumps(
        {"environment": env, "runs": [r.as_dict() for r in rows],
         "summary": [r.as_dict() for r in summary]}, indent=2) + "\n")
    (args.out / "report.md").write_text(f"`{env['command']}`, {env['date']}\n\n{report}")
    print(f"\n{report}\nwritten: {args.out / 'results.json'}, {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
