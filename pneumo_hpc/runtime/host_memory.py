"""Keep freed host memory in the process instead of handing it back to the kernel after every step.

glibc serves an allocation above its mmap threshold (128 KiB, adapting up to at most 32 MiB) with its own mmap and
unmaps it on free, and trims the heap's free top back to the kernel. A CPU training step allocates and frees
hundreds of MB of activations and gradients (small-cnn's fc1 gradient alone is 33.5 MB, above any threshold), so
each step faulted the same pages in again: 100k minor faults a step, a third of the process's CPU time in the
kernel (batch 64, one thread: 138 -> 250 img/s when kept; 2-rank DDP 192 -> 294). PyTorch's CPU tuning guides get
this effect by LD_PRELOADing jemalloc or tcmalloc; glibc's own mallopt() does it with nothing to install. Kept
memory is reused, not leaked: peak RSS 1.9 vs 1.6 GB on a 1536-image run (the heap keeps its high-water mark).

Skipped when the user already tunes the allocator (GLIBC_TUNABLES malloc settings, MALLOC_*_ variables,
an LD_PRELOADed allocator) or sets PNEUMO_HPC_HOST_MALLOC=system.
"""
from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_MAX = -4
_TRIM_AT = (1 << 31) - 1  # mallopt takes an int: give memory back only once 2 GiB lie free at the heap's top

_state: str | None = None


def _user_tuned(environ) -> bool:
    preload = environ.get("LD_PRELOAD", "")
    return ("malloc" in environ.get("GLIBC_TUNABLES", "")
            or any(k.startswith("MALLOC_") and k.endswith("_") for k in environ)
            or any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")))


def keep_freed_memory(environ=None) -> str:
    """Tune glibc malloc once per process. Returns what the allocator does now (recorded in metrics.json):
    "keep" (tuned here), "user" (left to the user's allocator settings), "system" (asked for, not glibc, or
    mallopt refused)."""
    global _state
    if _state is None:
        _state = _decide(os.environ if environ is None else environ)
    return _state


def _decide(environ) -> str:
    if environ.get("PNEUMO_HPC_HOST_MALLOC", "") == "system":
        return "system"
    if _user_tuned(environ):
        return "user"
    try:
        libc = ctypes.CDLL(None)
        ok = (hasattr(libc, "gnu_get_libc_version") and libc.mallopt(_M_MMAP_MAX, 0) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_AT) == 1)
    except (OSError, AttributeError):
        ok = False
    return "keep" if ok else "system"
