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
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo_hpc.runtime.interface import check as check_interface
from pneumo_hpc.atomic import write_bytes, write_csv, write_text, write_with
from pneumo_hpc.data import rsna, yolo

CLUSTERS = ("local", "mpi")
CACHE_VERSION = "v2"  # v2: one reduced decode serves the classifier and YOLO sizes
# Test hook: a path; the first chunk run inside a Dask worker creates it and kills its own worker process, so
# the tests can check that Dask reschedules the chunk and nothing is lost or duplicated. Never set it otherwise.
KILL_WORKER_ENV = "PNEUMO_HPC_TEST_KILL_WORKER_ONCE"
INTERFACE_ENV = "PNEUMO_DASK_INTERFACE"


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


class ClusterError(RuntimeError):
    """The requested cluster cannot start (missing MPI packages, too few ranks); the message says how to fix it."""


def log(msg: str) -> None:
    print(f"preprocess: {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ the chunk task

def _decoder_id() -> str:
    """Decoder versions are part of the cache key: another libjpeg may decode other grey levels."""
    import cv2
    import PIL
    import pydicom

    return f"cv2 {cv2.__version__}, pydicom {pydicom.__version__}, pillow {PIL.__version__}"


def _png_path(cache: Path, yolo_size: int, digest: str) -> Path:
    return cache / f"png{yolo_size}" / f"{digest}.png"


def _maybe_kill_worker(index: int) -> None:
    marker = os.environ.get(KILL_WORKER_ENV)
    if not marker:
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # in-process run: never kill the caller
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    log(f"test hook {KILL_WORKER_ENV}: killing worker pid {os.getpid()} inside chunk {index}")
    os._exit(17)


def process_chunk(task: dict) -> dict:
    """Decode one chunk of (patientId, path) (or load it from the cache). Runs on a Dask worker.

    Returns {"index", "cached", "n_decoded", "images" (k, size, size) uint8, "ok", "reasons", "hashes", "shapes"}.
    A file that cannot be decoded gets ok=False and a readable reason; zeros stand in for its pixels.
    """
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core per worker: Dask is the parallelism
    try:
        return _process_chunk(task)
    finally:
        cv2.setNumThreads(threads)


def _process_chunk(task: dict) -> dict:
    import cv2

    from pneumo_hpc.data.dicom import BadImage, read_scaled, resize

    items, size, yolo_size = task["items"], task["size"], task["yolo_size"]
    cache = Path(task["cache"])
    hashes, blobs_ok, reasons = [], [], []
    for _, path in items:
        try:
            hashes.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
            blobs_ok.append(True)
            reasons.append("")
        except OSError as e:
            hashes.append("")
            blobs_ok.append(False)
            reasons.append(f"cannot read ({e.strerror or e})")
    key = hashlib.sha256(json.dumps([CACHE_VERSION, task["decoder"], size, yolo_size,
                                     [[pid, h] for (pid, _), h in zip(items, hashes)]]).encode()).hexdigest()
    entry = cache / "chunks" / f"{key}.npz"
    hit = _load_entry(entry, cache, yolo_size)
    if hit is not None:
        return {"index": task["index"], "cached": True, "n_decoded": 0, **hit}

    n = len(items)
    images = np.zeros((n, size, size), np.uint8)
    shapes = np.zeros((n, 2), np.int64)
    ok = np.array(blobs_ok, bool)
    for i, (_, path) in enumerate(items):
        if i == n // 2:
            _maybe_kill_worker(task["index"])
        if not ok[i]:
            continue
        try:
            # one decode serves both sizes: as coarse as the YOLO size allows (1024 -> 512 for 416), and an
            # exact integer reduction to the classifier size
            pixels, shapes[i] = read_scaled(path, size, min_side=yolo_size)
        except BadImage as e:
            # the path has its own column in quarantine.csv; without it cached reasons survive a moved download
            ok[i], reasons[i] = False, str(e).removeprefix(f"{path}: ")
            continue
        images[i] = resize(pixels, size)
        if yolo_size:
            png_ok, png = cv2.imencode(".png", resize(pixels, yolo_size))
            if not png_ok:
                raise RuntimeError(f"{path}: OpenCV could not encode the YOLO PNG")
            png_path = _png_path(cache, yolo_size, hashes[i])
            png_path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(png_path, png.tobytes())
    result = {"images": images, "ok": ok, "reasons": np.array(reasons, dtype=str),
              "hashes": np.array(hashes, dtype=str), "shapes": shapes}
    write_with(entry, lambda f: np.savez(f, **result))
    return {"index": task["index"], "cached": False, "n_decoded": int(ok.sum()), **result}


def _load_entry(entry: Path, cache: Path, yolo_size: int) -> dict | None:
    try:
        with np.load(entry, allow_pickle=False) as data:
            hit = {k: data[k] for k in ("images", "ok", "reasons", "hashes", "shapes")}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent or damaged: decode again
    if yolo_size and not all(_png_path(cache, yolo_size, h).is_file()
                             for h, good in zip(hit["hashes"], hit["ok"]) if good):
        return None
    return hit


# ------------------------------------------------------------------------------------------------ executors

def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="preprocess", file=sys.stderr, mininterval=1.0)


