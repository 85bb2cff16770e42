"""The classifier set written by `pneumo-hpc preprocess`: PREP/classifier/{split}_images.npy (uint8 N x S x S),
{split}_labels.npy (uint8 N, Target) and {split}.csv (patientId,Target,class in the same order)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    pass


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


def load_split(prep: Path, split: str) -> Split:
    base = Path(prep) / "classifier"
    images_path, labels_path, csv_path = (base / f"{split}_images.npy", base / f"{split}_labels.npy",
                                          base / f"{split}.csv")
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
