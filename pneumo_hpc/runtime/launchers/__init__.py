"""Which launcher started this process, as one ordered probe (the classes do not know about each other).

    from pneumo_hpc.runtime.launchers import detect
    env = detect()            # TorchrunEnvironment | MPIEnvironment | SLURMEnvironment | LocalEnvironment
    env.export()              # RANK, WORLD_SIZE, MASTER_ADDR, ... for init_process_group("env://")

Order matters: torchrun may run inside an srun step or an MPI job and its variables are the precise ones;
``mpirun`` inside an sbatch job leaves SLURM_PROCID=0 on every rank, so MPI comes before SLURM.
"""
from __future__ import annotations

import os
from typing import Mapping

from pneumo_hpc.runtime.launchers.base import ClusterEnvironment, derive_port
from pneumo_hpc.runtime.launchers.local import LocalEnvironment
from pneumo_hpc.runtime.launchers.mpi import MPIEnvironment
from pneumo_hpc.runtime.launchers.slurm import SLURMEnvironment, first_host
from pneumo_hpc.runtime.launchers.torchrun import TorchrunEnvironment

PROBE_ORDER: tuple[type[ClusterEnvironment], ...] = (
    TorchrunEnvironment, MPIEnvironment, SLURMEnvironment, LocalEnvironment)


def detect(environ: Mapping[str, str] | None = None) -> ClusterEnvironment:
    """The first launcher in PROBE_ORDER whose variables are present; ``local`` (world size 1) otherwise."""
    environ = os.environ if environ is None else environ
    return next(cls(environ) for cls in PROBE_ORDER if cls.detect(environ))  # LocalEnvironment always matches


__all__ = ["ClusterEnvironment", "LocalEnvironment", "MPIEnvironment", "SLURMEnvironment", "TorchrunEnvironment",
           "PROBE_ORDER", "derive_port", "detect", "first_host"]
