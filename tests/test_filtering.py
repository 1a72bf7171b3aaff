"""Tests for vital_actors.filtering: streaming filters equal offline sosfilt, batched."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
import scipy.signal
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from protocol import Event, Hello, Priority
from vital_actors.filtering import FilterBank, FilterSettingsError, design, run_filter
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.quality.design import sosfilt_columns
from vital_actors.settings import FilterSettings
from vital_actors.sources import Recording, load_record
from vital_actors.streams import StreamInfo, StreamRegistry

F64 = npt.NDArray[np.float64]
N = 1800  # samples per stream: 5 s at 360 Hz


@pytest.fixture(scope="module")
def rec(mitdb: Path) -> Recording:
    return load_record(mitdb / "101", stop=3 * N)


def hello(rec: Recording, stream: str, *, resume: int | None = None) -> Hello:
    return Hello(stream, rec.fs, rec.channels, "int16", rec.gain,
                 tuple(float(b) for b in rec.baseline), resume=resume)


def mv(info: StreamInfo, raw: npt.NDArray[np.int16]) -> F64:
    gain = np.asarray(info.hello.gain)
    baseline = np.asarray(info.hello.baseline)
    out: F64 = (raw - baseline) / gain
    return out


def offline(info: StreamInfo, raw: npt.NDArray[np.int16]) -> F64:
    """The reference: one sosfilt over the whole signal, from rest."""
    out: F64 = scipy.signal.sosfilt(info.filter.sos, mv(info, raw), axis=0)
    return out


def assert_close(got: F64, want: F64) -> None:
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-9 * np.ptp(want)


def blocks_of(info: StreamInfo, raw: npt.NDArray[np.int16], sizes: Sequence[int],
              *, seq: int = 0, t0: int = 0) -> list[Block]:
    out = []
    for n in sizes:
        out.append(Block(info, info.run, seq, t0, raw[t0:t0 + n], 0.0))
        seq, t0 = seq + 1, t0 + n
    assert t0 == len(raw)
    return out


def split(total: int, cuts: Sequence[int]) -> list[int]:
    """Frame sizes cutting [0, total) at *cuts*."""
    edges = [0, *sorted({c for c in cuts if 0 < c < total}), total]
    return [b - a for a, b in itertools.pairwise(edges)]


def joined(results: Sequence[Filtered], info: StreamInfo) -> F64:
    return np.vstack([r.filtered for r in results if r.block.stream is info])


# --- FilterBank ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_framing_and_batching_equals_offline_sosfilt(rec: Recording,
                                                         data: st.DataObject) -> None:
    registry = StreamRegistry(FilterSettings())
    infos = [registry.attach(hello(rec, s)) for s in ("a", "b", "c")]
    infos[2].filter = design(FilterSettings(notch_hz=60.0), rec.fs)  # its own coefficients
    raws = [rec.samples[k * N:(k + 1) * N] for k in range(3)]
    cut = st.lists(st.integers(1, N - 1), max_size=25)
    queues = [blocks_of(info, raw, split(N, data.draw(cut)))
              for info, raw in zip(infos, raws, strict=True)]
    # Interleave the streams in a random arrival order, then cut that into batches.
    order = data.draw(st.permutations([k for k, q in enumerate(queues) for _ in q]))
    arrivals = [queues[k].pop(0) for k in order]
    batches = split(len(arrivals), data.draw(st.lists(st.integers(1, len(arrivals)))))
    bank, results, at = FilterBank(), [], 0
    for size in batches:
        out = bank.apply(arrivals[at:at + size])
        assert [r.block for r in out] == arrivals[at:at + size]  # one each, in order
        results += out
        at += size
    for info, raw in zip(infos, raws, strict=True):
        assert_close(joined(results, info), offline(info, raw))
        np.testing.assert_allclose(np.vstack([r.mv for r in results if r.block.stream is info]),
                                   mv(info, raw), rtol=0, atol=1e-12)


def test_streams_with_the_same_settings_and_frame_length_share_calls(rec: Recording) -> None:
    registry = StreamRegistry(FilterSettings())
    a, b, c = (registry.attach(hello(rec, s)) for s in ("a", "b", "c"))
    c.filter = design(FilterSettings(notch_hz=60.0), rec.fs)
    raws = [rec.samples[k * N:(k + 1) * N] for k in range(3)]
    queues = [blocks_of(info, raw, [180] * 10) for info, raw in zip((a, b, c), raws,
                                                                    strict=True)]
    bank, results = FilterBank(), []
    for k in range(10):  # each batch: one block of each stream
        results += bank.apply([q[k] for q in queues])
    # a and b (same coefficients, same length) go together; c alone: 2 calls, not 3.
    assert bank.calls == 20 < 30
    for info, raw in zip((a, b, c), raws, strict=True):
        assert_close(joined(results, info), offline(info, raw))


def test_blocks_of_one_stream_in_one_batch_filter_in_sequence(rec: Recording) -> None:
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    raw = rec.samples[:N]
    bank = FilterBank()
    results = bank.apply(blocks_of(info, raw, [600, 600, 600]))
    assert bank.calls == 3  # the second needs the state the first leaves
    assert_close(joined(results, info), offline(info, raw))


def test_new_settings_restart_from_rest_at_that_block(rec: Recording) -> None:
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    raw = rec.samples[:N]
    blocks = blocks_of(info, raw, [300] * 6)
    bank = FilterBank()
    before = bank.apply(blocks[:3])
    old_version = info.filter.version
    info.filter = design(FilterSettings(low_hz=1.0, high_hz=25.0, order=2), rec.fs)
    after = bank.apply(blocks[3:])
    assert {r.filter_version for r in before} == {old_version}
    assert {r.filter_version for r in after} == {info.filter.version} != {old_version}
    assert_close(joined(after, info), offline(info, raw[900:]))


def test_a_fresh_run_resets_the_state_and_resume_keeps_it(rec: Recording) -> None:
    registry = StreamRegistry(FilterSettings())
    info = registry.attach(hello(rec, "a"))
    raw = rec.samples[:N]
    bank = FilterBank()
    bank.apply(blocks_of(info, raw[:900], [300] * 3))
    registry.detach(info)
    assert registry.attach(hello(rec, "a", resume=3)) is info and info.run == 0
    resumed = bank.apply(blocks_of(info, raw[900:], [300] * 3))
    assert_close(joined(resumed, info), offline(info, raw)[900:])  # continues

    registry.detach(info)
    assert registry.attach(hello(rec, "a")) is info  # no resume: a fresh run
    assert info.run == 1
    fresh = bank.apply(blocks_of(info, raw[900:], [300] * 3))
    assert_close(joined(fresh, info), offline(info, raw[900:]))  # from rest


def test_a_group_kept_together_follows_a_streams_new_format(rec: Recording) -> None:
    """Three streams filtered together call after call (their states and mV scales kept
    as one group); one comes back with another gain: a fresh run for it, from rest and
    in its new scale, while the others go on."""
    registry = StreamRegistry(FilterSettings())
    infos = [registry.attach(hello(rec, k)) for k in "abc"]
    raw = rec.samples[:N]
    bank = FilterBank()
    got: dict[str, list[Filtered]] = {k: [] for k in "abc"}
    for t0 in (0, 300, 600):
        for r in bank.apply([Block(i, i.run, t0 // 300, t0, raw[t0:t0 + 300], 0.0)
                             for i in infos]):
            got[r.block.stream.id].append(r)
    b = infos[1]
    registry.detach(b)
    doubled = Hello("b", rec.fs, rec.channels, "int16", tuple(2 * g for g in rec.gain),
                    tuple(float(x) for x in rec.baseline))
    assert registry.attach(doubled) is b and b.run == 1
    for t0 in (900, 1200):
        for r in bank.apply([Block(i, i.run, t0 // 300, t0 - 900 * (i is b), raw[t0:t0 + 300],
                                   0.0) for i in infos]):
            got[r.block.stream.id].append(r)
    for info in (infos[0], infos[2]):
        assert_close(joined(got[info.id], info), offline(info, raw[:1500]))
    assert_close(joined(got["b"][3:], b), offline(b, raw[900:1500]))  # half the mV


def test_forget_drops_a_streams_state(rec: Recording) -> None:
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    raw = rec.samples[:N]
    bank = FilterBank()
    bank.apply(blocks_of(info, raw[:900], [900]))
    bank.forget("a")
    again = bank.apply(blocks_of(info, raw[900:], [900]))
    assert_close(joined(again, info), offline(info, raw[900:]))


# --- design --------------------------------------------------------------------------------


def test_design_matches_scipy_butter_and_iirnotch() -> None:
    d = design(FilterSettings(low_hz=0.5, high_hz=40.0, order=4, notch_hz=50.0), 360.0)
    band = scipy.signal.butter(4, [0.5, 40.0], btype="bandpass", fs=360.0, output="sos")
    notch = scipy.signal.tf2sos(*scipy.signal.iirnotch(50.0, 30.0, fs=360.0))
    np.testing.assert_allclose(d.sos, np.vstack([band, notch]))
    assert d.fs == 360.0
    assert design(FilterSettings(), 360.0).key == design(FilterSettings(), 360.0).key
    assert design(FilterSettings(), 360.0).version != design(FilterSettings(), 360.0).version


@pytest.mark.parametrize(("settings", "fs", "bad"), [
    (FilterSettings(high_hz=40.0), 80.0, "high_hz"),  # exactly Nyquist
    (FilterSettings(high_hz=40.0), 60.0, "high_hz"),
    (FilterSettings(high_hz=40.0, notch_hz=60.0), 100.0, "notch_hz"),
])
def test_design_refuses_corners_at_or_above_nyquist(settings: FilterSettings, fs: float,
                                                    bad: str) -> None:
    with pytest.raises(FilterSettingsError) as info:
        design(settings, fs)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(bad)


def test_design_fits_the_fallback_below_nyquist() -> None:
    fallback = FilterSettings(low_hz=0.5, high_hz=40.0, notch_hz=50.0)
    d = design(FilterSettings(high_hz=100.0), 50.0, fallback=fallback)
    assert (d.settings.low_hz, d.settings.high_hz, d.settings.notch_hz) == (0.5, 22.5, None)
    want = scipy.signal.butter(4, [0.5, 22.5], btype="bandpass", fs=50.0, output="sos")
    np.testing.assert_allclose(d.sos, want)
    # Settings that can run are used as given, fallback or not.
    ok = design(FilterSettings(high_hz=30.0), 360.0, fallback=fallback)
    assert ok.settings == FilterSettings(high_hz=30.0)


# --- run_filter ----------------------------------------------------------------------------


def publication(n: int) -> Publication:
    return Publication(Event("status", "streams", Priority.NORMAL, {"n": n}))


async def test_run_filter_keeps_publications_in_order_with_blocks(
        rec: Recording, autojump_clock: MockClock) -> None:
    registry = StreamRegistry(FilterSettings())
    a, b = registry.attach(hello(rec, "a")), registry.attach(hello(rec, "b"))
    ablocks = blocks_of(a, rec.samples[:720], [360, 360])
    bblocks = blocks_of(b, rec.samples[720:1440], [360, 360])
    items: list[Item] = [publication(0), ablocks[0], bblocks[0], publication(1), ablocks[1],
                         publication(2), bblocks[1]]
    in_tx, in_rx = trio.open_memory_channel[Item](len(items))
    out_tx, out_rx = trio.open_memory_channel[Item](len(items))
    for item in items:
        in_tx.send_nowait(item)  # all waiting: the filter takes them as one batch
    in_tx.close()
    with trio.fail_after(60):  # instant on the autojump clock, if it never ends
        async with trio.open_nursery() as nursery:
            bank = await nursery.start(partial(run_filter, in_rx, out_tx, max_batch=64))
            got = [item async for item in out_rx]  # ends: run_filter closed its outbox
    assert len(got) == len(items)
    for want, item in zip(items, got, strict=True):
        if isinstance(want, Block):
            assert isinstance(item, Filtered) and item.block is want
        else:
            assert item is want
    assert bank.calls == 2  # a and b share both rounds
    filtered = [g for g in got if isinstance(g, Filtered)]
    assert_close(joined(filtered, a), offline(a, rec.samples[:720]))


async def test_run_filter_publishes_each_filtered_block_before_passing_it_on(
        rec: Recording, autojump_clock: MockClock) -> None:
    """With *publish* (the server's filtered topics), every filtered block is handed
    over as soon as its batch is filtered, even while nobody reads downstream."""
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    blocks = blocks_of(info, rec.samples[:360], [120] * 3)
    in_tx, in_rx = trio.open_memory_channel[Item](len(blocks))
    out_tx, out_rx = trio.open_memory_channel[Item](1)  # room for one: the rest waits
    published: list[Filtered] = []
    for block in blocks:
        in_tx.send_nowait(block)
    with trio.fail_after(60):  # instant on the autojump clock, if it never ends
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_filter, in_rx, out_tx, max_batch=64,
                                        publish=published.append))
            await trio.testing.wait_all_tasks_blocked()
            assert [f.block for f in published] == blocks
            assert out_rx.statistics().current_buffer_used == 1
            assert_close(joined(published, info), offline(info, rec.samples[:360]))
            in_tx.close()
            got = [item async for item in out_rx]
    assert [g.block for g in got if isinstance(g, Filtered)] == blocks
    assert got == published  # the same objects: published once, passed on once


async def test_run_filter_ends_and_closes_its_outbox_when_its_inbox_ends(
        autojump_clock: MockClock) -> None:
    in_tx, in_rx = trio.open_memory_channel[Item](1)
    out_tx, out_rx = trio.open_memory_channel[Item](1)
    with trio.fail_after(60):  # instant on the autojump clock, if it never ends
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_filter, in_rx, out_tx, max_batch=4))
            item = publication(0)
            await in_tx.send(item)
            assert await out_rx.receive() is item
            in_tx.close()
            with pytest.raises(trio.EndOfChannel):
                await out_rx.receive()
    assert out_rx.statistics().open_send_channels == 0
    assert in_rx.statistics().open_receive_channels == 0


async def test_run_filter_parks_when_downstream_is_full(
        rec: Recording, autojump_clock: MockClock) -> None:
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    blocks = blocks_of(info, rec.samples[:360], [60] * 6)
    in_tx, in_rx = trio.open_memory_channel[Item](1)
    out_tx, out_rx = trio.open_memory_channel[Item](1)
    sent: list[int] = []

    async def device() -> None:
        with in_tx:
            for block in blocks:
                await in_tx.send(block)
                sent.append(block.seq)

    with trio.fail_after(60):  # instant on the autojump clock, if it never ends
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_filter, in_rx, out_tx, max_batch=1))
            nursery.start_soon(device)
            await trio.testing.wait_all_tasks_blocked()
            # Block 0 waits in the outbox; the filter is parked sending block 1; block 2 waits
            # in the inbox; the device is parked sending block 3. Nothing is dropped.
            assert out_rx.statistics().current_buffer_used == 1
            assert out_rx.statistics().tasks_waiting_send == 1
            assert in_rx.statistics().current_buffer_used == 1
            assert in_rx.statistics().tasks_waiting_send == 1
            assert sent == [0, 1, 2]
            first = await out_rx.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert sent == [0, 1, 2, 3]  # one taken downstream lets exactly one more in
            assert out_rx.statistics().tasks_waiting_send == 1
            rest = [item async for item in out_rx]
    got = [first, *rest]
    assert [g.block.seq for g in got if isinstance(g, Filtered)] == list(range(6))
    assert_close(joined([g for g in got if isinstance(g, Filtered)], info),
                 offline(info, rec.samples[:360]))


@pytest.mark.parametrize(("n", "columns", "order"), [(360, 40, "C"), (36, 7, "F"), (1, 3, "C"),
                                                     (500, 1, "C")])
def test_the_direct_kernel_is_scipys_sosfilt_bit_for_bit(n: int, columns: int,
                                                         order: Literal["C", "F"]) -> None:
    rng = np.random.default_rng(n + columns)
    for sos in (design(FilterSettings(), 360.0).sos,
                design(FilterSettings(notch_hz=50.0), 250.0).sos):
        x = np.asarray(rng.standard_normal((n, columns)), order=order)
        zi = rng.standard_normal((sos.shape[0], 2, columns))
        want_y, want_zf = scipy.signal.sosfilt(sos, x, axis=0, zi=zi)
        y, zf = sosfilt_columns(sos, x, zi)
        assert np.array_equal(y, want_y) and np.array_equal(zf, want_zf)
        assert y.flags.f_contiguous == want_y.flags.f_contiguous


class _FailsOnce(FilterBank):
    """A bank with a bug that strikes its second call, once."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def apply(self, blocks: Sequence[Block]) -> list[Filtered]:
        if self.calls == 1 and not self.failed:
            self.failed = True
            raise IndexError("a bug in the filter bank")
        return super().apply(blocks)


async def test_a_batch_the_bank_fails_on_is_dropped_and_the_stream_starts_from_rest(
        rec: Recording, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    info = StreamRegistry(FilterSettings()).attach(hello(rec, "a"))
    blocks = blocks_of(info, rec.samples[:1080], [360] * 3)
    note = publication(0)
    in_tx, in_rx = trio.open_memory_channel[Item](8)
    out_tx, out_rx = trio.open_memory_channel[Item](8)
    bank = _FailsOnce()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_filter, in_rx, out_tx, max_batch=64, bank=bank))
        for item in (blocks[0], note, blocks[1], blocks[2]):  # one batch each
            in_tx.send_nowait(item)
            await trio.testing.wait_all_tasks_blocked()
        in_tx.close()
        got = [item async for item in out_rx]
    assert bank.failed and "a bug in the filter bank" in caplog.text
    assert [g.block if isinstance(g, Filtered) else g for g in got] == \
        [blocks[0], note, blocks[2]]  # the second block's batch dropped, the rest went on
    third = got[-1]
    assert isinstance(third, Filtered)  # its filter started from rest: as if alone
    assert_close(third.filtered, offline(info, rec.samples[720:1080]))


