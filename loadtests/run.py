"""Run a load scenario against our server and the bare relay, side by side.

    vital-actors loadtest loadtests/scenarios/live.toml --out loadtests/out
    python -m loadtests.run loadtests/scenarios/live.toml --devices 50 200 --seconds 20
    vital-actors loadtest knee --targets relay --clients lean trio-websocket

For each repetition, each N, each target and each client stack (in that nesting, so
that the figures compared in a ratio are taken close together), one fresh server
process. ``--clients`` picks the load generator's client stack: ``lean`` (default) or
``trio-websocket`` (the one it replaced), or both to measure the generator itself. Prints a
progress line while each run goes, then the tables; writes ``report.json`` (every
figure, per-second series, the server's own stats), ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from vital_actors.sources import Recording

from .harness import Outcome, load_recordings, run_scenario
from .plots import write_plots
from .report import Row, generator_table, median_rows, ratio_table, table
from .scenario import CLIENTS, Scenario, ScenarioError, load_scenario
from .targets import TARGETS

__all__ = ["REQUIRED_KEYS", "main"]

SCENARIOS = Path(__file__).parent / "scenarios"
#: Keys every report.json has (the CI smoke test checks them).
REQUIRED_KEYS = ("environment", "scenario", "runs", "summary", "knee", "plots")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vital-actors loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="?", default=str(SCENARIOS / "live.toml"),
                   help="scenario file (TOML) or the name of one in loadtests/scenarios")
    p.add_argument("--devices", type=int, nargs="+", metavar="N", help="override devices")
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), help="override targets")
    p.add_argument("--seconds", type=float, help="override the measuring window (s)")
    p.add_argument("--repeat", type=int, help="override runs of each (target, N)")
    p.add_argument("--clients", nargs="+", choices=CLIENTS,
                   help="the load generator's client stacks (override; default lean)")
    p.add_argument("--out", type=Path, default=Path("loadtests/out"))
    return p


def _scenario(args: argparse.Namespace) -> Scenario:
    path = Path(args.scenario)
    if not path.exists() and (SCENARIOS / f"{args.scenario}.toml").exists():
        path = SCENARIOS / f"{args.scenario}.toml"
    scenario = load_scenario(path)
    changes: dict[str, Any] = {}
    if args.devices:
        changes["devices"] = tuple(args.devices)
    if args.targets:
        changes["targets"] = tuple(args.targets)
    if args.repeat:
        changes["repeat"] = args.repeat
    if args.clients:
        changes["clients"] = tuple(dict.fromkeys(args.clients))
    if args.seconds:
        changes["timing"] = replace(scenario.timing, measure_s=args.seconds)
    unknown = [t for t in changes.get("targets", scenario.targets) if t not in TARGETS]
    if unknown:
        raise ScenarioError(f"unknown targets {unknown}; known: {sorted(TARGETS)}")
    return scenario.with_overrides(**changes)


async def _run(scenario: Scenario, out: Path) -> list[Outcome]:
    load = scenario.load
    seconds = scenario.timing.sending_s + load.ramp_s + 30
    recordings, source = load_recordings(load.records, seconds=seconds, source=load.source,
                                         fs=load.fs, channels=load.channels)
    print(f"scenario {scenario.name}; signal: {source}", flush=True)
    outcomes: list[Outcome] = []
    for rep in range(scenario.repeat):
        for n in scenario.devices:
            for name in scenario.targets:
                for clients in scenario.clients:
                    outcomes.append(await _run_one(scenario, recordings, name, n, rep, clients,
                                                   out))
    return outcomes


async def _run_one(scenario: Scenario, recordings: Sequence[Recording], name: str, n: int,
                   rep: int, clients: str, out: Path) -> Outcome:
    stack = "" if clients == "lean" else f"-{clients}"
    log = out / f"{name}-n{n}-r{rep + 1}{stack}.log"
    print(f"run {rep + 1}/{scenario.repeat}: {name} N={n} clients {clients} ...", flush=True)
    outcome = await run_scenario(TARGETS[name], n, recordings, scenario, log=log, clients=clients)
    row = outcome.row
    print(f"  {row.delivered_per_s:.0f} msg/s  p50 {row.p50_ms:.2f} ms  "
          f"p99 {row.p99_ms:.2f} ms  server CPU {row.server_cpu:.0f}%  "
          f"harness {row.harness_us_per_msg:.0f} µs/msg  lost {row.lost}/{row.sent}", flush=True)
    return outcome


def knee(rows: Sequence[Row], goal_ms: float) -> dict[str, int | None]:
    """Per target: the most devices whose p99 stayed within *goal_ms* (None: none did)."""
    out: dict[str, int | None] = {}
    for row in rows:
        ok = math.isfinite(row.p99_ms) and row.p99_ms <= goal_ms and row.lost == 0
        best = out.get(row.label)
        out[row.label] = max(best or 0, row.devices) if ok else best
    return out


def _environment(argv: Sequence[str]) -> dict[str, object]:
    return {
        "command": shlex.join(["vital-actors", "loadtest", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _write(scenario: Scenario, outcomes: list[Outcome], out: Path, argv: Sequence[str]) -> str:
    summary = median_rows([o.row for o in outcomes])
    knees = knee(summary, scenario.p99_goal_ms)
    runs = [{"row": o.row.as_dict(), "series": o.series, "server_series": o.server_series,
             "server_stats": o.server_stats, "errors": o.errors} for o in outcomes]
    plots = [p.name for p in write_plots(runs, out)]
    env = _environment(argv)
    knee_line = ", ".join(f"{t}: {n if n is not None else 'none'}" for t, n in knees.items())
    generator = generator_table(summary)
    report = (f"{table(summary)}\n\nRatios to the bare relay at the same N:\n\n"
              f"{ratio_table(summary)}\n\nKnee (most devices with p99 <= "
              f"{scenario.p99_goal_ms:g} ms and nothing lost): {knee_line}\n"
              + (f"\nThe load generator's own CPU, per client stack:\n\n{generator}\n"
                 if generator else ""))
    document = {"environment": env, "scenario": asdict(scenario), "runs": runs,
                "summary": [r.as_dict() for r in summary], "knee": knees, "plots": plots}
    (out / "report.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / "report.md").write_text(f"`{env['command']}`, {env['date']}\n\n{report}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        scenario = _scenario(args)
    except ScenarioError as exc:
        raise SystemExit(f"loadtest: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = trio.run(partial(_run, scenario, args.out))
    report = _write(scenario, outcomes, args.out, argv)
    print(f"\n{report}\nwritten: {args.out / 'report.json'}, {args.out / 'report.md'}, plots")


if __name__ == "__main__":
    main()
