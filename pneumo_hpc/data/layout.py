"""The preprocessed layout, defined once: `pneumo-hpc preprocess` writes it through these functions and training
reads it through `load_split`.

    PREP/classifier/{split}_images.npy   uint8 (N, S, S)
    PREP/classifier/{split}_labels.npy   uint8 (N,), Target
    PREP/classifier/{split}.csv          patientId,Target,class in the same order
    PREP/yolo/                           the YOLO tree (data/yolo.py)
    PREP/quarantine.csv, unlabelled.csv  what was left out, and why
    PREP/manifest.json                   written last: a PREP without it is incomplete
    PREP/run.json                        timings, workers, cache hits (differs run to run)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo_hpc.atomic import write_csv, write_with
from pneumo_hpc.data import DataError

CLASSIFIER_DIR = "classifier"
MANIFEST = "manifest.json"
RUN_RECORD = "run.json"
QUARANTINE = "quarantine.csv"
UNLABELLED = "unlabelled.csv"
CSV_COLUMNS = ["patientId", "Target", "class"]


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, S, S)
    labels: np.ndarray  # uint8 (N,)
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def split_paths(prep: Path, split: str) -> tuple[Path, Path, Path]:
    """(images .npy, labels .npy, .csv) of one split."""
    base = Path(prep) / CLASSIFIER_DIR
    return base / f"{split}_images.npy", base / f"{split}_labels.npy", base / f"{split}.csv"


def write_split(prep: Path, split: str, images: np.ndarray, labels: np.ndarray, rows: list[tuple]) -> None:
    """One split's arrays and CSV (rows: patientId, Target, class), each written atomically."""
    images_path, labels_path, csv_path = split_paths(prep, split)
    images_path.parent.mkdir(parents=True, exist_ok=True)
    write_with(images_path, lambda f: np.save(f, images))
    write_with(labels_path, lambda f: np.save(f, labels))
    write_csv(csv_path, CSV_COLUMNS, rows)


def load_split(prep: Path, split: str) -> Split:
    images_path, labels_path, csv_path = split_paths(prep, split)
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DataError(f"{p}: missing. Is {prep} the --out of `pneumo-hpc preprocess`?")
    images = np.load(images_path)
    labels = np.load(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"{images_path}: expected uint8 (N, S, S), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) == 0:
        raise DataError(f"{labels_path}: the {split} split is empty")
    ids = []
    if csv_path.is_file():
        ids = [line.split(",", 1)[0] for line in csv_path.read_text().splitlines()[1:] if line]
    return Split(images, labels.astype(np.uint8), ids)
