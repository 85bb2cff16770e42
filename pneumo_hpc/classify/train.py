"""The one training loop for serial, DDP and FSDP (the strategy only changes how the model is wrapped).

    pneumo-hpc train --data demo/prep --model small-cnn --epochs 10 --out runs/serial
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc train --data demo/prep --strategy ddp --out runs/ddp
    mpirun -np 2 pneumo-hpc train --data demo/prep --strategy fsdp --out runs/fsdp
    srun -n 3 pneumo-hpc train --data demo/prep --strategy fsdp --out runs/fsdp3

Each rank reads the same arrays and takes its share of every global batch (DistributedSampler, same seed):
rank r of W sees the samples at positions r, r+W, ... of the global batch the serial run would have seen.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pneumo_hpc import __version__
from pneumo_hpc.atomic import write_text
from pneumo_hpc.classify.augment import build_augment, sample_seeds, to_input
from pneumo_hpc.classify.checkpoint import Checkpointer
from pneumo_hpc.classify.config import TrainConfig
from pneumo_hpc.data.layout import load_split
from pneumo_hpc.runtime.dist import hosts as rank_hosts
from pneumo_hpc.runtime.host_memory import keep_freed_memory
from pneumo_hpc.classify.metrics import REPORTED_KEYS, classification_metrics, save_val_predictions
from pneumo_hpc.classify.models import build_model
from pneumo_hpc.classify.parallel import Plan
from pneumo_hpc.classify.prefetch import Prefetch, idle_priority_available
from pneumo_hpc.report.record import append_result

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


def _gather(array: np.ndarray) -> np.ndarray:
    if not dist.is_initialized():
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@torch.no_grad()
def evaluate_split(model, split, plan: Plan, batch: int = 256, target_sensitivity: float | None = None,
                   keep: dict | None = None) -> dict:
    """Scores the whole split on every world size: each rank scores a contiguous shard (padded to equal batch
    counts, since FSDP forwards are collectives), then the probabilities are gathered and the padding dropped."""
    model.eval()
    n, w, r = len(split), plan.world_size, plan.rank
    shard = -(-n // w)
    idx = np.arange(r * shard, min(n, (r + 1) * shard))
    real = len(idx)
    idx = np.concatenate([idx, np.zeros(shard - real, dtype=idx.dtype)])
    probs = []
    for i in range(0, shard, batch):
        x = torch.from_numpy(split.images[idx[i:i + batch]]).to(plan.device)
        with plan.autocast():
            logits = model(to_input(x, plan.channels_last))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    prob = np.concatenate(probs)[:real] if probs else np.zeros(0, np.float32)
    prob = _gather(prob)
    model.train()
    if keep is not None:
        keep["prob"] = prob  # the validation probabilities, for ROC/PR curves (val_predictions.npz)
    return classification_metrics(split.labels, prob, target_sensitivity=target_sensitivity)


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
    from tqdm import tqdm

    t_wall = time.perf_counter()
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
    images = torch.from_numpy(train_set.images).to(data_device)
    labels = torch.from_numpy(train_set.labels).to(plan.device).float()
    augment = build_augment(cfg.data.augment, data_device)

    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank and every strategy
    raw = build_model(cfg.model.name, size=train_set.size, weights=cfg.model.weights)
    model = plan.wrap(raw)
    # fused: one kernel per parameter instead of a pass per Adam term; on CPUs 6x faster (fc1's 8.4M weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=True)
    step_fn = torch.compile(model) if cfg.parallel.compile else model
    on_device = data_device.type == "cuda"  # then the batch's indices, seeds and pixels never leave the GPU

    def prepare(x_u8, seeds):  # the device path: the images are resident there already
        return to_input(augment(x_u8, seeds), plan.channels_last)

    if cfg.parallel.compile and on_device:
        prepare = torch.compile(prepare)  # ~20 elementwise passes over the batch fused into one
    # a GPU's batches are kernels queued behind the step already; metrics.json says whether the thread ran
    prefetch = cfg.data.prefetch and not on_device and idle_priority_available()

    ckpt = Checkpointer(run_dir, plan.strategy, ctx.is_main)
    state = {"epoch": 0, "step": 0, "global_step": 0, "history": [], "train_time_s": 0.0,
             "loss_sum": 0.0, "loss_n": 0, "epoch_time_s": 0.0}
    if cfg.run.resume:
        meta = ckpt.load(model, optimizer)
        if meta is not None:
            state.update({k: meta[k] for k in state if k in meta})
            _print0(ctx, f"resumed from {ckpt.latest()} (epoch {state['epoch'] + 1}, step {state['step']})")

    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(len(train_set)), num_replicas=plan.world_size, rank=plan.rank,
                                 shuffle=True, seed=cfg.run.seed, drop_last=True)
    b = plan.local_batch
    steps = len(sampler) // b
    if steps == 0:
        raise ValueError(f"{cfg.data.path}: {len(train_set)} training images are fewer than one global batch "
                         f"({o.batch_size}). HINT: lower --batch-size.")
    stop = StopFlag()
    meta_common = {"model": cfg.model.name, "size": train_set.size, "strategy": plan.strategy,
                   "compute_dtype": plan.precision, "channels_last": plan.channels_last,
                   "version": __version__, "config": cfg.to_dict()}

    def snapshot():
        return {**meta_common, **{k: state[k] for k in state}}

    val_prob = {}
    for epoch in range(state["epoch"], o.epochs):
        sampler.set_epoch(epoch)
        order_np = np.fromiter(iter(sampler), dtype=np.int64)
        order = torch.from_numpy(order_np).to(data_device)
        bar = tqdm(total=steps, initial=state["step"], desc=f"epoch {epoch + 1}/{o.epochs}", unit="batch",
                   disable=not ctx.is_main, mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=ctx.is_main)
        t0 = time.perf_counter()
        loss_acc = torch.zeros((), device=plan.device)

        def batch(step, epoch=epoch, order=order, order_np=order_np):
            idx = order[step * b:(step + 1) * b]
            if on_device:
                return step, idx, prepare(images[idx], sample_seeds(cfg.run.seed, epoch, idx))
            idx_np = order_np[step * b:(step + 1) * b]
            # the host augmentation is the part worth a background thread; normalising stays with the step
            return step, idx, augment(torch.from_numpy(train_set.images[idx_np]),
                                      sample_seeds(cfg.run.seed, epoch, idx_np))

        with Prefetch(batch, range(state["step"], steps), enabled=prefetch) as batches:
            for step, idx, x in batches:
                if not on_device:
                    x = to_input(x, plan.channels_last)
                with plan.autocast():
                    logits = step_fn(x)
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels[idx.to(plan.device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_acc += loss.detach()
                bar.update(1)
                state["global_step"] += 1
                done = step + 1
                hook = cfg.run.stop_after_steps is not None and state["global_step"] >= cfg.run.stop_after_steps
                if hook:
                    stop.signum = stop.signum or int(signal.SIGUSR1)
                if (done % cfg.run.sync_every == 0 or hook or done == steps) and stop.agreed(plan.device):
                    if done == steps:
                        break  # the epoch is complete anyway: finish it normally, then stop below
                    state["loss_sum"] += _rank_mean(loss_acc); state["loss_n"] += step + 1 - state["step"]
                    state["step"] = done
                    state["epoch_time_s"] += time.perf_counter() - t0
                    state["train_time_s"] += time.perf_counter() - t0
                    ckpt.save(model, optimizer, snapshot())
                    bar.close()
                    _print0(ctx, f"signal {stop.signum}: checkpointed at epoch {epoch + 1} step {done}; "
                                 f"exit {EXIT_REQUEUE} (resume with --resume)")
                    raise SystemExit(EXIT_REQUEUE)
        if plan.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        bar.close()
        state["loss_sum"] += _rank_mean(loss_acc); state["loss_n"] += steps - state["step"]
        state["train_time_s"] += dt
        state["epoch_time_s"] += dt
        train_loss = state["loss_sum"] / max(1, state["loss_n"])
        val = evaluate_split(model, val_set, plan, target_sensitivity=cfg.run.target_sensitivity, keep=val_prob)
        record = {"epoch": epoch + 1, "train_loss": float(train_loss), "epoch_time_s": round(state["epoch_time_s"], 4),
                  "samples_per_s": round(steps * o.batch_size / state["epoch_time_s"], 2), **val}
        state["history"].append(record)
        _print0(ctx, f"epoch {epoch + 1}/{o.epochs}  loss {record['train_loss']:.4f}  val_loss {val['val_loss']:.4f}"
                     f"  acc {val['accuracy']:.4f}  auc {val['roc_auc'] or float('nan'):.4f}"
                     f"  {record['samples_per_s']:.0f} img/s")
        state.update({"epoch": epoch + 1, "step": 0, "loss_sum": 0.0, "loss_n": 0, "epoch_time_s": 0.0})
        ckpt.save(model, optimizer, snapshot())
        if stop.signum and epoch + 1 < o.epochs:
            _print0(ctx, f"signal {stop.signum}: checkpointed after epoch {epoch + 1}; exit {EXIT_REQUEUE}")
            raise SystemExit(EXIT_REQUEUE)

    ckpt.save_model(model, snapshot())
    hosts = rank_hosts(ctx)
    final = state["history"][-1]
    samples = steps * o.batch_size * o.epochs
    metrics = {
        "kind": "classifier", "model": cfg.model.name, "strategy": plan.strategy, "backend": ctx.backend,
        "launcher": ctx.launcher, "world_size": plan.world_size, "nodes": len(set(hosts)), "hosts": hosts,
        "device": plan.device.type,
        "compute_dtype": plan.precision, "grad_compress": plan.grad_compress if plan.strategy == "ddp" else "none",
        "compile": cfg.parallel.compile, "threads_per_rank": threads, "cpu_bind": ctx.cpu_bind,
        "prefetch": prefetch,
        "host_malloc": host_malloc,
        "epochs": o.epochs, "batch_size": o.batch_size, "local_batch_size": b, "lr": o.lr,
        "train_time_s": round(state["train_time_s"], 4), "wall_time_s": round(time.perf_counter() - t_wall, 4),
        "samples_per_s": round(samples / state["train_time_s"], 2),
        **{k: final[k] for k in REPORTED_KEYS if k in final},
        "n_train": len(train_set), "n_val": len(val_set), "size": train_set.size, "seed": cfg.run.seed,
        "data": str(Path(cfg.data.path).resolve()), "run_dir": str(run_dir.resolve()), "config": cfg.run.label,
        "history": state["history"], "version": __version__,
    }
    if ctx.is_main:
        if "prob" in val_prob:  # the last epoch's validation scores: the report's ROC and PR curves
            save_val_predictions(run_dir / "val_predictions.npz", val_set.labels, val_prob["prob"])
        write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1), durable=True)
        results = cfg.run.results or run_dir.parent / "results.jsonl"
        append_result(results, {k: v for k, v in metrics.items() if k != "history"})
        keys = ("strategy", "world_size", "launcher", "train_time_s", "samples_per_s", "accuracy", "roc_auc")
        print(json.dumps({k: metrics[k] for k in keys}), flush=True)
    return metrics


def _print0(ctx, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)
