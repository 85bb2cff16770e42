"""Step time, speedup and efficiency predicted for 1 to 1024 workers from the serial step and an alpha-beta network.

    from pneumo_hpc.report.scaling_model import fit_alpha_beta, series_models
    fit_alpha_beta([1, 2, 4, 8], step_s)            # {"compute_s", "alpha_s", "beta_s"}, least squares, >= 0
    models = series_models(rows, alpha_s=20e-6, beta_bytes_s=10e9)   # one per measured DDP/FSDP series
    predict_step_s(0.04, 0.005, 2_100_000, 2, alpha_s=1e-4, beta_bytes_s=125e6, compress="bf16")  # one config, s

One step of the global batch B on W workers (the global batch is the same on every W, so the step count is too):

    step(W) = parallel / W + replicated + (1 - overlap) * (2 (W - 1) / W * tau + 2 (W - 1) * alpha)

- parallel + replicated = the serial run's step (train_time_s / steps). replicated is DDP's optimizer step, which
  every rank repeats (taken from the serial run's time_breakdown; 0 without one, and for FSDP, which shards it).
- DDP's ring all-reduce moves 2 (W - 1) / W of the gradient bytes per rank in 2 (W - 1) latency-bound hops; FSDP's
  all-gather and reduce-scatter are (W - 1) / W and W - 1 each, the same sum. tau = bytes / beta: seconds to move
  the message once at bus bandwidth beta; bytes = n_params x 4 (x 2 with --grad-compress bf16).
- alpha and beta given (a `pneumo-hpc doctor` measurement): overlap is what the parallel runs' time_breakdown says
  was hidden, 1 - measured comm / modelled comm (0 without a breakdown). Not given: alpha and tau are fitted to the
  measured step times of the series, so they are the exposed (not hidden) communication, overlap folded in.

Checked against 2-node DDP on links limited to 1 Gbit/s and 200 Mbit/s (tests/test_scaling_validation.py,
benchmarks/scaling_validation.py, docs/performance.md).
"""
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from pneumo_hpc.report.runs import GROUP_KEYS, SERIES_KEYS, variant

WORKERS = tuple(2 ** k for k in range(11))  # 1 .. 1024
BYTES_PER_PARAM = {"none": 4, "bf16": 2}


def comm_terms(workers):
    """(bandwidth coefficient 2 (W-1)/W, latency coefficient 2 (W-1)) of one step's collectives on W workers."""
    w = np.asarray(workers, dtype=float)
    return 2 * (w - 1) / w, 2 * (w - 1)


def step_time(workers, parallel_s, replicated_s, alpha_s, tau_s, overlap=0.0):
    """The model's step (s) on W workers; tau_s = gradient bytes / beta (the message's time at bus bandwidth)."""
    bandwidth, latency = comm_terms(workers)
    comm = bandwidth * tau_s + latency * alpha_s
    return parallel_s / np.asarray(workers, dtype=float) + replicated_s + (1 - overlap) * comm


def _tau(n_params, beta_bytes_s, compress):
    if compress not in BYTES_PER_PARAM:
        raise ValueError(f"compress={compress!r}: use one of {', '.join(BYTES_PER_PARAM)}")
    if beta_bytes_s <= 0:
        raise ValueError(f"beta_bytes_s must be > 0 (bytes/s), got {beta_bytes_s}")
    return n_params * BYTES_PER_PARAM[compress] / beta_bytes_s


def allreduce_s(n_params, workers, alpha_s, beta_bytes_s, compress="none") -> float:
    """The model's seconds for one step's ring all-reduce of n_params gradients (4 bytes each, 2 with
    compress="bf16") at `alpha_s` s per hop and `beta_bytes_s` bytes/s, none of it hidden."""
    return float(step_time(workers, 0.0, 0.0, alpha_s, _tau(n_params, beta_bytes_s, compress)))


def predict_step_s(compute_s, replicated_s, n_params, workers, alpha_s, beta_bytes_s, compress="none",
                   overlap=0.0) -> float:
    """One DDP configuration's step (s): `compute_s` (the serial step at the global batch, less `replicated_s`,
    what every rank repeats: DDP's optimizer step) split over `workers`, plus `allreduce_s` of the gradient, of
    which the share `overlap` hides behind compute."""
    if not 0 <= overlap <= 1:
        raise ValueError(f"overlap is a share of the all-reduce, 0 to 1, got {overlap}")
    tau = _tau(n_params, beta_bytes_s, compress)
    return float(step_time(workers, compute_s, replicated_s, alpha_s, tau, overlap))


def _nonneg_lstsq(a, y):
    """min |a x - y|^2 with x >= 0, by trying every set of free columns (a has at most three)."""
    best, best_err = np.zeros(a.shape[1]), float(np.sum(y ** 2))
    for k in range(1, a.shape[1] + 1):
        for free in combinations(range(a.shape[1]), k):
            x_free, *_ = np.linalg.lstsq(a[:, free], y, rcond=None)
            if np.any(x_free < 0):
                continue
            x = np.zeros(a.shape[1])
            x[list(free)] = x_free
            err = float(np.sum((a @ x - y) ** 2))
            if err < best_err - 1e-18:
                best, best_err = x, err
    return best


