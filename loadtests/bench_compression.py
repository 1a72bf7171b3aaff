"""Wire size and cost of the compression codecs on MIT-BIH DS1, as the server sends it.

    python -m loadtests.bench_compression run            # all 22 DS1 records, 30 min each
    python -m loadtests.bench_compression train          # rewrite the shipped dictionary

Every record is cut into 100 ms frames (36 samples x 2 leads at 360 Hz) and each frame
becomes the int16 ``samples`` message the server publishes on ``stream/<id>/raw``.
Bits per sample = bytes on the wire (WebSocket frame header included) x 8 / samples.
The dictionary is evaluated honestly with two folds: trained on 11 records, measured on
the other 11, and the other way round; the shipped dictionary is trained on all 22.
``vital.v1.compact`` is measured as one connection receives the streams (its header
table included), and every compact frame is decoded and compared with the message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import zstandard

from protocol import (
    ECG_DICTIONARY_ID,
    CompactDecoder,
    CompactEncoder,
    Priority,
    StreamSamples,
    ZstdCodec,
    ZstdDictionary,
    ecg_dictionary,
    encode,
    server_frame,
)
from protocol._deflate import Deflater, Inflater
from protocol._zstd import _delta_payload
from vital_actors.edge.codecs import DeflateCodec
from vital_actors.sources import Recording, data_dir, load_record

__all__ = ["main", "messages", "train"]

DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
       "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")
DICT_PATH = Path(__file__).resolve().parent.parent / "protocol/data/ecg-dict-v1.zstd-dict"
DICT_BYTES = 4096
FRAME_S = 0.1


def messages(rec: Recording, stream: str, *, stride: int = 1) -> Iterator[StreamSamples]:
    """The raw ``samples`` messages of *rec* streamed as *stream* in 100 ms frames."""
    n = round(FRAME_S * rec.fs)
    gain, baseline = tuple(rec.gain), tuple(float(b) for b in rec.baseline)
    for seq, start in enumerate(range(0, len(rec.samples) - n + 1, n)):
        if seq % stride:
            continue
        data = np.ascontiguousarray(rec.samples[start:start + n], dtype="<i2").tobytes()
        yield StreamSamples(f"stream/{stream}/raw", stream, seq, start, rec.fs, rec.channels,
                            "int16", gain, baseline, data, Priority.HIGH)


def train(recs: Sequence[Recording], *, dict_id: int = ECG_DICTIONARY_ID) -> ZstdDictionary:
    """A zstd dictionary from every 10th frame of *recs*, plain and delta-encoded."""
    samples: list[bytes | bytearray | memoryview] = []
    for r in recs:
        for m in messages(r, f"bed-{r.name}", stride=10):
            samples.append(encode(m))
            samples.append(_delta_payload(m) or b"")
    zdict = zstandard.train_dictionary(DICT_BYTES, samples, dict_id=dict_id, level=3)
    return ZstdDictionary(zdict.dict_id(), zdict.as_bytes())


def _json_mv(m: StreamSamples) -> bytes:
    """The original design's baseline: the samples in mV as JSON numbers (3 decimals)."""
    x = np.frombuffer(m.data, dtype="<i2").reshape(-1, len(m.channels))
    mv = (x - np.asarray(m.baseline)) / np.asarray(m.gain)
    body = {"type": "samples", "topic": m.topic, "stream": m.stream, "seq": m.seq,
            "t0": m.t0, "fs": m.fs, "channels": list(m.channels),
            "data": [[round(v, 3) for v in ch] for ch in mv.T.tolist()]}
    return json.dumps(body, separators=(",", ":")).encode()


Codec = Callable[[StreamSamples, bytes], bytes]


def _deflate(level: int, takeover: bool = False) -> Codec:
    """Deflate as the server does it (without ``min_bytes``); shared: the codec itself."""
    if not takeover:
        codec = DeflateCodec(level, 12, 5, 0)
        return lambda m, p: codec.frame(m, p)
    d = Deflater(level=level, window_bits=12, mem_level=5, context_takeover=takeover)
    return lambda m, p: server_frame(d.compress(p), rsv1=True)


def _deflate_one_strategy(level: int) -> Codec:
    """Shared deflate before Z_RLE for small messages: zlib's default strategy."""
    d = Deflater(level=level, window_bits=12, mem_level=5, context_takeover=False)
    return lambda m, p: server_frame(d.compress(p), rsv1=True)


def _zstd(codec: ZstdCodec) -> Codec:
    return lambda m, p: server_frame(codec.compress_message(m, p))


def _zstd_streaming() -> Codec:
    """One zstd stream per connection, a block flushed per message: not compress-once."""
    z = zstandard.ZstdCompressor(level=3).compressobj()
    flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def frame(m: StreamSamples, p: bytes) -> bytes:
        delta = _delta_payload(m)
        return server_frame(z.compress(p if delta is None else delta) + z.flush(flush))
    return frame


