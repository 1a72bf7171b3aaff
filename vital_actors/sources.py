"""ECG sources: MIT-BIH records read with wfdb, synthetic ECG, and frame splitting.

Everything here is synchronous and does no trio I/O: actors load a `Recording` once
at start-up and replay it in frames.
"""

from __future__ import annotations

__all__ = [
    "Recording",
    "data_dir",
    "frame_sizes",
    "frames",
    "list_records",
    "load_record",
    "synthetic_ecg",
]

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

_INT16 = np.iinfo(np.int16)

# ECGSYN (McSharry et al. 2003) wave positions (radians) and widths for P, Q, R, S, T.
_THETA = np.deg2rad([-70.0, -15.0, 0.0, 15.0, 100.0])
_WIDTH = np.array([0.25, 0.1, 0.1, 0.1, 0.4])
# Peak amplitudes (mV) of P, Q, R, S, T for three lead shapes; channel k uses row k % 3.
_LEAD_MV = np.array(
    [
        [0.12, -0.12, 1.2, -0.25, 0.30],  # MLII-like: tall R, upright T
        [0.06, -0.02, 0.35, -0.90, -0.10],  # V1-like: small r, deep S, flat T
        [0.10, -0.08, 1.0, -0.15, 0.35],  # V5-like
    ]
)
_LEAD_NAMES = ("MLII", "V1", "V5")


@dataclass(frozen=True, slots=True)
class Recording:
    """A multichannel ECG in ADC units: ``mV = (samples - baseline) / gain``.

    ``samples`` has shape ``(n_samples, n_channels)``, is C-contiguous int16 and
    read-only, so one recording can be shared by many streams without copies.
    """

    name: str
    fs: float
    channels: tuple[str, ...]
    gain: tuple[float, ...]
    baseline: tuple[int, ...]
    samples: npt.NDArray[np.int16]

    def __post_init__(self) -> None:
        n = len(self.channels)
        if self.samples.dtype != np.int16 or self.samples.ndim != 2:
            raise ValueError(f"{self.name}: samples must be 2-D int16, got {self.samples.dtype}")
        if self.samples.shape[1] != n or len(self.gain) != n or len(self.baseline) != n:
            raise ValueError(f"{self.name}: channels, gain, baseline and samples disagree")
        if not self.samples.flags.c_contiguous:
            raise ValueError(f"{self.name}: samples must be C-contiguous")
        if self.fs <= 0:
            raise ValueError(f"{self.name}: fs must be positive, got {self.fs}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return float(self.samples.shape[0] / self.fs)


def load_record(
    path: str | os.PathLike[str], *, start: int = 0, stop: int | None = None
) -> Recording:
    """Read samples ``[start, stop)`` of a WFDB record (path without extension).

    Raises:
        ValueError: if the digital samples do not fit in int16.
    """
    with warnings.catch_warnings():
        # wfdb trips pandas deprecations at import time; they are not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import wfdb

    record = wfdb.rdrecord(os.fspath(path), sampfrom=start, sampto=stop, physical=False)
    name = str(record.record_name)
    return Recording(
        name=name,
        fs=float(record.fs),
        channels=_unique_names(record.sig_name),
        gain=tuple(float(g) for g in record.adc_gain),
        baseline=tuple(int(b) for b in record.baseline),
        samples=_to_int16(np.asarray(record.d_signal), name),
    )


def list_records(folder: str | os.PathLike[str]) -> list[Path]:
    """The record paths (without extension) of every ``*.hea`` in *folder*, by name."""
    return sorted((p.with_suffix("") for p in Path(folder).glob("*.hea")), key=lambda p: p.name)


def data_dir() -> Path | None:
    """The shared ECG data folder, or None if it is not there.

    ``VITAL_DATA_DIR`` wins when set (None if it is not a folder); otherwise the
    first existing of ``<repo>/../shared/data`` and ``/work/shared/data``.
    """
    env = os.environ.get("VITAL_DATA_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    repo = Path(__file__).resolve().parent.parent
    candidates = (repo.parent / "shared" / "data", Path("/work/shared/data"))
    return next((p for p in candidates if p.is_dir()), None)


def synthetic_ecg(
    *,
    fs: float = 360.0,
    seconds: float = 60.0,
    channels: int = 2,
    heart_rate: float = 72.0,
    seed: int = 0,
    name: str = "synthetic",
    gain: float = 200.0,
    baseline: int = 1024,
    noise_mv: float = 0.02,
) -> Recording:
    """A deterministic, realistic-looking ECG in the style of McSharry's ECGSYN.

    Each beat is a sum of Gaussians (P, Q, R, S, T) over the beat's phase; RR
    intervals vary with respiration, a slow oscillation and jitter; baseline
    wander and white noise are added. R is about 1.2 mV on channel 0.
    """
    if fs <= 0 or seconds < 0 or channels < 1 or heart_rate <= 0 or noise_mv < 0:
        raise ValueError("fs, channels and heart_rate must be positive; seconds, noise >= 0")
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * fs)) / fs
    phase = _beat_phase(t, _r_peak_times(seconds, heart_rate, rng))
    # Faster hearts have narrower waves and a T (and P) closer to R, as in ECGSYN.
    hr_fact = math.sqrt(heart_rate / 60.0)
    theta = _THETA * np.array([hr_fact**0.5, hr_fact, 1.0, hr_fact, hr_fact**0.5])
    # Channel-major (rows are waves, then channels): OpenBLAS is slow on (n, 5) @ (5, c).
    d = phase - theta[:, None]
    # Wrap to (-pi, pi] so that each wave joins smoothly across beats.
    np.subtract(d, 2 * np.pi, out=d, where=d > np.pi)
    np.add(d, 2 * np.pi, out=d, where=d <= -np.pi)
    d /= (_WIDTH * hr_fact)[:, None]
    waves = np.exp(-0.5 * d * d)  # (5, n)
    mv = _lead_amplitudes(channels) @ waves  # (channels, n)
    mv += _baseline_wander(t, channels, rng)
    mv += rng.normal(0.0, noise_mv, mv.shape)
    return Recording(
        name=name,
        fs=float(fs),
        channels=_unique_names([_LEAD_NAMES[k % len(_LEAD_NAMES)] for k in range(channels)]),
        gain=(float(gain),) * channels,
        baseline=(int(baseline),) * channels,
        samples=_to_int16(np.rint(baseline + mv.T * gain), name),
    )


