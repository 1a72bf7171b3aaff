"""Helpers for the quality tests: signals in mV with the server's filter, and feeding."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.signal

from protocol import Event
from vital_actors.filtering import design
from vital_actors.quality import Frame, QualityChain
from vital_actors.settings import FilterSettings
from vital_actors.sources import Recording

F64 = npt.NDArray[np.float64]


def to_mv(rec: Recording) -> F64:
    out: F64 = (rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)
    return out


def bandpass(mv: F64, fs: float) -> F64:
    """*mv* through the server's band-pass at *fs* (fitted to it, as the server does
    for a rate its settings cannot run at)."""
    sos = design(FilterSettings(), fs, fallback=FilterSettings()).sos
    out: F64 = scipy.signal.sosfilt(sos, mv, axis=0)
    return out


def feed(chain: QualityChain, key: str, fs: float, mv: F64, sizes: Sequence[int],
         filtered: F64 | None = None) -> list[Event]:
    """Feed *mv* (and its band-pass) in frames of *sizes*; return all events."""
    f = bandpass(mv, fs) if filtered is None else filtered
    edges = [0, *itertools.accumulate(sizes)]
    assert edges[-1] == len(mv)
    events: list[Event] = []
    for a, b in itertools.pairwise(edges):
        events += chain.feed([Frame(key, fs, a, mv[a:b], f[a:b])])[0]
    return events


def of_type(events: Sequence[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]
