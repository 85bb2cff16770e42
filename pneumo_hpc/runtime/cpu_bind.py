"""Give each CPU rank on a node its own cores, when no launcher did.

Synchronous training waits for the slowest rank at every step. Unbound ranks that sleep at each collective are
woken wherever the scheduler likes, next to the rank that woke them (its hyperthread sibling, a busy core), so
stepping in lockstep cost a third of the throughput of 8 free-running processes on a 16-core host before any
gradient moved (benchmarks/cpu_trainer.py, `cpu-lockstep-8`). `mpirun --bind-to core` and `srun --cpu-bind=cores`
bind; torchrun and a bare `mpirun`/`srun` without binding do not. A rank whose CPU set is narrower than its
parent's was bound by its launcher, and is left alone. `PNEUMO_HPC_CPU_BIND=none` turns this off.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "PNEUMO_HPC_CPU_BIND"
SYS_CPU = Path("/sys/devices/system/cpu")


def physical_core(cpu: int, sys_cpu: Path = SYS_CPU) -> tuple[int, int]:
    """(package, core) of a logical CPU; a CPU without topology counts as its own core."""
    topo = sys_cpu / f"cpu{cpu}" / "topology"
    try:
        return int((topo / "physical_package_id").read_text()), int((topo / "core_id").read_text())
    except (OSError, ValueError):
        return -1, cpu


def share(cpus: set[int], local_rank: int, local_world: int, core_of=physical_core) -> list[int]:
    """This rank's CPUs: whole physical cores (all their hyperthreads), an equal contiguous share per rank, or
    logical CPUs when the node has fewer cores than ranks. Leftovers are left unused rather than shared."""
    cores: dict[tuple[int, int], list[int]] = {}
    for cpu in sorted(cpus):
        cores.setdefault(core_of(cpu), []).append(cpu)
    groups = sorted(cores.values())
    if len(groups) < local_world:
        groups = [[cpu] for cpu in sorted(cpus)]
    per = len(groups) // local_world
    return sorted(cpu for group in groups[local_rank * per:(local_rank + 1) * per] for cpu in group)


def plan(local_rank: int, local_world: int, environ=os.environ) -> tuple[str, list[int]]:
    """(how, cpus) for this rank: how is "cores" (to be bound to cpus), "launcher" (already bound), or "none" (one
    rank, too few CPUs, or turned off); cpus is the set it runs on then."""
    own = os.sched_getaffinity(0)
    if environ.get(ENV, "auto").lower() in ("none", "off", "0", "no"):
        return "none", sorted(own)
    try:
        parent = os.sched_getaffinity(os.getppid())
    except OSError:  # the parent is gone or not ours to inspect: compare with the whole machine
        parent = set(range(os.cpu_count() or len(own)))
    if own < parent:
        return "launcher", sorted(own)
    if local_world <= 1 or len(own) < local_world:
        return "none", sorted(own)
    return "cores", share(own, local_rank, local_world)


def apply(how: str, cpus: list[int]) -> None:
    """Carry out a plan() on the calling process (before it starts threads: they inherit it)."""
    if how == "cores":
        os.sched_setaffinity(0, cpus)


def bind(local_rank: int, local_world: int, environ=os.environ) -> tuple[str, list[int]]:
    """plan(), applied to the calling process."""
    how, cpus = plan(local_rank, local_world, environ)
    apply(how, cpus)
    return how, cpus
