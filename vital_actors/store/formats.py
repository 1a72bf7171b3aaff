"""Upload formats as incremental decoders: bytes in, frames (n, channels) out.

A decoder never holds more than one fed chunk plus a partial record or line, except
WFDB archives (zip or tar of .hea + .dat), which are spooled to the upload's private
directory and read back in chunks. Every problem with the content is a
:class:`FormatError` carrying the HTTP status to answer with: 415 for a format we do
not read or a body that is not what its label says, 422 for corrupt or truncated
content, 400 for missing parameters (an NPY file has no sampling rate).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["FORMATS", "Decoder", "FormatError", "SourceInfo", "UploadParams", "declared_format",
           "make_decoder", "sniff"]

FORMATS = ("npy", "csv", "edf", "wfdb")
Array = npt.NDArray[Any]
_CONTENT_TYPES = {
    "application/x-npy": "npy", "application/npy": "npy", "text/csv": "csv",
    "application/csv": "csv", "application/edf": "edf", "application/x-edf": "edf",
    "application/zip": "wfdb", "application/x-tar": "wfdb", "application/gzip": "wfdb",
    "application/x-gtar": "wfdb",
}


class FormatError(Exception):
    """The upload cannot become a recording; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a decoder learned from the header: the recording's format."""

    fs: float
    channels: list[str]
    dtype: str
    gain: list[float]
    baseline: list[float]


@dataclass(frozen=True, slots=True)
class UploadParams:
    """Query parameters of an upload, for formats that lack them."""

    fs: float | None = None
    channels: list[str] = field(default_factory=list)
    gain: float = 1.0
    baseline: float = 0.0
    name: str | None = None


class Decoder(Protocol):
    info: SourceInfo | None

    def feed(self, data: bytes) -> list[Array]: ...
    def finish(self) -> Iterator[Array]: ...


def sniff(head: bytes) -> str | None:
    """The format the first bytes look like ('bdf' for BioSemi), or None."""
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b")) or head[257:262] == b"ustar":
        return "wfdb"
    if head.startswith(b"\xffBIOSEMI"):
        return "bdf"
    if head.startswith(b"0       ") and len(head) >= 256 and head[252:256].strip().isdigit():
        return "edf"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end
            return None
        text = head[:exc.start].decode("utf-8")
    return "csv" if text and all(c.isprintable() or c in "\r\n\t" for c in text) else None


def declared_format(query_format: str | None, content_type: str | None) -> str | None:
    """The format the client named (``?format=`` wins over Content-Type), or None.

    Raises:
        FormatError: 415, a ``?format=`` this server does not read (said before any of
            the body is taken).
    """
    if query_format:
        if query_format.lower() not in FORMATS:
            raise FormatError(415, f"unsupported format {query_format!r}; use one of "
                              f"{FORMATS}")
        return query_format.lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    return _CONTENT_TYPES.get(ctype)


def resolve(declared: str | None, head: bytes) -> str:
    """The format to decode with, or a 415 saying why there is none."""
    seen = sniff(head)
    if seen == "bdf":
        raise FormatError(415, "BDF (24-bit) files are not supported; convert to EDF")
    if seen is None:
        raise FormatError(415, "unrecognised content: not NPY, CSV, EDF or a WFDB zip/tar"
                          + (f" (declared {declared})" if declared else ""))
    if declared is not None and declared != seen:
        raise FormatError(415, f"mislabelled upload: declared {declared} but the content "
                          f"is {seen}")
    return seen


def make_decoder(fmt: str, params: UploadParams, workdir: Path, *,
                 max_unpacked: int) -> Decoder:
    """The decoder of *fmt*; a WFDB archive may unpack to at most *max_unpacked* bytes
    (413 beyond: a small zip can hold gigabytes of zeros)."""
    from .archives import EdfDecoder, WfdbDecoder  # the binary formats live there

    if fmt == "npy":
        return NpyDecoder(params)
    if fmt == "csv":
        return CsvDecoder(params)
    if fmt == "edf":
        return EdfDecoder(params)
    return WfdbDecoder(params, workdir, max_unpacked=max_unpacked)


