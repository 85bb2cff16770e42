"""The RSNA Pneumonia Detection Challenge metric, and Kaggle submission strings.

Per image, at each IoU threshold t in 0.40, 0.45, ..., 0.75: predictions, in descending confidence, are matched to
the still-unmatched ground-truth box with the highest IoU, when that IoU > t (strictly). precision(t) =
TP / (TP + FP + FN). The image scores the mean over the 8 thresholds; the dataset scores the mean over images.
An image with no ground truth and any prediction scores 0 and counts; with neither it is not counted.

Boxes are (x, y, w, h): top-left corner and size in pixels, as in stage_2_train_labels.csv.

    from pneumo_hpc.detect.rsna_metric import score_files
    score_files("stage_2_train_labels.csv", "submission.csv")   # {"rsna_map": 0.21, "n_images": 8123, ...}
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

# Exact decimals (0.5, not 0.5000000000000001): "IoU > t" must behave at IoU exactly equal to a threshold.
THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))

Box = tuple  # (x, y, w, h)
Pred = tuple  # (conf, x, y, w, h)


class SubmissionError(ValueError):
    """A labels or submission file that cannot be read; the message names the file, the line and the problem."""


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def image_score(truth: list[Box], preds: list[Pred], thresholds=THRESHOLDS) -> float | None:
    """The metric for one image; None when the image does not count (no ground truth, no prediction)."""
    if not truth:
        return None if not preds else 0.0
    if not preds:
        return 0.0
    # sorted() is stable: equal confidences keep submission order.
    ordered = [p[1:] for p in sorted(preds, key=lambda p: -p[0])]
    ious = [[iou(p, g) for g in truth] for p in ordered]
    total = 0.0
    for t in thresholds:
        matched = [False] * len(truth)
        tp = 0
        for row in ious:
            best, best_iou = -1, t
            for j, value in enumerate(row):
                if not matched[j] and value > best_iou:
                    best, best_iou = j, value
            if best >= 0:
                matched[best] = True
                tp += 1
        fp = len(ordered) - tp
        fn = len(truth) - tp
        total += tp / (tp + fp + fn)
    return total / len(thresholds)


def dataset_score(truth: dict[str, list[Box]], preds: dict[str, list[Pred]]) -> tuple[float, int]:
    """(mean image score, images counted) over the images in `truth`; images absent from `preds` have no
    prediction. A set where no image counts scores nan (nothing to measure), never a made-up 0 or 1."""
    scores = [s for pid, boxes in truth.items() if (s := image_score(boxes, preds.get(pid, []))) is not None]
    return (sum(scores) / len(scores) if scores else math.nan), len(scores)


# ------------------------------------------------------------------------------------------------- file formats

def parse_prediction_string(text: str) -> list[Pred]:
    """'0.9 10 20 30 40 0.5 ...' -> [(0.9, 10.0, 20.0, 30.0, 40.0), ...]; '' -> []."""
    fields = (text or "").split()
    if len(fields) % 5:
        raise ValueError(f"{len(fields)} numbers, not groups of 5 (conf x y w h)")
    try:
        values = [float(f) for f in fields]
    except ValueError as e:
        raise ValueError(f"not a number: {e}") from None
    preds = [tuple(values[i:i + 5]) for i in range(0, len(values), 5)]
    for p in preds:
        if not all(math.isfinite(v) for v in p) or p[3] <= 0 or p[4] <= 0:
            raise ValueError(f"bad box {' '.join(f'{v:g}' for v in p)} (needs finite values and w, h > 0)")
    return preds


def format_prediction_string(preds: list[Pred]) -> str:
    """Groups `conf x y w h`, highest confidence first, pixels to 1 decimal."""
    return " ".join(f"{c:.4f} {x:.1f} {y:.1f} {w:.1f} {h:.1f}" for c, x, y, w, h in sorted(preds, key=lambda p: -p[0]))


def _rows(path: Path, required: tuple[str, ...]):
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise SubmissionError(f"{path}: cannot read ({e.strerror or e})") from e
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise SubmissionError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(header is {','.join(reader.fieldnames or []) or 'empty'})")
        for row in reader:
            yield reader.line_num, row


def read_labels(path) -> dict[str, list[Box]]:
    """stage_2_train_labels.csv -> {patientId: [boxes]}; Target=0 patients map to []."""
    path = Path(path)
    truth: dict[str, list[Box]] = {}
    for line, row in _rows(path, ("patientId", "x", "y", "width", "height", "Target")):
        boxes = truth.setdefault(row["patientId"], [])
        if row["Target"].strip() in ("0", "0.0"):
            continue
        try:
            box = tuple(float(row[k]) for k in ("x", "y", "width", "height"))
        except ValueError:
            raise SubmissionError(f"{path}:{line}: Target=1 row without a numeric box "
                                  f"({row['x']!r}, {row['y']!r}, {row['width']!r}, {row['height']!r})") from None
        boxes.append(box)
    return truth


def read_submission(path) -> dict[str, list[Pred]]:
    """patientId,PredictionString CSV -> {patientId: [(conf, x, y, w, h)]}."""
    path = Path(path)
    preds: dict[str, list[Pred]] = {}
    for line, row in _rows(path, ("patientId", "PredictionString")):
        pid = row["patientId"]
        if pid in preds:
            raise SubmissionError(f"{path}:{line}: patientId {pid} appears twice")
        try:
            preds[pid] = parse_prediction_string(row["PredictionString"])
        except ValueError as e:
            raise SubmissionError(f"{path}:{line}: bad PredictionString for {pid}: {e}") from None
    return preds


def score_files(labels, submission, only_submitted: bool = False) -> dict:
    """The metric of a submission CSV against a labels CSV. Patients missing from the submission have no
    prediction (`only_submitted`: are left out instead, to score predictions made for a subset such as a val
    split); submission rows for patients without labels cannot be scored and are only counted."""
    truth = read_labels(labels)
    preds = read_submission(submission)
    if only_submitted:
        truth = {pid: boxes for pid, boxes in truth.items() if pid in preds}
    score, counted = dataset_score(truth, preds)
    return {"rsna_map": score, "n_images": counted, "n_labeled": len(truth),
            "n_submitted": len(preds), "n_unlabeled": sum(pid not in truth for pid in preds)}