def frame_sizes(
    total: int,
    *,
    frame: int | None = None,
    rng: np.random.Generator | None = None,
    max_frame: int = 1024,
) -> Iterator[int]:
    """Yield frame lengths that sum exactly to *total*.

    With *frame*, fixed-size frames (the last may be shorter). Otherwise sizes
    drawn uniformly from ``[1, max_frame]`` with *rng* (a fresh unseeded
    generator if None, as numpy does).
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if frame is not None:
        if frame < 1:
            raise ValueError(f"frame must be >= 1, got {frame}")
        full, rest = divmod(total, frame)
        yield from [frame] * full
        if rest:
            yield rest
        return
    if max_frame < 1:
        raise ValueError(f"max_frame must be >= 1, got {max_frame}")
    rng = np.random.default_rng() if rng is None else rng
    left = total
    while left > 0:
        for size in rng.integers(1, max_frame + 1, size=256).tolist():
            size = min(size, left)
            yield size
            left -= size
            if left == 0:
                return


def frames(samples: npt.NDArray[np.int16], sizes: Iterable[int]) -> Iterator[npt.NDArray[np.int16]]:
    """Yield consecutive row slices (views) of *samples* with the given *sizes*.

    Raises:
        ValueError: if a size is negative or runs past the end of *samples*.
    """
    start = 0
    for size in sizes:
        stop = start + size
        if size < 0 or stop > samples.shape[0]:
            raise ValueError(f"frame [{start}, {stop}) outside {samples.shape[0]} samples")
        yield samples[start:stop]
        start = stop


def _unique_names(names: Sequence[str]) -> tuple[str, ...]:
    """Make repeated channel names unique: MLII, MLII -> MLII, MLII#2."""
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        unique, k = name, 1
        while unique in seen:
            k += 1
            unique = f"{name}#{k}"
        seen.add(unique)
        out.append(unique)
    return tuple(out)


def _to_int16(values: npt.NDArray[np.generic], what: str) -> npt.NDArray[np.int16]:
    """A read-only C-contiguous int16 copy of *values*, refusing to wrap around."""
    if values.size and (values.min() < _INT16.min or values.max() > _INT16.max):
        raise ValueError(
            f"{what}: samples span [{values.min()}, {values.max()}], outside int16;"
            " this record is not in a <=16-bit format"
        )
    out = np.ascontiguousarray(values, dtype=np.int16)
    out.flags.writeable = False
    return out


def _r_peak_times(
    seconds: float, heart_rate: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """R-peak times covering ``[0, seconds]``: one before 0, one after the end."""
    rr_mean = 60.0 / heart_rate
    n = math.ceil(seconds / rr_mean * 1.25) + 3
    k = np.arange(n) * rr_mean  # nominal beat times, enough to phase the modulation
    resp, mayer = rng.uniform(0, 2 * np.pi, 2)
    rr = rr_mean * (
        1.0
        + 0.02 * np.sin(2 * np.pi * 0.25 * k + resp)  # respiratory sinus arrhythmia
        + 0.01 * np.sin(2 * np.pi * 0.1 * k + mayer)  # Mayer wave
        + 0.005 * rng.standard_normal(n)
    )
    first = -rr[0] * rng.uniform(0.2, 0.8)
    peaks: npt.NDArray[np.float64] = first + np.concatenate(([0.0], np.cumsum(rr)))
    return peaks


def _beat_phase(
    t: npt.NDArray[np.float64], peaks: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Phase in ``[0, 2 pi)`` of each time since the last R peak, scaled by its RR."""
    i = np.searchsorted(peaks, t, side="right") - 1
    phase: npt.NDArray[np.float64] = 2 * np.pi * (t - peaks[i]) / (peaks[i + 1] - peaks[i])
    return phase


def _lead_amplitudes(channels: int) -> npt.NDArray[np.float64]:
    """P, Q, R, S, T amplitudes (mV), shape ``(channels, 5)``."""
    k = np.arange(channels)
    scale = 1.0 / (1.0 + 0.25 * (k // len(_LEAD_MV)))
    amplitudes: npt.NDArray[np.float64] = _LEAD_MV[k % len(_LEAD_MV)] * scale[:, None]
    return amplitudes


def _baseline_wander(
    t: npt.NDArray[np.float64], channels: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Respiratory (0.25 Hz) and slow (0.05 Hz) drift in mV, shape ``(channels, n)``."""
    wander = np.zeros((channels, t.size))
    for mv, hz in ((0.06, 0.25), (0.04, 0.05)):
        cycles = (hz * t) % 1.0  # small arguments keep np.sin on its fast path
        phases = rng.uniform(0, 2 * np.pi, (channels, 1))
        wander += mv * np.sin(2 * np.pi * cycles + phases)
    return wander
