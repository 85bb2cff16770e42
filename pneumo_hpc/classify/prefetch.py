"""Prepare the next CPU batch while the current one trains, on CPU time the step would leave idle.

A synchronous rank spends part of every step waiting: for its peers' gradients and for the slowest rank. The next
batch's augmentation (albumentations, a small part of a small-cnn CPU step: docs/performance.md) fits in that
wait. The worker thread runs at Linux's SCHED_IDLE priority, so it only gets a CPU the training threads leave
idle and never slows a busy step (an ordinary thread would time-slice against the rank's compute threads, OpenMP
teams stalling behind it); when the step needs a batch that is not ready, the step blocks, the CPU goes idle and
the worker finishes it at full speed.
Where SCHED_IDLE does not exist, batches are made in the caller's thread as before.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")


def idle_priority_available() -> bool:
    return hasattr(os, "SCHED_IDLE") and hasattr(os, "sched_setscheduler")


def _lower_to_idle() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread only (Linux)
    except OSError:
        pass  # a seccomp profile may forbid it: the prefetch still works, at normal priority


class Prefetch(Generic[T]):
    """`for batch in Prefetch(make, steps)`: make(s) for each s in steps, make(next s) already running in a
    background thread while the caller works on this one. Exceptions in make surface at the step that needs them.
    A context manager: leaving it (a break, a signal-driven exit) waits for the one batch in flight and stops."""

    def __init__(self, make: Callable[[int], T], steps: Iterable[int], enabled: bool = True):
        self.make, self.steps = make, steps
        self.enabled = enabled and idle_priority_available()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "Prefetch[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __iter__(self) -> Iterator[T]:
        if not self.enabled:
            yield from map(self.make, self.steps)
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pneumo-prefetch", initializer=_lower_to_idle)
        it = iter(self.steps)
        pending: Future | None = None
        step = next(it, None)
        if step is not None:
            pending = self._pool.submit(self.make, step)
        while pending is not None:
            ready = pending.result()
            step = next(it, None)
            pending = None if step is None else self._pool.submit(self.make, step)
            yield ready
        self.close()
