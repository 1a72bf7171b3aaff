"""The few Linux system calls Python's ``os`` lacks, from libc through ctypes."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, cast

__all__ = ["libc_function"]


def libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """libc's *name* taking *argtypes* and returning an int (``errno`` kept for
    ``ctypes.get_errno``); None where there is no such function (not Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True)[name]
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = list(argtypes), ctypes.c_int
    return cast(Callable[..., int], fn)
