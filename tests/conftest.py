"""Shared fixtures: the reference ECG data in ../shared/data, and a default server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from vital_actors.graph import Server
from vital_actors.settings import load_settings
from vital_actors.sources import data_dir


def _shared(folder: str) -> Path:
    """*folder* under the shared data dir; skip without it, but fail on CI."""
    root = data_dir()
    if root is not None and (root / folder).is_dir():
        return root / folder
    if os.environ.get("CI") == "true":
        pytest.fail(f"../shared/data/{folder} not found: CI must provide the MIT-BIH data")
    pytest.skip("../shared/data not found: MIT-BIH tests need it")


@pytest.fixture(scope="session")
def mitdb() -> Path:
    """The MIT-BIH Arrhythmia Database folder (DS1 records)."""
    return _shared("mitdb")


@pytest.fixture(scope="session")
def nstdb() -> Path:
    """The MIT-BIH Noise Stress Test Database folder."""
    return _shared("nstdb")


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    """A server with the default settings on a free port (a test file may define its
    own ``server`` with other settings)."""
    srv = Server(load_settings(server={"port": 0}))
    await nursery.start(srv.run)
    yield srv
    srv.shutdown()