def test_an_impossible_sample_is_forgotten_like_a_big_one(mitdb: Path) -> None:
    # A float device's one sample of 1e30 mV: the filter sees 10 V (MV_LIMIT) there,
    # and its output is the clean one again 20 s later (unclipped, ~90 s, with values
    # up to 1e23 mV on the filtered topic meanwhile). The mV samples stay as sent.
    rec = load_record(mitdb / "101", stop=40 * 360)
    clean = ((rec.samples - np.asarray(rec.baseline)) / np.asarray(rec.gain)).astype(np.float32)
    spoilt = clean.copy()
    spoilt[360:365] = 1e30
    out = []
    for x in (clean, spoilt):
        registry = StreamRegistry(FilterSettings())
        info = registry.attach(Hello("f", rec.fs, rec.channels, "float32", (1.0, 1.0),
                                     (0.0, 0.0)))
        bank = FilterBank()
        out.append([bank.apply([b])[0] for b in blocks_of(info, x, [36] * (len(x) // 36))])
    filtered = [np.vstack([f.filtered for f in fs]) for fs in out]
    assert np.max(np.abs(filtered[1][21 * 360:] - filtered[0][21 * 360:])) < 1e-6
    assert np.vstack([f.mv for f in out[1]])[360, 0] == np.float32(1e30)