# Each executor returns (results in task order, seconds from the first submission to the last result).

def _run_serial(tasks: list[dict]) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    results = []
    with _progress(len(tasks)) as bar:
        for task in tasks:
            results.append(process_chunk(task))
            bar.update()
    return results, time.perf_counter() - t0


def _warm_up() -> None:
    """Import the decoders on a worker before the clock starts (cluster start-up is not decode time)."""
    import pneumo_hpc.data.dicom  # noqa: F401


def _run_dask(client, tasks: list[dict], retries: int) -> tuple[list[dict], float]:
    from distributed import as_completed

    client.run(_warm_up)
    t0 = time.perf_counter()
    futures = client.map(process_chunk, tasks, key=[f"pneumo-preprocess-chunk-{t['index']}" for t in tasks],
                         retries=retries, pure=False)
    results = {}
    with _progress(len(tasks)) as bar:
        for future in as_completed(futures):
            result = future.result()
            results[result["index"]] = result  # a chunk run twice (retry) lands on the same slot
            future.release()
            bar.update()
    return [results[t["index"]] for t in tasks], time.perf_counter() - t0


def _run_local_cluster(tasks: list[dict], cfg: PreprocessConfig) -> tuple[list[dict], float]:
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="pneumo-dask-") as scratch, \
            LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         local_directory=scratch) as cluster, Client(cluster) as client:
        return _run_dask(client, tasks, cfg.retries)


def start_mpi(cfg: PreprocessConfig) -> tuple[bool, str]:
    """dask-mpi: rank 0 runs the scheduler, rank 1 returns (True, scratch) to run the client, others are workers.

    Scheduler and worker ranks return (False, scratch) once the client has shut the cluster down.
    """
    try:
        from dask_mpi import initialize
        from mpi4py import MPI
    except ImportError as e:
        raise ClusterError(f"--cluster mpi needs mpi4py and dask-mpi ({e}): pip install 'pneumo-hpc[mpi]' "
                           "with an MPI library present (e.g. apt install openmpi-bin libopenmpi-dev)") from None
    world = MPI.COMM_WORLD.Get_size()
    if world < 3:
        raise ClusterError(f"--cluster mpi needs at least 3 MPI ranks (scheduler, client, workers); this run has "
                           f"{world}: start it with `mpirun -np 4 ...` or `srun -n 4 --mpi=pmix ...`")
    # INFO chatter from every rank, and a CommClosedError traceback per worker at shutdown, bury the progress bar
    logging.getLogger("distributed").setLevel(os.environ.get("PNEUMO_DASK_LOG_LEVEL", "WARNING").upper())
    scratch = tempfile.mkdtemp(prefix=f"pneumo-dask-{MPI.COMM_WORLD.Get_rank()}-")
    interface = cfg.interface or os.environ.get(INTERFACE_ENV) or None
    if interface:  # a missing one leaves the workers waiting for a scheduler that never listens
        try:
            check_interface(MPI.COMM_WORLD.Get_rank(), {"--interface": interface}, variables=("--interface",))
        except ValueError as e:
            raise ClusterError(str(e)) from None
    is_client = initialize(interface=interface, nthreads=1, local_directory=scratch, dashboard=False, exit=False)
    return is_client, scratch


