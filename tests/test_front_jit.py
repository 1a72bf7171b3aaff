"""The compiled front end (vital_actors/quality/front_jit.py) gives run_front's outputs
and states bit for bit on MIT-BIH records (compared by loadtests/bench_front_jit.py);
its table hands out, grows and takes back rows; its states pickle as FrontState's."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from loadtests import bench_front_jit as jit
from vital_actors.quality.design import design_for
from vital_actors.quality.front import FrontState
from vital_actors.quality.front_jit import JitState, JitTable, available, layout


def test_prototype_matches_run_front_bit_for_bit(mitdb: Path) -> None:
    sigs = jit.signals(jit.CHECK_RECORDS, 60)
    assert len(sigs) == 4 and {s.mv.shape[1] for s in sigs} == {1, 2}
    assert jit.check(sigs) > 500  # candidates of both detectors and 1-s snapshots


@pytest.mark.parametrize(("fs", "block"), [(360.0, 360), (360.0, 7), (250.0, 25),
                                           (1000.0, 100)])
def test_other_block_lengths_and_rates(mitdb: Path, fs: float, block: int) -> None:
    assert jit.check(jit.signals(jit.CHECK_RECORDS, 20), block=block, fs=fs) > 0


def test_the_comparison_is_bit_for_bit() -> None:
    for want, got in ((0.0, -0.0), (1.0, np.nextafter(1.0, 2.0))):
        with pytest.raises(jit.MismatchError, match="differs"):
            jit._same_bits(np.array([want]), np.array([got]), "a value")
    jit._same_bits(np.array([np.nan]), np.array([np.nan]), "the same NaN")


def test_numba_is_there() -> None:
    assert available()  # a dependency: without it every other test here runs uncompiled


def test_a_state_pickles_as_a_front_state_and_back() -> None:
    d = design_for(jit.FS)
    lay = layout(d)
    table = JitTable(lay)
    st = table.fresh(2, 100)
    table.rows[st.slot] = np.arange(lay.width(2), dtype=np.float64)
    det, sqi, next_t = st.__getstate__()
    assert next_t == 100 and det.shape == (lay.det_rows, 1) and sqi.shape == (lay.sqi_rows, 2)
    front = FrontState.__new__(FrontState)
    front.__setstate__(pickle.loads(pickle.dumps(st)).__getstate__())
    back = table.adopt(*pickle.loads(pickle.dumps(front)).__getstate__())
    np.testing.assert_array_equal(table.rows[back.slot], table.rows[st.slot])
    fresh = FrontState.fresh(d, 2, 7).__getstate__()
    for x, y in zip(table.fresh(2, 7).__getstate__(), fresh, strict=True):
        np.testing.assert_array_equal(x, y)  # NaN "last" included


def test_the_table_grows_and_reuses_freed_rows() -> None:
    lay = layout(design_for(250.0))
    table = JitTable(lay, 2, 1)
    states = [table.fresh(1, 0) for _ in range(5)]
    assert len(table.rows) == 8 and table.used == 5
    table.rows[states[4].slot] = 4.0
    wide = table.fresh(3, 0)  # wider rows: the others keep their numbers
    assert table.channels == 3 and np.all(table.rows[states[4].slot, :lay.width(1)] == 4.0)
    table.free(states[1])
    assert states[1].table is None and table.used == 5
    again = table.fresh(2, 0)
    assert again.slot == 1 and wide.slot == 5
    table.free(states[1])  # twice: nothing more happens
    assert table.used == 6


def test_an_unpickled_state_holds_its_numbers_until_adopted() -> None:
    table = JitTable(layout(design_for(jit.FS)))
    st: JitState = pickle.loads(pickle.dumps(table.fresh(2, 36)))
    assert st.table is None and st.next_t == 36 and st.width == 2
    assert np.isnan(st.sqi[-1]).all()
