"""What the kit's `pneumo-hpc detect train` costs over a bare ultralytics `YOLO("yolov8n.yaml").train(...)`.

    .venv/bin/python benchmarks/yolo_overhead.py                          # synthetic 64/16 images, 128 px, CPU
    .venv/bin/python benchmarks/yolo_overhead.py --data demo/prep/yolo --epochs 3 --imgsz 416 --gpus 1

Both sides run as fresh processes with the same data, settings and offline environment, alternating, after one
untimed warm-up each (label caches, font, settings). The kit does more than train: it resolves the data set,
refuses multi-task launches, re-loads the best weights and scores them with the RSNA metric on the val set, and
writes metrics.json. Printed: the median wall time and CPU time (process tree) of each side and their ratios
(target: kit / bare <= 1.05); the time each side spends outside the identical train() call, whose difference is
the kit's cost without the training's noise; then one JSON line with every timing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent

BARE = """
import sys, time
from ultralytics import YOLO
data, epochs, imgsz, batch, workers, device, project = sys.argv[1:]
t = time.perf_counter()
YOLO("yolov8n.yaml").train(data=data, epochs=int(epochs), imgsz=int(imgsz), batch=int(batch), workers=int(workers),
                           device=device, project=project, name="train", exist_ok=True, pretrained=False,
                           amp=False, plots=False, verbose=False, seed=0)
print("TRAIN_S", time.perf_counter() - t)
"""


def make_data(root: Path, n_train: int, n_val: int, size: int = 128, seed: int = 0) -> Path:
    """Greyscale PNGs with one bright rectangle on half of them, YOLO labels, data.yaml."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.normal(70, 20, (size, size)).clip(0, 255).astype(np.uint8)
            label = ""
            if i % 2 == 0:
                cx, cy = rng.uniform(0.3, 0.7, 2)
                w, h = rng.uniform(0.15, 0.35, 2)
                cv2.rectangle(img, (int((cx - w / 2) * size), int((cy - h / 2) * size)),
                              (int((cx + w / 2) * size), int((cy + h / 2) * size)), 190, -1)
                label = f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
            cv2.imwrite(str(root / "images" / split / f"{split}{i:04d}.png"), img)
            (root / "labels" / split / f"{split}{i:04d}.txt").write_text(label)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnc: 1\n"
                                    "names:\n  0: pneumonia\nchannels: 1\n")
    return root


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd, env) -> tuple[float, float, str]:
    """(wall s, CPU s of the process tree, stdout). CPU time barely moves when other jobs share the cores."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="YOLO set (PREP/yolo); default: a synthetic one in a temp dir")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with both sides' runs")
    args = ap.parse_args()

    from pneumo_hpc.detect.offline import prepare_ultralytics

    work = Path(tempfile.mkdtemp(prefix="yolo-overhead-"))
    os.environ.setdefault("PNEUMO_HPC_CACHE", str(work / "cache"))
    prepare_ultralytics()  # the same offline environment (and seeded config dir) for both sides
    env = dict(os.environ)
    data = args.data.resolve() if args.data else make_data(work / "yolo", args.n_train, args.n_val)
    data_yaml = data / "data.yaml" if data.is_dir() else data
    device = "cpu" if args.gpus == 0 else ",".join(map(str, range(args.gpus)))

    def bare(i):
        return timed([sys.executable, "-c", BARE, str(data_yaml), str(args.epochs), str(args.imgsz),
                      str(args.batch), str(args.workers), device, str(work / f"bare{i}")], env)

    def kit(i):
        return timed([str(VENV_BIN / "pneumo-hpc"), "detect", "train", "--data", str(data_yaml), "--epochs",
                      str(args.epochs), "--imgsz", str(args.imgsz), "--batch", str(args.batch), "--workers",
                      str(args.workers), "--gpus", str(args.gpus), "--out", str(work / f"kit{i}"),
                      "--results", str(work / "results.jsonl")], env)

    bare("warm"), kit("warm")
    walls, cpus, inner = ({"bare": [], "kit": []} for _ in range(3))
    for i in range(args.repeats):
        for name, fn in (("bare", bare), ("kit", kit)) if i % 2 == 0 else (("kit", kit), ("bare", bare)):
            wall, cpu, out = fn(i)
            walls[name].append(round(wall, 3))
            cpus[name].append(round(cpu, 3))
            if name == "bare":
                inner[name].append(round(float(out.split("TRAIN_S")[-1].split()[0]), 3))
            else:
                inner[name].append(json.loads((work / f"kit{i}" / "metrics.json").read_text())["train_time_s"])
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    ratio, cpu_ratio = med["kit"] / med["bare"], cpu_med["kit"] / cpu_med["bare"]
    print(f"wall: bare ultralytics {med['bare']:.2f} s, kit detect train {med['kit']:.2f} s, "
          f"kit/bare = {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; target <= +5%)")
    print(f"CPU:  bare ultralytics {cpu_med['bare']:.2f} s, kit detect train {cpu_med['kit']:.2f} s, "
          f"kit/bare = {cpu_ratio:.3f} ({(cpu_ratio - 1) * 100:+.1f}%)")
    # Both sides make the same ultralytics train() call; the time outside it (imports, the kit's checks, its
    # rsna_map evaluation, metrics/results writing) is the kit's cost, far less noisy than whole-run ratios.
    outside = {k: statistics.median(w - t for w, t in zip(walls[k], inner[k])) for k in walls}
    added = (outside["kit"] - outside["bare"]) / med["bare"]
    print(f"outside train(): bare {outside['bare']:.2f} s, kit {outside['kit']:.2f} s -> the kit adds "
          f"{outside['kit'] - outside['bare']:+.2f} s = {added * 100:+.1f}% of a bare run")
    print(f"min wall: bare {min(walls['bare']):.2f} s, kit {min(walls['kit']):.2f} s, "
          f"kit/bare = {min(walls['kit']) / min(walls['bare']):.3f}")
    print(json.dumps({"ratio": round(ratio, 4), "cpu_ratio": round(cpu_ratio, 4), "added_fraction": round(added, 4),
                      "wall_s": walls, "cpu_s": cpus, "train_call_s": inner, "epochs": args.epochs,
                      "imgsz": args.imgsz, "batch": args.batch, "gpus": args.gpus, "data": str(data_yaml),
                      "repeats": args.repeats}))
    if args.keep:
        print(f"runs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
