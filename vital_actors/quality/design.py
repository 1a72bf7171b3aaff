"""Per-sampling-rate constants of the quality chain: filter coefficients and lengths.

Everything here is derived from the sampling rate alone (125-1000 Hz), so streams of
the same rate share one :class:`Design` and are processed in the same numpy calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.signal

from .repeat import history_kept

try:  # scipy's compiled kernel behind sosfilt (scipy 1.x keeps it here)
    from scipy.signal._sosfilt import _sosfilt as _kernel
except ImportError:  # pragma: no cover - another scipy layout: the public function
    _kernel = None

__all__ = ["FEATURES", "FILTERED_LIMIT", "MV_LIMIT", "Design", "beyond", "design_for",
           "sosfilt_columns"]

F64 = npt.NDArray[np.float64]

#: Per-sample quantities summed per channel (per 1-s step) for the window SQIs:
#: moments of the filtered signal, the baseline band (< 1 Hz) and its square, the
#: high-frequency band (> 40 Hz) squared, the clipped samples (stuck far from the
#: baseline), and the signal in mV and its square (flat and lead-off seconds).
FEATURES = ("f", "f2", "f3", "f4", "bw", "bw2", "hf2", "sat", "mv", "mv2")

#: What the screen and the server's filter take of a sample, in mV: beyond these they
#: see the limit (the stored samples are not touched). The chain keeps running sums
#: (detector A's integration) whose rounding grows with what they have summed: one
#: sample of 1e30 stopped the beats for the rest of the run; the filter took ~90 s to
#: forget it, sending values up to 1e23 mV to subscribers meanwhile. No ECG comes near
#: 10 V, even with an electrode's DC offset; the band-passed signal has no offset, and
#: a QRS is a few mV.
MV_LIMIT = 1e4
FILTERED_LIMIT = 50.0

QRS_BAND_HZ = (5.0, 15.0)  # Pan-Tompkins' QRS band
MWI_S = 0.15  # moving-window integration, Pan-Tompkins' 150 ms
LOOK_BACK_S = 0.25  # an MWI peak is the largest in [i - back, i + ahead]
LOOK_AHEAD_S = 0.05  # decided 50 ms after the MWI peak: median 189 ms after R (docs)
ENV_TAU_S = 2.0  # detector B: time constant of the |x| envelope
B_HALF_S = 0.2  # detector B: a peak is the largest |x| within +-200 ms


@dataclass(frozen=True, slots=True, eq=False)
class Design:
    """Coefficients and window lengths (in samples) for one sampling rate."""

    fs: float
    step: int  # samples per 1-s step
    qrs_sos: F64 = field(repr=False)
    bw_sos: F64 = field(repr=False)
    hf_sos: F64 = field(repr=False)
    env_b: F64 = field(repr=False)
    env_a: F64 = field(repr=False)
    mwi: int
    back: int
    ahead: int
    b_half: int
    bp_keep: int  # rows of band-passed history kept to locate the R peak
    qrs_delay: int  # group delay of the QRS band-pass near 10 Hz, in samples
    snr_keep: int  # samples of the filtered detection channel kept for .repeat

    def seconds(self, s: float) -> int:
        return max(1, round(s * self.fs))


@lru_cache(maxsize=64)
def design_for(fs: float, step_s: float = 1.0) -> Design:
    """The design for *fs* with quality steps of *step_s* (cached: one object each)."""
    nyq = fs / 2
    qrs = scipy.signal.butter(2, [QRS_BAND_HZ[0], min(QRS_BAND_HZ[1], 0.8 * nyq)],
                              btype="bandpass", fs=fs, output="sos")
    bw = scipy.signal.butter(2, 1.0, btype="lowpass", fs=fs, output="sos")
    hf = scipy.signal.butter(2, min(40.0, 0.64 * nyq), btype="highpass", fs=fs, output="sos")
    alpha = 1.0 / (ENV_TAU_S * fs)
    mwi = max(1, round(MWI_S * fs))
    back, ahead = round(LOOK_BACK_S * fs), round(LOOK_AHEAD_S * fs)
    return Design(
        fs=fs, step=max(1, round(step_s * fs)), qrs_sos=np.ascontiguousarray(qrs),
        bw_sos=np.ascontiguousarray(bw), hf_sos=np.ascontiguousarray(hf),
        env_b=np.array([alpha]), env_a=np.array([1.0, alpha - 1.0]), mwi=mwi,
        back=back, ahead=ahead, b_half=round(B_HALF_S * fs), bp_keep=mwi + back + ahead + 8,
        qrs_delay=_group_delay(qrs, fs, 10.0), snr_keep=history_kept(fs),
    )


def _group_delay(sos: F64, fs: float, hz: float) -> int:
    b, a = scipy.signal.sos2tf(sos)
    _, delay = scipy.signal.group_delay((b, a), w=[hz], fs=fs)
    return round(float(delay[0]))


def sosfilt_columns(sos: F64, x: F64, zi: F64) -> tuple[F64, F64]:
    """``scipy.signal.sosfilt(sos, x, axis=0, zi=zi)`` for float64 *x* (n, columns) and
    *zi* (sections, 2, columns), bit for bit: the same compiled kernel, without the
    wrapper's checks, axis moves and state copies (~25 µs a call, more than the
    filtering of a 100-ms block of a few streams). Returns (y, zf) in sosfilt's
    layouts: y (n, columns) column by column (Fortran order)."""
    if _kernel is None:  # pragma: no cover
        y, zf = scipy.signal.sosfilt(sos, x, axis=0, zi=zi)
        return y, zf
    rows = np.array(x.T, dtype=np.float64, order="C")  # the kernel filters rows in place
    state = np.array(zi.transpose(2, 0, 1), dtype=np.float64, order="C")  # a copy
    _kernel(sos, rows, state)
    return rows.T, state.transpose(1, 2, 0)


def beyond(x: F64, limit: float) -> bool:
    """Whether a sample of *x* is beyond +-*limit* (one pass each way: the usual answer
    is no, and the caller copies only when it is yes)."""
    return bool(x.min(initial=0.0) < -limit or x.max(initial=0.0) > limit)