def _run_mpi_client(tasks: list[dict], cfg: PreprocessConfig) -> tuple[list[dict], float]:
    from distributed import Client
    from mpi4py import MPI

    n_workers = MPI.COMM_WORLD.Get_size() - 2
    with Client() as client:  # dask_mpi.initialize set the scheduler address in dask.config
        client.wait_for_workers(n_workers, timeout=300)
        log(f"dask-mpi cluster: {n_workers} worker(s) at {client.scheduler.address}")
        for address, host in sorted(client.run(socket.gethostname).items()):
            log(f"dask-mpi worker on {host} ({address})")
        return _run_dask(client, tasks, cfg.retries)


# ------------------------------------------------------------------------------------------------ the run

def run_preprocess(cfg: PreprocessConfig) -> dict | None:
    """Run the whole preprocessing; returns the manifest (None on dask-mpi scheduler/worker ranks)."""
    if cfg.cluster != "mpi":
        return _run(cfg, _run_serial if cfg.workers == 1 else lambda tasks: _run_local_cluster(tasks, cfg))
    is_client, scratch = start_mpi(cfg)
    try:
        if not is_client:
            return None
        from dask_mpi import send_close_signal

        try:
            return _run(cfg, lambda tasks: _run_mpi_client(tasks, cfg))
        finally:
            send_close_signal()  # scheduler and workers leave their event loops and return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _list_images(images_dir: Path) -> dict[str, Path]:
    if not images_dir.is_dir():
        raise rsna.DataError(f"{images_dir}: image directory not found (the Kaggle layout has "
                             f"{rsna.TRAIN_IMAGES}/<patientId>.dcm beside {rsna.LABELS_CSV})")
    return {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() == ".dcm" and p.is_file()}


