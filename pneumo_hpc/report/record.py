"""The run record: one JSON object per finished run, in RUN/metrics.json and as one line of a results file.

    from pneumo_hpc.report.record import classifier_record, append_result, load_results
    record = classifier_record(label="2-CPU DDP", model="small-cnn", strategy="ddp", world_size=2, ...)
    append_result("runs/results.jsonl", record)
    records = load_results(["runs/results.jsonl", "runs/serial"])   # JSONL files, metrics.json files, run dirs

Every key is documented in docs/run-record.md; the key lists below are the code's copy of it, and a builder refuses
a key they do not name. Records are never rewritten: `upgrade` reads an older record (record_version 0, or none)
in the current schema's terms, and `load_results` applies it to everything it reads.

A JSON Lines file is appended to in place rather than rewritten atomically: jobs on several nodes write to it at the
same time, and an append under an exclusive `flock` in one `os.write` keeps each record whole. On NFS, Linux maps
flock to POSIX locks (works across nodes); Lustre needs the `flock` mount option.
"""
import datetime
import fcntl
import json
import math
import os
import socket
import sys
from pathlib import Path

from pneumo_hpc.report import ReportError
from pneumo_hpc.report.provenance import hardware_info, own_revision

METRICS_NAME = "metrics.json"
SOURCE_KEY = "_source"  # "file:line" added by load_results so reports can say where a bad record came from
RECORD_VERSION = 2  # 1: record_version, label, time_breakdown, n_params; detectors' samples_per_s and batch_size
# 2: detectors' threads_per_rank

# Summed over a run's epochs at the top level, one epoch's in each history entry: seconds.
BREAKDOWN_KEYS = ("data_s", "compute_s", "comm_s", "optimizer_s", "checkpoint_s", "eval_s", "other_s")
_SET_BY_BUILDER = ("kind", "record_version", "config", "label")
_VALIDATION_KEYS = ("accuracy", "precision", "recall", "f1", "sensitivity", "specificity", "confusion_matrix",
                    "roc_auc", "pr_auc", "val_loss", "threshold", "n_val_positive", "all_negative_accuracy",
                    "target_sensitivity", "operating_threshold", "operating_sensitivity", "operating_specificity",
                    "operating_precision", "operating_accuracy", "operating_confusion_matrix")
CLASSIFIER_KEYS = (
    "kind", "record_version", "model", "strategy", "backend", "launcher", "world_size", "nodes", "hosts",
    "device", "compute_dtype", "grad_compress", "compile", "threads_per_rank", "cpu_bind", "prefetch",
    "host_malloc", "n_params", "epochs", "batch_size", "local_batch_size", "lr", "train_time_s", "wall_time_s",
    "samples_per_s", "time_breakdown", *_VALIDATION_KEYS, "n_train", "n_val", "size", "seed", "data", "run_dir",
    "config", "label", "history", "version")
DETECTOR_KEYS = (
    "kind", "record_version", "precision", "recall", "map50", "map50_95", "rsna_map", "rsna_n_images",
    "rsna_conf", "train_time_s", "images_per_s", "samples_per_s", "loop_time_s", "loop_images_per_s",
    "eval_time_s", "gpus", "epochs", "imgsz", "batch", "batch_size", "model", "n_train", "n_val", "device",
    "device_arg", "amp", "threads_per_rank", "strategy", "world_size", "nodes", "seed", "workers", "data",
    "data_yaml", "weights", "ultralytics_dir", "run_dir", "config", "label")
# append_result adds these to any record; a builder accepts them too (a record rebuilt from an old line)
PROVENANCE_KEYS = ("timestamp", "git_revision", "hardware", "nodes", "hostname")
CLASSIFIER_REQUIRED = ("model", "strategy", "world_size", "device", "epochs", "train_time_s")
DETECTOR_REQUIRED = ("model", "gpus", "device", "epochs", "train_time_s")


class ResultsError(ReportError):
    """A results file that cannot be read; the message names the file (and line) and the problem."""


