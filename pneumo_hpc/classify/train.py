"""The one training loop for serial, DDP and FSDP (the strategy only changes how the model is wrapped).

    pneumo-hpc train --data demo/prep --model small-cnn --epochs 10 --out runs/serial
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc train --data demo/prep --strategy ddp --out runs/ddp
    mpirun -np 2 pneumo-hpc train --data demo/prep --strategy fsdp --out runs/fsdp
    srun -n 3 pneumo-hpc train --data demo/prep --strategy fsdp --out runs/fsdp3

Each rank reads the same arrays and takes its share of every global batch (DistributedSampler, same seed):
rank r of W sees the samples at positions r, r+W, ... of the global batch the serial run would have seen.

The loop reads as: setup (`_setup`), then per epoch the steps (`_run_epoch`, `_step`), a signal's
stop-and-checkpoint (`_stop_and_checkpoint`), the epoch's end (`_end_epoch`), and the run's record (`_record`).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pneumo_hpc import __version__
from pneumo_hpc.atomic import write_text
from pneumo_hpc.classify import timing
from pneumo_hpc.classify.augment import build_augment, sample_seeds, to_input
from pneumo_hpc.classify.checkpoint import Checkpointer
from pneumo_hpc.classify.config import TrainConfig
from pneumo_hpc.classify.evaluate import evaluate_split
from pneumo_hpc.classify.metrics import REPORTED_KEYS, save_val_predictions
from pneumo_hpc.classify.models import build_model
from pneumo_hpc.classify.parallel import Plan
from pneumo_hpc.classify.prefetch import Prefetch, idle_priority_available
from pneumo_hpc.data.layout import Split, load_split
from pneumo_hpc.report.record import append_result, classifier_record
from pneumo_hpc.runtime.dist import hosts as rank_hosts
from pneumo_hpc.runtime.dist import print0
from pneumo_hpc.runtime.host_memory import keep_freed_memory

EXIT_REQUEUE = 99  # "checkpointed on a signal: run me again with --resume" (launch/ requeues on it)


class StopFlag:
    """Set by SIGTERM/SIGUSR1; acted on at a step boundary, agreed across ranks so all stop at the same step."""

    def __init__(self):
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self, device) -> bool:
        flag = torch.tensor([self.signum], dtype=torch.int32, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item())
        return self.signum != 0


@dataclass
class TrainState:
    """Where the run is and what it has measured: the part of a checkpoint that is not weights."""
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the running epoch
    global_step: int = 0
    history: list = field(default_factory=list)  # one record per completed epoch
    train_time_s: float = 0.0
    loss_sum: float = 0.0  # the running epoch's rank-mean losses, summed, and how many steps they cover
    loss_n: int = 0
    epoch_time_s: float = 0.0
    breakdown: dict = field(default_factory=timing.empty)  # the running epoch's seconds per phase so far

    @classmethod
    def from_meta(cls, meta: dict) -> "TrainState":
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})

    def next_epoch(self) -> None:
        self.epoch, self.step, self.loss_sum, self.loss_n, self.epoch_time_s = self.epoch + 1, 0, 0.0, 0, 0.0
        self.breakdown = timing.empty()


@dataclass
class Run:
    """What setup builds once and every epoch uses."""
    cfg: TrainConfig
    ctx: Any
    plan: Plan
    train_set: Split
    val_set: Split
    images: torch.Tensor  # where batches are cut: the device for CUDA, host memory otherwise
    labels: torch.Tensor
    augment: Callable
    prepare: Callable  # the device path's augment + normalise
    on_device: bool  # then the batch's indices, seeds and pixels never leave the GPU
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: Callable
    ckpt: Checkpointer
    sampler: Any
    steps: int
    prefetch: bool
    timer: timing.StepTimer
    stop: StopFlag
    threads: int
    host_malloc: Any
    n_params: int  # the whole model's, not a shard's
    meta: dict  # written into every checkpoint beside the state
    val_prob: dict = field(default_factory=dict)

    def snapshot(self, state: TrainState) -> dict:
        return {**self.meta, **asdict(state)}


def _set_threads(ctx) -> int:
    if ctx.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # the CPUs this process may use (a SLURM cgroup may hold a few of the node's): shared with the node's other
        # ranks when unbound; when bound, at most a 1/local share of the node (mpirun binds ranks to a whole socket
        # when there are more than 2)
        cpus, local = len(os.sched_getaffinity(0)), max(1, ctx.local_world_size)
        share = cpus // local if ctx.cpu_bind == "none" else min(cpus, (os.cpu_count() or cpus) // local)
        torch.set_num_threads(max(1, share))
    return torch.get_num_threads()


def _rank_mean(t: torch.Tensor) -> float:
    """Mean over ranks: the loss bookkeeping saved in a checkpoint (by rank 0) must hold for every rank."""
    t = t.detach().clone().float()
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def train(cfg: TrainConfig) -> dict:
    """Train a classifier as configured; returns the metrics dict written to RUN/metrics.json (on every rank)."""
    from pneumo_hpc.runtime import dist as pdist

    cfg.validate()
    p = cfg.parallel
    ctx = pdist.setup(backend=p.backend, device=p.device, timeout_s=p.timeout_s, init_single=p.strategy != "serial")
    try:
        return _train(cfg, ctx)
    finally:
        pdist.teardown(ctx)


def _train(cfg: TrainConfig, ctx) -> dict:
    t_wall = time.perf_counter()
    run = _setup(cfg, ctx)
    state = _resume(run)
    for epoch in range(state.epoch, cfg.optim.epochs):
        _run_epoch(run, state, epoch)
    run.ckpt.save_model(run.model, run.snapshot(state))
    return _record(run, state, time.perf_counter() - t_wall)


def _setup(cfg: TrainConfig, ctx) -> Run:
    o, run_dir = cfg.optim, Path(cfg.run.out)
    plan = Plan.build(cfg.parallel.strategy, ctx, o.batch_size, cfg.parallel.precision, cfg.parallel.channels_last,
                      cfg.parallel.grad_compress)
    threads = _set_threads(ctx)
    host_malloc = keep_freed_memory()  # before the first batch: every step reuses the last step's pages
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=1), durable=True)

    train_set, val_set = load_split(cfg.data.path, "train"), load_split(cfg.data.path, "val")
    # GPU: the whole uint8 set lives on the device and is augmented there; CPU: albumentations on host batches
    data_device = plan.device if plan.device.type == "cuda" else torch.device("cpu")
    augment = build_augment(cfg.data.augment, data_device)
    on_device = data_device.type == "cuda"

    def prepare(x_u8, seeds):  # the device path: the images are resident there already
        return to_input(augment(x_u8, seeds), plan.channels_last)

    if cfg.parallel.compile and on_device:
        prepare = torch.compile(prepare)  # the batch's elementwise passes fused into one

    timer = timing.StepTimer(plan.device, enabled=cfg.run.time_breakdown)
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank and every strategy
    raw = build_model(cfg.model.name, size=train_set.size, weights=cfg.model.weights)
    model = plan.wrap(raw, timer=timer)
    # fused: one kernel per parameter instead of a pass per Adam term
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=True)
    sampler, steps = _sampler(cfg, plan, train_set)
    meta = {"model": cfg.model.name, "size": train_set.size, "strategy": plan.strategy,
            "compute_dtype": plan.precision, "channels_last": plan.channels_last,
            "version": __version__, "config": cfg.to_dict()}
    return Run(cfg=cfg, ctx=ctx, plan=plan, train_set=train_set, val_set=val_set,
               images=torch.from_numpy(train_set.images).to(data_device),
               labels=torch.from_numpy(train_set.labels).to(plan.device).float(), augment=augment, prepare=prepare,
               on_device=on_device, model=model, optimizer=optimizer,
               step_fn=torch.compile(model) if cfg.parallel.compile else model,
               ckpt=Checkpointer(run_dir, plan.strategy, ctx.is_main), sampler=sampler, steps=steps,
               # a GPU's batches are kernels queued behind the step already; metrics.json says whether it ran
               prefetch=cfg.data.prefetch and not on_device and idle_priority_available(),
               timer=timer, stop=StopFlag(), threads=threads, host_malloc=host_malloc,
               n_params=sum(p.numel() for p in raw.parameters()), meta=meta)


def _sampler(cfg: TrainConfig, plan: Plan, train_set: Split):
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(len(train_set)), num_replicas=plan.world_size, rank=plan.rank,
                                 shuffle=True, seed=cfg.run.seed, drop_last=True)
    steps = len(sampler) // plan.local_batch
    if steps == 0:
        raise ValueError(f"{cfg.data.path}: {len(train_set)} training images are fewer than one global batch "
                         f"({cfg.optim.batch_size}). HINT: lower --batch-size.")
    return sampler, steps


def _resume(run: Run) -> TrainState:
    if not run.cfg.run.resume:
        return TrainState()
    meta = run.ckpt.load(run.model, run.optimizer)
    if meta is None:
        return TrainState()
    state = TrainState.from_meta(meta)
    print0(f"resumed from {run.ckpt.latest()} (epoch {state.epoch + 1}, step {state.step})")
    return state


def _run_epoch(run: Run, state: TrainState, epoch: int) -> None:
    from tqdm import tqdm

    cfg, b = run.cfg, run.plan.local_batch
    run.sampler.set_epoch(epoch)
    order_np = np.fromiter(iter(run.sampler), dtype=np.int64)
    order = torch.from_numpy(order_np).to(run.images.device)

    def batch(step):
        idx = order[step * b:(step + 1) * b]
        if run.on_device:
            return step, idx, run.prepare(run.images[idx], sample_seeds(cfg.run.seed, epoch, idx))
        idx_np = order_np[step * b:(step + 1) * b]
        # the host augmentation is the part worth a background thread; normalising stays with the step
        return step, idx, run.augment(torch.from_numpy(run.train_set.images[idx_np]),
                                      sample_seeds(cfg.run.seed, epoch, idx_np))

    bar = tqdm(total=run.steps, initial=state.step, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch",
               disable=not run.ctx.is_main, mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=run.ctx.is_main)
    t0 = time.perf_counter()
    loss_acc = torch.zeros((), device=run.plan.device)
    run.timer.start()
    with Prefetch(batch, range(state.step, run.steps), enabled=run.prefetch) as batches:
        for step, idx, x in batches:
            loss_acc += _step(run, x, idx)
            bar.update(1)
            state.global_step += 1
            if _stop_requested(run, state, step + 1):
                bar.close()
                _stop_and_checkpoint(run, state, epoch, step + 1, time.perf_counter() - t0, loss_acc)
            run.timer.lap("other")
    bar.close()
    _end_epoch(run, state, epoch, time.perf_counter() - t0, loss_acc)


def _step(run: Run, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One optimizer step on this rank's share of the global batch; returns the loss (on the device)."""
    plan, timer = run.plan, run.timer
    if not run.on_device:
        x = to_input(x, plan.channels_last)
    timer.lap("data")
    with plan.autocast():
        logits = run.step_fn(x)
    loss = F.binary_cross_entropy_with_logits(logits.float(), run.labels[idx.to(plan.device)])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    timer.lap("compute")  # and the communication after the wrapped model's comm_ready mark
    run.optimizer.step()
    timer.lap("optimizer")
    return loss.detach()