def channel_names(params: UploadParams, n: int) -> list[str]:
    if params.channels:
        if len(params.channels) != n:
            raise FormatError(400, f"{len(params.channels)} channel names given for "
                              f"{n} channels")
        return list(params.channels)
    return [f"ch{i + 1}" for i in range(n)]


class NpyDecoder:
    """``.npy``: shape (n,) or (n, channels); int16, float32 or float64, C order."""

    def __init__(self, params: UploadParams) -> None:
        if params.fs is None or params.fs <= 0:
            raise FormatError(400, "an NPY upload needs ?fs=<sampling rate in Hz>")
        self.params = params
        self.info: SourceInfo | None = None
        self._buf = bytearray()
        self._left = 0  # data bytes still expected
        self._frame = 0
        self._dtype: np.dtype[Any] = np.dtype("<i2")

    def _header(self) -> bool:
        if len(self._buf) < 10:
            return False
        f = io.BytesIO(bytes(self._buf))
        try:
            version = np.lib.format.read_magic(f)
            hlen = 2 if version == (1, 0) else 4
            size = 8 + hlen + int.from_bytes(self._buf[8:8 + hlen], "little")
            if len(self._buf) < size:
                return False
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f, max_header_size=1 << 16)
        except ValueError as exc:
            raise FormatError(422, f"corrupt NPY header: {exc}") from None
        if fortran or len(shape) not in (1, 2) or dtype.str not in ("<i2", "<f4", "<f8"):
            raise FormatError(422, f"NPY must be C-order (n,) or (n, channels) of <i2, <f4 or "
                              f"<f8; got shape {shape}, dtype {dtype.str}, fortran {fortran}")
        channels = 1 if len(shape) == 1 else int(shape[1])
        if channels == 0:
            raise FormatError(422, f"NPY of shape {shape} has no channels")
        self._dtype, self._frame = dtype, channels * dtype.itemsize
        self._left = int(shape[0]) * self._frame
        p = self.params
        assert p.fs is not None
        self.info = SourceInfo(p.fs, channel_names(p, channels), dtype.name,
                               [p.gain] * channels, [p.baseline] * channels)
        del self._buf[:size]
        return True

    def feed(self, data: bytes) -> list[Array]:
        self._buf += data
        if self.info is None and not self._header():
            return []
        usable = min(len(self._buf), self._left) // self._frame * self._frame
        if len(self._buf) > self._left:
            raise FormatError(422, "NPY body is longer than its header declares")
        if not usable:
            return []
        out = np.frombuffer(self._buf, self._dtype, usable // self._dtype.itemsize).copy()
        del self._buf[:usable]
        self._left -= usable
        return [out.reshape(-1, self._frame // self._dtype.itemsize)]

    def finish(self) -> Iterator[Array]:
        if self.info is None or self._left or self._buf:
            raise FormatError(422, f"truncated NPY: {self._left - len(self._buf)} bytes missing")
        return iter(())


_TIME_NAMES = re.compile(r"^(t|time|times|timestamp|seconds|sec|s|elapsed.?time)"
                         r"(.?\(?(s|sec|ms)\)?)?$", re.I)


class CsvDecoder:
    """CSV with an optional header row (and a units row), delimiter ``,`` ``;`` or tab.

    A time column is recognised by its name (time, t, seconds, ..., with ms or s) or,
    without a header, as a first column that rises in equal steps; it is dropped and
    gives the sampling rate when ``fs`` is not given. Values are stored as float32.
    """

    def __init__(self, params: UploadParams) -> None:
        self.params = params
        self.info: SourceInfo | None = None
        self._text = ""
        self._line = 0  # lines consumed, for error messages
        self._delim = ","
        self._names: list[str] | None = None
        self._time: float | None = None  # seconds per time unit when a time column is there

    def feed(self, data: bytes) -> list[Array]:
        try:
            self._text += data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(422, f"CSV is not UTF-8 text near line {self._line + 1}") from None
        return self._rows(final=False)

    def _rows(self, *, final: bool) -> list[Array]:
        if self.info is None and not self._start(final):
            return []
        cut = len(self._text) if final else self._text.rfind("\n") + 1
        block, self._text = self._text[:cut], self._text[cut:]
        if not block.strip():
            return []
        values = self._parse(block)
        self._line += block.count("\n")
        if self._time is not None:
            values = values[:, 1:]
        with np.errstate(over="ignore"):  # beyond float32: infinity, refused as such
            return [values.astype(np.float32)]

    def _parse(self, block: str) -> Array:
        try:
            out: Array = np.loadtxt(io.StringIO(block), delimiter=self._delim, ndmin=2,
                                    dtype=np.float64, comments=None)
        except ValueError as exc:
            raise FormatError(422, f"bad CSV after line {self._line}: {exc}") from None
        width = len(self.info.channels) + (self._time is not None) if self.info else 0
        if out.shape[1] != width:
            raise FormatError(422, f"CSV rows after line {self._line} have {out.shape[1]} "
                              f"columns, expected {width}")
        return out

    def _start(self, final: bool) -> bool:
        """Read the header and enough rows to find the time column and the rate."""
        lines = self._text.splitlines(keepends=True)
        if not final and (len(lines) < 66 or not self._text.endswith("\n")) and \
                len(self._text) < 1 << 16:
            return False
        first = lines[0] if lines else ""
        self._delim = max((",", ";", "\t"), key=first.count)
        head: list[str] = []
        while lines and not _numeric(lines[0], self._delim) and len(head) < 2:
            head.append(lines.pop(0))
        if not lines:
            raise FormatError(422, "CSV has no numeric rows")
        names = [c.strip().strip("'\"") for c in head[0].split(self._delim)] if head else None
        sample = self._sample(lines)
        time_col = self._time_column(names, sample)
        n = sample.shape[1] - (time_col is not None)
        fs = self.params.fs
        if time_col is not None:
            unit = 0.001 if names and "ms" in names[0].lower() else 1.0
            self._time = unit
            fs = fs or _rate(sample[:, 0], unit)
        if not fs:
            raise FormatError(400, "CSV without a time column needs ?fs=<sampling rate in Hz>")
        chans = self.params.channels or (names[1 if time_col is not None else 0:] if names
                                         else [])
        p = UploadParams(fs, chans, 1.0, 0.0)
        self.info = SourceInfo(fs, channel_names(p, n), "float32", [1.0] * n, [0.0] * n)
        self._line = len(head)
        self._text = "".join(lines)
        return True

    def _sample(self, lines: list[str]) -> Array:
        complete = lines if lines[-1].endswith("\n") else lines[:-1]
        rows = "".join((complete or lines)[:64])
        try:
            return np.loadtxt(io.StringIO(rows), delimiter=self._delim, ndmin=2,
                              comments=None)
        except ValueError as exc:
            raise FormatError(422, f"bad CSV in the first rows: {exc}") from None

    @staticmethod
    def _time_column(names: list[str] | None, sample: Array) -> int | None:
        if sample.shape[1] < 2:
            return None
        if names:
            return 0 if _TIME_NAMES.match(names[0]) else None
        steps = np.diff(sample[:, 0])
        if len(steps) >= 2 and steps.min() > 0 and np.ptp(steps) <= 1e-6 * steps.mean() + 1e-9:
            return 0
        return None

    def finish(self) -> Iterator[Array]:
        out = self._rows(final=True)
        if self.info is None:
            raise FormatError(422, "CSV has no numeric rows")
        return iter(out)


def _rate(times: Array, unit: float) -> float:
    """The sampling rate of a time column: one over its median step.

    Raises:
        FormatError: 422, the column does not rise (one row, or equal times).
    """
    steps = np.diff(times)
    step = float(np.median(steps)) * unit if len(steps) else 0.0
    if not step > 0:
        raise FormatError(422, "the CSV time column does not rise from row to row; "
                          "give ?fs=<sampling rate in Hz>")
    return round(1.0 / step, 6)


def _numeric(line: str, delim: str) -> bool:
    try:
        [float(c) for c in line.split(delim)]
    except ValueError:
        return False
    return True
