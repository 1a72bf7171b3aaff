"""The load-test harness works end to end and writes a complete report (CI smoke).

It runs ``loadtests/scenarios/smoke.toml`` (a few seconds: both targets, every kind of
client) through the ``vital-actors loadtest`` command. It checks that the report is
complete, not what the figures are: those are measured on a quiet machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from loadtests.plots import PLOTS
from loadtests.run import REQUIRED_KEYS
from vital_actors.cli import main


def test_smoke_scenario_writes_a_complete_report(tmp_path: Path, mitdb: Path) -> None:
    main(["loadtest", "smoke", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(REQUIRED_KEYS) <= set(report)
    assert {r["row"]["target"] for r in report["runs"]} == {"relay", "vital-raw"}
    for run in report["runs"]:
        row = run["row"]
        assert row["sent"] > 0 and row["delivered_per_s"] > 0
        assert math.isfinite(row["p99_ms"]) and row["p99_ms"] >= row["p50_ms"] > 0
        assert math.isfinite(row["bits_per_sample"]) and row["bits_per_sample"] > 0
        assert math.isfinite(row["idle_kb_each"])
        assert run["series"]["t"] and run["server_series"]["rss_mb"]
    vital = next(r for r in report["runs"] if r["row"]["target"] == "vital-raw")
    assert vital["server_stats"]["loop_lag"]["samples"] > 0
    assert len(vital["server_stats"]["jobs"]) == 1  # a processing job ran alongside
    assert math.isfinite(vital["row"]["loop_lag_p99_ms"])
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "Knee" in (tmp_path / "report.md").read_text()


def test_both_client_stacks_run_side_by_side_and_the_report_compares_them(
        tmp_path: Path, mitdb: Path) -> None:
    main(["loadtest", "smoke", "--targets", "relay", "--clients", "lean", "trio-websocket",
          "--seconds", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["row"]["clients"]: r["row"] for r in report["runs"]}
    assert set(rows) == {"lean", "trio-websocket"}
    for row in rows.values():
        assert row["sent"] > 0 and row["delivered_per_s"] > 0
        assert math.isfinite(row["harness_us_per_msg"]) and row["harness_us_per_msg"] > 0
        assert math.isfinite(row["bits_per_sample"])
    assert rows["lean"]["bits_per_sample"] == rows["trio-websocket"]["bits_per_sample"]
    text = (tmp_path / "report.md").read_text()
    assert "relay [trio-websocket]" in text
    assert "| relay | 4 | trio-websocket / lean |" in text  # the generator's own cost
    assert report["environment"]["command"].startswith("vital-actors loadtest smoke ")
