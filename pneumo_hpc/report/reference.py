"""The reference study's published results table, as data, so reports can set our runs beside it.

Source: the HPC course project "High-Performance Pneumonia Detection and Localization" (custom 2-conv CNN on
128x128 RSNA chest X-rays; YOLOv8 nano at 416 px), trained on a SLURM cluster. Figures are copied as published,
unrounded and uncorrected. Its own columns disagree in places: 5530 s / 3308 s is 1.67x, not the 1.99x it gives for
3-GPU FSDP, and its GPU efficiencies (0.38, 0.33) are not speedup / GPUs (0.96, 0.66). Reports show them as
published and say so.
"""

SOURCE = "reference study (published)"
CAVEAT = ("figures as published by the reference study; its speedup and efficiency columns are not always "
          "consistent with its times (e.g. 3-GPU FSDP: 5530 s / 3308 s = 1.67x, published 1.99x).")

# Matching keys: kind, model (classifiers only: the study's CNN is our small-cnn), strategy (classifiers only:
# a YOLO run's parallelism is internal to ultralytics), device, workers. accuracy_pct is percent; None is "-".
ROWS = (
    {"configuration": "serial CNN (CPU)", "kind": "classifier", "model": "small-cnn", "strategy": "serial",
     "device": "cpu", "workers": 1, "train_time_s": 5530.0, "accuracy_pct": 87.2, "speedup": 1.0,
     "efficiency": 1.00},
    {"configuration": "2-CPU DDP", "kind": "classifier", "model": "small-cnn", "strategy": "ddp",
     "device": "cpu", "workers": 2, "train_time_s": 3273.0, "accuracy_pct": 76.0, "speedup": 1.69,
     "efficiency": 0.84},
    {"configuration": "4-CPU DDP", "kind": "classifier", "model": "small-cnn", "strategy": "ddp",
     "device": "cpu", "workers": 4, "train_time_s": 3056.0, "accuracy_pct": 77.0, "speedup": 1.81,
     "efficiency": 0.45},
    {"configuration": "2-GPU DDP", "kind": "classifier", "model": "small-cnn", "strategy": "ddp",
     "device": "cuda", "workers": 2, "train_time_s": 2848.0, "accuracy_pct": 75.5, "speedup": 1.92,
     "efficiency": 0.38},
    {"configuration": "3-GPU FSDP", "kind": "classifier", "model": "small-cnn", "strategy": "fsdp",
     "device": "cuda", "workers": 3, "train_time_s": 3308.0, "accuracy_pct": 75.6, "speedup": 1.99,
     "efficiency": 0.33},
    {"configuration": "YOLOv8 (4 GPUs)", "kind": "detector", "model": "yolov8n", "strategy": None,
     "device": "cuda", "workers": 4, "train_time_s": 5208.0, "accuracy_pct": None, "speedup": None,
     "efficiency": None},
)


def match(kind, model, strategy, device, workers):
    """The published row for this configuration, or None. Device kind only ("cuda:1" is "cuda")."""
    device = (device or "cpu").split(":")[0]
    for row in ROWS:
        if row["kind"] != kind or row["device"] != device or row["workers"] != workers:
            continue
        if kind == "classifier" and (row["model"] != model or row["strategy"] != strategy):
            continue
        if kind == "detector" and not str(model or "yolov8").lower().startswith("yolov8"):
            continue
        return row
    return None
