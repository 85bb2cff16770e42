"""Read the RSNA Pneumonia Detection Challenge labels (Kaggle layout) into one record per patient.

    from pneumo_hpc.data.rsna import load_labels, split_patients
    labels = load_labels("data/rsna")               # Labels: patients (sorted), quarantined, notes
    split = split_patients(labels.targets(), val_frac=0.2, seed=0)   # {patientId: "train" | "val"}

Structural problems (a CSV that cannot be read, a missing column, a Target that is not 0/1, a box coordinate that
is not a number) raise `DataError` naming the file. Problems confined to one patient quarantine that patient with
a readable reason and the run goes on:
- rows of one patient disagreeing on Target, or a Target=1 row without a box / a Target=0 row with one;
- class-info rows of one patient naming different classes (exact duplicates are expected: Kaggle repeats the class
  row once per label row, so they are de-duplicated, with a count in the notes).
Boxes are clipped to the image later, when its size is known (`clip_box`, `yolo_lines`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_hpc.data import DataError

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"
TRAIN_IMAGES = "stage_2_train_images"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_COLUMNS = ("x", "y", "width", "height")

Box = tuple[float, float, float, float]  # x, y (top-left), width, height in pixels of the original image


@dataclass(frozen=True)
class Patient:
    patient_id: str
    target: int
    boxes: tuple[Box, ...]
    cls: str  # detailed class ("Lung Opacity", "Normal", ...); "" when the class-info CSV is absent


@dataclass
class Labels:
    patients: list[Patient]                     # usable, sorted by patientId
    quarantined: dict[str, str]                 # patientId -> reason (label-level problems)
    notes: list[str] = field(default_factory=list)
    has_class_info: bool = False

    def targets(self) -> dict[str, int]:
        return {p.patient_id: p.target for p in self.patients}


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV as strings (no dtype guessing: patient ids stay text), with the required columns checked."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: cannot read as CSV ({type(e).__name__}: {e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(expected {', '.join(required)}; found {', '.join(frame.columns) or 'none'})")
    frame["patientId"] = frame["patientId"].str.strip()
    empty = frame.index[frame["patientId"] == ""]
    if len(empty):
        raise DataError(f"{path}: empty patientId on data row {int(empty[0]) + 1}")
    return frame


def _numbers(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: column {column} row {row + 1}: {frame[column].iloc[row]!r} is not a number")
    return values


def _read_labels(path: Path) -> pd.DataFrame:
    frame = read_csv(path, LABEL_COLUMNS)
    target = _numbers(frame, "Target", path)
    bad = ~target.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: column Target row {row + 1}: {frame['Target'].iloc[row]!r} is not 0 or 1")
    out = pd.DataFrame({"patientId": frame["patientId"], "Target": target.astype(int)})
    for column in BOX_COLUMNS:
        out[column] = _numbers(frame, column, path)
    return out


def _read_classes(path: Path, notes: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """patientId -> class, and patientId -> reason for patients whose rows disagree."""
    frame = read_csv(path, CLASS_COLUMNS)
    frame["class"] = frame["class"].str.strip()
    unique = frame.drop_duplicates(["patientId", "class"])
    if len(unique) < len(frame):
        notes.append(f"{path.name}: {len(frame) - len(unique)} duplicate class row(s) de-duplicated")
    counts = unique.groupby("patientId")["class"].agg(list)
    conflicts = {pid: "conflicting class rows: " + " | ".join(sorted(classes))
                 for pid, classes in counts.items() if len(classes) > 1}
    classes = {pid: values[0] for pid, values in counts.items() if len(values) == 1}
    return classes, conflicts


def _patient(pid: str, rows: list, cls: str) -> tuple[str, Patient | None]:
    """(reason, None) for a patient whose rows contradict each other, else ("", Patient)."""
    targets = {t for t, _ in rows}
    boxes = [box for _, box in rows if any(v is not None for v in box)]
    if len(targets) > 1:
        return "conflicting Target rows (both 0 and 1)", None
    if any(None in box for box in boxes):
        return "label row with an incomplete box (some of x, y, width, height empty)", None
    target = targets.pop()
    if target == 1 and len(boxes) < len(rows):
        return "Target=1 row without a box", None
    if target == 0 and boxes:
        return "Target=0 row with a box", None
    return "", Patient(pid, target, tuple(boxes), cls)


def load_labels(rsna_dir, labels_csv: str = LABELS_CSV, class_csv: str = CLASS_CSV) -> Labels:
    """Aggregate the label rows per patient (Target, boxes, class). The class-info CSV is optional."""
    rsna_dir = Path(rsna_dir)
    if not rsna_dir.is_dir():
        raise DataError(f"{rsna_dir}: RSNA directory not found (expected {LABELS_CSV} and {TRAIN_IMAGES}/ in it)")
    notes: list[str] = []
    rows = _read_labels(rsna_dir / labels_csv)
    class_path = rsna_dir / class_csv
    has_classes = class_path.is_file()
    classes, quarantined = _read_classes(class_path, notes) if has_classes else ({}, {})

    # plain Python over records: a pandas groupby loop pays a fixed cost per group, which adds up to tens of
    # seconds over the full download (docs/performance.md)
    per_patient: dict[str, list] = {}
    for pid, target, *box in rows[["patientId", "Target", *BOX_COLUMNS]].itertuples(index=False, name=None):
        per_patient.setdefault(pid, []).append((int(target), tuple(None if pd.isna(v) else float(v) for v in box)))
    patients = []
    for pid in sorted(per_patient):
        reason, patient = _patient(pid, per_patient[pid], classes.get(pid, ""))
        if reason:
            quarantined.setdefault(pid, reason)
        elif pid not in quarantined:
            patients.append(patient)
    no_class = sum(not p.cls for p in patients)
    if has_classes and no_class:
        notes.append(f"{class_csv}: no row for {no_class} labelled patient(s); their class is left empty")
    labelled = set(per_patient)
    orphans = sorted(set(quarantined) - labelled)
    for pid in orphans:  # class conflicts for patients with no label row are not patients of this set
        del quarantined[pid]
    extra = len(set(classes) - labelled)
    if extra:
        notes.append(f"{class_csv}: {extra} patient(s) without a label row ignored")
    return Labels(patients, dict(sorted(quarantined.items())), notes, has_classes)


def split_patients(targets: dict[str, int], val_frac: float, seed: int) -> dict[str, str]:
    """patientId -> "train"/"val", stratified by Target; each class is shuffled alone from its sorted ids.

    Split by patient (one image per patient in RSNA, but the split never depends on row order or image count).
    """
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    rng = np.random.default_rng(seed)
    split = {}
    for target in sorted(set(targets.values())):
        ids = sorted(pid for pid, t in targets.items() if t == target)
        order = rng.permutation(len(ids))
        n_val = int(math.floor(len(ids) * val_frac + 0.5))
        for rank, i in enumerate(order):
            split[ids[i]] = "val" if rank < n_val else "train"
    return dict(sorted(split.items()))


def balance_train(targets: dict[str, int], split: dict[str, str], seed: int) -> set[str]:
    """Train patients left out so both classes have the minority's count (the reference study's ~12,000 images).

    Only train is balanced: validation keeps the natural class ratio, so its metrics stay honest.
    """
    rng = np.random.default_rng([seed, 1])  # a stream of its own: balancing never changes the split itself
    by_class = {}
    for pid, part in split.items():
        if part == "train":
            by_class.setdefault(targets[pid], []).append(pid)
    if len(by_class) < 2:
        return set()
    keep = min(len(ids) for ids in by_class.values())
    dropped = set()
    for target in sorted(by_class):
        ids = sorted(by_class[target])
        if len(ids) > keep:
            dropped.update(ids[i] for i in rng.permutation(len(ids))[keep:])
    return dropped


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """The part of the box inside a width x height image; None when nothing is left."""
    x, y, w, h = box
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)

