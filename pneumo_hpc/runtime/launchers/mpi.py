"""Ranks started by an MPI launcher: Open MPI ``mpirun``, MPICH / Intel MPI ``mpiexec`` (Hydra), or a bare PMIx one.

MPI is only the launcher here; the process group is still torch's (gloo/NCCL over ``env://``). mpi4py is
needed only for what the environment does not say: rank 0's host on several nodes, and world/local sizes
under a launcher that exports PMIX_RANK alone. ``srun --mpi=pmix`` sets PMIX_RANK too, but that is SLURM
launching tasks, with complete SLURM_* variables: it is left to ``slurm``.
"""
from __future__ import annotations

import socket
from functools import cached_property
from typing import Mapping

from pneumo_hpc.runtime.launchers.base import ClusterEnvironment, derive_port
from pneumo_hpc.runtime.launchers.slurm import srun_task


def _mpi4py():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            f"this MPI launch needs mpi4py to find rank 0's host or the world size ({exc}). "
            "HINT: pip install 'pneumo-hpc[mpi]' (mpi4py built against the MPI that runs mpirun), "
            "or export MASTER_ADDR=<rank 0's host> to every rank (Open MPI: mpirun -x MASTER_ADDR=$(hostname) ...)"
        ) from None
    return MPI


class MPIEnvironment(ClusterEnvironment):
    name = "mpi"
    ENV = {  # Open MPI first, then Hydra (MPICH / Intel MPI), then PMIx
        "rank": ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"),
        "world_size": ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
        "local_rank": ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"),
        "local_world_size": ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"),
        # one value per launch, the same on every rank: seeds the port
        "job_id": ("OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE", "PMI_JOBID", "SLURM_JOB_ID"),
    }

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        if "OMPI_COMM_WORLD_RANK" in environ or "MPI_LOCALRANKID" in environ:
            return True
        if "PMIX_RANK" in environ:
            return not environ.get("PMIX_NAMESPACE", "").startswith("slurm.pmix")  # srun --mpi=pmix
        if "PMI_RANK" in environ:
            return not srun_task(environ)  # srun --mpi=pmi2
        return False

    @cached_property
    def _from_mpi(self) -> dict:
        # Collective calls: every rank gets here at the same point, because every rank's
        # environment lacks the same variables.
        MPI = _mpi4py()
        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return {"world_size": world.Get_size(), "local_rank": node.Get_rank(),
                    "local_world_size": node.Get_size(), "master_addr": world.bcast(socket.gethostname(), root=0)}
        finally:
            node.Free()

    def _int_or_mpi(self, field: str) -> int:
        return self._int(field) if self._var(field) else self._from_mpi[field]

    @property
    def world_size(self) -> int:
        return self._int_or_mpi("world_size")

    @property
    def local_rank(self) -> int:
        return self._int_or_mpi("local_rank")

    @property
    def local_world_size(self) -> int:
        return self._int_or_mpi("local_world_size")

    def _default_master_addr(self) -> str:
        if self.local_world_size == self.world_size:
            return "127.0.0.1"  # every rank on this node
        return self._from_mpi["master_addr"]

    def _default_master_port(self) -> int:
        job = self._var("job_id")
        return derive_port(job[1]) if job else super()._default_master_port()
