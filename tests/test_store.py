"""The recording store: formats round-trip, bad uploads leave nothing, pyramid, LRU."""

from __future__ import annotations

import io
import tarfile
import warnings
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyedflib
import pytest
import trio

from vital_actors.loader import ChunkCache, ChunkLoader
from vital_actors.store import FormatError, RecordingStore, UploadParams, receive_upload
from vital_actors.store.archives import import_wfdb
from vital_actors.store.pyramid import BASE, FACTOR, PyramidBuilder, bucket, envelope, lttb
from vital_actors.store.recording import Writer

Array = np.ndarray[Any, Any]


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "store")


async def _chunks(data: bytes, size: int = 7777) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def upload(store: RecordingStore, data: bytes, declared: str | None = None,
                 **params: Any) -> Any:
    return await receive_upload(store, _chunks(data), declared=declared,
                                params=UploadParams(**params), chunk_bytes=50_000,
                                max_bytes=1 << 30)


def _npy(x: Array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _signal(n: int = 20_000, channels: int = 2, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, channels)) * 300).astype(np.int16)


@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
async def test_npy_round_trips_to_equal_values(store: RecordingStore, dtype: str) -> None:
    x = _signal().astype(dtype)
    meta = await upload(store, _npy(x), "npy", fs=250.0, channels=["a", "b"], gain=200.0)
    got = store.reader(meta.id).read(0, meta.frames)
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, x)
    assert (meta.fs, meta.channels, meta.gain, meta.source_format) == (250.0, ["a", "b"],
                                                                      [200.0, 200.0], "npy")


async def test_csv_with_header_and_time_column(store: RecordingStore) -> None:
    x = (_signal(3000) / 200).astype(np.float32)
    t = np.arange(len(x)) / 360.0
    text = "time,MLII,V5\n" + "".join(f"{ti!r},{a!r},{b!r}\n" for ti, (a, b) in
                                       zip(t.tolist(), x.tolist(), strict=True))
    meta = await upload(store, text.encode())
    assert meta.channels == ["MLII", "V5"] and meta.fs == pytest.approx(360.0)
    assert np.array_equal(store.reader(meta.id).read(0, meta.frames), x)


async def test_csv_without_header_detects_the_time_column_by_its_steps(
        store: RecordingStore) -> None:
    x = (_signal(500, 1) / 100).astype(np.float32)
    rows = "".join(f"{i * 4};{v!r}\n" for i, v in enumerate(x[:, 0].tolist()))  # ms steps
    meta = await upload(store, rows.encode(), "csv", fs=250.0)
    assert meta.channels == ["ch1"]
    assert np.array_equal(store.reader(meta.id).read(0, meta.frames), x)


