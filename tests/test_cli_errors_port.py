"""``serve``/``demo --port`` out of range: one line and a non-zero exit, never a wrapped port."""

from __future__ import annotations

import os

import pytest

from vital_actors import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VITAL_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("port", ["70000", "-5"])
def test_a_port_flag_out_of_range_is_refused_before_serving(
        port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("served with an invalid port")

    monkeypatch.setattr(cli, "serve", never)
    with pytest.raises(SystemExit, match=r"server\.port"):
        cli.main(["serve", "--port", port])
