"""Tasks started by ``srun``: one process per SLURM task.

A batch script (or ``salloc`` shell) also sees SLURM_PROCID=0 and SLURM_NTASKS=N, but it is one process:
running ``python train.py`` there is world size 1. Only a job *step* (SLURM_STEP_ID, set by srun) means
SLURM launched the ranks; in a batch shell ``detect()`` falls through to ``local``.
"""
from __future__ import annotations

from typing import Mapping

from pneumo_hpc.runtime.launchers.base import ClusterEnvironment, derive_port

NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")


def srun_task(environ: Mapping[str, str]) -> bool:
    """True when srun started this process as a task of a step (not a batch/salloc shell, which has no step id)."""
    return "SLURM_PROCID" in environ and ("SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ)


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``gpu-node[07-09,12]`` -> ``gpu-node07``, ``n[1-2]-ib,x`` -> ``n1-ib``."""
    import hostlist  # python-hostlist: SLURM's own bracket grammar, ranges, padding, several brackets

    try:
        hosts = hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as exc:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}: {exc}") from None
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return hosts[0]


class SLURMEnvironment(ClusterEnvironment):
    name = "slurm"
    # step variables first: a step may use fewer tasks/nodes than the job it runs in
    ENV = {
        "rank": ("SLURM_PROCID",),
        "world_size": ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
        "local_rank": ("SLURM_LOCALID",),
        "node_rank": ("SLURM_NODEID",),
        "tasks_per_node": ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"),
        "nodelist": NODELIST_VARS,
        "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
        "step_id": ("SLURM_STEP_ID", "SLURM_STEPID"),
    }

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return srun_task(environ)

    @property
    def node_rank(self) -> int:
        return self._int("node_rank", default=0)

    @property
    def local_world_size(self) -> int:
        import hostlist

        found = self._var("tasks_per_node")
        if found is not None:
            name, value = found
            try:
                per_node = hostlist.parse_slurm_tasks_per_node(value)  # "2(x3),1" -> [2, 2, 2, 1]
            except Exception:
                raise ValueError(f"cannot parse {name}={value!r} (expected a form like '4' or '2(x3),1')") from None
            if self.node_rank < len(per_node):
                return per_node[self.node_rank]
        gtids = self.environ.get("SLURM_GTIDS")  # this node's global task ids, set by slurmstepd
        if gtids:
            return len(gtids.split(","))
        raise ValueError("srun task without SLURM_STEP_TASKS_PER_NODE/SLURM_TASKS_PER_NODE for node "
                         f"{self.node_rank}: cannot tell how many ranks share this node")

    def _default_master_addr(self) -> str:
        found = self._var("nodelist")
        if found is None:
            raise ValueError(f"srun task without {'/'.join(NODELIST_VARS)}: cannot tell rank 0's host. "
                             "HINT: export MASTER_ADDR")
        return first_host(found[1])

    def _default_master_port(self) -> int:
        job = self._var("job_id")
        if job is None:
            return super()._default_master_port()
        step = self._var("step_id")
        # concurrent steps of one job (srun ... & srun ... &) need different ports; step 0 keeps the plain job id
        key = job[1] if step is None or step[1] == "0" else f"{job[1]}.{step[1]}"
        return derive_port(key)
