"""Tests for vital_actors.settings: defaults < TOML file < VITAL_* environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vital_actors.settings import FilterSettings, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VITAL_* variables from the developer's shell leak into these tests."""
    for name in list(os.environ):
        if name.startswith("VITAL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "vital.toml"
    path.write_text(
        'filtered_dtype = "float64"\n'
        "[server]\nport = 9000\n"
        "[filter]\nhigh_hz = 30.0\nnotch_hz = 50.0\n"
        "[buffers]\ningest = 32\n"
    )
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s == Settings()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.filter == FilterSettings(low_hz=0.5, high_hz=40.0, order=4, notch_hz=None)
    assert s.filtered_dtype == "float32"
    assert (s.buffers.ingest, s.buffers.subscriber) == (256, 10_000)
    assert (s.screen.window_s, s.screen.on_windows, s.screen.off_windows) == (1.0, 2, 2)


def test_a_toml_file_overrides_the_defaults(toml: Path) -> None:
    s = load_settings(toml)
    assert s.server.port == 9000
    assert s.server.host == "127.0.0.1"  # untouched keys keep their defaults
    assert (s.filter.low_hz, s.filter.high_hz, s.filter.notch_hz) == (0.5, 30.0, 50.0)
    assert s.buffers.ingest == 32 and s.buffers.filtered == 256
    assert s.filtered_dtype == "float64"


def test_the_file_can_come_from_vital_settings_file(toml: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_SETTINGS_FILE", str(toml))
    assert load_settings().server.port == 9000


def test_the_environment_overrides_the_file(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_SERVER__PORT", "9100")
    monkeypatch.setenv("VITAL_FILTER__LOW_HZ", "1.5")
    monkeypatch.setenv("VITAL_FILTERED_DTYPE", "float32")
    s = load_settings(toml)
    assert s.server.port == 9100
    # Nested keys merge: low_hz from the environment, high_hz and notch from the file.
    assert (s.filter.low_hz, s.filter.high_hz, s.filter.notch_hz) == (1.5, 30.0, 50.0)
    assert s.filtered_dtype == "float32"


def test_overrides_win_over_everything(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITAL_STATS_INTERVAL_S", "5")
    s = load_settings(toml, stats_interval_s=0.25)
    assert s.stats_interval_s == 0.25


@pytest.mark.parametrize(("name", "value", "key"), [
    ("VITAL_SERVER__PORT", "70000", "server.port"),
    ("VITAL_FILTER__LOW_HZ", "abc", "filter.low_hz"),
    ("VITAL_FILTER__LOW_HZ", "45", "filter"),  # not below high_hz
    ("VITAL_FILTER__NOTCH_HZ", "55", "filter"),
    ("VITAL_FILTERED_DTYPE", "int16", "filtered_dtype"),
    ("VITAL_BUFFERS__SUBSCRIBER", "0", "buffers.subscriber"),
])
def test_invalid_environment_values_name_the_key(name: str, value: str, key: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"\n  {key}: "):
        load_settings()


@pytest.mark.parametrize(("text", "key"), [
    ("[server]\nport = -1\n", "server.port"),
    ("[screen]\nlead_off_fraction = 1.5\n", "screen.lead_off_fraction"),
    ("[filter]\nbogus = 1\n", "filter.bogus"),  # unknown keys are typos, not ignored
])
def test_invalid_file_values_name_the_key(text: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=rf"\n  {key}: "):
        load_settings(path)


def test_a_toml_syntax_error_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(SettingsError, match="cannot read settings"):
        load_settings(path)


def test_a_missing_file_is_a_settings_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(missing)
    monkeypatch.setenv("VITAL_SETTINGS_FILE", str(missing))
    with pytest.raises(SettingsError, match=r"nope\.toml"):
        load_settings()
