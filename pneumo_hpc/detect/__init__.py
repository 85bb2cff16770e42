"""Pneumonia localization: YOLOv8 training/evaluation (ultralytics, offline), the RSNA competition metric, and
Kaggle-format predictions from DICOM files.

    yolo.py         detect train: one node, CPU or ultralytics' own multi-GPU; RUN/metrics.json
    offline.py      imports ultralytics with every network path shut
    rsna_metric.py  the competition metric and submission strings
    predict.py      DICOM -> (classifier gate) -> detector -> submission CSV and overlays
    commands.py     the click commands (click-only imports)

Importing this package is cheap: ultralytics and torch are imported inside the functions that use them.
"""
import os
import tempfile
from pathlib import Path


class DetectError(ValueError):
    """Bad input or setup for a detection command; the message names the file or setting and how to fix it."""


def atomic_write_text(path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