def fit_alpha_beta(workers, step_s, compute_s=None, replicated_s=0.0) -> dict:
    """alpha (s per hop), beta_s (tau, s per message) and compute_s (the serial step's parallel part), >= 0, by
    least squares on measured step times. With `compute_s` given only alpha and tau are fitted; a single parallel
    worker count cannot tell latency from bandwidth, so alpha is then 0."""
    w = np.asarray(workers, dtype=float)
    y = np.asarray(step_s, dtype=float) - replicated_s
    if w.size == 0 or w.shape != y.shape:
        raise ValueError("fit_alpha_beta needs equally many worker counts and step times, at least one")
    bandwidth, latency = comm_terms(w)
    single = len(set(w[w > 1])) < 2
    columns = [bandwidth] if single else [bandwidth, latency]
    if compute_s is None:
        x = _nonneg_lstsq(np.column_stack([1 / w] + columns), y)
        compute, rest = float(x[0]), x[1:]
    else:
        compute = float(compute_s)
        rest = _nonneg_lstsq(np.column_stack(columns), y - compute / w)
    return {"compute_s": compute, "beta_s": float(rest[0]), "alpha_s": 0.0 if single else float(rest[1])}


@dataclass(frozen=True)
class SeriesModel:
    """One series' model: the serial step's parts, the network, where each came from."""
    series: str
    key: tuple  # SERIES_KEYS values, as in amdahl.fit_series
    strategy: str
    device: str
    parallel_s: float
    replicated_s: float
    alpha_s: float
    beta_s: float  # tau = bytes / beta
    overlap: float
    source: str  # "given" or "fitted"
    grad_bytes: float | None
    measured: tuple  # ((workers, speedup), ...)

    def step_s(self, workers):
        return step_time(workers, self.parallel_s, self.replicated_s, self.alpha_s, self.beta_s, self.overlap)

    def speedup(self, workers):
        return self.step_s(1) / self.step_s(workers)

    def efficiency(self, workers):
        return self.speedup(workers) / np.asarray(workers, dtype=float)


def steps(row):
    """Optimizer steps of one run of the row: epochs x (n_train // global batch); None when unknown."""
    n, b, e = row.get("n_train"), row.get("batch_size"), row.get("epochs")
    if not all(isinstance(v, (int, float)) and v > 0 for v in (n, b, e)) or n < b:
        return None
    return int(e) * (int(n) // int(b))


def _serial_row(row, rows):
    labels = set(str(row["baseline"]).split(";"))
    return next((r for r in rows if r["configuration"] in labels and r["workers"] == 1
                 and all(r[k] == row[k] for k in GROUP_KEYS + ("device",))), None)


def _overlap(members, alpha_s, beta_s):
    """Mean share of the modelled communication the runs' breakdowns say was hidden; 0 without breakdowns."""
    shares = []
    for r in members:
        n = steps(r)
        modelled = float(sum(c * p for c, p in zip(comm_terms(r["workers"]), (beta_s, alpha_s))))
        if r.get("time_breakdown") and n and modelled > 0:
            exposed = r["time_breakdown"]["comm_s"] * r["epochs"] / n
            shares.append(min(1.0, max(0.0, 1 - exposed / modelled)))
    return float(np.mean(shares)) if shares else 0.0


def _model(members, rows, alpha_s, beta_bytes_s):
    first = members[0]
    serial = _serial_row(first, rows)
    n = steps(first)
    if serial is None or not n or steps(serial) != n or not serial["train_time_s"]:
        return None
    step1 = serial["train_time_s"] / n
    tb = serial.get("time_breakdown")
    replicated = tb["optimizer_s"] * serial["epochs"] / n if tb and first["strategy"] == "ddp" else 0.0
    n_params = first.get("n_params")
    grad_bytes = n_params * BYTES_PER_PARAM.get(first.get("grad_compress") or "none", 4) if n_params else None
    if alpha_s is not None and beta_bytes_s and grad_bytes:
        alpha, tau, source = alpha_s, grad_bytes / beta_bytes_s, "given"
        overlap = _overlap(members, alpha, tau)
    else:
        points = [(m["workers"], m["train_time_s"] / n) for m in members if m["train_time_s"]]
        fit = fit_alpha_beta(*zip(*points), compute_s=step1 - replicated, replicated_s=replicated)
        alpha, tau, overlap = fit["alpha_s"], fit["beta_s"], 0.0
        source = "fitted" if alpha_s is None else "fitted (no n_params in the records to apply the given beta to)"
    return SeriesModel(
        series=f"{first['kind']} {first['model']} {first['strategy'].upper()} ({variant(first)})",
        key=tuple(first[k] for k in SERIES_KEYS), strategy=first["strategy"], device=first["device"],
        parallel_s=step1 - replicated, replicated_s=replicated, alpha_s=alpha, beta_s=tau, overlap=overlap,
        source=source, grad_bytes=grad_bytes, measured=tuple((m["workers"], m["speedup"]) for m in members))


def series_models(rows, alpha_s=None, beta_bytes_s=None) -> list[SeriesModel]:
    """A model per classifier DDP/FSDP series with a same-device serial baseline of the same step count.
    `alpha_s` (s) and `beta_bytes_s` (bytes/s) are used where the rows know the gradient bytes (n_params)."""
    series = {}
    for row in rows:
        if (row["kind"] == "classifier" and row["strategy"] in ("ddp", "fsdp") and row["speedup"] is not None
                and row["_same_device_baseline"] and row["workers"] > 1):
            series.setdefault(tuple(row[k] for k in SERIES_KEYS), []).append(row)
    models = [_model(members, rows, alpha_s, beta_bytes_s) for members in series.values()]
    return [m for m in models if m is not None]


def cost_hours(row):
    """(worker-hours of one run of the row, "GPU-hours" or "CPU-hours"); None when its time is unknown."""
    if row["train_time_s"] is None:
        return None
    return row["train_time_s"] * row["workers"] / 3600, "GPU-hours" if row["device"] == "cuda" else "CPU-hours"
