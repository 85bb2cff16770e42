"""The process group, whatever started this process: one ``setup()`` for torchrun, mpirun, srun and plain python.

    ctx = setup()                  # detect launcher, export env:// variables, pick device + backend, init group
    model = model.to(ctx.device)
    print0(f"world {ctx.world_size} on {ctx.backend}")   # rank 0 only
    teardown(ctx)

    python -m pneumo_hpc env --json                                       # world 1, no group
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc env --json --init
    mpirun -np 2 pneumo-hpc env --json --init
    srun -n 2 pneumo-hpc env --json --init

Device ``auto`` is ``cuda:<local_rank>`` (within CUDA_VISIBLE_DEVICES) when CUDA works, else CPU; backend
``auto`` is NCCL on CUDA, gloo on CPU. Every collective is bounded by the timeout (``timeout_s``, else
PNEUMO_DIST_TIMEOUT, else 300 s): a dead or stuck peer ends in an error, never in a hang.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping

from pneumo_hpc.runtime.launchers import ClusterEnvironment, detect
from pneumo_hpc.runtime import interface
from pneumo_hpc.runtime.cpu_bind import apply as apply_cpus
from pneumo_hpc.runtime.cpu_bind import plan as plan_cpus
from pneumo_hpc.runtime import BACKENDS

if TYPE_CHECKING:
    import torch

DEFAULT_TIMEOUT_S = 300.0

_CTX: DistContext | None = None  # set by setup(), read by print0()


@dataclass
class DistContext:
    cluster: ClusterEnvironment
    launcher: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: str  # "gloo" | "nccl" | "none" (no process group)
    device: torch.device
    distributed: bool
    cpu_bind: str  # "cores" (bound by setup), "launcher" (bound before), "none" (cpu_bind.plan)
    cpus: list[int]  # the CPUs this rank runs on once set up

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict:
        return {**self.cluster.as_dict(), "backend": self.backend, "device": str(self.device),
                "distributed": self.distributed, "hostname": socket.gethostname(), "cpu_bind": self.cpu_bind,
                "cpus": self.cpus}


def gpus_bound_per_task(environ: Mapping[str, str], visible: int) -> bool:
    """True when the launcher gave each task its own GPUs (``srun --gpus-per-task``, ``--gpu-bind``).

    Each task then sees fewer GPUs than the node has, and should use its first one whatever its local rank.
    """
    try:
        on_node = int(environ.get("SLURM_GPUS_ON_NODE", "0"))
    except ValueError:
        return False
    return 0 < visible < on_node


def choose_device(requested: str, local_rank: int, local_world_size: int, visible: int,
                  bound_per_task: bool = False, cuda_visible_devices: str | None = None) -> str:
    """``cpu`` or ``cuda:<i>`` for this rank; ``visible`` is torch.cuda.device_count() (0 without CUDA)."""
    requested = (requested or "auto").strip().lower()
    where = f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}" if cuda_visible_devices is not None \
        else "CUDA_VISIBLE_DEVICES unset"
    if requested == "cpu" or (requested == "auto" and visible == 0):
        return "cpu"
    if requested not in ("auto", "cuda", "gpu") and not requested.startswith("cuda:"):
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:<index>")
    if visible == 0:
        raise ValueError(f"device {requested!r} asked for but no CUDA GPU is visible ({where}). "
                         "HINT: use --device cpu (or auto), or request GPUs from the scheduler (--gres=gpu:N)")
    if requested.startswith("cuda:"):  # explicit index: the user knows the layout (MPS, shared GPUs)
        index = requested.split(":", 1)[1]
        if not index.isdigit() or int(index) >= visible:
            raise ValueError(f"device {requested!r} does not exist: {visible} GPU(s) visible ({where})")
        return f"cuda:{int(index)}"
    if bound_per_task:
        return "cuda:0"
    if local_world_size > visible:
        raise ValueError(
            f"{local_world_size} ranks on this node but only {visible} GPUs visible ({where}); "
            "NCCL cannot share a GPU between ranks. HINT: start at most "
            f"{visible} ranks per node (torchrun --nproc_per_node {visible}, srun --ntasks-per-node {visible}), "
            f"request more GPUs (--gres=gpu:{local_world_size} or srun --gpus-per-task 1), "
            "or use --device cpu (gloo)")
    return f"cuda:{local_rank % visible}"


def choose_backend(requested: str, device_type: str) -> str:
    """``nccl`` or ``gloo``; ``auto`` follows the device."""
    requested = (requested or "auto").strip().lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}: use one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if requested == "nccl" and device_type != "cuda":
        raise ValueError(f"backend nccl needs a CUDA device but this rank runs on {device_type} "
                         "(no GPU visible, or --device cpu). HINT: use --backend gloo (or auto) on CPU")
    return requested


def resolve_timeout(timeout_s: float | None, environ: Mapping[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    if timeout_s is None:
        raw = environ.get("PNEUMO_DIST_TIMEOUT")
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ValueError(f"PNEUMO_DIST_TIMEOUT={raw!r} is not a number of seconds") from None
    if timeout_s <= 0:
        raise ValueError(f"process-group timeout must be positive seconds, got {timeout_s}")
    return float(timeout_s)


def _context(cluster: ClusterEnvironment, backend: str, device: str, init_single: bool) -> DistContext:
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = torch.device(choose_device(device, cluster.local_rank, cluster.local_world_size, visible,
                                     bound_per_task=gpus_bound_per_task(os.environ, visible),
                                     cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES")))
    chosen = choose_backend(backend, dev.type)  # validated even at world 1: nccl on CPU is an error everywhere
    distributed = cluster.world_size > 1 or init_single
    cpu_bind, cpus = ("none", sorted(os.sched_getaffinity(0))) if dev.type == "cuda" else \
        plan_cpus(cluster.local_rank, cluster.local_world_size)
    return DistContext(cluster=cluster, launcher=cluster.name, rank=cluster.rank, local_rank=cluster.local_rank,
                       world_size=cluster.world_size, local_world_size=cluster.local_world_size,
                       backend=chosen if distributed else "none", device=dev, distributed=distributed,
                       cpu_bind=cpu_bind, cpus=cpus)


def setup(backend: str = "auto", device: str = "auto", timeout_s: float | None = None,
          init_single: bool = False) -> DistContext:
    """Detect the launcher, export the ``env://`` variables, pick device and backend, and init the group.

    A group is created when world_size > 1, or with ``init_single=True`` (world size 1 through a real
    group, so DDP/FSDP code paths run on one GPU). Calling it when a group exists reuses that group.
    """
    global _CTX
    import torch
    import torch.distributed as dist

    cluster = detect()
    ctx = _context(cluster, backend, device, init_single)  # bad requests fail before anything is exported
    timeout = timedelta(seconds=resolve_timeout(timeout_s))
    cluster.export()
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    else:  # before the group and the thread pools start: their threads inherit it
        apply_cpus(ctx.cpu_bind, ctx.cpus)
    if ctx.distributed and not dist.is_initialized():
        if os.environ.get("PNEUMO_IFNAME"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME" if ctx.backend == "gloo" else "NCCL_SOCKET_IFNAME",
                                  os.environ["PNEUMO_IFNAME"])
        # a name this node lacks would leave every rank waiting in the rendezvous until the timeout
        interface.check(ctx.rank, variables=("PNEUMO_IFNAME", "GLOO_SOCKET_IFNAME" if ctx.backend == "gloo"
                                             else "NCCL_SOCKET_IFNAME"))
        kwargs: dict[str, Any] = {"device_id": ctx.device} if ctx.backend == "nccl" else {}
        dist.init_process_group(backend=ctx.backend, init_method="env://", timeout=timeout, **kwargs)
    _CTX = ctx
    return ctx


def teardown(ctx: DistContext | None = None) -> None:
    """Destroy the process group if one exists; safe to call twice, or without setup()."""
    global _CTX
    _CTX = None
    dist = sys.modules.get("torch.distributed")  # never imported -> nothing to tear down
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def hosts(ctx: DistContext) -> list[str]:
    """The host of every rank, in rank order (one all-gather; no group: this host)."""
    import torch.distributed as dist

    me = socket.gethostname()
    if not (ctx.distributed and dist.is_initialized()):
        return [me]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, me)
    return [str(h) for h in out]


def _rank() -> int:
    return _CTX.rank if _CTX is not None else detect().rank


def print0(*args, **kw) -> None:
    """print() on rank 0 only, flushed: batch logs otherwise arrive late or out of order."""
    if _rank() == 0:
        kw.setdefault("flush", True)
        print(*args, **kw)


def describe(backend: str = "auto", device: str = "auto", init_single: bool = False) -> dict:
    """What setup() would do here, as a flat dict for ``pneumo-hpc env --json``; starts no process group."""
    return _context(detect(), backend, device, init_single).as_dict()
