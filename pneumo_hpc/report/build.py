"""Run records -> the reference study's scaling table (time, accuracy / mAP, speedup, efficiency), plus plots.

    pneumo-hpc report runs/results.jsonl --out runs/report
    pneumo-hpc report runs/*.jsonl runs/serial --out report --baseline "serial CNN (CPU)" --no-reference

Rules (also stated in report.md):
- Rows: one per configuration. Runs repeated with the same configuration (same kind, model, data, epochs, label,
  strategy, device, workers, nodes, launcher, backend) are averaged; `runs` says how many. The same run read twice
  (results.jsonl and its run directory's metrics.json) counts once.
- Speedup = baseline time / time; efficiency = speedup / workers (workers: world_size; for detectors gpus, or 1).
  The baseline is the mean time of the serial runs (world_size 1, strategy serial; detectors: 1 GPU or CPU) of the
  same kind, model, data and epochs, preferring those on the row's device type (a 2-GPU run against a 1-GPU run) and
  falling back to any device (the reference study divided GPU times by its CPU serial time). `--baseline LABEL` makes
  the runs labelled LABEL the baseline of their group instead. No baseline: "-".
- Amdahl's law S(n) = 1 / (f + (1 - f) / n) is fitted per series (kind, model, data, epochs, strategy, device)
  whose baseline ran on the same device type: f in [0, 1] minimizing the squared speedup error.
- Reference rows (pneumo_hpc.report.reference) sit beside ours where kind, strategy, device type and workers match.
"""
import csv
import io
import math
import statistics
from pathlib import Path

import numpy as np

from pneumo_hpc.report import reference as ref
from pneumo_hpc.atomic import write_bytes
from pneumo_hpc.report.record import SOURCE_KEY

KINDS = ("classifier", "detector")
MODEL_NAMES = {"small-cnn": "CNN", "resnet18": "ResNet-18"}
STRATEGY_ORDER = {"serial": 0, "ddp": 1, "fsdp": 2}
DEVICE_ORDER = {"cpu": 0, "cuda": 1}
GROUP_KEYS = ("kind", "model", "data", "epochs")
ROW_KEYS = GROUP_KEYS + ("configuration", "strategy", "device", "workers", "nodes", "launcher", "backend",
                         "compute_dtype", "compile")
# Baseline preference, strongest first: the same device type, precision and compilation as the row, then the
# same device type, then any serial run of the group.
BASELINE_MATCHES = (("device", "compute_dtype", "compile"), ("device",), ())
MEAN_FIELDS = ("train_time_s", "accuracy", "map50", "map50_95", "rsna_map", "throughput", "precision", "recall",
               "f1", "roc_auc", "sensitivity", "specificity", "pr_auc", "all_negative_accuracy",
               "operating_threshold", "operating_sensitivity", "operating_specificity")
# What a clinician reads, beside the scaling columns (classifier runs; the detector's own figures below them)
CLINICAL_FIELDS = ("sensitivity", "specificity", "pr_auc", "all_negative_accuracy", "target_sensitivity",
                   "operating_threshold", "operating_sensitivity", "operating_specificity")

# Published figures on the REAL RSNA Pneumonia Detection Challenge data, shown beside the synthetic demo's
# (never compared as if the data were the same): the reference study's table lives in pneumo_hpc.report.reference.
PUBLISHED_RSNA = (
    ("detector", "YOLOv5s at 640 px, RSNA boxes", "mAP50 0.468, mAP50-95 0.149"),
    ("detector", "winning Kaggle RSNA Pneumonia entry (private leaderboard, an ensemble)", "RSNA metric 0.253"),
    ("classifier", "DenseNet-121 pneumonia classifier", "ROC AUC about 0.88"),
    ("classifier", "reference study, serial CNN (CPU), balanced ~12,000 images", "accuracy 87.2 %"),
    ("detector", "reference study, YOLOv8 nano (4 GPUs), 416 px", "training 5208 s; mAP not published"),
)
CSV_COLUMNS = ("configuration", "kind", "model", "strategy", "device", "workers", "nodes", "launcher", "backend",
               "compute_dtype", "compile", "epochs", "batch_size", "data", "runs", "train_time_s", "train_time_std_s", "accuracy",
               "accuracy_pct", "map50", "map50_95", "rsna_map", "throughput_img_s", "speedup", "efficiency",
               "precision", "recall", "f1", "roc_auc", "baseline", "baseline_train_time_s", "git_revision")