def _stop_requested(run: Run, state: TrainState, done: int) -> bool:
    """True when every rank agrees to stop before the epoch ends (a signal, or the test hook)."""
    hook = run.cfg.run.stop_after_steps is not None and state.global_step >= run.cfg.run.stop_after_steps
    if hook:
        run.stop.signum = run.stop.signum or int(signal.SIGUSR1)
    if done % run.cfg.run.sync_every and not hook and done != run.steps:
        return False
    # a complete epoch finishes normally and stops at its end (_end_epoch)
    return run.stop.agreed(run.plan.device) and done != run.steps


def _stop_and_checkpoint(run: Run, state: TrainState, epoch: int, done: int, seconds: float,
                         loss_acc: torch.Tensor) -> None:
    state.loss_sum += _rank_mean(loss_acc)
    state.loss_n += done - state.step
    state.step = done
    state.epoch_time_s += seconds
    state.train_time_s += seconds
    timing.add(state.breakdown, _segment(run, seconds))
    run.ckpt.save(run.model, run.optimizer, run.snapshot(state))
    print0(f"signal {run.stop.signum}: checkpointed at epoch {epoch + 1} step {done}; "
           f"exit {EXIT_REQUEUE} (resume with --resume)")
    raise SystemExit(EXIT_REQUEUE)


