"""A --url that is not a URL the command can use: one line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from vital_actors.cli import main
from vital_actors.uploader import UploadError, upload_file

BAD = ["http://127.0.0.1:99999", "http://[::1", "http://127.0.0.1:80a"]


@pytest.mark.parametrize("url", BAD)
def test_upload_with_a_bad_url_says_so(url: str, tmp_path: Path) -> None:
    file = tmp_path / "x.csv"
    file.write_text("0\n")
    with pytest.raises(SystemExit, match=r"upload failed: .*url"):
        main(["upload", str(file), "--url", url])


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "https://127.0.0.1:8080", "ws://h:1"])
async def test_upload_refuses_a_url_it_would_send_elsewhere(
        url: str, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # Without a scheme it went to port 80, https went plain to port 80: refused at once.
    file = tmp_path / "x.csv"
    file.write_text("0\n")
    with pytest.raises(UploadError, match="http://"):
        await upload_file(url, file, query={})


@pytest.mark.parametrize("command", ["simulate", "subscribe"])
@pytest.mark.parametrize("url", ["ws://127.0.0.1:99999", "ws://[::1", "http://127.0.0.1:8080"])
def test_a_bad_websocket_url_is_an_argument_error(
        command: str, url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran with {url}")

    monkeypatch.setattr(trio, "run", never)
    with pytest.raises(SystemExit) as exc:
        main([command, "--url", url])
    assert exc.value.code == 2
    assert "--url" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag"), [
    (["serve", "--workers", "0"], "--workers"), (["serve", "--workers", "-2"], "--workers"),
    (["demo", "--devices", "0"], "--devices"), (["simulate", "--devices", "x"], "--devices"),
])
def test_a_count_below_one_is_an_argument_error(
        argv: list[str], flag: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # --workers 0 served as one process and --devices -5 simulated none, silently.
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran with {argv}")

    monkeypatch.setattr(trio, "run", never)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
