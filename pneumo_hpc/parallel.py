"""The parallel plan (strategy, batch arithmetic, precision) and the one place a model gets wrapped.

The training loop never branches on the strategy except through `Plan.wrap`: serial, DDP and FSDP2 share the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Plan:
    strategy: str  # serial | ddp | fsdp
    world_size: int
    rank: int
    global_batch: int
    device: torch.device
    bf16: bool
    channels_last: bool

    @classmethod
    def build(cls, strategy: str, ctx, global_batch: int, precision: str, channels_last: bool) -> "Plan":
        if strategy == "serial" and ctx.world_size > 1:
            raise ValueError(f"--strategy serial, but the launcher ({ctx.launcher}) started {ctx.world_size} ranks. "
                             "HINT: use --strategy ddp or fsdp, or launch one process.")
        if global_batch % ctx.world_size:
            raise ValueError(f"--batch-size {global_batch} is the global batch and must divide evenly over "
                             f"{ctx.world_size} ranks. HINT: use a multiple of {ctx.world_size}.")
        bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(ctx.device))
        # FSDP2 refuses non-contiguous (channels_last) parameters: activations can still be channels_last
        return cls(strategy, ctx.world_size, ctx.rank, global_batch, ctx.device, bf16,
                   channels_last and strategy != "fsdp")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def wrap(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.strategy == "ddp":
            return apply_ddp(model, self.device, compress=self.bf16)
        if self.strategy == "fsdp":
            return apply_fsdp(model, self.device, self.world_size, self.bf16)
        return model

    def autocast(self):
        # Under FSDP on CUDA the MixedPrecisionPolicy already computes in bf16; autocast covers the rest.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags  # without these, CPU bf16 is emulated and slower


def apply_ddp(model: nn.Module, device: torch.device, compress: bool = False) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # gradients live in the all-reduce buckets (no copy per step); the graph never changes between steps
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              gradient_as_bucket_view=True, static_graph=True)
    if compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        # a bf16 run already computes in bf16: sending its gradients in bf16 halves the bytes on the wire
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


def apply_fsdp(model: nn.Module, device: torch.device, world_size: int, bf16: bool) -> nn.Module:
    """FSDP2: shard each parameterised leaf block, then the root (which holds whatever is left)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    mp = MixedPrecisionPolicy()
    if bf16:
        # bf16 compute and all-gathers, fp32 gradient reduction: halves traffic without hurting convergence
        # (on CPUs too: gloo moves half the bytes; small-cnn's fc1 still multiplies in fp32, see CpuFp32Linear)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = [m for m in model.modules() if m is not model and isinstance(m, (nn.Linear, nn.Conv2d))
              and sum(p.numel() for p in m.parameters()) >= 1 << 16]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
