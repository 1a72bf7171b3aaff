"""Fuzz the device path at length: tests/test_fuzz.py with many more examples.

    python -m loadtests.fuzz [--examples 100000]

Runs the decoders with N examples, the session and a live ingest connection with N/20
(each costs more), random seeds (not the derandomized CI run), one test at a time,
printing hypothesis' statistics, each test's outcome and the time taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


TESTS = ("test_decoders_accept_or_raise_remote_protocol_error",
         "test_the_session_accepts_or_raises_remote_protocol_error",
         "test_a_live_ingest_connection_answers_every_bad_input_with_an_error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--only", choices=TESTS, action="append", help="run only these tests")
    args = p.parse_args()
    env = {**os.environ, "VITAL_FUZZ_EXAMPLES": str(args.examples)}
    failed = 0
    for test in args.only or TESTS:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--hypothesis-show-statistics", f"{ROOT / 'tests' / 'test_fuzz.py'}::{test}"],
            env=env, cwd=ROOT, check=False)
        failed += result.returncode != 0
        print(f"fuzz {test}: VITAL_FUZZ_EXAMPLES={args.examples}; exit {result.returncode}; "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
