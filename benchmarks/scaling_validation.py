"""The scaling model's 2-node DDP step, predicted and measured on rate-limited links (issue 14, part 4).

On the multi-node test cluster, for each link rate: tbf on both nodes' links, a 2-rank gloo all-reduce benchmark
between them at three message sizes (alpha and beta fitted), the model's predicted step for 2-rank DDP (one rank
per node, gloo on CPU, GLOO_SOCKET_IFNAME=pnc0) with and without --grad-compress bf16, and the step measured in
those trainings (the epochs after the first). One row per (rate, compress); the limits are removed afterwards.

    make cluster-up NODES=3
    .venv/bin/python benchmarks/scaling_validation.py --out /tmp/scaling-validation [--rates 1gbit 200mbit]
    .venv/bin/python -m pytest -s tests/test_scaling_validation.py     # the same rows, each asserted within 20 %

The prediction is report.scaling_model.predict_step_s(compute_s, replicated_s, n_params, 2, alpha_s, beta_bytes_s,
compress, overlap). Its network inputs are always measured apart from the training:
- alpha_s, beta_bytes_s: the all-reduce benchmark on the limited link, in the job step of the rate's first run.
- n_params (so the bytes, x 4, or x 2 in bf16): the DDP run's metrics.json.
- overlap: 0. DDP launches the all-reduce of the bucket holding small-cnn's fc1 weight (99 % of the bytes) as
  soon as that gradient is ready, so the conv layers' backward (about a third of a 1-rank forward + backward
  here, timed with a gradient hook) could hide up to that much of it; on these CPU-starved nodes (3 nodes on 2
  vCPUs, other users) the runs hid 0.01-0.06 s (modelled comm less the run's measured comm), within the noise, so
  the model is given none. Not the DDP run's breakdown either: 1 - measured comm / modelled comm would put the
  measured communication into the prediction.
Its CPU inputs come two ways, each a column of the table:
- "probe": a 1-rank step of the trainer's model, loss, fused Adam and allocator on each node (both at once: the
  nodes share this machine's CPUs as the two ranks do), in the job step of the rate's first run, at the
  rank's batch (B/2): compute_s = 2 x its forward + backward (the model splits it over the 2 ranks), replicated_s
  = its optimizer step + the bf16 hook's casts. Independent of the DDP run; on this shared 2-vCPU VM the other
  users' load moves it by up to +-40 % from one minute to the next.
- "same window" (asserted): the DDP run's own time_breakdown for the CPU parts (data + compute + other per step,
  optimizer), plus the bf16 hook's decompress from the probe; so the check is the network model's (alpha, beta,
  bytes, no overlap, compression) against what the run's communication cost, under the CPU load the run had.
"linear" is the report's reading: the probe's step at the global batch B split in two, nothing hidden.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumo_hpc.report.scaling_model import allreduce_s, comm_terms, predict_step_s  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PNEUMO = str(VENV_BIN / "pneumo-hpc")
NODES = ("n2", "n3")  # not n1: other tests' 2-node jobs start there
WORKERS = len(NODES)
IFNAME = "pnc0"
SIZES = (4 << 20, 16 << 20, 32 << 20)  # bytes: around small-cnn's 128 px gradient, 16.8 MB in bf16, 33.6 in fp32
BATCH = 4  # global: 2 images per rank, so that the gradient's all-reduce is as large a share of the step as it gets
# fp32, no augmentation, no prefetch thread: the step is the model, the optimizer and the all-reduce only
TRAIN = ("--epochs", "2", "--batch-size", str(BATCH), "--lr", "1e-3", "--precision", "fp32", "--augment", "none",
         "--no-prefetch", "--device", "cpu", "--backend", "gloo")
# one thread per rank, as every DDP rank of the test cluster runs (its 3 nodes share 2 vCPUs here)
THREADS = ("OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1")


def allreduce_rank(sizes=SIZES, reps=3, gap_s=0.05) -> None:
    """One rank of the benchmark (under srun): the median seconds of an fp32 all-reduce of each size, the slower
    rank's per repetition. The pause before each repetition is longer than tbf needs to refill its 256 kB burst
    (2 ms at 1 Gbit/s, 10 ms at 200 Mbit/s), so that each message meets the link as a training step's does, after
    the compute between two steps' all-reduces."""
    import torch
    import torch.distributed as dist

    from pneumo_hpc.runtime import dist as pdist

    ctx = pdist.setup(backend="gloo", device="cpu")
    try:
        rows = []
        for nbytes in sizes:
            x = torch.ones(nbytes // 4)
            dist.all_reduce(x)  # the pairs' first use (connection, buffers) is not the link
            seconds = []
            for _ in range(reps):
                time.sleep(gap_s)
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(x)
                t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                seconds.append(float(t))
            rows.append({"bytes": nbytes, "seconds": statistics.median(seconds), "all": seconds})
        hosts = pdist.hosts(ctx)  # a collective: every rank takes part
        if ctx.rank == 0:
            print(json.dumps({"world_size": ctx.world_size, "hosts": hosts, "sizes": rows}), flush=True)
    finally:
        pdist.teardown(ctx)


def _probe_steps(model, optimizer, split, batch: int, warmup: int, steps: int) -> dict:
    """Mean seconds per step after `warmup`, in parts (see step_probe)."""
    import torch
    import torch.nn.functional as F

    from pneumo_hpc.classify.augment import to_input

    flat = torch.zeros(sum(q.numel() for q in model.parameters()))
    spent = dict.fromkeys(("compute_s", "optimizer_s", "compress_s", "decompress_s"), 0.0)
    for i in range(warmup + steps):
        at = (i * batch) % (len(split) - batch + 1)
        x = to_input(torch.from_numpy(split.images[at:at + batch]), True)
        y = torch.from_numpy(split.labels[at:at + batch]).float()
        t0 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        half = flat.to(torch.bfloat16).div_(WORKERS)  # bf16_compress_hook: the bucket in bf16, pre-divided
        t3 = time.perf_counter()
        flat.copy_(half)  # and back into the fp32 bucket
        t4 = time.perf_counter()
        if i >= warmup:
            for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[key] += seconds / steps
    return {"batch": batch, "n_params": flat.numel(), **spent}


def step_probe(data: Path, warmup=3, steps=10) -> None:
    """One node's 1-rank reference, printed as JSON: the trainer's step (its model, channels_last, loss, fused
    Adam, allocator) on the rank's batch and on the global batch. Parts, s per step: compute_s (forward and
    backward), optimizer_s, compress_s and decompress_s (the bf16 hook's casts of the whole gradient)."""
    import socket

    import torch

    from pneumo_hpc.classify.models import build_model
    from pneumo_hpc.data.layout import load_split
    from pneumo_hpc.runtime.host_memory import keep_freed_memory

    keep_freed_memory()
    split = load_split(data, "train")
    torch.manual_seed(0)
    model = build_model("small-cnn", size=split.size).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    rank = _probe_steps(model, optimizer, split, BATCH // WORKERS, warmup, steps)
    whole = _probe_steps(model, optimizer, split, BATCH, 1, steps // 2)
    print(json.dumps({"host": socket.gethostname(), **rank, "global": whole}), flush=True)


def reference(data: Path, then: list[str]) -> None:
    """A node's part of a job step before the training it then becomes (exec, in the environment it started
    with: the benchmark's process group exported its own RANK, MASTER_PORT, ...)."""
    environ = dict(os.environ)
    # a port of its own: the training derives its port from the same job id
    os.environ["MASTER_PORT"] = str(30000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 5000)
    allreduce_rank()
    step_probe(data)
    then = then[1:] if then[:1] == ["--"] else then
    if then:
        os.execve(then[0], then, environ)


def fit_network(nbytes, seconds, workers=WORKERS) -> dict:
    """alpha_s (s per hop) and beta_bytes_s (bus bytes/s) from all-reduce times of several message sizes on
    `workers` ranks, in the model's own terms: t = 2 (W-1)/W x bytes / beta + 2 (W-1) x alpha, least squares,
    alpha >= 0 (a negative intercept, e.g. tbf's burst, is refitted through the origin)."""
    import numpy as np

    x, y = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    if x.size < 2 or x.shape != y.shape or len(set(x)) < 2:
        raise ValueError("fit_network needs times of at least two different message sizes")
    bandwidth, latency = (float(c) for c in comm_terms(workers))
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0:
        slope, intercept = float(x @ y / (x @ x)), 0.0
    if slope <= 0:
        raise ValueError(f"all-reduce times do not grow with the message size: {list(zip(x, y))}")
    return {"alpha_s": float(intercept) / latency, "beta_bytes_s": bandwidth / float(slope)}


def steady(metrics: dict) -> dict:
    """Seconds per step of the epochs after the first (its warm-up: allocations, first-touch pages, connections):
    step_s from each epoch's time, and each phase of its time_breakdown."""
    steps = metrics["n_train"] // metrics["batch_size"]
    later = metrics["history"][1:]
    if not later or not steps:
        raise ValueError(f"{metrics.get('run_dir')}: needs at least two epochs of at least one step")
    out = {"step_s": statistics.mean(e["epoch_time_s"] for e in later) / steps, "steps": steps}
    for key in ("data_s", "compute_s", "comm_s", "optimizer_s", "other_s"):
        out[key] = statistics.mean(e["time_breakdown"][key] for e in later) / steps
    return out


def predict(probe: dict, ddp: dict, net: dict, compress: str) -> dict:
    """The model's step for one run, with the probe's CPU parts and with the run's own (module docstring)."""
    n, bf16 = ddp["n_params"], compress == "bf16"

    def step(compute, replicated):  # compute: what one rank computes of the step, the model's parallel part / W
        return predict_step_s(WORKERS * compute, replicated, n, WORKERS, alpha_s=net["alpha_s"],
                              beta_bytes_s=net["beta_bytes_s"], compress=compress, overlap=0.0)

    casts = probe["compress_s"] + probe["decompress_s"] if bf16 else 0.0
    independent = step(probe["compute_s"], probe["optimizer_s"] + casts)
    # the run's compute phase holds the hook's compress (it runs inside backward); its decompress is comm
    window = step(ddp["data_s"] + ddp["compute_s"] + ddp["other_s"],
                  ddp["optimizer_s"] + (probe["decompress_s"] if bf16 else 0.0))
    whole = probe["global"]
    linear = predict_step_s(whole["compute_s"], whole["optimizer_s"], n, WORKERS, alpha_s=net["alpha_s"],
                            beta_bytes_s=net["beta_bytes_s"], compress=compress)
    return {"predicted_s": window, "probe_predicted_s": independent, "linear_s": linear,
            "comm_model_s": allreduce_s(n, WORKERS, net["alpha_s"], net["beta_bytes_s"], compress)}


class ClusterCLI:
    """The running cluster of `make cluster-up`, with the calls of tests/conftest.py's Cluster that this uses."""
    BASE = os.environ.get("PNEUMO_TEST_CLUSTER_BASE", "/tmp/pneumo-hpc-cluster")

    def __init__(self):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMIX_", "OMPI_COMM"))}

    def login(self, *cmd, timeout=300):
        return _checked([f"{self.BASE}/bin/pnc-exec", *cmd], self.env, timeout)

    def script(self, *args, timeout=120):
        return _checked(["bash", str(REPO / ".ci" / "start-multinode.sh"), *args], self.env, timeout)


def _checked(cmd, env, timeout):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def srun(cluster, *cmd, timeout=600):
    """One task on each of NODES (rank 0 on the first), one CPU each, the nodes to itself, from the login node."""
    return cluster.login("srun", f"-N{WORKERS}", "--ntasks-per-node=1", "--cpus-per-task=1", "--mpi=none",
                         "--exclusive", f"--nodelist={','.join(NODES)}", "--kill-on-bad-exit=1", "env", *THREADS,
                         f"GLOO_SOCKET_IFNAME={IFNAME}", *cmd, timeout=timeout)


def ddp_step(cluster, data: Path, out: Path, compress: str, reference: bool) -> dict:
    """One job step: with `reference`, on both nodes the all-reduce benchmark and the probe first; then the 2-node
    DDP training. Returns the DDP run's steady parts, and with `reference` the network and the probe's slower
    node (every DDP step waits for the slower rank)."""
    first = [sys.executable, str(Path(__file__).resolve()), "reference", "--data", str(data), "--"]
    train = [PNEUMO, "train", "--data", str(data), *TRAIN, "--strategy", "ddp", "--grad-compress", compress,
             "--out", str(out)]
    stdout = srun(cluster, *(first if reference else []), *train).stdout
    m = json.loads((out / "metrics.json").read_text())
    assert (m["world_size"], m["hosts"], m["grad_compress"]) == (WORKERS, list(NODES), compress), m
    got = {"ddp": {**steady(m), "n_params": m["n_params"], "cpu_bind": m["cpu_bind"]}}
    if reference:
        probes = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"host"')]
        assert sorted(p["host"] for p in probes) == list(NODES), stdout
        got["probe"] = max(probes, key=lambda p: p["compute_s"] + p["optimizer_s"])
        net = json.loads(next(line for line in stdout.splitlines() if line.startswith('{"world_size"')))
        assert net["hosts"] == list(NODES), net
        sizes = net["sizes"]
        got["network"] = {**fit_network([s["bytes"] for s in sizes], [s["seconds"] for s in sizes]),
                          "sizes": sizes}
    return got


def validate(cluster, data: Path, out: Path, rates=("1gbit", "200mbit")) -> list[dict]:
    """The rows of the validation: every rate x compress, predicted beside measured. The network and the probe
    are measured in the job step of each rate's first run (the second's follows within a minute), the limits
    removed at the end whatever happened."""
    rows = []
    for rate in rates:
        try:
            for node in NODES:
                cluster.script("link", node, rate)
            ref = None
            for compress in ("none", "bf16"):
                got = ddp_step(cluster, data, out / f"ddp-{rate}-{compress}", compress, reference=ref is None)
                ref = ref or got
                net, probe, ddp = ref["network"], ref["probe"], got["ddp"]
                row = predict(probe, ddp, net, compress)
                rows.append({"rate": rate, "compress": compress, **row, "measured_s": ddp["step_s"],
                             "ratio": row["predicted_s"] / ddp["step_s"],
                             "probe_ratio": row["probe_predicted_s"] / ddp["step_s"], "alpha_s": net["alpha_s"],
                             "beta_bytes_s": net["beta_bytes_s"], "network": net, "probe": probe, "ddp": ddp})
        finally:
            for node in NODES:
                cluster.script("link", node, "off")
    return rows


def table(rows: list[dict]) -> str:
    """The rows as text: the network, the model's prediction both ways, the measured step and its parts."""
    lines = [f"{'link':>8} {'compress':>8} {'beta MB/s':>9} {'alpha ms':>8} {'predicted s':>11} {'measured s':>10} "
             f"{'ratio':>6} {'probe s':>7} {'ratio':>6} {'linear s':>8} {'comm model':>10} {'comm meas':>9} "
             f"{'cpu meas':>8}"]
    for r in rows:
        d = r["ddp"]
        lines.append(f"{r['rate']:>8} {r['compress']:>8} {r['beta_bytes_s'] / 1e6:9.1f} {r['alpha_s'] * 1e3:8.3f} "
                     f"{r['predicted_s']:11.3f} {r['measured_s']:10.3f} {r['ratio']:6.3f} "
                     f"{r['probe_predicted_s']:7.3f} {r['probe_ratio']:6.3f} {r['linear_s']:8.3f} "
                     f"{r['comm_model_s']:10.3f} {d['comm_s']:9.3f} {d['step_s'] - d['comm_s']:8.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    node = sub.add_parser("reference", help="one node's part of a job step: the benchmark's rank, the probe, then "
                          "the command after -- (run under srun)")
    node.add_argument("--data", type=Path, required=True)
    node.add_argument("then", nargs=argparse.REMAINDER)
    parser.add_argument("--out", type=Path, default=Path("/tmp/scaling-validation"))
    parser.add_argument("--rates", nargs="+", default=["1gbit", "200mbit"])
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    if args.cmd == "reference":
        return reference(args.data, args.then)
    sys.path.insert(0, str(REPO / "tests"))
    from prep_fake import make_prep

    args.out.mkdir(parents=True, exist_ok=True)
    data = make_prep(args.out / "prep", n_train=args.n_train, n_val=16, size=args.size)
    rows = validate(ClusterCLI(), data, args.out, args.rates)
    print(table(rows))
    (args.out / "scaling_validation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
