"""Training configuration: sectioned dataclasses, validated once, serialised into every checkpoint and metrics.json.

Batch arithmetic (documented in the README): `batch_size` is the GLOBAL batch. With world size W each rank takes
batch_size / W samples per step, so serial, DDP and FSDP see the same global batch, the same learning rate and the
same sample order (DistributedSampler with the same seed): parallel training is the same computation, only faster.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pneumo_hpc.report.record import jsonable
from pneumo_hpc.runtime import BACKENDS

MODELS = ("small-cnn", "resnet18")
STRATEGIES = ("serial", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")
AUGMENTS = ("auto", "albumentations", "tensor", "none")
GRAD_COMPRESS = ("none", "bf16")


@dataclass
class DataConfig:
    path: Path
    augment: str = "auto"  # auto: albumentations on the CPU data path, tensor ops on the device for CUDA
    prefetch: bool = True  # CPU data path: augment the next batch in an idle-priority thread (pneumo_hpc/classify/prefetch.py)


@dataclass
class ModelConfig:
    name: str = "small-cnn"
    weights: Path | None = None  # resnet18: user-provided torchvision weights file (no downloads)


@dataclass
class OptimConfig:
    epochs: int = 10
    batch_size: int = 32  # global
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class ParallelConfig:
    strategy: str = "serial"
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    # DDP only. bf16 halves the gradient bytes but rounds the gradients: no longer the serial computation, and
    # the demo's DDP accuracy falls below serial's with it (docs/performance.md). Opt-in for slow networks.
    grad_compress: str = "none"
    timeout_s: int = 300  # bounds every collective: a dead rank makes the others fail, never hang


@dataclass
class RunConfig:
    out: Path
    seed: int = 0
    resume: bool = False
    results: Path | None = None  # JSON-lines file every run appends one record to
    label: str | None = None  # the configuration's name in the report, e.g. "2-CPU DDP"
    stop_after_steps: int | None = None  # test hook: behave as if signalled after this many steps
    sync_every: int = 10  # steps between stop-flag agreements across ranks
    time_breakdown: bool = True  # seconds per phase of every epoch (metrics.json time_breakdown)
    # also report an operating threshold chosen on the validation set for this sensitivity (None: 0.5 only)
    target_sensitivity: float | None = None


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out=Path("runs/train")))

    def validate(self) -> "TrainConfig":
        checks = [
            (self.model.name in MODELS, f"--model must be one of {MODELS}, got {self.model.name!r}"),
            (self.parallel.strategy in STRATEGIES, f"--strategy must be one of {STRATEGIES}"),
            (self.parallel.backend in BACKENDS, f"--backend must be one of {BACKENDS}"),
            (self.parallel.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}"),
            (self.parallel.grad_compress in GRAD_COMPRESS, f"--grad-compress must be one of {GRAD_COMPRESS}"),
            (self.data.augment in AUGMENTS, f"--augment must be one of {AUGMENTS}"),
            (self.optim.epochs >= 1, "--epochs must be >= 1"),
            (self.optim.batch_size >= 1, "--batch-size must be >= 1"),
            (self.optim.lr > 0, "--lr must be > 0"),
            (self.model.weights is None or self.model.name == "resnet18",
             "--weights is only used with --model resnet18"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.model.weights is not None and not Path(self.model.weights).is_file():
            raise ValueError(f"--weights {self.model.weights}: no such file (weights are never downloaded; "
                             "give the path of a torchvision resnet18 state dict)")
        return self

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        data = DataConfig(**{**d["data"], "path": Path(d["data"]["path"])})
        model = ModelConfig(**{**d["model"], "weights": Path(d["model"]["weights"]) if d["model"]["weights"] else None})
        run = dict(d["run"]); run["out"] = Path(run["out"]); run["results"] = Path(run["results"]) if run["results"] else None
        return cls(data=data, model=model, optim=OptimConfig(**d["optim"]), parallel=ParallelConfig(**d["parallel"]),
                   run=RunConfig(**run))

