"""The binary upload formats: EDF/EDF+ (streamed record by record) and WFDB archives.

EDF is decoded as it arrives: the fixed header says how long a data record is, so a
decoder keeps at most one partial record. Samples stay int16 with their gain and
baseline in digital units per mV (uV and V scaled). EDF+ annotation signals are skipped;
discontinuous EDF+D and signals at different rates are refused.

A WFDB record is a header plus signal files, so it comes as one zip or tar (optionally
gzipped). Archives cannot be read in order (a zip's directory is at its end), so the
body is spooled to the upload's private directory, the .hea and .dat members are
extracted there, and ``wfdb`` reads the record back in chunks.
"""

from __future__ import annotations

import contextlib
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .formats import FormatError, SourceInfo, UploadParams

__all__ = ["EdfDecoder", "WfdbDecoder", "import_wfdb"]

Array = npt.NDArray[Any]
_UNITS = {"uv": 1000.0, "µv": 1000.0, "mv": 1.0, "v": 0.001}  # units per mV
_WFDB_CHUNK = 1 << 20  # frames per read when converting a WFDB record


class EdfDecoder:
    def __init__(self, params: UploadParams) -> None:
        self.params = params
        self.info: SourceInfo | None = None
        self._buf = bytearray()
        self._records = -1  # declared data records (-1: unknown)
        self._seen = 0
        self._record_bytes = 0
        self._spr: list[int] = []
        self._keep: list[int] = []  # indices of the ordinary (non-annotation) signals

    def _header(self) -> bool:
        if len(self._buf) < 256:
            return False
        try:
            ns = int(self._buf[252:256])
            size = 256 * (ns + 1)
            if len(self._buf) < size:
                return False
            self._parse(bytes(self._buf[:size]), ns)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(422, f"corrupt EDF header: {exc}") from None
        del self._buf[:size]
        return True

    def _parse(self, head: bytes, ns: int) -> None:
        text = head.decode("ascii")
        if text[192:197] == "EDF+D":
            raise FormatError(422, "discontinuous EDF+D files are not supported")
        self._records = int(text[236:244])
        duration = float(text[244:252])

        def field(offset: int, width: int) -> list[str]:
            base = 256 + offset * ns
            return [text[base + i * width: base + (i + 1) * width].strip() for i in range(ns)]

        labels, units = field(0, 16), field(96, 8)
        pmin, pmax = map(_floats, (field(104, 8), field(112, 8)))
        dmin, dmax = map(_floats, (field(120, 8), field(128, 8)))
        self._spr = [int(x) for x in field(216, 8)]
        if any(n < 1 for n in self._spr):
            raise FormatError(422, f"EDF samples per data record must be positive: {self._spr}")
        self._keep = [i for i, name in enumerate(labels) if name != "EDF Annotations"]
        rates = {self._spr[i] for i in self._keep}
        if not self._keep or len(rates) != 1 or duration <= 0:
            raise FormatError(422, f"EDF needs signals at one rate; got samples per record "
                              f"{sorted(rates)} over {duration} s")
        self._record_bytes = 2 * sum(self._spr)
        gains, bases = [], []
        for i in self._keep:
            if pmax[i] == pmin[i]:
                raise FormatError(422, f"EDF signal {labels[i]!r} has an empty physical "
                                  f"range ({pmin[i]} to {pmax[i]})")
            per_unit = (dmax[i] - dmin[i]) / (pmax[i] - pmin[i])
            gains.append(per_unit * _UNITS.get(units[i].lower(), 1.0))
            bases.append(dmin[i] - per_unit * pmin[i])
        self.info = SourceInfo(rates.pop() / duration, [labels[i] for i in self._keep],
                               "int16", gains, bases)

    def feed(self, data: bytes) -> list[Array]:
        self._buf += data
        if self.info is None and not self._header():
            return []
        n = len(self._buf) // self._record_bytes
        if not n:
            return []
        if self._records >= 0 and self._seen + n > self._records:
            raise FormatError(422, f"EDF has more data than its {self._records} records")
        raw = np.frombuffer(self._buf, "<i2", n * self._record_bytes // 2).reshape(n, -1)
        offsets = np.concatenate([[0], np.cumsum(self._spr)])
        frames = np.stack([raw[:, offsets[i]:offsets[i + 1]].reshape(-1) for i in self._keep],
                          axis=1)
        del raw
        del self._buf[:n * self._record_bytes]
        self._seen += n
        return [frames]

    def finish(self) -> Iterator[Array]:
        if self.info is None:
            raise FormatError(422, "truncated EDF: the header is incomplete")
        if self._buf or (self._records >= 0 and self._seen != self._records):
            raise FormatError(422, f"truncated EDF: {self._seen} of {self._records} data "
                              f"records, {len(self._buf)} bytes left over")
        return iter(())


def _floats(values: list[str]) -> list[float]:
    return [float(v) for v in values]


class WfdbDecoder:
    def __init__(self, params: UploadParams, workdir: Path, *, max_unpacked: int) -> None:
        self.params = params
        self.info: SourceInfo | None = None
        self.workdir = workdir
        self.max_unpacked = max_unpacked
        workdir.mkdir(parents=True, exist_ok=True)
        self._spool_path = workdir / "upload.archive"
        self._spool = open(self._spool_path, "wb")  # noqa: SIM115 - closed in finish()

    def feed(self, data: bytes) -> list[Array]:
        self._spool.write(data)
        return []

    def finish(self) -> Iterator[Array]:
        self._spool.close()
        folder = self.workdir / "wfdb"
        folder.mkdir(exist_ok=True)
        try:
            _extract(self._spool_path, folder, self.max_unpacked)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise FormatError(422, f"corrupt or truncated archive: {exc}") from None
        finally:
            self._spool_path.unlink()
        record = _one_record(folder)
        wfdb = import_wfdb()
        try:
            with _quiet():
                header = wfdb.rdheader(str(record))
        except Exception as exc:  # wfdb raises bare ValueError/IndexError on bad headers
            raise FormatError(422, f"bad WFDB header {record.name}.hea: {exc}") from None
        if getattr(header, "seg_len", None) is not None or not header.sig_len:
            raise FormatError(422, "multi-segment or empty WFDB records are not supported")
        if not header.sig_name or not header.adc_gain or header.baseline is None:
            raise FormatError(422, f"WFDB header {record.name}.hea describes no signal")
        self.info = SourceInfo(float(header.fs), list(header.sig_name), "int16",
                               [float(g) for g in header.adc_gain],
                               [float(b) for b in header.baseline])
        return self._chunks(wfdb, record, int(header.sig_len))

    def _chunks(self, wfdb: Any, record: Path, length: int) -> Iterator[Array]:
        for start in range(0, length, _WFDB_CHUNK):
            end = min(length, start + _WFDB_CHUNK)
            try:
                with _quiet():
                    rec = wfdb.rdrecord(str(record), sampfrom=start, sampto=end,
                                        physical=False, return_res=16)
            except Exception as exc:
                raise FormatError(422, f"cannot read WFDB signals at {start}: {exc}") from None
            d = np.asarray(rec.d_signal)
            if d.shape[0] != end - start or d.min() < -32768 or d.max() > 32767:
                raise FormatError(422, f"truncated or non-16-bit WFDB signal at {start}")
            yield d.astype("<i2")


def import_wfdb() -> Any:
    """wfdb, imported on first use (slow; only WFDB uploads need it)."""
    with _quiet():
        import wfdb
    return wfdb


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """wfdb trips pandas deprecation warnings; they are not ours to fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _extract(archive: Path, folder: Path, limit: int) -> None:
    """Extract the .hea and .dat members (flat, by base name) of a zip or tar, at most
    *limit* bytes of them in all (FormatError 413 beyond: counted as written, not
    trusted from the archive's own sizes)."""
    wanted = (".hea", ".dat")
    used = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = Path(info.filename).name
                if name.endswith(wanted) and not info.is_dir():
                    with z.open(info) as src, open(folder / name, "wb") as out:
                        used = _copy(src, out, used, limit)
        return
    with tarfile.open(archive, "r:*") as t:
        for member in t:
            name = Path(member.name).name
            if member.isfile() and name.endswith(wanted):
                member_file = t.extractfile(member)
                assert member_file is not None
                with member_file, open(folder / name, "wb") as out:
                    used = _copy(member_file, out, used, limit)


def _copy(src: Any, out: Any, used: int, limit: int) -> int:
    """Copy *src* to *out*, the archive having unpacked *used* bytes before; the total."""
    while chunk := src.read(1 << 20):
        used += len(chunk)
        if used > limit:
            raise FormatError(413, f"the archive unpacks to more than the limit of {limit} "
                              "bytes")
        out.write(chunk)
    return used


def _one_record(folder: Path) -> Path:
    heads = sorted(folder.glob("*.hea"))
    if len(heads) != 1:
        raise FormatError(422, f"a WFDB archive must hold exactly one .hea header, found "
                          f"{len(heads)}")
    return heads[0].with_suffix("")
