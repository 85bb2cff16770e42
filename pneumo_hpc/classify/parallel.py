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
    channels_last: bool  # activations; parameters too except under FSDP2, which needs them contiguous
    grad_compress: str = "none"  # DDP gradient all-reduce dtype: none (fp32, exact) | bf16

    @classmethod
    def build(cls, strategy: str, ctx, global_batch: int, precision: str, channels_last: bool,
              grad_compress: str = "none") -> "Plan":
        if strategy == "serial" and ctx.world_size > 1:
            raise ValueError(f"--strategy serial, but the launcher ({ctx.launcher}) started {ctx.world_size} ranks. "
                             "HINT: use --strategy ddp or fsdp, or launch one process.")
        if global_batch % ctx.world_size:
            raise ValueError(f"--batch-size {global_batch} is the global batch and must divide evenly over "
                             f"{ctx.world_size} ranks. HINT: use a multiple of {ctx.world_size}.")
        bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(ctx.device))
        return cls(strategy, ctx.world_size, ctx.rank, global_batch, ctx.device, bf16, channels_last, grad_compress)

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def wrap(self, model: nn.Module, timer=None) -> nn.Module:
        """The model placed, laid out and wrapped for the strategy; `timer` (classify.timing.StepTimer) gets the
        marks that split communication out of the backward pass."""
        model = model.to(self.device)
        if self.channels_last and self.strategy != "fsdp":
            model = model.to(memory_format=torch.channels_last)
        elif self.channels_last and self.device.type == "cpu":
            # FSDP2 refuses non-contiguous (channels_last) parameters, and a convolution with NCHW weights answers
            # in its input's layout: the batch must be channels_last in its strides, so that every layer after it
            # is too (CPU max-pools are much slower on NCHW: docs/performance.md). Not on GPUs, whose FSDP2 path, NCHW
            # parameters included, is the one measured against the anchor.
            model.register_forward_pre_hook(_channels_last_input)
        if self.strategy == "ddp":
            return apply_ddp(model, self.device, compress=self.grad_compress == "bf16", timer=timer)
        if self.strategy == "fsdp":
            return apply_fsdp(model, self.device, self.world_size, self.bf16, timer=timer)
        return model

    def autocast(self):
        # Under FSDP on CUDA the MixedPrecisionPolicy already computes in bf16; autocast covers the rest.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def _channels_last_input(module, args):
    # A 1-channel batch made channels_last keeps NCHW strides (the layouts coincide), so with NCHW weights the first
    # convolution answered NCHW, and making its output channels_last copied it, and its gradient, every step
    # (strided copies of small-cnn's largest activation, a large share of a CPU FSDP step: docs/performance.md).
    # The same memory under channels_last strides makes oneDNN compute channels_last from the first layer on:
    # bit-identical output.
    x = args[0]
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1 or not x.is_contiguous():
        return None
    h, w = x.shape[2], x.shape[3]
    return (x.as_strided(x.shape, (h * w, 1, w, 1), x.storage_offset()), *args[1:])


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags  # without these, CPU bf16 is emulated and slower


def apply_ddp(model: nn.Module, device: torch.device, compress: bool = False, timer=None) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # gradients live in the all-reduce buckets (no copy per step); the graph never changes between steps
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              gradient_as_bucket_view=True, static_graph=True)
    if compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        # half the bytes on the wire, at the price of rounding every gradient to bf16 before it is averaged
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    if timer is not None and timer.enabled:
        _LastGradient([p for p in model.parameters() if p.requires_grad], timer.comm_ready)
    return ddp


class _LastGradient:
    """Calls `mark` when backward accumulates its last gradient: what is left of DDP's backward is the all-reduce
    wait. A Python hook in backward waits for the GIL (the prefetch thread may hold it), so once the first backward
    has shown which parameter comes last, only that parameter keeps its hook."""

    def __init__(self, params, mark):
        self.mark, self.seen = mark, 0
        self.hooks = {id(p): p.register_post_accumulate_grad_hook(self._accumulated) for p in params}

    def _accumulated(self, param) -> None:
        self.mark()
        self.seen += 1
        if self.hooks and self.seen == len(self.hooks):
            for key, handle in self.hooks.items():
                if key != id(param):
                    handle.remove()
            self.hooks = {}


def apply_fsdp(model: nn.Module, device: torch.device, world_size: int, bf16: bool, timer=None) -> nn.Module:
    """FSDP2: shard each parameterised leaf block, then the root (which holds whatever is left)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    fp32 = MixedPrecisionPolicy()
    # bf16 all-gathers, fp32 gradient reduction: what autocast computes anyway (it casts weights to bf16), so FSDP
    # computes what serial and DDP do, on half the bytes
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else fp32
    blocks = [m for m in model.modules() if m is not model and isinstance(m, (nn.Linear, nn.Conv2d))
              and sum(p.numel() for p in m.parameters()) >= 1 << 16]
    for block in blocks:
        # a layer that multiplies in fp32 under autocast (small-cnn's fc1 on CPUs) is gathered in fp32 too: bf16
        # weights would round what serial does not round, and FSDP's accuracy would drift from serial's
        # (docs/performance.md)
        fp32_block = device.type == "cpu" and getattr(block, "fp32_on_cpu", False)
        # kept gathered from forward to backward: the kit's models are small (8-11M parameters), so this costs tens
        # of MB and saves the second all-gather of every step (docs/performance.md)
        fully_shard(block, mesh=mesh, mp_policy=fp32 if fp32_block else mp, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    if timer is not None and timer.enabled:
        _time_fsdp(model, blocks, timer)
    return model


def _time_fsdp(model: nn.Module, blocks: list[nn.Module], timer) -> None:
    # FSDP2's own pre-forward (unshard, then wait for the all-gather) runs between a hook put before it and one after
    for module in (model, *blocks):
        module.register_forward_pre_hook(lambda *_: timer.comm_span(True), prepend=True)
        module.register_forward_pre_hook(lambda *_: timer.comm_span(False))
    if blocks:
        # the first block's output gradient: what is left of backward is its weight gradient and the reduce-scatters
        def mark(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: timer.comm_ready())

        blocks[0].register_forward_hook(mark)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
