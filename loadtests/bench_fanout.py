"""Fan-out cost of the broadcaster's delivery path, in process, per extra subscriber.

    python -m loadtests.bench_fanout --subscribers 1 10 100 1000 --messages 2000
    python -m loadtests.bench_fanout --codec compact    # vital.v1.compact subscribers

One :class:`~vital_actors.broadcast.Hub` with N subscribers on one topic. For each
message: ``hub.publish`` (encode once, then the lane policy and ``send_nowait`` into each
subscriber's lanes) -- the *offer* figure; then every subscriber's sender side takes
it and asks for its frame (``lanes.take_nowait`` + ``out.frame_for(codec)``, framed
once and memoized) -- the *take* figure. No sockets: what grows with N is measured,
not the kernel. Cost per extra subscriber = (t(N) - t(1)) / (N - 1); the Ns are run
interleaved, round after round, and the median round is reported. Last, 100
subscribers of which one has stopped taking (its HIGH lane full, so it drops) against
100 that all take: what a stalled subscriber costs the broadcaster.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Sequence

import numpy as np
import trio

from protocol import StreamSamples
from vital_actors.broadcast import Hub, Subscriber
from vital_actors.edge.codecs import PLAIN, CompactWireCodec, WireCodec
from vital_actors.settings import LaneSettings
from vital_actors.stats import Stats

__all__ = ["main"]

TOPIC = "stream/bench/raw"


def _messages(count: int) -> list[StreamSamples]:
    """100 ms frames of 360 Hz x 2 channels int16, as a live stream carries them."""
    rng = np.random.default_rng(1)  # a random walk: ECG-like steps between samples
    steps = rng.integers(-6, 7, size=(count * 36, 2))
    data = np.clip(np.cumsum(steps, axis=0), -2048, 2047).astype("<i2").reshape(count, 36, 2)
    return [StreamSamples(TOPIC, "bench", k, 36 * k, 360.0, ("MLII", "V1"), "int16",
                          (200.0, 200.0), (1024.0, 1024.0), data[k].tobytes())
            for k in range(count)]


def _round(hub: Hub, subs: Sequence[Subscriber], messages: Sequence[StreamSamples],
           batch: int, codecs: dict[int, WireCodec]) -> tuple[float, float]:
    """Seconds per message spent offering, and taking + framing, over *messages*."""
    offer = take = 0.0
    for start in range(0, len(messages), batch):
        chunk = messages[start:start + batch]
        t0 = time.perf_counter()
        for m in chunk:
            hub.publish(m)
        t1 = time.perf_counter()
        for sub in subs:
            lanes, codec = sub.lanes, codecs[id(sub)]
            for _ in chunk:
                lanes.take_nowait().frame_for(codec)
        t2 = time.perf_counter()
        offer += t1 - t0
        take += t2 - t1
    return offer / len(messages), take / len(messages)


def _hub(n: int) -> tuple[Hub, list[Subscriber]]:
    hub = Hub(buffer=10_000, settings=LaneSettings(seed=1), stats=Stats())
    subs = [hub.add() for _ in range(n)]
    for sub in subs:
        hub.subscribe(sub, [TOPIC])
    return hub, subs


def _codec(name: str) -> WireCodec:
    return PLAIN if name == "plain" else CompactWireCodec(level=3, dictionary=None)


async def _bench(ns: Sequence[int], count: int, rounds: int,
                 codec: str) -> dict[int | str, tuple[float, float]]:
    """Per N: (offer, take + frame) seconds per message, median over *rounds*. Also
    ``"100+stalled"``: 99 subscribers that read and one whose lanes are full (it never
    reads; warmed up until it drops), against ``100``."""
    messages = _messages(count)
    batch = 1000  # within the HIGH lane (4000) and below the 80 % watermark
    hubs: dict[int | str, tuple[Hub, list[Subscriber]]] = {n: _hub(n) for n in ns}
    hub, subs = hubs["100+stalled"] = _hub(100)
    readers = subs[1:]
    codecs = {id(s): _codec(codec) for _, ss in hubs.values() for s in ss}
    for _ in range(5):  # the stalled one's HIGH lane (4000) fills up and it drops
        _round(hub, readers, messages[:1000], batch, codecs)
    assert subs[0].lanes.counts.dropped[1] > 0
    hubs["100+stalled"] = (hub, readers)  # only the readers take
    if 100 not in hubs:
        hubs[100] = _hub(100)
        codecs.update((id(s), _codec(codec)) for s in hubs[100][1])
    results: dict[int | str, list[tuple[float, float]]] = {k: [] for k in hubs}
    gc.collect()
    gc.freeze()
    for _ in range(rounds):
        for key, (hub, subs) in hubs.items():
            results[key].append(_round(hub, subs, messages, batch, codecs))
    for _, subs in hubs.values():
        assert all(sum(s.lanes.counts.dropped) == 0 for s in subs), "only the stalled drops"
    return {k: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for k, rs in results.items()}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--messages", type=int, default=2000, help="messages per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--codec", choices=("plain", "compact"), default="plain",
                   help="every subscriber's codec: plain msgpack (shared frames) or "
                   "vital.v1.compact (shared sample blocks, a header per subscriber)")
    args = p.parse_args(argv)
    ns = sorted(set(args.subscribers) | {1})
    figures = trio.run(_bench, ns, args.messages, args.rounds, args.codec)
    base_offer, base_take = figures[1]
    print("| subscribers | offer µs/msg | take+frame µs/msg | total µs/msg | "
          "µs per extra subscriber (offer) | µs per extra subscriber (total) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        offer, take = figures[n]
        extra = (f"{1e6 * (offer - base_offer) / (n - 1):.2f} | "
                 f"{1e6 * (offer + take - base_offer - base_take) / (n - 1):.2f}"
                 if n > 1 else "- | -")
        print(f"| {n} | {1e6 * offer:.1f} | {1e6 * take:.1f} | {1e6 * (offer + take):.1f} | "
              f"{extra} |")
    (o100, t100), (o_st, t_st) = figures[100], figures["100+stalled"]
    print(f"\n100 subscribers, one stalled (lanes full, dropping) vs none: offer "
          f"{1e6 * o_st:.1f} vs {1e6 * o100:.1f} µs/msg ({o_st / o100:.2f}x); offer + the "
          f"readers' take {1e6 * (o_st + t_st):.1f} vs {1e6 * (o100 + t100):.1f} µs/msg "
          f"({(o_st + t_st) / (o100 + t100):.2f}x)")


if __name__ == "__main__":
    main()
