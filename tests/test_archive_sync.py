"""What a later read trusts is synced before it is relied on: a run's meta.json before
its first frame is acked, trim.json before the holes it describes are punched, and a
recording's meta.json before its directory is renamed into the store.

ext4 commits a rename before the new file's delayed blocks: after a power loss the
file is there but empty. An empty meta.json stopped the next start (``scan``) or the
recording listing; a lost trim.json had readers take the punched zeros for samples.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import protocol as P
from vital_actors import archive
from vital_actors.archive import Append, Durable, RunFiles, run_dir
from vital_actors.store.recording import Writer

HELLO = P.Hello("d1", 360.0, ("MLII", "V1"), "int16", (200.0, 200.0), (0.0, 0.0))


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What was fsynced (by path), renamed (to a path) and punched, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace, punch = os.fsync, os.replace, archive.punch

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        replace(src, dst)

    def spy_punch(path: Path, length: int) -> int:
        events.append(("punch", str(path)))
        return punch(path, length)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(archive, "punch", spy_punch)
    return events


def _written_before(events: list[tuple[str, str]], path: Path, what: tuple[str, str]
                    ) -> None:
    """*path* was written whole (its bytes synced before its rename) and its directory
    synced after the rename, all before *what*."""
    end = events.index(what)
    renamed = events.index(("replace", str(path)))
    assert ("fsync", str(path) + ".tmp") in events[:renamed] or \
        ("fsync", str(path.with_suffix(".tmp"))) in events[:renamed], events
    assert ("fsync", str(path.parent)) in events[renamed:end], events


def _frames(n: int, start: float) -> list[Append]:
    return [Append("d1", 0, HELLO, k, 3 * k, 3, np.full((3, 2), k, "<i2").tobytes(),
                   Durable(), start + k) for k in range(n)]


def test_a_new_run_s_meta_json_is_synced_with_its_first_frames(
        tmp_path: Path, log: list[tuple[str, str]]) -> None:
    files = RunFiles(run_dir(tmp_path, "d1", 0), HELLO)
    files.write(_frames(5, time.time()))
    files.sync()  # after this the frames are acked
    files.close()
    path = run_dir(tmp_path, "d1", 0)
    _written_before(log, path / "meta.json", ("fsync", str(path / "frames.bin")))


def test_a_trim_syncs_trim_json_before_it_punches_holes(
        tmp_path: Path, log: list[tuple[str, str]]) -> None:
    now = time.time()
    files = RunFiles(run_dir(tmp_path, "d1", 0), HELLO)
    files.write(_frames(3000, now - 7200))
    files.close()
    log.clear()
    assert archive._Writer(tmp_path).trim(3600, now) > 0
    path = run_dir(tmp_path, "d1", 0)
    _written_before(log, path / "trim.json", next(e for e in log if e[0] == "punch"))


def test_a_recording_s_meta_json_is_synced_before_it_is_committed(
        tmp_path: Path, log: list[tuple[str, str]]) -> None:
    writer = Writer(tmp_path / "partial" / "r", fs=360.0, channels=["a"], dtype="int16",
                    gain=[200.0], baseline=[0.0])
    writer.append(np.zeros((10, 1), np.int16))
    (tmp_path / "recordings").mkdir()
    writer.commit(tmp_path / "recordings" / "r", id="r", source_format="npy")
    done = ("replace", str(tmp_path / "recordings" / "r"))
    _written_before(log, tmp_path / "partial" / "r" / "meta.json", done)
    assert ("fsync", str(tmp_path / "recordings")) in log[log.index(done):], log


def test_a_run_directory_without_meta_json_does_not_hide_the_stream_s_run(
        tmp_path: Path) -> None:
    """A crash or a full disk between a new run's mkdir and its meta.json (written
    before any frame) leaves an empty run directory. It was taken for the stream's
    latest run: scan skipped the stream (its device then started over at run 0,
    appending to run 0's files under an index from 0) and retention could delete the
    run the device resumes."""
    files = RunFiles(run_dir(tmp_path, "d1", 0), HELLO)
    files.write(_frames(5, time.time() - 7200))
    files.sync()
    files.close()
    run_dir(tmp_path, "d1", 1).mkdir()
    [stored] = archive.scan(tmp_path)
    assert (stored.run, stored.next_seq, stored.t0) == (0, 5, 15)
    assert archive.prunable(tmp_path, ()) == []
