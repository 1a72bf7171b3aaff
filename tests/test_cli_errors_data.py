"""A WFDB folder the command cannot use: one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from vital_actors.cli import main


@pytest.fixture(autouse=True)
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran anyway")

    monkeypatch.setattr(trio, "run", never)


def test_demo_with_a_missing_data_folder_says_so(tmp_path: Path) -> None:
    # It used to replay synthetic ECG instead, as if --data had not been given.
    with pytest.raises(SystemExit, match="no such folder"):
        main(["demo", "--data", str(tmp_path / "nope"), "--port", "0"])


def test_simulate_with_an_unreadable_record_says_which(tmp_path: Path) -> None:
    (tmp_path / "100.hea").write_text("garbage\n")
    with pytest.raises(SystemExit, match=r"cannot read WFDB record .*100"):
        main(["simulate", "--data", str(tmp_path), "--devices", "1"])


@pytest.mark.parametrize("what", ["qrs", "sqi"])
def test_eval_of_a_folder_without_annotated_records_fails(what: str, tmp_path: Path) -> None:
    (tmp_path / "100.hea").write_text("garbage\n")  # no .atr: nothing to score
    with pytest.raises(SystemExit, match="no annotated WFDB records"):
        main(["eval", what, str(tmp_path)])
    with pytest.raises(SystemExit, match="no annotated WFDB records"):
        main(["eval", what, str(tmp_path / "nope")])
