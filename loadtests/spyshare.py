"""Shares of a py-spy profile by function: where the samples of ``py-spy record -f raw``
went, inclusive (the function or anything it called) and self (the function itself).

    py-spy record --pid PID -f raw -r 200 -d 12 --nonblocking -o /tmp/live.txt
    python -m loadtests.spyshare /tmp/live.txt                    # every thread
    python -m loadtests.spyshare /tmp/live.txt --under run_archive --top 20

With ``--under F`` only the stacks through function F count, and shares are of those:
what F's subtree spends its samples on. Functions are named as py-spy names them
(``Class.method``), without file and line; the self shares keep the file and line.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Shares", "main", "shares"]


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", type=Path, help="a py-spy record -f raw output file")
    p.add_argument("--under", help="only the stacks through this function")
    p.add_argument("--top", type=int, default=40, help="rows of each table")
    args = p.parse_args()
    got = shares(args.raw.read_text().splitlines(), args.under)
    print(f"{got.samples} samples" + (f" through {args.under}" if args.under else ""))
    for title, table in (("inclusive", got.inclusive), ("self", got.own)):
        print(f"--- {title}")
        for name, n in table.most_common(args.top):
            print(f"{100 * n / max(got.samples, 1):5.1f} %  {name}")


if __name__ == "__main__":
    main()
