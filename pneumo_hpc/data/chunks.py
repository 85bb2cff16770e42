"""One preprocessing task: decode a chunk of DICOMs once, at both sizes, or take it from the cache. Runs on a
Dask worker (or in-process); imports only what decoding needs.

A chunk's result is cached under PREP/.cache/<CACHE_VERSION>/chunks/ keyed by the hash of its files' bytes, the
decoder versions and the sizes; the YOLO PNGs under png<size>/<file hash>.png.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pneumo_hpc.atomic import write_bytes, write_with
from pneumo_hpc.data import log

CACHE_VERSION = "v2"  # v2: one reduced decode serves the classifier and YOLO sizes
# Test hook: a path; the first chunk run inside a Dask worker creates it and kills its own worker process, so
# the tests can check that Dask reschedules the chunk and nothing is lost or duplicated. Never set it otherwise.
KILL_WORKER_ENV = "PNEUMO_HPC_TEST_KILL_WORKER_ONCE"

def decoder_id() -> str:
    """Decoder versions are part of the cache key: another libjpeg may decode other grey levels."""
    import cv2
    import PIL
    import pydicom

    return f"cv2 {cv2.__version__}, pydicom {pydicom.__version__}, pillow {PIL.__version__}"


def png_path(cache: Path, yolo_size: int, digest: str) -> Path:
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
    cache, yolo_size = Path(task["cache"]), task["yolo_size"]
    hashes, readable, reasons = _hash_files(task["items"])
    entry = cache / "chunks" / f"{_cache_key(task, hashes)}.npz"
    hit = _load_entry(entry, cache, yolo_size)
    if hit is not None:
        return {"index": task["index"], "cached": True, "n_decoded": 0, **hit}
    result = _decode_chunk(task, cache, hashes, readable, reasons)
    write_with(entry, lambda f: np.savez(f, **result))
    return {"index": task["index"], "cached": False, "n_decoded": int(result["ok"].sum()), **result}


def _hash_files(items) -> tuple[list[str], list[bool], list[str]]:
    """(sha256 of each file's bytes, whether it could be read, the reason if not); "" for a file not read."""
    hashes, readable, reasons = [], [], []
    for _, path in items:
        try:
            hashes.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
            readable.append(True)
            reasons.append("")
        except OSError as e:
            hashes.append("")
            readable.append(False)
            reasons.append(f"cannot read ({e.strerror or e})")
    return hashes, readable, reasons


def _cache_key(task: dict, hashes: list[str]) -> str:
    """The chunk's cache entry name: what its result depends on (files' bytes, decoder, sizes)."""
    return hashlib.sha256(json.dumps([CACHE_VERSION, task["decoder"], task["size"], task["yolo_size"],
                                      [[pid, h] for (pid, _), h in zip(task["items"], hashes)]]).encode()).hexdigest()


def _decode_chunk(task: dict, cache: Path, hashes: list[str], readable: list[bool], reasons: list[str]) -> dict:
    """Decode the readable files (YOLO PNGs into the cache as they go); the arrays a cache entry holds. A file
    that does not decode gets ok=False and its reason in `reasons`."""
    from pneumo_hpc.data.dicom import BadImage, read_scaled, resize

    items, size, yolo_size = task["items"], task["size"], task["yolo_size"]
    n = len(items)
    images = np.zeros((n, size, size), np.uint8)
    shapes = np.zeros((n, 2), np.int64)
    ok = np.array(readable, bool)
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
            _write_png(png_path(cache, yolo_size, hashes[i]), resize(pixels, yolo_size), path)
    return {"images": images, "ok": ok, "reasons": np.array(reasons, dtype=str),
            "hashes": np.array(hashes, dtype=str), "shapes": shapes}


def _write_png(target: Path, pixels: np.ndarray, path) -> None:
    import cv2

    png_ok, png = cv2.imencode(".png", pixels)
    if not png_ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the YOLO PNG")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, png.tobytes())


def _load_entry(entry: Path, cache: Path, yolo_size: int) -> dict | None:
    try:
        with np.load(entry, allow_pickle=False) as data:
            hit = {k: data[k] for k in ("images", "ok", "reasons", "hashes", "shapes")}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent or damaged: decode again
    if yolo_size and not all(png_path(cache, yolo_size, h).is_file()
                             for h, good in zip(hit["hashes"], hit["ok"]) if good):
        return None
    return hit
