"""A fingerprint of everything the quality chain emits: for speed work that must not
change a single event.

    python -m loadtests.quality_digest                       # 22 DS1 records, 600 s each
    python -m loadtests.quality_digest --records 4 --seconds 120 --framing 1000 ragged

Runs what ``loadtests.bench_quality`` runs (``FilterBank.apply`` then ``screen_batch``,
all streams' blocks in one batch) over the DS1 records (360 Hz, 2 leads), one stream
per record (and ``--doctored`` copies of the first records with flat and stuck
stretches, for the alerts DS1 does not raise), once per framing. Per framing it prints
the event count and two sha256 of the events (type, topic, priority and body,
msgpack-encoded: floats as their exact 64 bits; anything msgpack does not know, such
as a numpy scalar, as its ``repr``, so a change of type shows too):

- ``streams``: over each stream's events in order (the same for any framing of the
  same samples);
- ``framed``: over all events in batch order, with the frame each came with;
- ``filtered``: the filter bank's output (mV and filtered bytes, in batch order).

Framings:

- a number: blocks of that many ms for every stream, all streams starting at 0;
- ``ragged``: each stream its own block lengths (1 sample to 2.2 s, seeded), its own
  first sample index (so the streams' 1-s steps fall at different rows, and the chain
  sums them in several phases) and one or two blocks per batch.

``streams`` is the same for the fixed framings; the ragged streams start at other
indices, so theirs differs. Every figure must stay the same from commit to commit.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import replace
from typing import get_args

import msgpack
import numpy as np

from protocol import Event, Hello
from vital_actors.filtering import FilterBank
from vital_actors.messages import Block, Filtered, Item, Publication
from vital_actors.quality import QualityChain
from vital_actors.screening import screen_batch
from vital_actors.settings import FilterSettings, Front, ScreenSettings
from vital_actors.sources import Recording, data_dir, list_records, load_record
from vital_actors.streams import StreamInfo, StreamRegistry

__all__ = ["digest", "main"]

FS = 360


def _encode(event: Event) -> bytes:
    packed: bytes = msgpack.packb((event.type, event.topic, int(event.priority), event.body),
                                  default=repr, use_bin_type=True)
    return packed


def _doctored(rec: Recording, k: int) -> Recording:
    """*rec* with stretches that raise the other alerts: a flat line at the baseline
    (flatline, asystole), one stuck 5 mV off it (lead off) and one of the lead alone
    stuck there (one channel's lead off), from ``40 + 7 k`` s on."""
    x = np.array(rec.samples)
    base, gain = np.array(rec.baseline), np.array(rec.gain)
    at = (40 + 7 * k) * FS
    x[at:at + 30 * FS] = base
    x[at + 60 * FS:at + 80 * FS] = base + np.round(5 * gain).astype(np.int16)
    x[at + 120 * FS:at + 150 * FS, 0] = base[0] - round(5 * gain[0])
    return replace(rec, name=f"{rec.name}+stuck", samples=x)


def _plan(framing: str, streams: int, n: int) -> tuple[list[int], list[list[list[int]]]]:
    """Per stream its first sample index, and per batch, per stream the block lengths
    it sends in that batch (a stream's blocks follow each other)."""
    if framing != "ragged":
        frame = max(1, round(float(framing) / 1000 * FS))
        batches = [[[frame] for _ in range(streams)] for _ in range(n // frame)]
        return [0] * streams, batches
    rng = np.random.default_rng(4)
    starts = [int(x) for x in rng.integers(0, 10 * FS, streams)]
    left = [n] * streams
    batches = []
    while any(left):
        batch = []
        for s in range(streams):
            sizes = []
            for _ in range(int(rng.integers(1, 3))):
                size = min(left[s], int(rng.choice([1, 7, 36, 90, 360, 361, 800])))
                if size:
                    sizes.append(size)
                    left[s] -= size
            batch.append(sizes)
        batches.append(batch)
    return starts, batches


def digest(recs: list[Recording], seconds: float, framing: str,
           front: Front = "auto") -> tuple[str, str, int, str, float]:
    """(sha256 of each stream's events, sha256 of the events in batch order with the
    frames they came with, events, sha256 of the filter output, CPU seconds), with the
    quality chain's *front* end (``ScreenSettings.front``)."""
    n = min(round(seconds * FS), *(len(r.samples) for r in recs))
    registry = StreamRegistry(FilterSettings())
    infos: list[StreamInfo] = []
    for i, rec in enumerate(recs):
        hello = Hello(f"s{i}", rec.fs, rec.channels, "int16", rec.gain,
                      tuple(float(b) for b in rec.baseline))
        infos.append(registry.attach(hello))
    starts, batches = _plan(framing, len(recs), n)
    at = [0] * len(recs)  # per stream, its next row in the record
    bank, chain = FilterBank(), QualityChain(ScreenSettings(front=front))
    framed, filters, count = hashlib.sha256(), hashlib.sha256(), 0
    per_stream = {info.id: hashlib.sha256() for info in infos}
    t = time.process_time()
    for k, batch in enumerate(batches):
        blocks = []
        for s, sizes in enumerate(batch):
            for size in sizes:
                raw = recs[s].samples[at[s]:at[s] + size]
                blocks.append(Block(infos[s], infos[s].run, k, starts[s] + at[s], raw, 0.0))
                at[s] += size
        items: list[Item] = list(bank.apply(blocks))
        stream = per_stream[infos[0].id]
        for item in screen_batch(chain, items):
            if isinstance(item, Filtered):
                filters.update(item.mv.tobytes())
                filters.update(item.filtered.tobytes())
                framed.update(b"|frame|")  # which frame the events that follow are of
                stream = per_stream[item.block.stream.id]
            elif isinstance(item, Publication) and isinstance(item.message, Event):
                packed = _encode(item.message)
                framed.update(packed)
                stream.update(packed)
                count += 1
    streams = hashlib.sha256(b"".join(h.digest() for h in per_stream.values()))
    return (streams.hexdigest(), framed.hexdigest(), count, filters.hexdigest(),
            time.process_time() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=22, help="the first N DS1 records")
    p.add_argument("--seconds", type=float, default=600.0, help="of each record")
    p.add_argument("--framing", nargs="+", default=["1000", "100", "ragged"],
                   help="block lengths in ms, or 'ragged'")
    p.add_argument("--doctored", type=int, default=4,
                   help="streams more: copies of the first records with flat and stuck "
                        "stretches (alerts)")
    p.add_argument("--front", nargs="+", choices=get_args(Front), default=["auto"],
                   help="the chain's front end(s), each framing with each in turn: the "
                        "digests must be the same")
    args = p.parse_args()
    root = data_dir()
    if root is None or not (root / "mitdb").is_dir():
        raise SystemExit("../shared/data/mitdb not found: the digest runs on DS1")
    recs = [load_record(path, stop=round(args.seconds * FS))
            for path in list_records(root / "mitdb")[:args.records]]
    recs += [_doctored(rec, k) for k, rec in enumerate(recs[:args.doctored])]
    for framing in args.framing:
        for front in args.front:
            streams, framed, count, filt, cpu = digest(recs, args.seconds, framing, front)
            label = f" {front:>8}" if len(args.front) > 1 else ""
            print(f"{framing:>7}{label} events {count:>6} streams {streams[:24]} framed "
                  f"{framed[:24]} filtered {filt[:16]} ({cpu:.1f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
