"""Runs -> the scaling table: one row per configuration, its baseline, speedup, efficiency, reference figures.

    from pneumo_hpc.report.table import build_table
    rows, fits = build_table(load_results("runs/results.jsonl"))

Rows: runs repeated with the same configuration (same kind, model, data, epochs, label, strategy, device, workers,
nodes, launcher, backend, precision, compilation) are averaged; `runs` says how many.
"""
import csv
import io
import statistics

from pneumo_hpc.report import reference as ref
from pneumo_hpc.report.amdahl import fit_series
from pneumo_hpc.report.record import BREAKDOWN_KEYS
from pneumo_hpc.report.runs import GROUP_KEYS, KINDS, ReportError, dedupe, mean, normalize

STRATEGY_ORDER = {"serial": 0, "ddp": 1, "fsdp": 2}
DEVICE_ORDER = {"cpu": 0, "cuda": 1}
ROW_KEYS = GROUP_KEYS + ("configuration", "strategy", "device", "workers", "nodes", "launcher", "backend",
                         "compute_dtype", "compile")
# Baseline preference, strongest first: the same device type, precision and compilation as the row, then the
# same device type, then any serial run of the group.
BASELINE_MATCHES = (("device", "compute_dtype", "compile"), ("device",), ())
MEAN_FIELDS = ("train_time_s", "accuracy", "map50", "map50_95", "rsna_map", "throughput", "precision", "recall",
               "f1", "roc_auc", "sensitivity", "specificity", "pr_auc", "all_negative_accuracy",
               "operating_threshold", "operating_sensitivity", "operating_specificity")
CSV_COLUMNS = ("configuration", "kind", "model", "strategy", "device", "workers", "nodes", "launcher", "backend",
               "compute_dtype", "compile", "epochs", "batch_size", "data", "runs", "train_time_s",
               "train_time_std_s", "accuracy", "accuracy_pct", "map50", "map50_95", "rsna_map", "throughput_img_s",
               "speedup", "efficiency", "precision", "recall", "f1", "roc_auc", "baseline", "baseline_train_time_s",
               "git_revision")
REF_CSV_COLUMNS = ("ref_configuration", "ref_train_time_s", "ref_accuracy_pct", "ref_speedup", "ref_efficiency")


def build_table(records, baseline=None, reference=True):
    """Records -> (rows, fits). Rows are dicts keyed like CSV_COLUMNS (+ ref_* when `reference`) plus `_runs` and
    `time_breakdown` (seconds per epoch, or None); fits are Amdahl series (amdahl.fit_series)."""
    runs = dedupe([normalize(r) for r in records])
    if not runs:
        raise ReportError("no result records to report")
    if baseline is not None and not any(r["configuration"] == baseline for r in runs):
        labels = sorted({r["configuration"] for r in runs})
        raise ReportError(f"--baseline {baseline!r} matches no record; configurations are: {', '.join(labels)}")
    grouped = {}
    for run in runs:
        grouped.setdefault(tuple(run[k] for k in ROW_KEYS), []).append(run)
    rows = sorted((_row(key, members) for key, members in grouped.items()), key=_sort_key)
    for row in rows:
        _set_speedup(row, [r for r in runs if all(r[k] == row[k] for k in GROUP_KEYS)], baseline)
        row["accuracy_pct"] = None if row["accuracy"] is None else 100.0 * row["accuracy"]
        row["throughput_img_s"] = row["throughput"]
        if reference:
            _set_reference(row)
    return rows, fit_series(rows)


def _row(key, members):
    row = dict(zip(ROW_KEYS, key))
    row["_runs"] = members
    row["runs"] = len(members)
    for field in MEAN_FIELDS:
        row[field] = mean(m[field] for m in members)
    times = [m["train_time_s"] for m in members if m["train_time_s"] is not None]
    row["train_time_std_s"] = statistics.stdev(times) if len(times) > 1 else None
    for field in ("batch_size", "confusion_matrix", "target_sensitivity", "n_train", "n_params", "grad_compress"):
        row[field] = members[-1].get(field)
    row["git_revision"] = ";".join(sorted({str(m["git_revision"]) for m in members if m["git_revision"]})) or None
    row["time_breakdown"] = breakdown_per_epoch(members)
    return row


def breakdown_per_epoch(members):
    """Mean seconds per epoch of each BREAKDOWN_KEYS over the runs that recorded a breakdown; None if none did."""
    per_epoch = [{k: m["time_breakdown"][k] / m["epochs"] for k in BREAKDOWN_KEYS}
                 for m in members if m["time_breakdown"] and m["epochs"]]
    if not per_epoch:
        return None
    return {k: statistics.fmean(b[k] for b in per_epoch) for k in BREAKDOWN_KEYS}


def _sort_key(row):
    return (KINDS.index(row["kind"]), str(row["model"]), str(row["data"]), row["epochs"] or 0,
            row["strategy"] != "serial", DEVICE_ORDER.get(row["device"], 9), STRATEGY_ORDER.get(row["strategy"], 9),
            row["workers"], row["nodes"], str(row["launcher"]), row["configuration"])


def is_serial(run):
    return run["workers"] == 1 and (run["kind"] == "detector" or run["strategy"] == "serial")


def _set_speedup(row, group, baseline):
    """The row's baseline among its group's runs, and speedup and efficiency against it."""
    if baseline is not None:
        base = [r for r in group if r["configuration"] == baseline]
    else:
        serial = [r for r in group if is_serial(r) and r["train_time_s"] is not None]
        base = next((match for keys in BASELINE_MATCHES
                     if (match := [r for r in serial if all(r[k] == row[k] for k in keys)])), [])
    base_time = mean(r["train_time_s"] for r in base)
    row["baseline"] = ";".join(sorted({r["configuration"] for r in base})) if base_time else None
    row["baseline_train_time_s"] = base_time
    row["_same_device_baseline"] = bool(base) and all(r["device"] == row["device"] for r in base)
    if base_time and row["train_time_s"]:
        row["speedup"] = base_time / row["train_time_s"]
        row["efficiency"] = row["speedup"] / row["workers"]
    else:
        row["speedup"] = row["efficiency"] = None


def _set_reference(row):
    match = ref.match(row["kind"], row["model"], row["strategy"], row["device"], row["workers"])
    row["ref_configuration"] = match and match["configuration"]
    for field in ("train_time_s", "accuracy_pct", "speedup", "efficiency"):
        row[f"ref_{field}"] = match and match[field]


def csv_text(rows, reference=True) -> str:
    columns = CSV_COLUMNS + (REF_CSV_COLUMNS if reference else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    return buffer.getvalue()
