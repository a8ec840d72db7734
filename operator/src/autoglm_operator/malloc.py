"""glibc's allocator, told to hand memory back: fewer arenas, and a trim after bursts.

The operator decodes API responses in worker threads (``asyncio.to_thread``); glibc gives each
thread its own arena (up to 8 per core), and the freed blocks of a burst of 1,000 CRs stay in
them, so RSS keeps the burst's high-water mark although Python's live heap is back to idle
(measured: ``docs/benchmarks.md``, "Operator RSS"). ``limit_arenas`` (before any thread starts)
caps the arenas at 2, the setting ``MALLOC_ARENA_MAX=2`` gives; ``trim`` returns free pages of
every arena to the kernel (``malloc_trim(0)``), called once a minute by the operator. Both do
nothing where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)


@cache
def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_arenas(arenas: int = 2) -> bool:
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