def _edf(path: Path, x: Array, fs: int = 250) -> bytes:
    with pyedflib.EdfWriter(str(path), x.shape[1], file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([{"label": f"L{i}", "dimension": "uV", "sample_frequency": fs,
                             "physical_max": 3276.7, "physical_min": -3276.8,
                             "digital_max": 32767, "digital_min": -32768}
                            for i in range(x.shape[1])])
        w.writeSamples([np.ascontiguousarray(x[:, i]) for i in range(x.shape[1])],
                       digital=True)
    return path.read_bytes()


async def test_edf_plus_round_trips_digital_values_and_scale(store: RecordingStore,
                                                           tmp_path: Path) -> None:
    x = _signal(250 * 12)  # 12 one-second records
    meta = await upload(store, _edf(tmp_path / "a.edf", x))
    assert meta.source_format == "edf" and meta.fs == 250.0 and meta.channels == ["L0", "L1"]
    assert np.array_equal(store.reader(meta.id).read(0, meta.frames), x)
    # 0.1 uV per unit: 10000 units per mV
    assert meta.gain == pytest.approx([10000.0, 10000.0], rel=1e-4)


def _wfdb_record(folder: Path, x: Array) -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wfdb trips pandas deprecations
        _wrsamp(folder, x)
    return [folder / "rec.hea", folder / "rec.dat"]


def _wrsamp(folder: Path, x: Array) -> None:
    import_wfdb().wrsamp("rec", fs=360, units=["mV", "mV"], sig_name=["MLII", "V1"], d_signal=x,
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[1024, 1024],
                write_dir=str(folder))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_wfdb_archive_round_trips(store: RecordingStore, tmp_path: Path,
                                        kind: str) -> None:
    x = (_signal(5000) % 2000 + 24).astype(np.int64)  # 212 holds 12 bits
    files = _wfdb_record(tmp_path, x)
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for f in files:
                z.write(f, f"100/{f.name}")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for f in files:
                t.add(f, f.name)
    meta = await upload(store, buf.getvalue())
    assert (meta.fs, meta.channels, meta.gain, meta.baseline) == (
        360.0, ["MLII", "V1"], [200.0, 200.0], [1024.0, 1024.0])
    assert np.array_equal(store.reader(meta.id).read(0, meta.frames), x)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
async def test_a_wfdb_archive_that_unpacks_beyond_the_upload_limit_is_413(
        store: RecordingStore, kind: str) -> None:
    # A zip bomb: 8 MB of zeros compress to a few KB; unpacked they would fill the disk
    # under the live archive. The limit is the upload's own, counted as it unpacks.
    dat = bytes(8 << 20)
    hea = b"100 2 360 2097152\n100.dat 16 200 16 0 0 0 0 MLII\n100.dat 16 200 16 0 0 0 0 V1\n"
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("100.hea", hea)
            z.writestr("100.dat", dat)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in (("100.hea", hea), ("100.dat", dat)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    assert len(body) < 1 << 20
    with pytest.raises(FormatError) as caught:
        await receive_upload(store, _chunks(body), declared=None, params=UploadParams(),
                             chunk_bytes=50_000, max_bytes=1 << 20)
    assert caught.value.status == 413 and "unpacks" in str(caught.value)
    assert list(store.partial.iterdir()) == []  # nothing of it is left on disk
    assert list(store) == []


def _truncated_edf(tmp_path: Path) -> bytes:
    return _edf(tmp_path / "t.edf", _signal(2500))[:-1000]


@pytest.mark.parametrize(("name", "make", "declared", "status"), [
    ("truncated npy", lambda p: _npy(_signal())[:-100], None, 422),
    ("npy longer than its header", lambda p: _npy(_signal()) + b"\0" * 4, None, 422),
    ("mislabelled", lambda p: _npy(_signal()), "csv", 415),
    ("unknown format", lambda p: bytes(range(256)) * 4, None, 415),
    ("truncated edf", _truncated_edf, None, 422),
    ("corrupt zip", lambda p: b"PK\x03\x04" + b"\x00" * 2000, None, 422),
    ("csv with a bad row", lambda p: b"a,b\n" + b"1,2\n" * 100 + b"3,x\n", None, 422),
    ("empty", lambda p: b"", None, 422),
])
async def test_bad_uploads_are_refused_and_leave_nothing(
        store: RecordingStore, tmp_path: Path, name: str, make: Any, declared: str | None,
        status: int) -> None:
    with pytest.raises(FormatError) as caught:
        await upload(store, make(tmp_path), declared, fs=100.0)
    assert caught.value.status == status, caught.value.message
    assert list(store) == [] and list(store.partial.iterdir()) == []


async def test_upload_over_the_limit_is_413(store: RecordingStore) -> None:
    with pytest.raises(FormatError) as caught:
        await receive_upload(store, _chunks(_npy(_signal())), declared=None,
                             params=UploadParams(100.0), chunk_bytes=4096, max_bytes=10_000)
    assert caught.value.status == 413
    assert list(store.partial.iterdir()) == []


def test_pyramid_is_independent_of_how_frames_are_fed() -> None:
    x = _signal(BASE * FACTOR * 5 + 37, 3)
    whole, split = PyramidBuilder(3, x.dtype), PyramidBuilder(3, x.dtype)
    a = [np.concatenate(z) for z in zip(whole.feed(x), whole.finish(), strict=True)]
    parts: list[list[Array]] = [[] for _ in a]
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.integers(0, len(x), 20))
    for chunk in np.split(x, cuts):
        for k, entries in enumerate(split.feed(chunk)):
            parts[k].append(entries)
    for k, entries in enumerate(split.finish()):
        parts[k].append(entries)
    for k in range(3):
        b = np.concatenate(parts[k])
        assert np.array_equal(a[k], b)
        size = bucket(k)
        ref_min = [x[i:i + size].min(axis=0) for i in range(0, len(x), size)]
        assert np.array_equal(b[:, :, 0], np.array(ref_min))


def test_envelope_and_lttb_keep_extremes() -> None:
    y = np.sin(np.linspace(0, 20, 10_000))
    y[1234] = 5.0
    first, lo, hi = envelope(y, 100)
    assert len(first) == 100 and hi.max() == 5.0 and lo.min() == pytest.approx(-1, abs=1e-3)
    keep = lttb(y, 300)
    assert len(keep) == 300 and keep[0] == 0 and keep[-1] == len(y) - 1
    assert 1234 in keep and np.all(np.diff(keep) > 0)


def test_writer_resumes_exactly_from_its_state(tmp_path: Path) -> None:
    x = _signal(10_000)
    one = Writer(tmp_path / "one", fs=1.0, channels=["a", "b"], dtype="int16",
                 gain=[1.0, 1.0], baseline=[0.0, 0.0])
    one.append(x)
    one.commit(tmp_path / "done-one", id="one", source_format="npy")
    two = Writer(tmp_path / "two", fs=1.0, channels=["a", "b"], dtype="int16",
                 gain=[1.0, 1.0], baseline=[0.0, 0.0])
    two.append(x[:3333])
    two.flush()
    state = two.state.model_copy(deep=True)
    pending = [p.copy() for p in two.pyramid.pending]
    two.append(x[3333:5000])  # written, then "killed" before its checkpoint
    two.close()
    again = Writer(tmp_path / "two", fs=1.0, channels=["a", "b"], dtype="int16",
                   gain=[1.0, 1.0], baseline=[0.0, 0.0], state=state, pending=pending)
    again.append(x[3333:])
    again.commit(tmp_path / "done-two", id="two", source_format="npy")
    for name in ["samples.bin"] + [f"pyr{k}.bin" for k in range(3)]:
        assert (tmp_path / "done-one" / name).read_bytes() == \
            (tmp_path / "done-two" / name).read_bytes()


async def test_lru_cache_stays_within_its_byte_bound(store: RecordingStore) -> None:
    x = _signal(200_000)
    meta = await upload(store, _npy(x), fs=100.0)
    loader = ChunkLoader(store, cache_bytes=100_000, chunk_bytes=10_000)
    rng = np.random.default_rng(2)
    for _ in range(200):
        a = int(rng.integers(0, len(x)))
        b = a + int(rng.integers(1, 20_000))
        assert np.array_equal(loader.read(meta.id, a, b), x[a:b])
        assert loader.cache.bytes <= 100_000
    assert loader.cache.hits > 0 and len(loader.cache) >= 2


def test_cache_evicts_least_recently_used() -> None:
    cache = ChunkCache(300)
    for i in range(3):
        cache.put(("r", i), np.zeros(100, np.uint8))
    cache.get(("r", 0))
    cache.put(("r", 3), np.zeros(100, np.uint8))
    assert cache.get(("r", 1)) is None and cache.get(("r", 0)) is not None
    assert cache.bytes == 300


async def test_small_pyramid_levels_are_served_whole_from_the_cache(
        store: RecordingStore) -> None:
    x = _signal(300_000)
    meta = await upload(store, _npy(x), fs=100.0)
    reader = store.reader(meta.id)
    loader = ChunkLoader(store, cache_bytes=100_000, chunk_bytes=10_000)
    rng = np.random.default_rng(3)
    for _ in range(100):
        k = int(rng.integers(0, 4))
        a = int(rng.integers(-5, reader.level_entries(k) + 5))
        b = a + int(rng.integers(0, 3000))
        assert np.array_equal(loader.level(reader, k, a, b), reader.level(k, a, b))
        assert loader.cache.bytes <= 100_000
    # Level 0 (300000 / 64 entries x 8 bytes = 37.5 KB) is over 1/8 of the cache: mapped;
    # the coarser ones are each read once, then hit.
    assert loader.cache.misses == 3 and loader.cache.hits > 50
    loader.cache.forget(meta.id)
    assert loader.cache.bytes == 0


async def test_the_loader_serves_several_threads_at_once(store: RecordingStore) -> None:
    x = _signal(200_000)
    meta = await upload(store, _npy(x), fs=100.0)
    loader = ChunkLoader(store, cache_bytes=60_000, chunk_bytes=4_000)
    wrong: list[tuple[int, int]] = []

    def reads(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            a = int(rng.integers(0, len(x)))
            b = a + int(rng.integers(1, 5_000))
            if not np.array_equal(loader.read(meta.id, a, b), x[a:b]):
                wrong.append((a, b))

    async with trio.open_nursery() as nursery:  # /data in worker threads, views beside
        for seed in range(4):
            nursery.start_soon(trio.to_thread.run_sync, reads, seed)
    assert not wrong
    cache = loader.cache
    assert cache.bytes == sum(c.nbytes for c in cache._chunks.values()) <= 60_000


async def test_a_store_opened_by_another_worker_sweeps_only_dead_work_areas(
        store: RecordingStore) -> None:
    """Workers share store.dir: one starting must not delete another's upload in
    progress, only what a stopped server left behind."""
    dead = store.partial / "dead-upload"
    (dead / "rec").mkdir(parents=True)
    (dead / "rec" / "samples.bin").write_bytes(b"\0" * 40)
    x = _signal(60_000)
    data, reopened = _npy(x), []
    first_half = trio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        half = len(data) // 2
        yield data[:half]
        first_half.set()
        await trio.testing.wait_all_tasks_blocked()
        reopened.append(RecordingStore(store.root))  # another worker starts meanwhile
        yield data[half:]

    async with trio.open_nursery() as nursery:
        results: list[Any] = []

        async def run() -> None:
            results.append(await receive_upload(store, slow_body(), declared=None,
                                                params=UploadParams(360.0), chunk_bytes=50_000,
                                                max_bytes=1 << 30))
        nursery.start_soon(run)
    assert not dead.exists()  # nobody held it: swept
    meta = results[0]
    assert reopened and meta.frames == len(x)
    assert np.array_equal(store.reader(meta.id).read(0, len(x)), x)
    assert list(store.partial.iterdir()) == []


def _edf_header_field(edf: bytes, offset: int, width: int, value: str) -> bytes:
    """*edf* with one per-signal header field (at *offset* x signals past the fixed
    header) of every signal set to *value*."""
    out, ns = bytearray(edf), int(edf[252:256])
    for i in range(ns):
        at = 256 + offset * ns + i * width
        out[at:at + width] = value.ljust(width).encode()
    return bytes(out)


# These were a ZeroDivisionError or a ValueError (a 500), not a FormatError.
@pytest.mark.parametrize(("offset", "width", "value"), [
    (216, 8, "0"),  # samples per data record
    (216, 8, "-250"),
    (112, 8, "-3276.8"),  # physical maximum, equal to the minimum
], ids=["no-samples-per-record", "negative-samples-per-record", "empty-physical-range"])
async def test_an_edf_header_no_recording_can_have_is_422(
        store: RecordingStore, tmp_path: Path, offset: int, width: int, value: str) -> None:
    edf = _edf_header_field(_edf(tmp_path / "a.edf", _signal(1000)), offset, width, value)
    with pytest.raises(FormatError) as caught:
        await upload(store, edf)
    assert caught.value.status == 422, caught.value.message
    assert list(store) == [] and list(store.partial.iterdir()) == []


async def test_a_csv_time_column_that_does_not_advance_is_422(store: RecordingStore) -> None:
    rows = "".join(f"0,{i % 50}\n" for i in range(100))  # was a ZeroDivisionError (a 500)
    with pytest.raises(FormatError) as caught:
        await upload(store, ("time_ms,MLII\n" + rows).encode())
    assert caught.value.status == 422 and "time column" in caught.value.message
    assert list(store) == [] and list(store.partial.iterdir()) == []


def _csv(values: list[str]) -> bytes:
    return ("MLII\n" + "".join(f"{i % 7}\n" for i in range(100)) + "\n".join(values)
            + "\n").encode()


# These were stored as NaN or infinity (a view then answered "NaN", which is not JSON).
@pytest.mark.parametrize("data", [
    _csv(["nan"]), _csv(["-inf"]), _csv(["1e39"]),  # 1e39 is beyond float32
    _npy(np.array([[0.5, np.nan]] * 10, np.float32)),
    _npy(np.array([0.5, np.inf], np.float64)),
], ids=["csv-nan", "csv-inf", "csv-beyond-float32", "npy-nan", "npy-inf"])
async def test_samples_that_are_not_finite_numbers_are_422(store: RecordingStore,
                                                           data: bytes) -> None:
    with pytest.raises(FormatError) as caught:
        await upload(store, data, fs=100.0)
    assert caught.value.status == 422 and "finite" in caught.value.message
    assert list(store) == [] and list(store.partial.iterdir()) == []