def _compact(codec: ZstdCodec) -> Codec:
    """``vital.v1.compact`` on one connection subscribed to every stream in turn (its
    table of entries grows by one per stream); the sample block is computed here, as
    for the first subscriber of a message."""
    enc = CompactEncoder(codec)
    return lambda m, p: server_frame(enc.encode(m, p, {}))


COMPACT = "compact (vital.v1.compact), per-connection headers, shared blocks"


def codecs(dictionary: ZstdDictionary | None) -> dict[str, Codec]:
    out: dict[str, Codec] = {
        "json mV (original design)": lambda m, p: server_frame(_json_mv(m)),
        "msgpack, plain": lambda m, p: server_frame(p),
        "deflate level 1": _deflate(1),
        "deflate level 6": _deflate(6),
        "deflate level 9": _deflate(9),
        "deflate level 6, default strategy (before)": _deflate_one_strategy(6),
        "deflate level 6, context takeover (per connection)": _deflate(6, True),
        "zstd": _zstd(ZstdCodec(delta=False)),
        "zstd + delta": _zstd(ZstdCodec(delta=True)),
        COMPACT: _compact(ZstdCodec(dictionary=dictionary)),
    }
    if dictionary is not None:
        z = ZstdCodec(dictionary=dictionary)
        out["zstd + delta + dictionary"] = _zstd(z)
        out["zstd + delta, streaming context per connection"] = _zstd_streaming()
        # Not an encoding: what the same message costs with no samples in it at all.
        out["(floor: zstd + dictionary, message without samples)"] = (
            lambda m, p: server_frame(z.compress_message(dataclasses.replace(m, data=b""))))
    return out


def _sizes(recs: Sequence[Recording], dictionary: ZstdDictionary | None,
           totals: dict[str, int]) -> int:
    samples = 0
    table = codecs(dictionary)
    client = CompactDecoder(zstd=ZstdCodec(dictionary=dictionary))
    for r in recs:
        for m in messages(r, f"ward-{r.name}"):  # ids unlike the training ids
            payload = encode(m)
            samples += len(m.data) // 2
            for name, codec in table.items():
                frame = codec(m, payload)
                totals[name] = totals.get(name, 0) + len(frame)
                body = frame[4:] if frame[1] == 126 else frame[2:]
                if name == COMPACT and client.decode(body) != m:  # lossless, checked
                    raise SystemExit(f"compact did not decode {m.topic} seq {m.seq} back")
    return samples


