"""RSNA download -> classifier arrays + YOLO set, decoded in parallel with Dask (one process, LocalCluster or dask-mpi).

    pneumo-hpc preprocess --rsna data/rsna --out data/prep                      # in-process, 1 worker
    pneumo-hpc preprocess --rsna data/rsna --out data/prep --workers 8          # LocalCluster, 8 processes
    mpirun -np 10 pneumo-hpc preprocess --rsna data/rsna --out data/prep --cluster mpi   # rank 0 scheduler,
    srun -n 10 --mpi=pmix pneumo-hpc preprocess ... --cluster mpi                        # rank 1 this code, 8 workers

Images go out in chunks (64 by default); each chunk decodes every DICOM once and resizes it twice (classifier
size, YOLO size). A chunk's result is cached under PREP/.cache/ keyed by the hash of its files' bytes and the
sizes, so an interrupted or repeated run only decodes what changed. Outputs are assembled in patientId order on
the client: they are the same bytes whatever the cluster, the worker count or the chunk size.

Outputs (each written atomically; PREP/manifest.json is written last and removed first, so a PREP without it is
incomplete): classifier/{train,val}_images.npy, _labels.npy, .csv; yolo/ (see yolo.py); quarantine.csv;
unlabelled.csv; manifest.json (deterministic); run.json (timings, workers, cache hits: differs run to run).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pneumo_hpc.atomic import write_csv, write_text
from pneumo_hpc.data import DataError, layout, log, rsna, yolo
from pneumo_hpc.data.chunks import CACHE_VERSION, KILL_WORKER_ENV, decoder_id, png_path  # noqa: F401
from pneumo_hpc.data.executors import run_local_cluster, run_mpi_client, run_serial, start_mpi

CLUSTERS = ("local", "mpi")


@dataclass
class PreprocessConfig:
    rsna: Path
    out: Path
    size: int = 128
    yolo_size: int = 416
    val_frac: float = 0.2
    seed: int = 0
    balance: bool = False
    workers: int = 1
    cluster: str = "local"
    yolo: bool = True
    chunk_size: int = 64
    interface: str | None = None  # dask-mpi network interface (e.g. ib0, lo); default $PNEUMO_DASK_INTERFACE
    retries: int = 3  # Dask retries of a chunk that raised; a chunk whose worker died is rescheduled anyway

    def __post_init__(self):
        self.rsna, self.out = Path(self.rsna), Path(self.out)
        if self.cluster not in CLUSTERS:
            raise ValueError(f"cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")
        for name in ("size", "yolo_size", "workers", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ValueError(f"val_frac must be in [0, 1), got {self.val_frac}")


@dataclass
class Inventory:
    """What the download holds: labelled patients, their image files, and what is set aside before decoding."""
    source: Path
    labels: rsna.Labels
    images: dict[str, Path]  # patientId -> DICOM
    patients: dict  # patientId -> rsna.Patient
    quarantine: dict[str, tuple[str, str]]  # patientId -> (path, reason)
    unlabelled: list[str]
    todo: list[tuple[str, str]]  # (patientId, path) to decode, in patientId order

    @property
    def labelled(self) -> set[str]:
        return set(self.patients) | set(self.labels.quarantined)


@dataclass
class Decoded:
    """The decoded images of the patients that passed, with what the tasks measured."""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # the original (height, width)
    hashes: dict[str, str] = field(default_factory=dict)  # sha256 of each file's bytes
    n_cached: int = 0
    n_decoded: int = 0


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def run_preprocess(cfg: PreprocessConfig) -> dict | None:
    """Run the whole preprocessing; returns the manifest (None on dask-mpi scheduler/worker ranks)."""
    if cfg.cluster != "mpi":
        return _run(cfg, run_serial if cfg.workers == 1 else lambda tasks: run_local_cluster(tasks, cfg))
    is_client, scratch = start_mpi(cfg)
    try:
        if not is_client:
            return None
        from dask_mpi import send_close_signal

        try:
            return _run(cfg, lambda tasks: run_mpi_client(tasks, cfg))
        finally:
            send_close_signal()  # scheduler and workers leave their event loops and return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _list_images(images_dir: Path) -> dict[str, Path]:
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image directory not found (the Kaggle layout has "
                        f"{rsna.TRAIN_IMAGES}/<patientId>.dcm beside {rsna.LABELS_CSV})")
    return {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() == ".dcm" and p.is_file()}


def _run(cfg: PreprocessConfig, execute) -> dict:
    t0 = time.perf_counter()
    out = cfg.out.resolve()
    inv = _inventory(cfg.rsna.resolve())
    out.mkdir(parents=True, exist_ok=True)
    (out / layout.MANIFEST).unlink(missing_ok=True)  # no manifest = incomplete output, until the end
    cache = out / ".cache" / CACHE_VERSION
    yolo_size = cfg.yolo_size if cfg.yolo else 0
    tasks = [{"index": i, "items": inv.todo[start:start + cfg.chunk_size], "size": cfg.size, "yolo_size": yolo_size,
              "cache": str(cache), "decoder": decoder_id()}
             for i, start in enumerate(range(0, len(inv.todo), cfg.chunk_size))]
    log(f"{len(inv.labelled)} labelled patients, {len(inv.todo)} images to read in "
        f"{len(tasks)} chunk(s) of {cfg.chunk_size}; cluster={cfg.cluster} workers={_workers(cfg)}")
    for note in inv.labels.notes:
        log(note)
    t_execute = time.perf_counter()
    results, t_decode = execute(tasks) if tasks else ([], 0.0)
    t_execute = time.perf_counter() - t_execute
    decoded = _collect(tasks, results, inv.quarantine)
    inv.quarantine = dict(sorted(inv.quarantine.items()))
    for pid, (_, reason) in inv.quarantine.items():
        log(f"quarantined {pid}: {reason}")

    targets = {pid: inv.patients[pid].target for pid in sorted(decoded.images)}
    split = rsna.split_patients(targets, cfg.val_frac, cfg.seed)
    dropped = rsna.balance_train(targets, split, cfg.seed) if cfg.balance else set()
    parts = {s: [pid for pid in targets if split[pid] == s and pid not in dropped] for s in yolo.SPLITS}
    _write_classifier(out, cfg.size, parts, targets, inv, decoded)
    boxes = _write_yolo(out, cfg, split, targets, inv, decoded, cache)
    write_csv(out / layout.QUARANTINE, ["patientId", "path", "reason"],
              [(pid, path, reason) for pid, (path, reason) in inv.quarantine.items()])
    write_csv(out / layout.UNLABELLED, ["patientId", "path"], [(pid, str(inv.images[pid])) for pid in inv.unlabelled])
    manifest = _manifest(cfg, inv, decoded, targets, parts, dropped, boxes)
    _write_json(out / layout.RUN_RECORD, {
        "cluster": cfg.cluster, "workers": _workers(cfg), "chunk_size": cfg.chunk_size, "n_chunks": len(tasks),
        "n_chunks_cached": decoded.n_cached, "n_decoded": decoded.n_decoded,
        "seconds": round(time.perf_counter() - t0, 3),
        "decode_seconds": round(t_decode, 3), "cluster_overhead_seconds": round(t_execute - t_decode, 3),
        "images_per_s": round(len(inv.todo) / t_decode, 1) if t_decode > 0 and inv.todo else None,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    })
    _write_json(out / layout.MANIFEST, manifest)
    log(f"{decoded.n_cached}/{len(tasks)} chunk(s) from the cache, {decoded.n_decoded} image(s) decoded in "
        f"{t_decode:.1f} s")
    return manifest


def _inventory(source: Path) -> Inventory:
    labels = rsna.load_labels(source)
    images = _list_images(source / rsna.TRAIN_IMAGES)
    quarantine = {pid: (str(images.get(pid, "")), reason) for pid, reason in labels.quarantined.items()}
    patients = {p.patient_id: p for p in labels.patients}
    for pid in patients:
        if pid not in images:
            quarantine[pid] = (str(source / rsna.TRAIN_IMAGES / f"{pid}.dcm"), "labelled patient has no image file")
    labelled = set(patients) | set(labels.quarantined)
    return Inventory(source=source, labels=labels, images=images, patients=patients, quarantine=quarantine,
                     unlabelled=sorted(pid for pid in images if pid not in labelled),
                     todo=[(pid, str(images[pid])) for pid in sorted(patients) if pid in images])


def _collect(tasks: list[dict], results: list[dict], quarantine: dict) -> Decoded:
    """The tasks' results by patient; a file that failed to decode joins the quarantine with its reason."""
    decoded = Decoded(n_cached=sum(r["cached"] for r in results), n_decoded=sum(r["n_decoded"] for r in results))
    for task, result in zip(tasks, results, strict=True):
        for i, (pid, path) in enumerate(task["items"]):
            decoded.hashes[pid] = str(result["hashes"][i])
            if result["ok"][i]:
                decoded.images[pid] = result["images"][i]
                decoded.shapes[pid] = tuple(int(v) for v in result["shapes"][i])
            else:
                quarantine[pid] = (path, str(result["reasons"][i]))
    return decoded


