"""Pneumonia localization: YOLOv8 training/evaluation (ultralytics, offline), the RSNA competition metric, and
Kaggle-format predictions from DICOM files.

    yolo.py         detect train: one node, CPU or ultralytics' own multi-GPU; RUN/metrics.json
    offline.py      imports ultralytics with every network path shut
    rsna_metric.py  the competition metric and submission strings
    predict.py      DICOM -> (classifier gate) -> detector -> submission CSV and overlays
    commands.py     the click commands (click-only imports)

Importing this package is cheap: ultralytics and torch are imported inside the functions that use them.
"""


class DetectError(ValueError):
    """Bad input or setup for a detection command; the message names the file or setting and how to fix it."""

