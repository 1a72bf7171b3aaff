"""Side by side with another checkout: run a benchmark's code with that checkout's
modules (a git worktree of an older commit), in a child process."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["run_in"]


def run_in(root: str, code: str, *args: object) -> str:
    """Run *code* (``python -c``) in *root* with *args* after ``sys.argv[0]``; its
    standard output. *code* puts *root* first on ``sys.path`` itself (``sys.argv[1]``
    is *root*), so it imports that checkout's modules."""
    done = subprocess.run([sys.executable, "-c", code, root, *map(str, args)], cwd=root,
                          capture_output=True, text=True, check=True)
    return done.stdout