def jsonable(value):
    """JSON-safe copy, the one NaN policy: NaN/inf become null (strict JSON readers reject NaN), paths strings,
    numpy/torch values plain numbers or lists, tuples lists, dict keys strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy / torch values, without importing either
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- building ------------------------------------------------------------------------------------------------------

def classifier_record(*, label=None, **fields) -> dict:
    """A classifier run's record: `fields` are CLASSIFIER_KEYS (less kind, record_version, config, label), in any
    order; returned ordered, NaN-cleaned, with record_version and the label under both `label` and `config`.
    `time_breakdown` (and each history entry's) must hold exactly BREAKDOWN_KEYS. Raises TypeError on a key the
    schema does not name or a required one missing, ValueError on a malformed breakdown."""
    return _build("classifier", CLASSIFIER_KEYS, CLASSIFIER_REQUIRED, label, fields)


def detector_record(*, label=None, **fields) -> dict:
    """A detector run's record, as classifier_record does it with DETECTOR_KEYS; samples_per_s defaults to
    images_per_s and batch_size to batch (readers read the classifier's names for both kinds)."""
    for ours, theirs in (("samples_per_s", "images_per_s"), ("batch_size", "batch")):
        if fields.get(ours) is None:
            fields[ours] = fields.get(theirs)
    return _build("detector", DETECTOR_KEYS, DETECTOR_REQUIRED, label, fields)


def _build(kind, keys, required, label, fields):
    allowed = set(keys) - set(_SET_BY_BUILDER) | set(PROVENANCE_KEYS)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        given = [k for k in unknown if k in _SET_BY_BUILDER]
        hint = ("the builder sets kind, record_version, config and label (pass label=...)" if given else
                "a new key goes into pneumo_hpc/report/record.py and docs/run-record.md first")
        raise TypeError(f"{kind} record: unknown key(s) {', '.join(unknown)}; {hint}")
    missing = [k for k in required if fields.get(k) is None]
    if missing:
        raise TypeError(f"{kind} record: missing {', '.join(missing)}")
    check_breakdown(fields.get("time_breakdown"), "time_breakdown")
    for i, epoch in enumerate(fields.get("history") or ()):
        check_breakdown(epoch.get("time_breakdown"), f"history[{i}].time_breakdown")
    full = {"kind": kind, "record_version": RECORD_VERSION, "config": label, "label": label, **fields}
    order = list(keys) + [k for k in PROVENANCE_KEYS if k not in keys]
    return jsonable({k: full[k] for k in order if k in full})


def check_breakdown(breakdown, where="time_breakdown"):
    """None, or a dict of exactly BREAKDOWN_KEYS to seconds >= 0; else ValueError naming `where`."""
    if breakdown is None:
        return
    if not isinstance(breakdown, dict) or set(breakdown) != set(BREAKDOWN_KEYS):
        got = sorted(breakdown) if isinstance(breakdown, dict) else type(breakdown).__name__
        raise ValueError(f"{where}: expected the keys {', '.join(BREAKDOWN_KEYS)}, got {got}")
    bad = [k for k, v in breakdown.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0]
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)} must be seconds >= 0")


# --- reading older records -----------------------------------------------------------------------------------------

def upgrade(record: dict) -> dict:
    """A copy of `record` (any record_version) in the current schema's terms, for readers: record_version 0 where
    none is written; `label` from a string `config`; `samples_per_s` from `images_per_s`; `device` as its type
    ("cuda:1" is "cuda"); a detector's world_size, strategy, device and batch_size from gpus and batch.
    Idempotent; values it cannot interpret are left for the reader to reject."""
    out = dict(record)
    if out.get("record_version") is None:
        out["record_version"] = 0
    out["kind"] = out.get("kind") or "classifier"
    if out.get("label") is None and isinstance(out.get("config"), str):
        out["label"] = out["config"]
    if out.get("samples_per_s") is None and out.get("images_per_s") is not None:
        out["samples_per_s"] = out["images_per_s"]
    if isinstance(out.get("device"), str):
        out["device"] = out["device"].split(":")[0]
    if out["kind"] == "detector":
        _upgrade_detector(out)
    return out


