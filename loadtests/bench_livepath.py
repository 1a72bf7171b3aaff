"""Small in-process costs of the live path, each in a fresh child process, side by side.

    python -m loadtests.bench_livepath                       # this checkout
    python -m loadtests.bench_livepath --against /tmp/old    # and another, alternating

- ``write``: one 300-byte frame through ``WebSocket.send_frame`` over a socketpair, the
  peer draining it (CPU µs per write, both ends);
- ``pyramid``: ``PyramidBuilder.feed`` of one 36-sample, 2-channel frame (µs per frame;
  the entries' md5 shows both checkouts build the same);
- ``walls``: 10 subscribers' senders on one topic at 2,000 messages/s, real time, with
  the busy subscribers' linger off and at 2 ms (CPU µs per delivery: publish, take,
  write, the peers' reads). Needs a checkout that has ``subscribers.Linger``.

Figures are CPU time (``time.process_time``) of the child; the fastest of ``--repeat``.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .against import run_in

__all__ = ["main"]

_WRITE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import trio
from wsproto import ConnectionType, WSConnection
from vital_actors.edge.websocket import WebSocket
N = 50_000
async def main():
    a, b = trio.socket.socketpair()
    sa, sb = trio.SocketStream(a), trio.SocketStream(b)
    ws = WebSocket(sa, WSConnection(ConnectionType.SERVER), path="/", remote="x",
                   max_message_bytes=1 << 20)
    frame = b"\\x82\\x7e\\x01\\x2c" + b"x" * 300
    async def drain():
        while await sb.receive_some(1 << 20):
            pass
    async with trio.open_nursery() as n:
        n.start_soon(drain)
        t = time.process_time()
        for _ in range(N):
            await ws.send_frame(frame)
        dt = time.process_time() - t
        n.cancel_scope.cancel()
    print(f"{dt / N * 1e6:.2f}")
trio.run(main)
"""

_PYRAMID = """
import hashlib, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from vital_actors.store.pyramid import PyramidBuilder
x = np.random.default_rng(1).integers(-2000, 2000, size=(36 * 20_000, 2)).astype("<i2")
frames = [x[i * 36:(i + 1) * 36] for i in range(20_000)]
b = PyramidBuilder(2, np.dtype("<i2"))
t = time.process_time()
outs = [b.feed(f) for f in frames]
dt = time.process_time() - t
md5 = hashlib.md5(b"".join(np.concatenate([o[k] for o in outs]).tobytes() for k in range(8)))
print(f"{dt / len(frames) * 1e6:.2f} {md5.hexdigest()[:8]}")
"""

_WALLS = """
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import trio
from wsproto import ConnectionType, WSConnection
from protocol import StreamSamples
from vital_actors.broadcast import Hub
from vital_actors.edge.websocket import WebSocket
from vital_actors.settings import LaneSettings
from vital_actors.stats import Stats
from vital_actors.subscribers import Linger, run_sender
RATE, SECONDS, WALLS = 2000, 4, 10
linger = float(sys.argv[2]) / 1000
async def main():
    stats = Stats()
    hub = Hub(buffer=10000, settings=LaneSettings(), stats=stats)
    data = np.zeros((36, 2), "<i2").tobytes()
    async with trio.open_nursery() as n:
        for _ in range(WALLS):
            a, b = trio.socket.socketpair()
            sa, sb = trio.SocketStream(a), trio.SocketStream(b)
            ws = WebSocket(sa, WSConnection(ConnectionType.SERVER), path="/", remote="x",
                           max_message_bytes=1 << 20)
            sub = hub.add()
            hub.subscribe(sub, ["stream/x/raw"])
            async def drain(sb=sb):
                while await sb.receive_some(1 << 20):
                    pass
            n.start_soon(drain)
            n.start_soon(lambda ws=ws, sub=sub: run_sender(
                ws, sub.lanes, stats, grace_s=1.0, linger=Linger(linger, 200),
                rate=lambda: float(RATE)))
        start = trio.current_time()
        t = time.process_time()
        for i in range(RATE * SECONDS):
            await trio.sleep_until(start + i / RATE)
            hub.publish(StreamSamples("stream/x/raw", "x", i, i * 36, 360.0, ("a", "b"),
                                      "int16", (1.0, 1.0), (0.0, 0.0), data))
        await trio.sleep(0.05)
        dt = time.process_time() - t
        n.cancel_scope.cancel()
    print(f"{dt / (RATE * SECONDS * WALLS) * 1e6:.2f}")
trio.run(main)
"""

BENCHES = {"write": (_WRITE, ["-"]), "pyramid": (_PYRAMID, ["-"]),
           "walls": (_WALLS, ["0", "2"])}


def _run(code: str, root: str, arg: str) -> str:
    return run_in(root, code, arg).split("\n")[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", metavar="DIR", help="another checkout, run alternately")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", nargs="+", choices=list(BENCHES))
    args = p.parse_args()
    roots = {"this": str(Path(__file__).resolve().parents[1])}
    if args.against:
        roots["other"] = args.against
    print(f"{'bench':<9}{'variant':<14}{'code':<7}µs (fastest of {args.repeat})")
    for name, (code, variants) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        for variant in variants:
            for label, root in roots.items():
                try:
                    runs = [_run(code, root, variant) for _ in range(args.repeat)]
                except subprocess.CalledProcessError as exc:
                    print(f"{name:<9}{'':<14}{label:<7}n/a: {exc.stderr.strip()[-60:]}")
                    continue
                best = min(runs, key=lambda r: float(r.split()[0]))
                shown = f"linger {variant} ms" if name == "walls" else ""
                print(f"{name:<9}{shown:<14}{label:<7}{best}")


if __name__ == "__main__":
    main()
