"""Fuzz the device path at length: tests/test_fuzz.py with many more examples.

    python -m loadtests.fuzz [--examples 100000]

Runs the decoders with N examples, the session and a live ingest connection with N/10
(each costs more), random seeds (not the derandomized CI run), and prints examples
run, failures and the time taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=100_000)
    args = p.parse_args()
    env = {**os.environ, "VITAL_FUZZ_EXAMPLES": str(args.examples)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--hypothesis-show-statistics", str(ROOT / "tests" / "test_fuzz.py")],
        env=env, cwd=ROOT, check=False)
    print(f"fuzz: {args.examples} decoder examples, {max(50, args.examples // 10)} session "
          f"and live-ingest examples each; exit {result.returncode}; "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
