"""The numba prototype of the quality front end (loadtests/bench_front_jit.py) gives
run_front's outputs and states bit for bit on MIT-BIH records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vital_actors.quality.design import design_for

pytest.importorskip("numba", reason="numba is not installed (pip install -e '.[jit]')")

from loadtests import bench_front_jit as jit  # after the skip: it imports numba


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


def test_rows_convert_to_front_states_and_back() -> None:
    lay = jit.layout(design_for(jit.FS))
    table = jit.JitTable(lay, 1, 2)
    st = table.fresh(2, 100)
    table.rows[st.slot] = np.arange(lay.width(2), dtype=np.float64)
    front = jit.state_of(lay, table.rows[st.slot], 2, st.next_t)
    assert front.next_t == 100 and front.sqi.shape == (lay.sqi_rows, 2)
    np.testing.assert_array_equal(jit.row_of(lay, front), table.rows[st.slot])
