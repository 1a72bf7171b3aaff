"""Detector A's peak tracker on long and unusual candidate streams (pure, no trio)."""

from __future__ import annotations

import numpy as np

from vital_actors.quality.peaks import PeakTracker

FS = 360.0


def _beats_then_noise(rng: np.random.Generator, beats: int,
                      noise: int) -> list[tuple[int, float, int]]:
    """Candidates (decided, value, R): *beats* regular beats of height 10 every 0.8 s,
    then *noise* small peaks every 0.3 s (a beatless line with noise: asystole)."""
    out, r = [], int(FS)
    for _ in range(beats):
        out.append((r + 18, 10.0, r))
        r += int(0.8 * FS)
    for v in rng.uniform(0.1, 1.0, noise):
        out.append((r + 18, float(v), r))
        r += int(0.3 * FS)
    return out


def test_a_long_beatless_stretch_keeps_the_trackers_state_bounded() -> None:
    # Every noise peak since the last beat was kept for the search-back: a day of
    # asystole (or of a detector that finds no beat) grew the list by ~3 a second,
    # and each candidate's search-back walked all of it.
    tracker = PeakTracker(FS, 0)
    for c in _beats_then_noise(np.random.default_rng(3), 20, 50_000):
        tracker.push(*c)
    assert tracker.last_r is not None and tracker.rrs  # the beats were found ...
    assert len(tracker.noise) < 100  # ... and the silence after them costs little


class _KeepsEveryNoisePeak(PeakTracker):
    def _note_noise(self, candidate: tuple[int, float, int]) -> None:
        self.noise.append(candidate)


def test_the_bounded_noise_peaks_give_the_beats_of_all_of_them() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        cands, r = [], int(FS)
        for _ in range(3000):  # beats that come and go, noise peaks of all heights
            r += int(rng.choice([0.25, 0.4, 0.8, 1.5, 4.0]) * FS)
            value = float(rng.choice([10.0, rng.uniform(0.0, 12.0), rng.uniform(0, 3)]))
            cands.append((r + 18, value, r - int(rng.integers(0, 30))))
        trackers = PeakTracker(FS, 0), _KeepsEveryNoisePeak(FS, 0)
        found = [[b for c in cands for b in t.push(*c)] for t in trackers]
        assert found[0] == found[1]
        assert any(b.searchback for b in found[0])
