"""Records -> runs: each record read through the schema (record.upgrade), validated, reduced to what a report needs.

    from pneumo_hpc.report.runs import normalize, configuration_label
    normalize({"kind": "classifier", "strategy": "ddp", "world_size": 2, ...})["configuration"]   # "2-CPU DDP"
"""
import math
import statistics
from pathlib import Path

from pneumo_hpc.report import ReportError
from pneumo_hpc.report.record import BREAKDOWN_KEYS, SOURCE_KEY, upgrade

KINDS = ("classifier", "detector")
MODEL_NAMES = {"small-cnn": "CNN", "resnet18": "ResNet-18"}
GROUP_KEYS = ("kind", "model", "data", "epochs")
SERIES_KEYS = GROUP_KEYS + ("strategy", "device", "compute_dtype", "compile")  # one Amdahl fit / plot colour each
# What a clinician reads, beside the scaling columns (classifier runs; the detector's own figures below them)
CLINICAL_FIELDS = ("sensitivity", "specificity", "pr_auc", "all_negative_accuracy", "target_sensitivity",
                   "operating_threshold", "operating_sensitivity", "operating_specificity")
_SCORE_FIELDS = ("map50", "map50_95", "rsna_map", "precision", "recall", "f1", "roc_auc") + CLINICAL_FIELDS
_PLAIN_FIELDS = ("data", "launcher", "backend", "compute_dtype", "compile", "batch_size", "run_dir", "timestamp",
                 "git_revision", "n_train", "n_params", "grad_compress")


def number(record, key, where, integer=False):
    """record[key] as a float (an int >= 1 with `integer`); None when absent, empty or not finite."""
    value = record.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ReportError(f"{where}: {key}={value!r} is not a number")
    try:
        result = float(value)
    except ValueError:
        raise ReportError(f"{where}: {key}={value!r} is not a number") from None
    if integer:
        if result != int(result) or result < 1:
            raise ReportError(f"{where}: {key}={value!r} must be a whole number >= 1")
        return int(result)
    return result if math.isfinite(result) else None


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


def variant(row):
    """"GPU", or "GPU, bf16, compiled" where the record says so."""
    parts = ["GPU" if row["device"] == "cuda" else "CPU"]
    parts += [row["compute_dtype"]] if row["compute_dtype"] else []
    parts += ["compiled"] if row["compile"] else []
    return ", ".join(parts)


def normalize(record: dict) -> dict:
    """One record -> the fields a report needs, validated. Raises ReportError naming the record's source."""
    record = upgrade(record)  # records from load_results are upgraded already; dicts built in memory are not
    where = record.get(SOURCE_KEY, "record")
    kind = record["kind"]
    if kind not in KINDS:
        raise ReportError(f"{where}: kind={kind!r}; expected one of {', '.join(KINDS)}")
    missing = [k for k in ("strategy", "world_size") if record.get(k) in (None, "")]
    if missing:
        raise ReportError(f"{where}: {kind} record without {', '.join(missing)}")
    workers = number(record, "world_size", where, integer=True)
    strategy = str(record["strategy"]).lower()
    # A detector records the model argument: "yolov8n.yaml" or a weights path; its stem names the model.
    model = record.get("model") if kind == "classifier" else Path(str(record.get("model") or "yolov8n")).stem.lower()
    device = str(record.get("device") or "cpu")
    nodes = number(record, "nodes", where, integer=True) or 1
    run = {k: record.get(k) for k in _PLAIN_FIELDS}
    run.update({
        "kind": kind, "model": model, "epochs": number(record, "epochs", where), "strategy": strategy,
        "device": device, "workers": workers, "nodes": nodes, "source": where,
        "train_time_s": number(record, "train_time_s", where),
        "accuracy": number(record, "accuracy", where) if kind == "classifier" else None,
        "throughput": number(record, "samples_per_s", where),
        "time_breakdown": _breakdown(record.get("time_breakdown"), where),
    })
    run.update({key: number(record, key, where) for key in _SCORE_FIELDS})
    cm = record.get("confusion_matrix")
    run["confusion_matrix"] = cm if isinstance(cm, list) and len(cm) == 2 else None
    if run["epochs"] is not None and run["epochs"] == int(run["epochs"]):
        run["epochs"] = int(run["epochs"])
    run["configuration"] = str(record.get("label") or configuration_label(kind, model, strategy, device, workers,
                                                                           nodes))
    return run


def _breakdown(value, where):
    """A record's time_breakdown as {key: seconds}, or None when it has none (a run before record_version 1)."""
    if not isinstance(value, dict):
        return None
    return {k: number(value, k, f"{where}: time_breakdown") or 0.0 for k in BREAKDOWN_KEYS}


def dedupe(runs):
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


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None