def _upgrade_detector(out):
    gpus = out.get("gpus")
    numeric = gpus is None or (isinstance(gpus, (int, float)) and not isinstance(gpus, bool))
    if out.get("world_size") is None and numeric:
        out["world_size"] = max(gpus or 0, 1)  # a CPU run (gpus 0) is one worker
    if out.get("device") is None:
        out["device"] = "cuda" if gpus else "cpu"
    workers = out.get("world_size")
    if out.get("strategy") is None and isinstance(workers, (int, float)):
        out["strategy"] = "ddp" if workers > 1 else "serial"
    if out.get("batch_size") is None:
        out["batch_size"] = out.get("batch")


# --- writing -------------------------------------------------------------------------------------------------------

def append_result(path, record: dict) -> dict:
    """Append `record` plus provenance (timestamp, git_revision, hardware, nodes, hostname) as one JSON line to the
    JSON Lines file `path`; fields already in the record are kept. Safe with many concurrent writers. Returns the
    record as written."""
    full = dict(record)
    full.setdefault("timestamp", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))
    full.setdefault("git_revision", own_revision())
    hardware = full.setdefault("hardware", hardware_info())
    full.setdefault("nodes", hardware.get("nodes", 1) if isinstance(hardware, dict) else 1)
    full.setdefault("hostname", socket.gethostname())
    full = jsonable(full)
    line = json.dumps(full, sort_keys=False, allow_nan=False).encode() + b"\n"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # A writer killed mid-line (disk full, node crash) leaves no newline: start ours on a fresh line so only
        # the torn record is lost, not this one too.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:  # one write in practice; the loop only guards against a short write, still under the lock
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock
    return full


# --- reading -------------------------------------------------------------------------------------------------------

def _read_jsonl(path: Path, strict: bool):
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as err:
                message = f"{where}: not a valid result record ({err}): {line.strip()[:80]!r}"
                if strict:
                    raise ResultsError(message + " (fix or delete the line, or skip bad lines: --skip-bad-lines)") \
                        from None
                print(f"warning: skipped {message}", file=sys.stderr)
                continue
            record[SOURCE_KEY] = where
            records.append(upgrade(record))
    return records


def _read_metrics(path: Path, strict: bool = True):
    """A file holding one (possibly pretty-printed) JSON object; a file of several lines is read as JSON Lines."""
    text = path.read_text(encoding="utf-8")
    try:
        record = json.loads(text)
    except ValueError as err:
        if len([line for line in text.splitlines() if line.strip()]) > 1 and text.lstrip().startswith("{"):
            return _read_jsonl(path, strict)
        raise ResultsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(record).__name__}")
    record.setdefault("run_dir", str(path.parent))
    record[SOURCE_KEY] = str(path)
    return [upgrade(record)]


def load_results(paths, strict: bool = True) -> list[dict]:
    """Records from JSON Lines files (*.jsonl), single-object JSON files (metrics.json), and run directories (their
    metrics.json, else their *.jsonl files). Blank lines are skipped. A line that is not a JSON object raises
    ResultsError naming file and line when `strict` (the default: a silently dropped run skews a scaling table);
    with strict=False it is skipped with a warning on stderr. Each record gets `_source` ("file:line") and is
    read through `upgrade`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / METRICS_NAME).is_file():
                records += _read_metrics(path / METRICS_NAME, strict)
                continue
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise ResultsError(f"{path}: a directory without {METRICS_NAME} or *.jsonl results")
            for file in found:
                records += _read_jsonl(file, strict)
        elif path.is_file():
            if path.suffix == ".jsonl":
                records += _read_jsonl(path, strict)
            else:
                records += _read_metrics(path, strict)
        else:
            raise ResultsError(f"{path}: no such results file or run directory")
    return records
