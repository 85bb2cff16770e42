"""CPU trainer benchmark: ratios measured in one run (machines are noisy; absolute times mean little).

1. one process: the kit's trainer (bf16 autocast where the CPU has native bf16, channels_last) vs. a
   reference-style loop (fp32, eager, contiguous, batch 64, same model/data/augmentation). Target >= 3x.
   Also: the kit with glibc's default allocator behaviour (PNEUMO_HPC_HOST_MALLOC=system) vs. the kit as it runs
   (freed memory kept for the next step, pneumo_hpc/runtime/host_memory.py): how much of the ratio that part is.
2. DDP: the kit with R gloo ranks (1 thread each) vs. R independent 1-rank runs at the same time, which isolates
   communication cost from core contention. Target >= 0.9. Repeated in alternating pairs (--pairs), median.
   Beside it, the same DDP run with the batch prefetch off (--no-prefetch): what augmenting the next batch in the
   time a synchronous rank waits is worth (pneumo_hpc/classify/prefetch.py).
3. Lockstep control: the kit's step (same model, augmentation, optimizer, allocator) in R processes that exchange
   nothing, run free vs. meeting at a barrier after every step. What synchronous training costs on these cores
   before a single gradient byte moves: the ceiling of (2) here.
4. CPU binding: (2)'s DDP and (3)'s barrier run again with the ranks left unbound (PNEUMO_HPC_CPU_BIND=none),
   bound / unbound (pneumo_hpc/runtime/cpu_bind.py).

    python benchmarks/cpu_trainer.py [--n 3000] [--ranks 2] [--epochs 2] [--pairs 3] [--no-reference]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def reference_cnn():
    """small-cnn as the reference study computes it: ReLU before each max-pool (the kit pools first)."""
    import torch.nn.functional as F

    from pneumo_hpc.classify.models import SmallCNN

    class ReferenceCNN(SmallCNN):
        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc2(F.relu(F.linear(x.flatten(1), self.fc1.weight, self.fc1.bias)))[:, 0]

    return ReferenceCNN


def reference_loop(prep: Path, epochs: int, batch: int = 64) -> float:
    """The reference study's style: fp32, eager, NCHW, per-sample albumentations, default Adam, batch 64."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pneumo_hpc.classify.augment import AlbumentationsAugment, sample_seeds, to_input
    from pneumo_hpc.data.layout import load_split

    torch.set_num_threads(1)
    ReferenceCNN = reference_cnn()
    split = load_split(prep, "train")
    images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels).float()
    model = ReferenceCNN(split.size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aug = AlbumentationsAugment()
    n = len(split) // batch * batch
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = np.random.default_rng(epoch).permutation(len(split))[:n]
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x = to_input(aug(images[idx], sample_seeds(0, epoch, idx)), channels_last=False)
            loss = F.binary_cross_entropy_with_logits(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return n * epochs / (time.perf_counter() - t0)


def kit(prep: Path, out: Path, epochs: int, batch: int, ranks: int = 1, env_extra=None, extra=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pneumo_hpc", "train", "--data", str(prep), "--epochs", str(epochs),
           "--batch-size", str(batch), "--out", str(out), "--results", str(out.parent / "bench.jsonl"), *extra]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               *cmd[1:3], *cmd[3:], "--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lockstep_worker(prep: str, steps: int, batch: int, barrier: bool) -> None:
    """One rank of the lockstep control (run under torchrun): the kit's CPU step, no gradient exchange."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from pneumo_hpc.classify.augment import AlbumentationsAugment, sample_seeds, to_input
    from pneumo_hpc.runtime.cpu_bind import bind
    from pneumo_hpc.data.layout import load_split
    from pneumo_hpc.runtime.host_memory import keep_freed_memory
    from pneumo_hpc.classify.models import SmallCNN
    from pneumo_hpc.classify.prefetch import Prefetch

    bind(int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"]))  # as the kit's ranks are
    torch.set_num_threads(1)
    keep_freed_memory()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    split = load_split(Path(prep), "train")
    images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels).float()
    torch.manual_seed(0)
    model = SmallCNN(split.size).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    aug = AlbumentationsAugment()
    order = np.random.default_rng(rank).permutation(len(split))
    warm = 3

    def augmented(step):  # the kit's CPU batch: augmented ahead in an idle-priority thread
        idx = order[(step * batch) % (len(order) - batch):][:batch]
        return step, idx, aug(images[idx], sample_seeds(0, 0, idx))

    for step, idx, x in Prefetch(augmented, range(warm + steps)):
        if step == warm:
            dist.barrier()
            t0 = time.perf_counter()
        x = to_input(x, channels_last=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if barrier:
            dist.barrier()
    rate = torch.tensor([steps * batch / (time.perf_counter() - t0)])
    dist.all_reduce(rate)
    if rank == 0:
        print(json.dumps({"img_s": float(rate)}), flush=True)
    dist.destroy_process_group()


def lockstep(prep: Path, ranks: int, steps: int, batch: int, barrier: bool, env_extra=None) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           __file__, "--lockstep-worker", str(prep), "--steps", str(steps), "--batch", str(batch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    out = subprocess.run(cmd + (["--barrier"] if barrier else []), env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"lockstep control failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["img_s"]


def throughput(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["samples_per_s"]


def wait(*procs):
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"benchmark run failed:\n{p.stderr.read()[-3000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=3, help="DDP vs independent: alternating repetitions (median)")
    ap.add_argument("--steps", type=int, default=40, help="lockstep control: timed steps per rank")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the 1-process comparisons (the reference loop is slow): DDP and lockstep only")
    ap.add_argument("--lockstep-worker", metavar="PREP", help=argparse.SUPPRESS)
    ap.add_argument("--barrier", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lockstep_worker:
        return lockstep_worker(args.lockstep_worker, args.steps, args.batch, args.barrier)
    from prep_fake import make_prep

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prep = make_prep(tmp / "prep", n_train=args.n, n_val=256, size=128)
        ref = None if args.no_reference else reference_loop(prep, args.epochs)
        p = kit(prep, tmp / "kit1", args.epochs, args.batch); wait(p)
        one = throughput(tmp / "kit1")
        if ref is not None:
            print(json.dumps({"bench": "cpu-1proc", "reference_img_s": round(ref, 1), "kit_img_s": one,
                              "ratio": round(one / ref, 2), "target": 3.0}))
            p = kit(prep, tmp / "kit1-system-malloc", args.epochs, args.batch,
                    env_extra={"PNEUMO_HPC_HOST_MALLOC": "system"})
            wait(p)
            system = throughput(tmp / "kit1-system-malloc")
            print(json.dumps({"bench": "cpu-host-malloc", "system_malloc_img_s": system, "kit_img_s": one,
                              "ratio": round(one / system, 2)}), flush=True)
        else:
            print(json.dumps({"bench": "cpu-1rank", "kit_img_s": one}), flush=True)
        # alternating pairs, median ratio: a shared VM's speed drifts between runs (docs/performance.md), so one
        # pair proves little
        independents, ddps, inlines = [], [], []
        for pair in range(args.pairs):
            solo = [kit(prep, tmp / f"solo{pair}-{i}", args.epochs, args.batch) for i in range(args.ranks)]
            wait(*solo)
            independents.append(sum(throughput(tmp / f"solo{pair}-{i}") for i in range(args.ranks)))
            both = (("ddp", (), ddps), ("ddp-inline", ("--no-prefetch",), inlines))
            for name, extra, into in both if pair % 2 == 0 else both[::-1]:  # neither always runs first
                p = kit(prep, tmp / f"{name}{pair}", args.epochs, args.batch * args.ranks, ranks=args.ranks,
                        extra=extra)
                wait(p)
                into.append(throughput(tmp / f"{name}{pair}"))
        ratios = [d / i for d, i in zip(ddps, independents)]
        ddp = statistics.median(ddps)
        print(json.dumps({"bench": f"cpu-ddp-{args.ranks}", "independent_img_s": [round(v, 1) for v in independents],
                          "ddp_img_s": ddps, "ratios": [round(r, 3) for r in ratios],
                          "ratio": round(statistics.median(ratios), 3), "target": 0.9,
                          "efficiency_vs_1rank": round(ddp / (args.ranks * one), 3)}))
        # the next batch augmented in an idle-priority thread (pneumo_hpc/classify/prefetch.py) vs inline, DDP both
        pf = [d / n for d, n in zip(ddps, inlines)]
        print(json.dumps({"bench": f"cpu-prefetch-{args.ranks}", "ddp_inline_img_s": inlines, "ddp_img_s": ddps,
                          "ratios": [round(r, 3) for r in pf], "ratio": round(statistics.median(pf), 3)}), flush=True)
        free = lockstep(prep, args.ranks, args.steps, args.batch, barrier=False)
        locked = lockstep(prep, args.ranks, args.steps, args.batch, barrier=True)
        print(json.dumps({"bench": f"cpu-lockstep-{args.ranks}", "free_img_s": round(free, 1),
                          "barrier_every_step_img_s": round(locked, 1), "ratio": round(locked / free, 3),
                          "ddp_ratio_vs_free": round(ddp / free, 3)}), flush=True)
        # the same two synchronous runs with the ranks left where the scheduler puts them (pneumo_hpc/runtime/cpu_bind.py)
        unbound = {"PNEUMO_HPC_CPU_BIND": "none"}
        p = kit(prep, tmp / "ddp-unbound", args.epochs, args.batch * args.ranks, ranks=args.ranks, env_extra=unbound)
        wait(p)
        ddp_unbound = throughput(tmp / "ddp-unbound")
        locked_unbound = lockstep(prep, args.ranks, args.steps, args.batch, barrier=True, env_extra=unbound)
        print(json.dumps({"bench": f"cpu-bind-{args.ranks}", "ddp_unbound_img_s": ddp_unbound, "ddp_img_s": ddp,
                          "ratio": round(ddp / ddp_unbound, 3), "lockstep_unbound_img_s": round(locked_unbound, 1),
                          "lockstep_img_s": round(locked, 1), "lockstep_ratio": round(locked / locked_unbound, 3)}))


if __name__ == "__main__":
    main()