def _write_classifier(out: Path, size: int, parts: dict, targets: dict, inv: Inventory, decoded: Decoded) -> None:
    for s, ids in parts.items():
        arr = np.stack([decoded.images[pid] for pid in ids]) if ids else np.zeros((0, size, size), np.uint8)
        layout.write_split(out, s, arr, np.array([targets[pid] for pid in ids], np.uint8),
                           [(pid, targets[pid], inv.patients[pid].cls) for pid in ids])


def _write_yolo(out: Path, cfg: PreprocessConfig, split: dict, targets: dict, inv: Inventory, decoded: Decoded,
                cache: Path) -> dict:
    """The YOLO tree (every image: --balance shapes the classifier's train set only); returns the box counts."""
    boxes = {"n_boxes": 0, "n_boxes_clipped": 0, "n_boxes_dropped": 0, "box_notes": [], "yolo_splits": None}
    if not cfg.yolo:
        if (out / "yolo").exists():
            log(f"--no-yolo: removing the stale {out / 'yolo'} (it would not match this split)")
            shutil.rmtree(out / "yolo")
        return boxes
    entries = []
    for pid in targets:
        height, width = decoded.shapes[pid]
        patient = inv.patients[pid]
        lines, clipped, notes = yolo.yolo_lines(patient.boxes, width, height)
        boxes["n_boxes"] += len(patient.boxes)
        boxes["n_boxes_clipped"] += clipped
        boxes["n_boxes_dropped"] += len(notes)
        boxes["box_notes"] += [f"{pid}: {note}" for note in notes]
        entries.append((pid, split[pid], png_path(cache, cfg.yolo_size, decoded.hashes[pid]), lines))
    boxes["yolo_splits"] = yolo.write_tree(out / "yolo", entries)
    for note in boxes["box_notes"]:
        log(note)
    return boxes