def _segment(run: Run, seconds: float) -> dict:
    """The step phases of the epoch's steps since the timer started, `other_s` the rest of `seconds`."""
    spent = run.timer.epoch()
    if run.timer.enabled:
        spent["other_s"] = max(0.0, seconds - sum(spent[k] for k in ("data_s", "compute_s", "comm_s",
                                                                     "optimizer_s")))
    return spent


def _end_epoch(run: Run, state: TrainState, epoch: int, seconds: float, loss_acc: torch.Tensor) -> None:
    cfg, plan = run.cfg, run.plan
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
    state.loss_sum += _rank_mean(loss_acc)
    state.loss_n += run.steps - state.step
    state.train_time_s += seconds
    state.epoch_time_s += seconds
    spent = timing.add(state.breakdown, _segment(run, seconds))
    t = time.perf_counter()
    val = evaluate_split(run.model, run.val_set, plan, target_sensitivity=cfg.run.target_sensitivity,
                         keep=run.val_prob)
    spent["eval_s"] += time.perf_counter() - t
    record = {"epoch": epoch + 1, "train_loss": float(state.loss_sum / max(1, state.loss_n)),
              "epoch_time_s": round(state.epoch_time_s, 4),
              "samples_per_s": round(run.steps * cfg.optim.batch_size / state.epoch_time_s, 2), **val}
    state.history.append(record)
    print0(f"epoch {epoch + 1}/{cfg.optim.epochs}  loss {record['train_loss']:.4f}  val_loss {val['val_loss']:.4f}"
           f"  acc {val['accuracy']:.4f}  auc {val['roc_auc'] or float('nan'):.4f}"
           f"  {record['samples_per_s']:.0f} img/s")
    state.next_epoch()
    t = time.perf_counter()
    run.ckpt.save(run.model, run.optimizer, run.snapshot(state))
    spent["checkpoint_s"] += time.perf_counter() - t
    if run.timer.enabled:  # the checkpoint just written holds it without its own time
        record["time_breakdown"] = timing.rounded(spent)
    if run.stop.signum and epoch + 1 < cfg.optim.epochs:
        print0(f"signal {run.stop.signum}: checkpointed after epoch {epoch + 1}; exit {EXIT_REQUEUE}")
        raise SystemExit(EXIT_REQUEUE)


