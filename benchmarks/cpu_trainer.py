"""CPU trainer benchmark: ratios measured in one run (machines are noisy; absolute times mean little).

1. one process: the kit's trainer (bf16 autocast where the CPU has native bf16, channels_last) vs. a
   reference-style loop (fp32, eager, contiguous, batch 64, same model/data/augmentation). Target >= 3x.
   Also: the kit with glibc's default allocator behaviour (PNEUMO_HPC_HOST_MALLOC=system) vs. the kit as it runs
   (freed memory kept for the next step, pneumo_hpc/host_memory.py): how much of the ratio that part is.
2. DDP: the kit with R gloo ranks (1 thread each) vs. R independent 1-rank runs at the same time, which isolates
   communication cost from core contention. Target >= 0.9.

    python benchmarks/cpu_trainer.py [--n 3000] [--ranks 2] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
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

    from pneumo_hpc.models import SmallCNN

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

    from pneumo_hpc.augment import AlbumentationsAugment, sample_seeds, to_input
    from pneumo_hpc.dataset import load_split

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


def kit(prep: Path, out: Path, epochs: int, batch: int, ranks: int = 1, env_extra=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pneumo_hpc", "train", "--data", str(prep), "--epochs", str(epochs),
           "--batch-size", str(batch), "--out", str(out), "--results", str(out.parent / "bench.jsonl")]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               *cmd[1:3], *cmd[3:], "--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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
    args = ap.parse_args()
    from prep_fake import make_prep

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prep = make_prep(tmp / "prep", n_train=args.n, n_val=256, size=128)
        ref = reference_loop(prep, args.epochs)
        p = kit(prep, tmp / "kit1", args.epochs, args.batch); wait(p)
        one = throughput(tmp / "kit1")
        print(json.dumps({"bench": "cpu-1proc", "reference_img_s": round(ref, 1), "kit_img_s": one,
                          "ratio": round(one / ref, 2), "target": 3.0}))
        p = kit(prep, tmp / "kit1-system-malloc", args.epochs, args.batch, env_extra={"PNEUMO_HPC_HOST_MALLOC": "system"})
        wait(p)
        system = throughput(tmp / "kit1-system-malloc")
        print(json.dumps({"bench": "cpu-host-malloc", "system_malloc_img_s": system, "kit_img_s": one,
                          "ratio": round(one / system, 2)}))
        solo = [kit(prep, tmp / f"solo{i}", args.epochs, args.batch) for i in range(args.ranks)]
        wait(*solo)
        independent = sum(throughput(tmp / f"solo{i}") for i in range(args.ranks))
        p = kit(prep, tmp / "ddp", args.epochs, args.batch * args.ranks, ranks=args.ranks); wait(p)
        ddp = throughput(tmp / "ddp")
        print(json.dumps({"bench": f"cpu-ddp-{args.ranks}", "independent_img_s": round(independent, 1),
                          "ddp_img_s": ddp, "ratio": round(ddp / independent, 3), "target": 0.9,
                          "efficiency_vs_1rank": round(ddp / (args.ranks * one), 3)}))


if __name__ == "__main__":
    main()
