"""RhythmState (running sums) gives what the rhythm() definition gives."""

from __future__ import annotations

import random

import pytest

from vital_actors.quality.rhythm import HRV_WINDOW_S, RhythmState, rhythm

FS = 360.0


@pytest.mark.parametrize("seed", range(20))
def test_running_rhythm_equals_the_definition(seed: int) -> None:
    """Beats at normal, irregular and missing-beat intervals, with pauses longer than
    the 60-s HRV window, stepped once a second as the chain does."""
    rng = random.Random(seed)
    beats: list[int] = []
    state, r, now, steps = RhythmState(FS), 0, 0, 0
    for _ in range(300):
        r += rng.choice([rng.randint(80, 400), rng.randint(300, 1000),
                         rng.randint(3000, 25000)])
        while now + 360 <= r:
            now += 360
            recent = [b for b in beats if b >= now - HRV_WINDOW_S * FS]
            assert state.at(now) == rhythm(recent, now, FS)
            steps += 1
        beats.append(r)
        state.push(r)
    assert steps > 1000


@pytest.mark.parametrize("seed", range(30))
def test_running_rhythm_equals_the_definition_with_steps_far_apart(seed: int) -> None:
    """Steps from a second to a minute apart, several beats between two steps: beats
    leave the 10-s and the 60-s windows in the same step (the sorted 10-s RRs and the
    running sums must agree about them)."""
    rng = random.Random(seed)
    state, beats, r, now = RhythmState(FS), [], 0, 0
    for _ in range(600):
        if rng.random() < 0.6:
            r = max(r, now) + rng.choice([rng.randint(80, 400), rng.randint(3000, 25000)])
            beats.append(r)
            state.push(r)
        else:
            now = max(now, r) + 360 * rng.choice([1, 2, 11, 30, 61])
            recent = [b for b in beats if b >= now - HRV_WINDOW_S * FS]
            assert state.at(now) == rhythm(recent, now, FS)
