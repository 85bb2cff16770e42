"""Click commands for detection: `detect train`, `detect score`, and the top-level `predict`.

Only click and the standard library are imported here; ultralytics/torch load inside the commands.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from pneumo_hpc.cli import fail


@click.group()
def detect():
    """YOLOv8 pneumonia localization: train on the YOLO set, score Kaggle submissions."""


@detect.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="YOLO set: PREP/yolo (from `pneumo-hpc preprocess`) or its data.yaml.")
@click.option("--model", default="yolov8n.yaml", show_default=True,
              help="ultralytics cfg (random init) or a local weights file, e.g. a yolov8n.pt you downloaded.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--imgsz", "--size", "imgsz", type=int, default=416, show_default=True)
@click.option("--batch", "--batch-size", "batch", type=int, default=16, show_default=True, help="Global batch (split over GPUs).")
@click.option("--gpus", type=int, default=0, show_default=True,
              help="GPUs of this node (0 = CPU; N > 1 = ultralytics' own DDP on this node).")
@click.option("--workers", "--loader-workers", "workers", type=int, default=8, show_default=True, help="Dataloader workers per GPU (capped by cores).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--conf", type=float, default=0.25, show_default=True,
              help="Confidence threshold of the predictions scored for rsna_map.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--results", type=click.Path(path_type=Path), help="JSON-lines results file [RUN/../results.jsonl].")
@click.option("--label", help="Configuration name in the report, e.g. '4-GPU YOLO'.")
def train(data, model, epochs, imgsz, batch, gpus, workers, seed, conf, out, results, label):
    """Train a YOLOv8 detector (one process per node; ultralytics spreads it over --gpus)."""
    from pneumo_hpc.detect import DetectError
    from pneumo_hpc.detect.yolo import TrainConfig, train as run_train

    cfg = TrainConfig(data=data, out=out, model=model, epochs=epochs, imgsz=imgsz, batch=batch, gpus=gpus,
                      workers=workers, seed=seed, conf=conf, results=results, label=label)
    try:
        metrics = run_train(cfg)
    except (DetectError, FileNotFoundError) as exc:
        fail(exc)
    keys = ("gpus", "train_time_s", "images_per_s", "map50", "map50_95", "rsna_map")
    click.echo(json.dumps({k: metrics.get(k) for k in keys}))


@detect.command()
@click.option("--labels", type=click.Path(path_type=Path), required=True, help="stage_2_train_labels.csv")
@click.option("--submission", type=click.Path(path_type=Path), required=True,
              help="patientId,PredictionString CSV (e.g. from `pneumo-hpc predict`).")
@click.option("--only-submitted", is_flag=True,
              help="Score only the patients in the submission (default: a labelled patient missing from it counts "
                   "as predicted empty).")
def score(labels, submission, only_submitted):
    """Print the RSNA competition metric of a submission as one JSON object (rsna_map, n_images, ...)."""
    from pneumo_hpc.detect.rsna_metric import SubmissionError, score_files

    try:
        result = score_files(labels, submission, only_submitted)
    except SubmissionError as exc:
        fail(exc)
    if isinstance(result["rsna_map"], float) and math.isnan(result["rsna_map"]):
        result["rsna_map"] = None  # no image counted: nothing to score (NaN is not JSON)
    click.echo(json.dumps(result))


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--detector", type=click.Path(path_type=Path), required=True,
              help="A `detect train` run directory (or a .pt file): the boxes.")
@click.option("--classifier", type=click.Path(path_type=Path),
              help="A classifier run directory: images it calls negative get no boxes.")
@click.option("--cls-threshold", type=float,
              help="Gating threshold on the classifier's probability [its metrics.json threshold, else 0.5].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Submission CSV to write.")
@click.option("--overlays", type=click.Path(path_type=Path),
              help="Directory for PNGs with the boxes drawn and a legend, and contact_sheet.png (~16 of them).")
@click.option("--labels", type=click.Path(path_type=Path),
              help="stage_2_train_labels.csv: draw the labelled boxes (green) beside the predicted ones (red).")
@click.option("--cam", is_flag=True, help="With --classifier and --overlays: the classifier's Grad-CAM beside each.")
@click.option("--patients", type=click.Path(path_type=Path),
              help="Only these patients: a CSV with a patientId column, e.g. PREP/classifier/val.csv.")
@click.option("--conf", type=float, default=0.25, show_default=True, help="Detector confidence threshold.")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|0 (a CUDA index).")
@click.option("--batch", "--batch-size", "batch", type=int, default=16, show_default=True)
@click.option("--imgsz", "--size", "imgsz", type=int, help="Detector input size [the size it was trained at].")
def predict(inputs, detector, classifier, cls_threshold, out, overlays, labels, cam, patients, conf, device, batch,
            imgsz):
    """Kaggle-format predictions (patientId,PredictionString) for DICOM files or directories of them.

    Unreadable files are reported on stderr and skipped; a JSON summary goes to stdout.
    """
    from pneumo_hpc.detect import DetectError
    from pneumo_hpc.detect.predict import PredictConfig, predict as run_predict

    cfg = PredictConfig(inputs=list(inputs), out=out, detector=detector, classifier=classifier, conf=conf,
                        cls_threshold=cls_threshold, overlays=overlays, device=device, batch=batch,
                        imgsz=imgsz, labels=labels, cam=cam, patients=patients)
    try:
        summary = run_predict(cfg)
    except (DetectError, FileNotFoundError) as exc:
        fail(exc)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "bad_files"}))