def _record(run: Run, state: TrainState, wall_s: float) -> dict:
    cfg, o, plan, ctx = run.cfg, run.cfg.optim, run.plan, run.ctx
    hosts = rank_hosts(ctx)
    final = state.history[-1]
    samples = run.steps * o.batch_size * o.epochs
    spent = timing.empty()
    for epoch in state.history:
        timing.add(spent, epoch.get("time_breakdown", {}))
    metrics = classifier_record(
        label=cfg.run.label, model=cfg.model.name, strategy=plan.strategy, backend=ctx.backend,
        launcher=ctx.launcher, world_size=plan.world_size, nodes=len(set(hosts)), hosts=hosts,
        device=plan.device.type, compute_dtype=plan.precision,
        grad_compress=plan.grad_compress if plan.strategy == "ddp" else "none", compile=cfg.parallel.compile,
        threads_per_rank=run.threads, cpu_bind=ctx.cpu_bind, prefetch=run.prefetch, host_malloc=run.host_malloc,
        n_params=run.n_params, epochs=o.epochs, batch_size=o.batch_size, local_batch_size=plan.local_batch,
        lr=o.lr, train_time_s=round(state.train_time_s, 4), wall_time_s=round(wall_s, 4),
        samples_per_s=round(samples / state.train_time_s, 2),
        time_breakdown=timing.rounded(spent) if run.timer.enabled else None,
        **{k: final[k] for k in REPORTED_KEYS if k in final},
        n_train=len(run.train_set), n_val=len(run.val_set), size=run.train_set.size, seed=cfg.run.seed,
        data=str(Path(cfg.data.path).resolve()), run_dir=str(Path(cfg.run.out).resolve()),
        history=state.history, version=__version__)
    if ctx.is_main:
        _write_record(run, metrics)
    return metrics


def _write_record(run: Run, metrics: dict) -> None:
    run_dir = Path(run.cfg.run.out)
    if "prob" in run.val_prob:  # the last epoch's validation scores: the report's ROC and PR curves
        save_val_predictions(run_dir / "val_predictions.npz", run.val_set.labels, run.val_prob["prob"])
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1), durable=True)
    results = run.cfg.run.results or run_dir.parent / "results.jsonl"
    append_result(results, {k: v for k, v in metrics.items() if k != "history"})
    keys = ("strategy", "world_size", "launcher", "train_time_s", "samples_per_s", "accuracy", "roc_auc")
    print(json.dumps({k: metrics[k] for k in keys}), flush=True)