def _timing(recs: Sequence[Recording], dictionary: ZstdDictionary, count: int,
            rounds: int = 5) -> dict[str, tuple[float, float]]:
    """µs per message to compress + frame, and to decompress back to msgpack bytes.

    Each codec is timed in turn over the same *count* messages (*count* / records
    consecutive frames of each record), *rounds* times round robin; the best round
    counts. CPU time of this process (``time.process_time``), not
    wall time: the machine is shared, and other processes' load would count otherwise.
    """
    per = max(1, count // len(recs))  # consecutive frames, as a live stream sends them
    msgs = [m for r in recs
            for _, m in zip(range(per), messages(r, f"ward-{r.name}"), strict=False)]
    payloads = [encode(m) for m in msgs]
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        extra = _compact_extra(msgs, payloads)
        old = best.get("compact, each extra connection", [1e9, 0.0])
        best["compact, each extra connection"] = [min(old[0], extra), 0.0]
        table = codecs(dictionary)  # fresh: the per-connection ones start a new stream
        for name, codec in table.items():
            if name.startswith(("json", "(")):
                continue
            t = time.process_time()
            frames = [codec(m, p) for m, p in zip(msgs, payloads, strict=True)]
            comp = (time.process_time() - t) / len(msgs) * 1e6
            bodies = [f[4:] if f[1] == 126 else f[2:] for f in frames]
            t = time.process_time()
            if "streaming" in name:
                dobj = zstandard.ZstdDecompressor().decompressobj()
                for body in bodies:
                    dobj.decompress(body)
            elif name == COMPACT:
                client = CompactDecoder(zstd=ZstdCodec(dictionary=dictionary))
                for body in bodies:
                    client.decode(body)
            elif name.startswith("zstd"):
                z = ZstdCodec(dictionary=dictionary)
                for body in bodies:
                    z.decompress(body)
            elif name.startswith("deflate"):
                inf = Inflater(max_size=1 << 20, context_takeover="takeover" in name)
                for body in bodies:
                    inf.feed(body)
                    inf.end()
            dec = (time.process_time() - t) / len(msgs) * 1e6
            old = best.get(name, [1e9, 1e9])
            best[name] = [min(old[0], comp), min(old[1], dec)]
    return {name: (c, d) for name, (c, d) in best.items()}


def _compact_extra(msgs: Sequence[StreamSamples], payloads: Sequence[bytes]) -> float:
    """µs per message for one more ``vital.v1.compact`` connection: its header and
    frame, the sample block being already made for the first (as in a fan-out)."""
    shared: list[dict[object, object]] = [{} for _ in msgs]
    first, second = CompactEncoder(None), CompactEncoder(None)
    for m, p, memo in zip(msgs, payloads, shared, strict=True):
        first.encode(m, p, memo)
    t = time.process_time()
    for m, p, memo in zip(msgs, payloads, shared, strict=True):
        server_frame(second.encode(m, p, memo))
    return (time.process_time() - t) / len(msgs) * 1e6


def entropy(recs: Sequence[Recording]) -> None:
    """Zero-order entropy of each lead's first differences: bits per sample a memoryless
    coder of the differences could reach."""
    rows = []
    for r in recs:
        d = np.diff(r.samples.astype(np.int32), axis=0)
        for c in range(d.shape[1]):
            _, counts = np.unique(d[:, c], return_counts=True)
            p = counts / counts.sum()
            rows.append(float(-(p * np.log2(p)).sum()))
    print(f"first differences, zero-order entropy over {len(recs)} records x leads: "
          f"mean {np.mean(rows):.2f}, min {min(rows):.2f}, max {max(rows):.2f} bits/sample")


def _available(recs: Sequence[Recording]) -> int:
    return sum(len(r.samples) // round(FRAME_S * r.fs) // 20 for r in recs)


def _load(names: Sequence[str], minutes: float) -> list[Recording]:
    root = data_dir()
    if root is None:
        raise SystemExit("MIT-BIH data not found (set VITAL_DATA_DIR)")
    stop = None if minutes <= 0 else round(minutes * 60 * 360)
    return [load_record(root / "mitdb" / n, stop=stop) for n in names]


def run(args: argparse.Namespace) -> None:
    recs = _load(DS1, args.minutes)
    n = round(FRAME_S * recs[0].fs)
    half = len(recs) // 2
    folds = [(recs[:half], recs[half:]), (recs[half:], recs[:half])]
    totals: dict[str, int] = {}
    samples = 0
    for train_on, test_on in folds:
        samples += _sizes(test_on, train(train_on, dict_id=ECG_DICTIONARY_ID + 1), totals)
    print(f"{len(recs)} DS1 records, {samples:,} samples, "
          f"{samples // (2 * n):,} messages of {FRAME_S * 1000:g} ms (2 x {n} int16)\n")
    raw16 = 16.0
    json_bits = totals["json mV (original design)"] * 8 / samples
    print("| Encoding | bits/sample | vs 16-bit raw | saving vs JSON mV |")
    print("|---|---:|---:|---:|")
    for name, size in totals.items():
        bits = size * 8 / samples
        print(f"| {name} | {bits:.2f} | {bits / raw16:.2f}x | "
              f"{(1 - bits / json_bits) * 100:.1f} % |")
    if args.timing:
        timing_table(recs, train(recs[:half], dict_id=ECG_DICTIONARY_ID + 1), args.timing)


def timing_table(recs: Sequence[Recording], dictionary: ZstdDictionary, count: int) -> None:
    timing = _timing(recs, dictionary, count)
    print(f"\nµs per message, best of 5 rounds over {min(count, _available(recs)):,} messages")
    print("\n| Encoding | compress + frame µs/msg | decompress µs/msg |")
    print("|---|---:|---:|")
    for name, (comp, dec) in timing.items():
        print(f"| {name} | {comp:.1f} | {f'{dec:.1f}' if dec else '—'} |")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_compression",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "train", "timing", "entropy"),
                   help="run: sizes and timing; timing: only the timing, with the shipped "
                   "dictionary; train: rewrite the shipped dictionary")
    p.add_argument("--minutes", type=float, default=0, help="per record; 0 for all 30")
    p.add_argument("--timing", type=int, default=20000,
                   help="messages timed per codec (0: no timing)")
    p.add_argument("--frame-ms", type=float, default=100.0,
                   help="frame length (run only; the dictionary ships for 100 ms)")
    args = p.parse_args(argv)
    if args.frame_ms != 100.0 and args.command != "run":
        p.error("--frame-ms only applies to run")
    global FRAME_S  # one setting for the whole script run
    FRAME_S = args.frame_ms / 1000
    if args.command == "train":
        d = train(_load(DS1, args.minutes))
        DICT_PATH.parent.mkdir(exist_ok=True)
        DICT_PATH.write_bytes(d.data)
        print(f"wrote {DICT_PATH} ({len(d.data)} bytes, id {d.id})")
    elif args.command == "entropy":
        entropy(_load(DS1, args.minutes))
    elif args.command == "timing":
        timing_table(_load(DS1, args.minutes), ecg_dictionary(), args.timing)
    else:
        run(args)


if __name__ == "__main__":
    main()
