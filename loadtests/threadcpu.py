"""CPU of each thread of a process over an interval, user and system, from
``/proc/PID/task/*/stat``:

    python -m loadtests.threadcpu PID --seconds 10

Where a server's CPU goes between its event loop's thread and trio's worker threads
(the archive's writes and syncs), and how much of it is in the kernel.
"""

from __future__ import annotations

import argparse
import os
import time

__all__ = ["main", "snapshot"]


def snapshot(pid: int) -> dict[str, tuple[str, int, int]]:
    """Each thread's (name, user ticks, system ticks), by thread id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        # The name is in parentheses and may hold spaces: the fields follow the last ")".
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (name, int(fields[11]), int(fields[12]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", type=int)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    before = snapshot(args.pid)
    time.sleep(args.seconds)
    after = snapshot(args.pid)
    tick = os.sysconf("SC_CLK_TCK") * args.seconds / 100  # ticks per percent of a core
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0, 0))
        print(f"{tid:>8} {name:20s} user {(user - user0) / tick:5.1f} %  "
              f"system {(system - system0) / tick:5.1f} %")


if __name__ == "__main__":
    main()
