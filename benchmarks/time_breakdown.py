"""What recording the time breakdown costs: the kit's trainer with it (the default) vs. `--no-time-breakdown`, as
alternating pairs in one run, the ratio of training throughput (samples_per_s from metrics.json) per pair.

    python benchmarks/time_breakdown.py [--strategy ddp] [--ranks 2] [--pairs 5] [--n 1536] [--size 64]
    python benchmarks/time_breakdown.py --strategy ddp --ranks 1 --device cuda     # on a GPU: CUDA events

Target: the median ratio (with / without) >= 0.98. On a shared machine the pairs' spread can exceed the 2 %
looked for, so the instrumentation is also timed by itself, in-process: what one step's marks and hooks cost
(a CPU step marks 4 laps and calls one hook per parameter), against the measured step time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
BIN = Path(sys.executable).parent


def train(prep: Path, out: Path, args, breakdown: bool) -> dict:
    cmd = ["-m", "pneumo_hpc", "train", "--data", str(prep), "--epochs", str(args.epochs), "--batch-size",
           str(args.batch), "--strategy", args.strategy, "--device", args.device, "--precision", "fp32",
           "--out", str(out), "--time-breakdown" if breakdown else "--no-time-breakdown"]
    launch = ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(args.ranks)] if args.ranks > 1
              else [sys.executable])
    env = {"OMP_NUM_THREADS": str(args.threads), "PATH": str(BIN) + ":/usr/bin:/bin"}
    subprocess.run([*launch, *cmd], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def instrumentation_s(n_params_tensors: int, repeats: int = 20000) -> float:
    """Seconds one CPU step spends in the breakdown's own code: 4 laps, one comm_ready per parameter tensor."""
    import time

    import torch

    from pneumo_hpc.classify.timing import StepTimer

    timer = StepTimer(torch.device("cpu"))
    timer.start()
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in range(n_params_tensors):
            timer.comm_ready()
        for phase in ("data", "compute", "optimizer", "other"):
            timer.lap(phase)
    per_step = (time.perf_counter() - t0) / repeats
    timer.epoch()
    return per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", default="ddp", choices=["serial", "ddp", "fsdp"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=1536, help="training images")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    from prep_fake import make_prep

    with tempfile.TemporaryDirectory(prefix="pneumo-bench-breakdown-") as tmp:
        prep = make_prep(Path(tmp) / "prep", n_train=args.n, n_val=128, size=args.size)
        ratios, rows = [], []
        for i in range(args.pairs):
            on = train(prep, Path(tmp) / f"on{i}", args, True)
            off = train(prep, Path(tmp) / f"off{i}", args, False)
            ratios.append(on["samples_per_s"] / off["samples_per_s"])
            rows.append((on["samples_per_s"], off["samples_per_s"], ratios[-1]))
            print(f"pair {i + 1}: with {rows[-1][0]:.1f} img/s, without {rows[-1][1]:.1f} img/s, "
                  f"ratio {rows[-1][2]:.3f}", flush=True)
        steps = args.epochs * (args.n // args.batch)
        step_s = on["train_time_s"] / steps
        own_s = instrumentation_s(n_params_tensors=8)  # small-cnn: 4 layers, weight and bias each
        print(json.dumps({"strategy": args.strategy, "ranks": args.ranks, "device": args.device, "pairs": args.pairs,
                          "ratio_median": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
                          "ratio_max": round(max(ratios), 4), "step_s": round(step_s, 5),
                          "instrumentation_s_per_step": round(own_s, 7),
                          "instrumentation_fraction": round(own_s / step_s, 6), "breakdown": on["time_breakdown"]}))


if __name__ == "__main__":
    main()