REF_CSV_COLUMNS = ("ref_configuration", "ref_train_time_s", "ref_accuracy_pct", "ref_speedup", "ref_efficiency")
SERIES_KEYS = GROUP_KEYS + ("strategy", "device", "compute_dtype", "compile")  # one Amdahl fit / plot colour each


class ReportError(ValueError):
    """Records that cannot make a report; the message names the record's file:line and the problem."""


# --- records -> runs -----------------------------------------------------------------------------------------------

def _number(record, key, where, integer=False):
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReportError(f"{where}: {key}={value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ReportError(f"{where}: {key}={value!r} is not a number") from None
    if integer:
        if number != int(number) or number < 1:
            raise ReportError(f"{where}: {key}={value!r} must be a whole number >= 1")
        return int(number)
    return number if math.isfinite(number) else None


def configuration_label(kind, model, strategy, device, workers, nodes=1) -> str:
    """The reference study's naming: "serial CNN (CPU)", "2-CPU DDP", "3-GPU FSDP", "YOLOv8n (4 GPUs)"."""
    dev = "GPU" if device == "cuda" else "CPU"
    if kind == "detector":
        name = str(model or "yolov8n").replace("yolo", "YOLO")
        label = f"{name} ({workers} GPU{'s' if workers > 1 else ''})" if dev == "GPU" else f"{name} (CPU)"
    else:
        name = MODEL_NAMES.get(model, model or "model")
        if strategy == "serial":
            label = f"serial {name} ({dev})"
        else:
            label = f"{workers}-{dev} {str(strategy).upper()}" + ("" if model in (None, "small-cnn") else f" {name}")
    return label + (f", {nodes} nodes" if nodes and nodes > 1 else "")


def normalize(record: dict) -> dict:
    """One record -> the fields a report needs, validated. Raises ReportError naming the record's source."""
    where = record.get(SOURCE_KEY, "record")
    kind = record.get("kind") or "classifier"
    if kind not in KINDS:
        raise ReportError(f"{where}: kind={kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "classifier":
        missing = [k for k in ("strategy", "world_size") if record.get(k) in (None, "")]
        if missing:
            raise ReportError(f"{where}: classifier record without {', '.join(missing)}")
        workers = _number(record, "world_size", where, integer=True)
        strategy = str(record["strategy"]).lower()
        model = record.get("model")
        score = _number(record, "accuracy", where)
    else:
        # A CPU detector run has gpus 0; it is still one worker.
        workers = _number(record, "gpus", where) or 1
        workers = _number({"gpus": workers}, "gpus", where, integer=True)
        strategy = str(record.get("strategy") or ("ddp" if workers > 1 else "serial")).lower()
        # The trainer records the model argument: "yolov8n.yaml" or a weights path; its stem names the model.
        model = Path(str(record.get("model") or "yolov8n")).stem.lower()
        score = None
    gpus = record.get("gpus")
    device = str(record.get("device") or ("cuda" if kind == "detector" and gpus else "cpu")).split(":")[0]
    nodes = _number(record, "nodes", where, integer=True) or 1
    run = {
        "kind": kind, "model": model, "data": record.get("data"), "epochs": _number(record, "epochs", where),
        "strategy": strategy, "device": device, "workers": workers, "nodes": nodes,
        "launcher": record.get("launcher"), "backend": record.get("backend"),
        "compute_dtype": record.get("compute_dtype"), "compile": record.get("compile"),
        "batch_size": record.get("batch_size"), "run_dir": record.get("run_dir"),
        "timestamp": record.get("timestamp"), "git_revision": record.get("git_revision"), "source": where,
        "train_time_s": _number(record, "train_time_s", where), "accuracy": score,
        "throughput": _number(record, "samples_per_s" if kind == "classifier" else "images_per_s", where),
    }
    if run["throughput"] is None:
        run["throughput"] = _number(record, "images_per_s" if kind == "classifier" else "samples_per_s", where)
    for key in ("map50", "map50_95", "rsna_map", "precision", "recall", "f1", "roc_auc") + CLINICAL_FIELDS:
        run[key] = _number(record, key, where)
    cm = record.get("confusion_matrix")
    run["confusion_matrix"] = cm if isinstance(cm, list) and len(cm) == 2 else None
    if run["epochs"] is not None and run["epochs"] == int(run["epochs"]):
        run["epochs"] = int(run["epochs"])
    run["configuration"] = str(record.get("config") or configuration_label(kind, model, strategy, device, workers,
                                                                            nodes))
    return run


def _dedupe(runs):
    """The same run read from results.jsonl and from its run directory's metrics.json counts once."""
    seen, kept = set(), []
    for run in runs:
        if run["run_dir"] and run["train_time_s"] is not None:
            key = (Path(str(run["run_dir"])).name, run["train_time_s"], run["kind"], run["workers"],
                   run["strategy"])
            if key in seen:
                continue
            seen.add(key)
        kept.append(run)
    return kept


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# --- Amdahl --------------------------------------------------------------------------------------------------------

def amdahl_speedup(f, n):
    n = np.asarray(n, dtype=float)
    return 1.0 / (f + (1.0 - f) / n)


def amdahl_fit(workers, speedups) -> float:
    """Serial fraction f in [0, 1] minimizing sum (S(n) - s)^2 for S(n) = 1 / (f + (1 - f) / n).

    Nonlinear in f but one-dimensional and bounded: a grid over [0, 1] refined three times around its best point
    reaches 1e-9 without needing scipy. Superlinear points push f to 0, slowdowns to 1.
    """
    n = np.asarray(workers, dtype=float)
    s = np.asarray(speedups, dtype=float)
    if n.size == 0 or n.shape != s.shape:
        raise ValueError("amdahl_fit needs equally many worker counts and speedups, at least one")
    lo, hi = 0.0, 1.0
    for _ in range(4):
        grid = np.linspace(lo, hi, 1001)
        sse = ((1.0 / (grid[:, None] + (1.0 - grid[:, None]) / n[None, :]) - s[None, :]) ** 2).sum(axis=1)
        best = int(np.argmin(sse))
        step = (hi - lo) / 1000
        lo, hi = max(0.0, grid[best] - step), min(1.0, grid[best] + step)
    return float(grid[best])


# --- table ---------------------------------------------------------------------------------------------------------

def _sort_key(row):
    return (KINDS.index(row["kind"]), str(row["model"]), str(row["data"]), row["epochs"] or 0,
            row["strategy"] != "serial", DEVICE_ORDER.get(row["device"], 9), STRATEGY_ORDER.get(row["strategy"], 9),
            row["workers"], row["nodes"], str(row["launcher"]), row["configuration"])


def _is_serial(run):
    return run["workers"] == 1 and (run["kind"] == "detector" or run["strategy"] == "serial")


def build_table(records, baseline=None, reference=True):
    """Records -> (rows, fits). Rows are dicts keyed like CSV_COLUMNS (+ ref_* when `reference`) plus `_runs`;
    fits are Amdahl series {series, kind, model, strategy, device, points: [(workers, speedup)], f}."""
    runs = _dedupe([normalize(r) for r in records])
    if not runs:
        raise ReportError("no result records to report")
    if baseline is not None and not any(r["configuration"] == baseline for r in runs):
        labels = sorted({r["configuration"] for r in runs})
        raise ReportError(f"--baseline {baseline!r} matches no record; configurations are: {', '.join(labels)}")

    grouped = {}
    for run in runs:
        grouped.setdefault(tuple(run[k] for k in ROW_KEYS), []).append(run)

    rows = []
    for key, members in grouped.items():
        row = dict(zip(ROW_KEYS, key))
        row["_runs"] = members
        row["runs"] = len(members)
        for field in MEAN_FIELDS:
            row[field] = _mean(m[field] for m in members)
        times = [m["train_time_s"] for m in members if m["train_time_s"] is not None]
        row["train_time_std_s"] = statistics.stdev(times) if len(times) > 1 else None
        row["batch_size"] = members[-1]["batch_size"]
        row["confusion_matrix"] = members[-1].get("confusion_matrix")
        row["target_sensitivity"] = members[-1].get("target_sensitivity")
        row["git_revision"] = ";".join(sorted({str(m["git_revision"]) for m in members if m["git_revision"]})) \
            or None
        rows.append(row)
    rows.sort(key=_sort_key)

    for row in rows:
        group = [r for r in runs if all(r[k] == row[k] for k in GROUP_KEYS)]
        if baseline is not None:
            base = [r for r in group if r["configuration"] == baseline]
        else:
            serial = [r for r in group if _is_serial(r) and r["train_time_s"] is not None]
            base = next((match for keys in BASELINE_MATCHES
                         if (match := [r for r in serial if all(r[k] == row[k] for k in keys)])), [])
        base_time = _mean(r["train_time_s"] for r in base)
        row["baseline"] = ";".join(sorted({r["configuration"] for r in base})) if base_time else None
        row["baseline_train_time_s"] = base_time
        row["_same_device_baseline"] = bool(base) and all(r["device"] == row["device"] for r in base)
        if base_time and row["train_time_s"]:
            row["speedup"] = base_time / row["train_time_s"]
            row["efficiency"] = row["speedup"] / row["workers"]
        else:
            row["speedup"] = row["efficiency"] = None
        row["accuracy_pct"] = None if row["accuracy"] is None else 100.0 * row["accuracy"]
        row["throughput_img_s"] = row["throughput"]
        if reference:
            match = ref.match(row["kind"], row["model"], row["strategy"], row["device"], row["workers"])
            row["ref_configuration"] = match and match["configuration"]
            for field in ("train_time_s", "accuracy_pct", "speedup", "efficiency"):
                row[f"ref_{field}"] = match and match[field]
    return rows, _fits(rows)


def _variant(row):
    """"GPU", or "GPU, bf16, compiled" where the record says so."""
    parts = ["GPU" if row["device"] == "cuda" else "CPU"]
    parts += [row["compute_dtype"]] if row["compute_dtype"] else []
    parts += ["compiled"] if row["compile"] else []
    return ", ".join(parts)


def _fits(rows):
    series = {}
    for row in rows:
        # The serial point is S(1) = 1 for every f, and a cross-device speedup is not a scaling curve.
        if row["strategy"] == "serial" or row["speedup"] is None or not row["_same_device_baseline"]:
            continue
        series.setdefault(tuple(row[k] for k in SERIES_KEYS), []).append(row)
    fits = []
    for members in series.values():
        points = [(r["workers"], r["speedup"]) for r in members]
        first = members[0]
        fits.append({"series": f"{first['kind']} {first['model']} {first['strategy'].upper()} ({_variant(first)})",
                     "points": points, "f": amdahl_fit(*zip(*points)), **{k: first[k] for k in SERIES_KEYS}})
    return fits


# --- rendering -----------------------------------------------------------------------------------------------------

def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _score(row, prefix=""):
    if row["kind"] == "detector" and not prefix:
        return _fmt(row["map50"], ".3f") if row["map50"] is None else f"mAP50 {row['map50']:.3f}"
    return _fmt(row[f"{prefix}accuracy_pct"], ".1f", " %")


def _md_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def results_table(rows, reference=True) -> str:
    header = ["configuration", "workers", "training time", "accuracy / mAP", "throughput (img/s)", "speedup",
              "efficiency"]
    if reference:
        header += ["ref. study (published)", "ref. time", "ref. accuracy / mAP", "ref. speedup", "ref. efficiency"]
    lines = []
    for row in rows:
        mark = "" if row["speedup"] is None or row["_same_device_baseline"] else " †"
        line = [row["configuration"], row["workers"], _fmt(row["train_time_s"], ".1f", " s"), _score(row),
                _fmt(row["throughput"], ",.0f"), _fmt(row["speedup"], ".2f", "x" + mark),
                _fmt(row["efficiency"], ".2f", mark)]
        if reference:
            if row["ref_configuration"]:
                line += [row["ref_configuration"], _fmt(row["ref_train_time_s"], ".0f", " s"), _score(row, "ref_"),
                         _fmt(row["ref_speedup"], ".2f", "x"), _fmt(row["ref_efficiency"], ".2f")]
            else:
                line += ["-"] * 5
        lines.append(line)
    return _md_table(header, lines)


def details_table(rows) -> str:
    header = ["configuration", "runs", "launcher", "backend", "device", "dtype", "compiled", "nodes", "epochs",
              "batch", "precision", "recall", "f1", "roc_auc", "mAP50-95", "RSNA mAP", "baseline", "data"]
    lines = [[r["configuration"], r["runs"], r["launcher"] or "-", r["backend"] or "-", r["device"],
              r["compute_dtype"] or "-", {True: "yes", False: "no"}.get(r["compile"], "-"), r["nodes"],
              _fmt(r["epochs"], ""), _fmt(r["batch_size"], ""), _fmt(r["precision"], ".3f"), _fmt(r["recall"], ".3f"),
              _fmt(r["f1"], ".3f"), _fmt(r["roc_auc"], ".3f"), _fmt(r["map50_95"], ".3f"), _fmt(r["rsna_map"], ".3f"),
              r["baseline"] or "-", r["data"] or "-"] for r in rows]
    return _md_table(header, lines)


def _cm_text(cm) -> str:
    if not cm:
        return "-"
    (tn, fp), (fn, tp) = cm
    return f"TP {tp} / FN {fn} / FP {fp} / TN {tn}"


def clinical_section(rows, reference=True) -> list[str]:
    """The classifier's sensitivity/specificity/PR AUC and confusion matrix, the all-negative baseline, the
    operating point; the detector's mAP and RSNA metric; published real-RSNA figures beside them, labelled."""
    parts = []
    clf = [r for r in rows if r["kind"] == "classifier"]
    if clf:
        has_op = any(r.get("operating_threshold") is not None for r in clf)
        header = ["configuration", "accuracy", "all-negative accuracy", "sensitivity @0.5", "specificity @0.5",
                  "ROC AUC", "PR AUC", "confusion @0.5"]
        if has_op:
            header += ["target sens.", "operating threshold", "sensitivity @op", "specificity @op"]
        lines = []
        for r in clf:
            line = [r["configuration"], _fmt(r["accuracy_pct"], ".1f", " %"),
                    _fmt(None if r["all_negative_accuracy"] is None else 100 * r["all_negative_accuracy"], ".1f",
                         " %"),
                    _fmt(r["sensitivity"], ".3f"), _fmt(r["specificity"], ".3f"), _fmt(r["roc_auc"], ".3f"),
                    _fmt(r["pr_auc"], ".3f"), _cm_text(r.get("confusion_matrix"))]
            if has_op:
                line += [_fmt(r.get("target_sensitivity"), "g"), _fmt(r["operating_threshold"], ".3f"),
                         _fmt(r["operating_sensitivity"], ".3f"), _fmt(r["operating_specificity"], ".3f")]
            lines.append(line)
        parts += ["", "## What a clinician reads", "", _md_table(header, lines), "",
                  "Validation split. Sensitivity = recall of pneumonia, specificity = recall of normal images, at "
                  "the 0.5 threshold; \"all-negative accuracy\" is what answering \"no pneumonia\" for every image "
                  "scores on the same images (accuracy above it is the part the model earned). The operating "
                  "threshold is chosen on the validation set for the target sensitivity (`--target-sensitivity`), "
                  "so its figures are optimistic for new data."]
    det = [r for r in rows if r["kind"] == "detector"]
    if det:
        lines = [[r["configuration"], _fmt(r["map50"], ".3f"), _fmt(r["map50_95"], ".3f"), _fmt(r["rsna_map"], ".3f"),
                  _fmt(r["precision"], ".3f"), _fmt(r["recall"], ".3f")] for r in det]
        parts += ["", "## Detector", "", _md_table(["configuration", "mAP50", "mAP50-95", "RSNA metric",
                                                    "box precision", "box recall"], lines), "",
                  "On the validation split of the data at hand; the RSNA metric is the competition's (mean over IoU "
                  "0.40-0.75 of TP/(TP+FP+FN) per image)."]
    if not reference:
        return parts
    parts += ["", "## Published figures on the real RSNA data (not this data)", "",
              _md_table(["kind", "model / entry", "published figure"], [list(p) for p in PUBLISHED_RSNA]), "",
              "These were measured on the real RSNA Pneumonia Detection Challenge images, which are far harder than "
              "the synthetic set the demo makes: a synthetic figure above a published one says nothing about real "
              "X-rays."]
    return parts


def _curve_data(row):
    """(y_true, prob) from a member run's val_predictions.npz, or None."""
    for m in row.get("_runs", ()):
        if m.get("run_dir"):
            path = Path(str(m["run_dir"])) / "val_predictions.npz"
            try:
                with np.load(path) as z:
                    y, p = z["y_true"].astype(int), z["prob"].astype(float)
            except (OSError, KeyError, ValueError):
                continue
            if len(np.unique(y)) == 2:
                return y, p
    return None


def plot_curves(rows) -> bytes | None:
    """ROC and precision-recall curves per classifier configuration (from each run's val_predictions.npz)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    data = [(r["configuration"], d) for r in rows if r["kind"] == "classifier" and (d := _curve_data(r))]
    if not data:
        return None
    fig = Figure(figsize=(11, 4.5))
    roc_ax, pr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, (y, p) in data:
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        prec, rec, _ = precision_recall_curve(y, p)
        pr_ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    prevalence = float(np.mean(data[0][1][0]))
    roc_ax.plot([0, 1], [0, 1], ":", color="0.6", label="chance")
    pr_ax.axhline(prevalence, linestyle=":", color="0.6", label=f"chance (prevalence {prevalence:.2f})")
    roc_ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC (validation)")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (validation)",
              ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left" if ax is pr_ax else "lower right")
    return _figure_png(fig)


def fits_table(fits) -> str:
    lines = [[f["series"], ", ".join(f"{n}: {s:.2f}x" for n, s in f["points"]), f"{f['f']:.4f}",
              "unbounded" if f["f"] == 0 else f"{1 / f['f']:.1f}x"] for f in fits]
    return _md_table(["series", "points (workers: speedup)", "serial fraction f", "max speedup 1/f"], lines)


def render_markdown(rows, fits, sources, baseline=None, reference=True) -> str:
    base_rule = (f"the mean time of the runs labelled `{baseline}` in the same kind/model/data/epochs group"
                 if baseline else
                 "the mean time of the serial runs (1 worker) of the same kind, model, data and epochs, on the "
                 "row's device type when there is one, else on any device")
    parts = [
        "# Scaling report", "",
        f"{sum(r['runs'] for r in rows)} runs from {', '.join(f'`{s}`' for s in sources)}.", "",
        "## Results", "", results_table(rows, reference), "",
        f"Speedup = baseline time / time, the baseline being {base_rule}; efficiency = speedup / workers. "
        "Repeated runs of one configuration are averaged (`runs` below). Accuracy is the classifier's validation "
        "accuracy; detectors show mAP50.",
    ]
    if any(r["speedup"] is not None and not r["_same_device_baseline"] for r in rows):
        parts += ["", "† against a serial baseline on another device type (named under Details): a change of "
                      "hardware as much as of parallelism."]
    if reference:
        parts += ["", f"`ref.` columns: the {ref.SOURCE} where kind, strategy, device type and workers match; "
                      f"{ref.CAVEAT}"]
    parts += clinical_section(rows, reference)
    parts += ["", "## Details", "", details_table(rows), "", "## Amdahl's law", ""]
    if fits:
        parts += ["S(n) = 1 / (f + (1 - f) / n) fitted per series (least squares, f in [0, 1]), for series whose "
                  "baseline ran on the same device type.", "", fits_table(fits)]
    else:
        parts += ["No series to fit: it needs a parallel run and a serial baseline on the same device type."]
    parts += ["", "## Plots", "", "![speedup](speedup.png)", "", "![training time](time.png)", "",
              "![accuracy](accuracy.png)", ""]
    if any(_curve_data(r) is not None for r in rows if r["kind"] == "classifier"):
        parts += ["![ROC and precision-recall curves](curves.png)", ""]
    return "\n".join(parts)


def _csv_text(rows, reference=True) -> str:
    columns = CSV_COLUMNS + (REF_CSV_COLUMNS if reference else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    return buffer.getvalue()


# --- plots ---------------------------------------------------------------------------------------------------------

def _plot_labels(rows):
    labels = [r["configuration"] for r in rows]
    return [f"{lab} [{r['launcher']}]" if labels.count(lab) > 1 and r["launcher"] else lab
            for lab, r in zip(labels, rows)]


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def plot_speedup(rows, fits, reference=True) -> bytes:
    # Figure without pyplot renders through Agg and leaves the caller's backend and global figure list alone.
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    points = [r for r in rows if r["speedup"] is not None]
    refs = [r for r in rows if reference and r.get("ref_speedup") is not None]
    top = max([r["workers"] for r in points + refs] + [2])
    ideal = np.linspace(1, top, 100)  # dense: the axis may turn logarithmic below
    ax.plot(ideal, ideal, color="0.6", linestyle=":", label="ideal (S = n)")
    colors = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    series = {}
    for r in points:
        series.setdefault(tuple(r[k] for k in SERIES_KEYS), []).append(r)
    for key, members in series.items():
        color = next(colors)
        first = members[0]
        strategy = first["strategy"]
        name = f"{'serial' if strategy == 'serial' else strategy.upper()} {_variant(first)} ({first['model']})"
        same = [m for m in members if m["_same_device_baseline"]]
        other = [m for m in members if not m["_same_device_baseline"]]
        if same:
            ax.plot([m["workers"] for m in same], [m["speedup"] for m in same], "o", color=color, label=name)
        if other:
            # Against a serial run on another device type: a hardware change, not scaling; set apart.
            ax.plot([m["workers"] for m in other], [m["speedup"] for m in other], "^", color=color,
                    label=f"{name} vs {other[0]['baseline']}")
        for fit in fits:
            if tuple(fit[k] for k in SERIES_KEYS) == key:
                n = np.linspace(1, top, 100)
                ax.plot(n, amdahl_speedup(fit["f"], n), "--", color=color, linewidth=1,
                        label=f"Amdahl fit f = {fit['f']:.3f}")
    if refs:
        ax.scatter([r["workers"] for r in refs], [r["ref_speedup"] for r in refs], s=70, facecolors="none",
                   edgecolors="black", label=ref.SOURCE)
        for r in refs:
            ax.annotate(r["ref_configuration"], (r["workers"], r["ref_speedup"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=7, color="0.3")
    if not points:
        ax.text(0.5, 0.5, "no baseline: speedup undefined", transform=ax.transAxes, ha="center", color="0.4")
    values = [r["speedup"] for r in points] + [r["ref_speedup"] for r in refs]
    if values and (max(values) > 1.5 * top or min(values) < 0.5):
        ax.set_yscale("log", base=2)  # cross-device or slowdown points would flatten everything else
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("workers (ranks / GPUs)")
    ax.set_ylabel("speedup vs serial")
    ax.set_xticks(range(1, top + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Speedup")
    return _figure_png(fig)


def _bars(rows, values, ref_values, ylabel, title, log=False, hatch_detectors=False) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    has_ref = any(v is not None for v in ref_values)
    width = 0.4 if has_ref else 0.6
    ours = [np.nan if v is None else v for v in values]
    bars = ax.bar(x - (width / 2 if has_ref else 0), ours, width, label="this kit", color="C0")
    if hatch_detectors:
        for bar, row in zip(bars, rows):
            if row["kind"] == "detector":
                bar.set_hatch("//")
    if has_ref:
        ax.bar(x + width / 2, [np.nan if v is None else v for v in ref_values], width, fill=False, hatch="..",
               edgecolor="0.3", label=ref.SOURCE)
    for xi, v in zip(x, ours):
        if not np.isnan(v):
            ax.annotate(f"{v:.3g}", (xi - (width / 2 if has_ref else 0), v), ha="center", va="bottom", fontsize=7)
    finite = [v for v in ours + list(ref_values) if v is not None and not np.isnan(v) and v > 0]
    if log and finite and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    if not finite:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color="0.4")
    ax.set_xticks(x, _plot_labels(rows), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _figure_png(fig)


def plot_time(rows, reference=True) -> bytes:
    return _bars(rows, [r["train_time_s"] for r in rows],
                 [r.get("ref_train_time_s") if reference else None for r in rows],
                 "training time (s)", "Training time per configuration", log=True)


def plot_accuracy(rows, reference=True) -> bytes:
    ours = [r["map50"] * 100 if r["kind"] == "detector" and r["map50"] is not None else r["accuracy_pct"]
            for r in rows]
    return _bars(rows, ours, [r.get("ref_accuracy_pct") if reference else None for r in rows],
                 "accuracy (%) / detector mAP50 (%, hatched)", "Validation accuracy / mAP50",
                 hatch_detectors=True)


# --- output --------------------------------------------------------------------------------------------------------

atomic_write = write_bytes  # readers (a browser on report.md, a job globbing *.csv) never see half a file


def write_report(records, out_dir, sources=(), baseline=None, reference=True) -> dict:
    """Write report.md, report.csv and the PNG plots to out_dir; returns {"markdown": text, "rows", "fits",
    "files": [paths]}."""
    rows, fits = build_table(records, baseline=baseline, reference=reference)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(rows, fits, list(sources) or ["(records)"], baseline=baseline, reference=reference)
    outputs = {
        "speedup.png": plot_speedup(rows, fits, reference),
        "time.png": plot_time(rows, reference),
        "accuracy.png": plot_accuracy(rows, reference),
        **({"curves.png": curves} if (curves := plot_curves(rows)) is not None else {}),
        "report.csv": _csv_text(rows, reference).encode(),
        "report.md": markdown.encode(),  # last: its presence means the plots it links to exist
    }
    files = []
    for name, data in outputs.items():
        atomic_write(out_dir / name, data)
        files.append(out_dir / name)
    return {"markdown": markdown, "rows": rows, "fits": fits, "files": files}