def _manifest(cfg: PreprocessConfig, inv: Inventory, decoded: Decoded, targets: dict, parts: dict, dropped: set,
              boxes: dict) -> dict:
    n_pos = sum(targets.values())
    reasons = {}
    for _, reason in inv.quarantine.values():
        reasons[_reason_kind(reason)] = reasons.get(_reason_kind(reason), 0) + 1
    manifest = {
        "source": str(inv.source),
        "input_hash": _input_hash(inv.source, inv.labels.has_class_info, decoded.hashes),
        "size": cfg.size, "yolo_size": cfg.yolo_size if cfg.yolo else None, "yolo": cfg.yolo,
        "seed": cfg.seed, "val_frac": cfg.val_frac, "balance": cfg.balance,
        "n_images": len(inv.images),
        "n_labelled_patients": len(inv.labelled),
        "n_ok": len(targets), "n_quarantined": len(inv.quarantine),
        "n_unlabelled_images": len(inv.unlabelled),
        "n_positive": n_pos, "n_negative": len(targets) - n_pos,
        "splits": {s: len(ids) for s, ids in parts.items()},
        "splits_positive": {s: int(sum(targets[pid] for pid in ids)) for s, ids in parts.items()},
        "n_dropped_by_balance": len(dropped),
        "yolo_splits": boxes["yolo_splits"],
        "classes": _class_counts(inv.patients[pid].cls for pid in targets),
        "quarantine_reasons": dict(sorted(reasons.items())),
        **{k: boxes[k] for k in ("n_boxes", "n_boxes_clipped", "n_boxes_dropped", "box_notes")},
        "label_notes": inv.labels.notes,
        "files": {"classifier": layout.CLASSIFIER_DIR, "yolo_data": "yolo/data.yaml" if cfg.yolo else None,
                  "quarantine": layout.QUARANTINE, "unlabelled": layout.UNLABELLED},
    }
    if manifest["n_labelled_patients"] != manifest["n_ok"] + manifest["n_quarantined"]:
        raise RuntimeError(f"preprocess: counts do not reconcile: {manifest['n_labelled_patients']} labelled "
                           f"patients, {manifest['n_ok']} ok + {manifest['n_quarantined']} quarantined")
    return manifest


def _workers(cfg: PreprocessConfig) -> int:
    if cfg.cluster == "mpi":
        from mpi4py import MPI

        return MPI.COMM_WORLD.Get_size() - 2
    return cfg.workers


def _reason_kind(reason: str) -> str:
    """The reason without its details: "truncated pixel data (file ends early: ...)" -> "truncated pixel data"."""
    return reason.split(" (")[0]


def _class_counts(classes) -> dict[str, int]:
    counts = {}
    for cls in classes:
        counts[cls or "(no class info)"] = counts.get(cls or "(no class info)", 0) + 1
    return dict(sorted(counts.items()))


def _input_hash(source: Path, has_class_info: bool, hashes: dict[str, str]) -> str:
    """sha256 over the label CSVs and every image that was read (patientId and its bytes' sha256)."""
    h = hashlib.sha256()
    for name in (rsna.LABELS_CSV, rsna.CLASS_CSV) if has_class_info else (rsna.LABELS_CSV,):
        h.update(name.encode() + b"\0" + hashlib.sha256((source / name).read_bytes()).digest())
    for pid in sorted(hashes):
        h.update(f"{pid}:{hashes[pid]}\n".encode())
    return f"sha256:{h.hexdigest()}"
