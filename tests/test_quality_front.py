"""The chain's two front ends (``screen.front``): the same events bit for bit on real
ECG, whatever the framing, the batching, the streams' comings and goings and channel
counts; pickles that resume on either; the setting's checks; the server's warm-up."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import trio
from quality_helpers import F64, bandpass, feed, to_mv

from vital_actors import graph
from vital_actors.quality import Frame, QualityChain, front_kernel
from vital_actors.quality.chain import warm_up
from vital_actors.quality.front import FrontState
from vital_actors.quality.front_jit import JitState
from vital_actors.settings import ScreenSettings, SettingsError, load_settings
from vital_actors.sources import load_record

COMPILED, NUMPY = ScreenSettings(front="compiled"), ScreenSettings(front="numpy")
FS = 360.0


@pytest.fixture(scope="module")
def signals(mitdb: Path) -> dict[str, tuple[F64, F64]]:
    """60 s of 101, 108 and 203 (mV, band-passed); 108 on one channel only."""
    out = {}
    for name in ("101", "108", "203"):
        mv = to_mv(load_record(mitdb / name, stop=round(60 * FS)))
        mv = np.ascontiguousarray(mv[:, :1]) if name == "108" else mv
        out[name] = (mv, bandpass(mv, FS))
    return out


def _both(batches: list[list[Frame]],
          forget: dict[int, list[str]] | None = None) -> tuple[QualityChain, QualityChain]:
    """Feed *batches* to a compiled and a numpy chain (forgetting the streams of
    ``forget[k]`` before batch k); assert that each frame gets the same events."""
    chains = QualityChain(COMPILED), QualityChain(NUMPY)
    assert chains[0].compiled and not chains[1].compiled
    events = 0
    for k, batch in enumerate(batches):
        for key in (forget or {}).get(k, []):
            for chain in chains:
                chain.forget(key)
        got = [chain.feed(batch) for chain in chains]
        assert got[0] == got[1], f"batch {k}"
        events += sum(map(len, got[0]))
    assert events > 100
    return chains


def _same_states(a: QualityChain, b: QualityChain) -> None:
    assert a._streams.keys() == b._streams.keys()
    for key, e in a._streams.items():
        det, sqi, next_t = e.front.__getstate__()
        det_b, sqi_b, next_b = b._streams[key].front.__getstate__()
        assert next_t == next_b and np.array_equal(det, det_b, equal_nan=True), key
        assert np.array_equal(sqi, sqi_b, equal_nan=True), key


@pytest.mark.parametrize("frame", [360, 36, 7])
def test_both_fronts_give_the_same_events_in_fixed_frames(
        signals: dict[str, tuple[F64, F64]], frame: int) -> None:
    n = round(60 * FS) if frame != 7 else round(15 * FS)
    batches = [[Frame(k, FS, t, mv[t:t + frame], f[t:t + frame])
                for k, (mv, f) in signals.items()] for t in range(0, n - frame + 1, frame)]
    _same_states(*_both(batches))


def test_ragged_batches_with_streams_joining_leaving_and_starting_over(
        signals: dict[str, tuple[F64, F64]]) -> None:
    """Each batch gives each stream zero to three frames of random lengths; copies of
    the records join late (at other step phases), leave (forgotten, their rows
    reused), and start a new run; one and two channels in the same groups."""
    rng = np.random.default_rng(7)
    n = round(60 * FS)
    plan = {k: (k, 0, 0) for k in signals}  # stream: (record, first batch, run)
    plan |= {"101-late": ("101", 20, 0), "108-late": ("108", 35, 0),
             "203-again": ("203", 0, 0)}
    at = dict.fromkeys(plan, 0)
    runs = {k: r for k, (_, _, r) in plan.items()}
    batches: list[list[Frame]] = []
    forget: dict[int, list[str]] = {}
    for k in range(120):
        if k == 50:  # 101-late leaves, and comes back later as a new stream
            forget[k] = ["101-late"]
            at["101-late"], plan["101-late"] = 0, ("101", 70, 0)
        if k == 60:  # 203-again starts a new run (t0 0) without being forgotten
            at["203-again"], runs["203-again"] = 0, 1
        batch = []
        for key, (rec, first, _) in plan.items():
            if k < first:
                continue
            mv, f = signals[rec]
            for _ in range(int(rng.integers(0, 4))):
                size = int(rng.choice([1, 36, 97, 360, 500]))
                a = at[key]
                if a + size > n:
                    break
                batch.append(Frame(key, FS, a + 97 * (key == "101-late"), mv[a:a + size],
                                   f[a:a + size], runs[key]))
                at[key] = a + size
        batches.append(batch)
    compiled, numpy_ = _both(batches, forget)
    _same_states(compiled, numpy_)
    table = compiled._tables[(FS, 360)]
    slots = sorted(e.front.slot for e in compiled._streams.values()
                   if isinstance(e.front, JitState))
    assert slots == list(range(6)) and table.used == 6  # the old rows were reused
    assert table.channels == 2


def test_a_chain_pickled_with_either_front_resumes_with_the_other(
        signals: dict[str, tuple[F64, F64]], monkeypatch: pytest.MonkeyPatch) -> None:
    mv, f = signals["203"]
    one, two = signals["108"]
    whole = {k: feed(QualityChain(NUMPY), k, FS, x, [len(x)], y)
             for k, (x, y) in {"a": (mv, f), "b": (one, two)}.items()}
    cut = 5000
    for first_compiled in (True, False):
        monkeypatch.setattr(front_kernel, "NUMBA", first_compiled)  # numba here or not
        chain = QualityChain(ScreenSettings())  # auto
        assert chain.compiled is first_compiled
        got = chain.feed([Frame("a", FS, 0, mv[:cut], f[:cut]),
                          Frame("b", FS, 0, one[:cut], two[:cut])])
        payload = pickle.dumps(chain)
        monkeypatch.setattr(front_kernel, "NUMBA", not first_compiled)
        restored: QualityChain = pickle.loads(payload)
        assert restored.compiled is not first_compiled
        rest = restored.feed([Frame("a", FS, cut, mv[cut:], f[cut:]),
                              Frame("b", FS, cut, one[cut:], two[cut:])])
        kind = JitState if restored.compiled else FrontState
        assert all(isinstance(e.front, kind) for e in restored._streams.values())
        assert got[0] + rest[0] == whole["a"] and got[1] + rest[1] == whole["b"]


def test_compiled_without_numba_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_kernel, "NUMBA", False)
    with pytest.raises(SettingsError, match=r"screen: .*needs numba"):
        load_settings(screen={"front": "compiled"})
    assert not QualityChain(load_settings().screen).compiled  # auto: numpy
    assert not QualityChain(load_settings(screen={"front": "numpy"}).screen).compiled
    with pytest.raises(SettingsError, match=r"screen\.front"):
        load_settings(screen={"front": "fast"})


def test_a_chain_pickled_compiled_resumes_in_numpy_where_numba_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chain = QualityChain(COMPILED)
    chain.feed_one("s", FS, 0, np.zeros((360, 1)), np.zeros((360, 1)))
    payload = pickle.dumps(chain)
    monkeypatch.setattr(front_kernel, "NUMBA", False)
    restored: QualityChain = pickle.loads(payload)
    assert not restored.compiled and restored.settings.front == "compiled"


def test_warm_up_compiles_the_kernel() -> None:
    warm_up(COMPILED)
    assert getattr(front_kernel.group, "signatures", None)  # a numba dispatcher's


async def test_the_server_warms_the_front_end_up_before_it_accepts_devices(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    warmed: list[ScreenSettings] = []
    monkeypatch.setattr(graph, "warm_up", warmed.append)
    srv = graph.Server(load_settings(server={"port": 0}))
    port = await nursery.start(srv.run)
    assert warmed == [srv.settings.screen] and port
    srv.shutdown()

