"""``serve``/``demo --port`` out of range, or a port already taken: one line and a
non-zero exit, never a wrapped port or a traceback."""

from __future__ import annotations

import os
import socket

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


def test_serve_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as caught:
            cli.main(["serve", "--port", str(port)])
    message = str(caught.value.code)
    assert message.startswith("cannot start:") and "in use" in message, message
