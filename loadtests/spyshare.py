"""Shares of a py-spy profile by function: where the samples of ``py-spy record -f raw``
went, inclusive (the function or anything it called) and self (the function itself).

    py-spy record --pid PID -f raw -r 200 -d 12 --nonblocking -o /tmp/live.txt
    python -m loadtests.spyshare /tmp/live.txt                    # every thread
    python -m loadtests.spyshare /tmp/live.txt --under run_archive --top 20

With ``--under F`` only the stacks through function F count, and shares are of those:
what F's subtree spends its samples on. Functions are named as py-spy names them
(``Class.method``), without file and line; the self shares keep the file and line.

``--tasks`` splits a trio server's busy samples by task instead: each sample of the
event loop's thread goes to the task that was running (the function its step entered
from ``unrolled_run``), or to trio's scheduler itself; samples of waiting (epoll, an
idle worker thread) are left out. With ``--us-per`` R (events a second, e.g. device
frames) it also gives each share as µs of CPU per event, from ``--rate`` and
``--seconds`` (py-spy's ``-r`` and ``-d``)::

    py-spy record --pid PID -f raw -r 200 -d 10 -o /tmp/live.txt      # not --nonblocking
    python -m loadtests.spyshare /tmp/live.txt --tasks --rate 200 --seconds 10 --us-per 2000

Record the server *without* ``--nonblocking`` for this: a non-blocking sample reads
the stack while the interpreter changes it, and the ones it cannot read whole (short
task steps more than long numpy calls) come out cut at ``unrolled_run``: in a run at
200 devices it put 56 % of the event loop's busy samples in the scheduler and 12 % in
the connections' tasks, against 6 % and 63 % when the process is paused for each sample
(the probe in ``loadtests/probe``, which times every task step, agrees with the
latter).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCHEDULER", "THREADS", "Shares", "main", "shares", "tasks"]

#: Where samples of trio's own run loop go in :func:`tasks`.
SCHEDULER = "(trio scheduler)"
#: Where samples of worker threads running jobs go in :func:`tasks`.
THREADS = "(worker threads)"


@dataclass(frozen=True, slots=True)
class Shares:
    samples: int
    inclusive: Counter[str]
    own: Counter[str]


def _name(frame: str) -> str:
    return frame.split(" (")[0]


def shares(lines: list[str], under: str | None = None) -> Shares:
    """Count the samples of py-spy's raw lines (``frame;frame;... count``)."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the process or thread
        names = [_name(f) for f in frames]
        if under is not None:
            if under not in names:
                continue
            at = names.index(under)
            frames, names = frames[at:], names[at:]
        n = int(count)
        total += n
        for name in set(names[1:] if under is not None else names):
            inclusive[name] += n
        if frames:
            name, _, where = frames[-1].partition(" (")
            own[f"{name} ({where.rpartition('/')[2]}" if where else name] += n
    return Shares(total, inclusive, own)


def tasks(lines: list[str]) -> Counter[str]:
    """Busy samples by trio task (see the module's doc); waiting samples left out."""
    out = Counter[str]()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        names = [_name(f) for f in frames]
        if "Thread._bootstrap" in names:  # a worker thread: idle while it waits for a job
            if names[-1] != "WorkerThread._work":
                out[THREADS] += int(count)
            continue
        if "unrolled_run" not in names:
            if names[-1] != "EpollIOManager.get_events":  # waiting for I/O
                out[SCHEDULER] += int(count)
            continue
        at = len(names) - names[::-1].index("unrolled_run")
        inner = frames[at] if at < len(frames) else ""
        if not inner or "trio/_core/" in inner:
            out[SCHEDULER] += int(count)
        else:
            out[_name(inner)] += int(count)
    return out


def _print_tasks(lines: list[str], top: int, us: float | None) -> None:
    got = tasks(lines)
    loop = sum(n for name, n in got.items() if name != THREADS)
    print(f"{loop} busy samples of the event loop's thread, {got[THREADS]} of worker threads")
    for name, n in got.most_common(top):
        share = "" if name == THREADS else f"{100 * n / max(loop, 1):5.1f} % of the loop"
        cost = f"  {n * us:7.1f} µs per event" if us is not None else ""
        print(f"{name:32s} {n:7d}  {share:18s}{cost}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", type=Path, help="a py-spy record -f raw output file")
    p.add_argument("--under", help="only the stacks through this function")
    p.add_argument("--top", type=int, default=40, help="rows of each table")
    p.add_argument("--tasks", action="store_true", help="busy samples by trio task")
    p.add_argument("--us-per", type=float, metavar="R",
                   help="also µs of CPU per event, at R events a second")
    p.add_argument("--rate", type=float, default=100, help="py-spy's -r (samples/s)")
    p.add_argument("--seconds", type=float, default=1, help="py-spy's -d (s)")
    args = p.parse_args()
    lines = args.raw.read_text().splitlines()
    us = None if args.us_per is None else 1e6 / args.rate / (args.seconds * args.us_per)
    if args.tasks:
        _print_tasks(lines, args.top, us)
        return
    got = shares(lines, args.under)
    print(f"{got.samples} samples" + (f" through {args.under}" if args.under else ""))
    for title, table in (("inclusive", got.inclusive), ("self", got.own)):
        print(f"--- {title}")
        for name, n in table.most_common(args.top):
            cost = f"{n * us:7.1f} µs  " if us is not None else ""
            print(f"{100 * n / max(got.samples, 1):5.1f} %  {cost}{name}")


if __name__ == "__main__":
    main()
