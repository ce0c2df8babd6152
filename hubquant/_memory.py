"""Give freed memory back to the operating system between layers."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (glibc keeps them otherwise,
    and the float blocks read and freed layer after layer fragment it)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
