"""Where a training epoch's seconds went: waiting for the batch, forward and backward compute, communication that
did not overlap compute, the optimizer, checkpoints and evaluation (metrics.json `time_breakdown`).

The step marks the end of each phase with `lap(phase)`. On CPUs a mark is a `perf_counter` reading; on CUDA it is
an event on the current stream, resolved once per epoch, so the step never waits for the device to be timed.

Communication is split out of the backward pass by a mark the wrapped model sets (`comm_ready`) when the last
gradient is computed and only the collectives are left: DDP from every parameter's post-accumulate-grad hook
(the last call wins), FSDP2 from the gradient of its first block's output. The interval from that mark to the end of `backward()` is
the all-reduce (DDP) or reduce-scatter (FSDP) wait that did not overlap compute. On CPUs FSDP2's forward
all-gather waits are added too (`comm_span`), since gloo blocks the host while it waits.
"""
from __future__ import annotations

import time

import torch

PHASES = ("data", "compute", "comm", "optimizer", "checkpoint", "eval", "other")
KEYS = tuple(f"{p}_s" for p in PHASES)


def empty() -> dict:
    return {k: 0.0 for k in KEYS}


def add(into: dict, more: dict) -> dict:
    for k in KEYS:
        into[k] = into.get(k, 0.0) + more.get(k, 0.0)
    return into


def rounded(breakdown: dict) -> dict:
    return {k: round(breakdown.get(k, 0.0), 4) for k in KEYS}


class StepTimer:
    """Seconds per phase of one epoch. Disabled, every method is a no-op (the benchmark's baseline)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.enabled = enabled
        self.cuda = enabled and device.type == "cuda"
        self._marks: list[tuple[str, object]] = []  # (phase that ends here, time or event)
        self._ready = None  # the latest comm_ready mark of the running backward
        self._span_start = 0.0
        self._spans = 0.0  # host-timed comm inside the compute phase (CPU FSDP all-gathers)
        self._running = False  # evaluation's forwards, after the epoch's steps, are not step time

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        if self.enabled:
            self._marks = [("", self._now())]
            self._ready, self._spans, self._running = None, 0.0, True

    def lap(self, phase: str) -> None:
        """The phase running since the last mark ends now."""
        if not self.enabled:
            return
        if phase == "compute" and self._ready is not None:
            self._marks.append(("compute", self._ready))
            phase = "comm"
        self._ready = None
        self._marks.append((phase, self._now()))

    def comm_ready(self) -> None:
        """Only collectives are left in this backward (called by the wrapped model's hooks)."""
        if self._running:
            self._ready = self._now()

    def comm_span(self, begin: bool) -> None:
        if self._running and not self.cuda:
            if begin:
                self._span_start = time.perf_counter()
            else:
                self._spans += time.perf_counter() - self._span_start

    def epoch(self) -> dict:
        """The seconds per phase of the steps since start() (synchronises the device once)."""
        out = empty()
        self._running = False
        if not self.enabled:
            return out
        if self.cuda:
            torch.cuda.synchronize()
        for (_, a), (phase, b) in zip(self._marks, self._marks[1:]):
            out[f"{phase}_s"] += a.elapsed_time(b) / 1e3 if self.cuda else b - a
        moved = min(self._spans, out["compute_s"])
        out["compute_s"] -= moved
        out["comm_s"] += moved
        return out