def _run(cfg: PreprocessConfig, execute) -> dict:
    t0 = time.perf_counter()
    source = cfg.rsna.resolve()
    out = cfg.out.resolve()
    labels = rsna.load_labels(source)
    images = _list_images(source / rsna.TRAIN_IMAGES)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # no manifest = incomplete output, until the end
    cache = out / ".cache" / CACHE_VERSION

    quarantine = {pid: (str(images.get(pid, "")), reason) for pid, reason in labels.quarantined.items()}
    patients = {p.patient_id: p for p in labels.patients}
    for pid in patients:
        if pid not in images:
            quarantine[pid] = (str(source / rsna.TRAIN_IMAGES / f"{pid}.dcm"), "labelled patient has no image file")
    labelled = set(patients) | set(labels.quarantined)
    unlabelled = sorted(pid for pid in images if pid not in labelled)
    todo = [(pid, str(images[pid])) for pid in sorted(patients) if pid in images]
    yolo_size = cfg.yolo_size if cfg.yolo else 0
    decoder = _decoder_id()
    tasks = [{"index": i, "items": todo[start:start + cfg.chunk_size], "size": cfg.size, "yolo_size": yolo_size,
              "cache": str(cache), "decoder": decoder}
             for i, start in enumerate(range(0, len(todo), cfg.chunk_size))]
    log(f"{len(patients) + len(labels.quarantined)} labelled patients, {len(todo)} images to read in "
        f"{len(tasks)} chunk(s) of {cfg.chunk_size}; cluster={cfg.cluster} workers={_workers(cfg)}")
    for note in labels.notes:
        log(note)

    t_execute = time.perf_counter()
    results, t_decode = execute(tasks) if tasks else ([], 0.0)
    t_execute = time.perf_counter() - t_execute

    ok_images, shapes, hashes = {}, {}, {}
    for task, result in zip(tasks, results):
        for i, (pid, path) in enumerate(task["items"]):
            hashes[pid] = str(result["hashes"][i])
            if result["ok"][i]:
                ok_images[pid] = result["images"][i]
                shapes[pid] = tuple(int(v) for v in result["shapes"][i])
            else:
                quarantine[pid] = (path, str(result["reasons"][i]))
    quarantine = dict(sorted(quarantine.items()))
    for pid, (_, reason) in quarantine.items():
        log(f"quarantined {pid}: {reason}")

    targets = {pid: patients[pid].target for pid in sorted(ok_images)}
    split = rsna.split_patients(targets, cfg.val_frac, cfg.seed)
    dropped = rsna.balance_train(targets, split, cfg.seed) if cfg.balance else set()
    parts = {s: [pid for pid in targets if split[pid] == s and pid not in dropped] for s in yolo.SPLITS}

    (out / "classifier").mkdir(exist_ok=True)
    for s, ids in parts.items():
        arr = np.stack([ok_images[pid] for pid in ids]) if ids else np.zeros((0, cfg.size, cfg.size), np.uint8)
        write_with(out / "classifier" / f"{s}_images.npy", lambda f, a=arr: np.save(f, a))
        lab = np.array([targets[pid] for pid in ids], np.uint8)
        write_with(out / "classifier" / f"{s}_labels.npy", lambda f, a=lab: np.save(f, a))
        write_csv(out / "classifier" / f"{s}.csv", ["patientId", "Target", "class"],
                   [(pid, targets[pid], patients[pid].cls) for pid in ids])

    box_stats = {"n_boxes": 0, "n_boxes_clipped": 0, "n_boxes_dropped": 0}
    box_notes = []
    if cfg.yolo:
        entries = []
        for pid in targets:  # YOLO keeps every image: --balance shapes the classifier's train set only
            height, width = shapes[pid]
            lines, clipped, notes = yolo.yolo_lines(patients[pid].boxes, width, height)
            box_stats["n_boxes"] += len(patients[pid].boxes)
            box_stats["n_boxes_clipped"] += clipped
            box_stats["n_boxes_dropped"] += len(notes)
            box_notes += [f"{pid}: {note}" for note in notes]
            entries.append((pid, split[pid], _png_path(cache, yolo_size, hashes[pid]), lines))
        yolo_counts = yolo.write_tree(out / "yolo", entries)
        for note in box_notes:
            log(note)
    else:
        yolo_counts = None
        if (out / "yolo").exists():
            log(f"--no-yolo: removing the stale {out / 'yolo'} (it would not match this split)")
            shutil.rmtree(out / "yolo")

    write_csv(out / "quarantine.csv", ["patientId", "path", "reason"],
               [(pid, path, reason) for pid, (path, reason) in quarantine.items()])
    write_csv(out / "unlabelled.csv", ["patientId", "path"], [(pid, str(images[pid])) for pid in unlabelled])

    n_pos = sum(targets.values())
    reasons = {}
    for _, reason in quarantine.values():
        kind = _reason_kind(reason)
        reasons[kind] = reasons.get(kind, 0) + 1
    manifest = {
        "source": str(source),
        "input_hash": _input_hash(source, labels.has_class_info, hashes),
        "size": cfg.size, "yolo_size": cfg.yolo_size if cfg.yolo else None, "yolo": cfg.yolo,
        "seed": cfg.seed, "val_frac": cfg.val_frac, "balance": cfg.balance,
        "n_images": len(images),
        "n_labelled_patients": len(labelled),
        "n_ok": len(targets), "n_quarantined": len(quarantine),
        "n_unlabelled_images": len(unlabelled),
        "n_positive": n_pos, "n_negative": len(targets) - n_pos,
        "splits": {s: len(ids) for s, ids in parts.items()},
        "splits_positive": {s: int(sum(targets[pid] for pid in ids)) for s, ids in parts.items()},
        "n_dropped_by_balance": len(dropped),
        "yolo_splits": yolo_counts,
        "classes": _class_counts(patients[pid].cls for pid in targets),
        "quarantine_reasons": dict(sorted(reasons.items())),
        **box_stats,
        "box_notes": box_notes,
        "label_notes": labels.notes,
        "files": {"classifier": "classifier", "yolo_data": "yolo/data.yaml" if cfg.yolo else None,
                  "quarantine": "quarantine.csv", "unlabelled": "unlabelled.csv"},
    }
    assert manifest["n_labelled_patients"] == manifest["n_ok"] + manifest["n_quarantined"], manifest
    n_cached = sum(r["cached"] for r in results)
    n_decoded = sum(r["n_decoded"] for r in results)
    seconds = time.perf_counter() - t0
    _write_json(out / "run.json", {
        "cluster": cfg.cluster, "workers": _workers(cfg), "chunk_size": cfg.chunk_size, "n_chunks": len(tasks),
        "n_chunks_cached": n_cached, "n_decoded": n_decoded, "seconds": round(seconds, 3),
        "decode_seconds": round(t_decode, 3), "cluster_overhead_seconds": round(t_execute - t_decode, 3),
        "images_per_s": round(len(todo) / t_decode, 1) if t_decode > 0 and todo else None,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    })
    _write_json(out / "manifest.json", manifest)
    log(f"{n_cached}/{len(tasks)} chunk(s) from the cache, {n_decoded} image(s) decoded in {t_decode:.1f} s")
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
