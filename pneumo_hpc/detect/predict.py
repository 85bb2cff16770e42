"""DICOM files -> Kaggle submission CSV (`patientId,PredictionString`), with optional classifier gating and overlays.

    pneumo-hpc predict --detector runs/yolo --out preds.csv data/rsna/stage_2_test_images
    pneumo-hpc predict --classifier runs/serial --detector runs/yolo --overlays preds_png --out preds.csv a.dcm b.dcm

- patientId is the file's stem. Boxes are `conf x y w h` in the original image's pixels (1024 for RSNA files).
- The detector sees the image as it was trained: greyscale, resized (INTER_AREA, no letterbox: RSNA images are
  square, as `preprocess` does) to the imgsz it was trained at.
- --classifier (optional): the classifier's probability of pneumonia gates the detector: below the threshold
  (default: the classifier run's metrics.json "threshold", else 0.5) the image gets no boxes, whatever the detector
  found. Gating removes false positives on normal images, which the RSNA metric punishes (an image without ground
  truth and any box scores 0).
- --detector is required: boxes come only from it.
- --overlays DIR: one PNG per image (predicted boxes in red with their confidence; with --labels, the labelled
  boxes in green; a legend) and DIR/contact_sheet.png, a grid of ~16 of them: true positives, misses, false
  alarms, negatives (`overlays.py`). --cam (with --classifier) adds the classifier's Grad-CAM beside each image.
- --patients CSV: only the files whose patientId is in the CSV's patientId column (e.g. PREP/classifier/val.csv:
  predict the validation patients only, then `detect score --only-submitted`).
- A file that cannot be read (not DICOM, truncated, unsupported) is reported on stderr with the reason, counted,
  and skipped; the run goes on. The CSV is written atomically at the end.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pneumo_hpc.atomic import write_text
from pneumo_hpc.detect import DetectError


@dataclass
class PredictConfig:
    inputs: list
    out: Path
    detector: Path
    classifier: Path | None = None
    conf: float = 0.25
    cls_threshold: float | None = None
    overlays: Path | None = None
    device: str = "auto"
    batch: int = 16
    imgsz: int | None = None  # default: the size the detector was trained at
    labels: Path | None = None  # stage_2_train_labels.csv: the labelled boxes drawn beside the predicted ones
    cam: bool = False  # overlays: the classifier's Grad-CAM panel (needs classifier)
    patients: Path | None = None  # CSV with a patientId column: predict only these patients
    sheet_size: int = 16  # images on DIR/contact_sheet.png


def find_inputs(inputs) -> list[Path]:
    """Files as given (any name), directories expanded to their *.dcm files (recursively), in a stable order."""
    files = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
            if not found:
                raise DetectError(f"{path}: no .dcm files in this directory")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DetectError(f"{path}: no such file or directory")
    return files


def resolve_detector(spec) -> tuple[Path, int | None]:
    """(weights, imgsz) from a `detect train` run directory (its metrics.json) or a weights file."""
    spec = Path(spec).expanduser()
    if spec.is_file():
        return spec, None
    metrics_path = spec / "metrics.json"
    if not metrics_path.is_file():
        raise DetectError(f"{spec}: neither a weights file nor a `detect train` run (no metrics.json). "
                          "HINT: --detector is the --out of `pneumo-hpc detect train`, or a .pt file")
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DetectError(f"{metrics_path}: unreadable ({e})") from e
    candidates = [Path(metrics["weights"])] if metrics.get("weights") else []
    candidates += [spec / "ultralytics" / "train" / "weights" / name for name in ("best.pt", "last.pt")]
    for weights in candidates:
        if weights.is_file():
            return weights, metrics.get("imgsz")
    raise DetectError(f"{spec}: no detector weights (looked for {', '.join(map(str, candidates))})")


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


class ClassifierGate:
    """Probability of pneumonia from a classifier run (`pneumo-hpc train --out RUN`)."""

    def __init__(self, run_dir: Path, device: str, threshold: float | None):
        from pneumo_hpc.classify.evaluate import load_classifier

        self.torch_device = "cpu" if device == "cpu" else f"cuda:{device.split(',')[0]}"
        self.model, self.meta = load_classifier(Path(run_dir), device=self.torch_device)
        self.size = int(self.meta["size"])
        if threshold is None:
            try:
                threshold = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))["threshold"]
            except (OSError, ValueError, KeyError):
                threshold = 0.5
        self.threshold = float(threshold)

    def probabilities(self, images) -> list[float]:
        import cv2
        import numpy as np
        import torch

        from pneumo_hpc.classify.augment import to_input
        from pneumo_hpc.classify.models import predict_proba

        # the classifier's preprocessing: full decode + INTER_AREA to its size, then its fixed normalisation
        small = np.stack([cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_AREA) for im in images])
        with torch.inference_mode():
            x = to_input(torch.from_numpy(small).to(self.torch_device), channels_last=False)
            return predict_proba(self.model, x).reshape(-1).cpu().tolist()

    def cam(self, images) -> list:
        """The classifier's Grad-CAM map (0..1, at its last convolution's resolution) per image."""
        import cv2
        import numpy as np
        import torch

        from pneumo_hpc.classify.augment import to_input
        from pneumo_hpc.detect.overlays import grad_cam

        small = np.stack([cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_AREA) for im in images])
        x = to_input(torch.from_numpy(small).to(self.torch_device), channels_last=False)
        return list(grad_cam(self.model, x))


def read_patients(path) -> set[str]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "patientId" not in (reader.fieldnames or []):
                raise DetectError(f"{path}: no patientId column (header {','.join(reader.fieldnames or [])})")
            return {row["patientId"] for row in reader}
    except OSError as e:
        raise DetectError(f"{path}: cannot read ({e.strerror or e})") from e


def draw_overlay(image, boxes, path: Path, note: str = "", truth=None) -> None:
    """The image with its predicted (and, when known, labelled) boxes and a legend, as PNG."""
    from pneumo_hpc.detect.overlays import render, write_png

    write_png(path, render(image, boxes, truth, note))


@dataclass
class _Run:
    """What the steps of one predict call share: the models and settings, then the tallies as batches go by."""
    detector: object
    weights: Path
    device: str
    imgsz: int
    gate: ClassifierGate | None
    truth_all: dict | None  # patientId -> labelled boxes, with --labels
    sheet: object = None  # the ContactSheet, with --overlays
    rows: list = field(default_factory=list)  # (patientId, PredictionString) per image predicted
    bad: list = field(default_factory=list)  # the skipped files
    seen: dict = field(default_factory=dict)  # patientId -> the file that gave it
    gated: int = 0
    n_boxes: int = 0


def predict(cfg: PredictConfig, warn=None) -> dict:
    """Write the submission CSV (and overlays); returns counts. `warn(msg)` reports skipped files (stderr)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    files = _select_files(cfg)
    run = _open_run(cfg)
    for start in range(0, len(files), cfg.batch):
        ids, images = _read_batch(run, files[start:start + cfg.batch], warn)
        if images:
            _predict_batch(cfg, run, ids, images)
    if not run.rows:
        raise DetectError(f"none of the {len(files)} input file(s) could be read (see the messages above)")
    lines = ["patientId,PredictionString"] + [f"{pid},{text}" for pid, text in run.rows]
    write_text(cfg.out, "\n".join(lines) + "\n")
    contact = _write_contact_sheet(cfg, run)
    return {"out": str(cfg.out), "n_files": len(files), "n_predicted": len(run.rows), "n_bad": len(run.bad),
            "n_boxes": run.n_boxes, "n_gated": run.gated, "bad_files": run.bad, "weights": str(run.weights),
            "imgsz": run.imgsz, "conf": cfg.conf, "cls_threshold": run.gate.threshold if run.gate else None,
            "contact_sheet": str(contact) if contact else None,
            "outcomes": dict(run.sheet.counts) if run.sheet is not None else None}


def _select_files(cfg: PredictConfig) -> list[Path]:
    """The input files, narrowed to --patients; contradictory options are refused before any model loads."""
    if not 0 <= cfg.conf <= 1:
        raise DetectError(f"--conf must be within 0..1, got {cfg.conf}")
    files = find_inputs(cfg.inputs)
    if cfg.patients:
        wanted = read_patients(cfg.patients)
        files = [f for f in files if f.stem in wanted]
        if not files:
            raise DetectError(f"--patients {cfg.patients}: none of its patients is among the input files")
    if cfg.cam and not cfg.classifier:
        raise DetectError("--cam draws the classifier's Grad-CAM: give --classifier RUN too")
    return files


def _open_run(cfg: PredictConfig) -> _Run:
    """The labels, the detector and its image size, the classifier gate, and the overlay folder and sheet."""
    from pneumo_hpc.detect.yolo import load_model

    truth_all = None
    if cfg.labels:
        from pneumo_hpc.detect.rsna_metric import SubmissionError, read_labels

        try:
            truth_all = read_labels(cfg.labels)
        except SubmissionError as e:
            raise DetectError(str(e)) from e
    weights, run_imgsz = resolve_detector(cfg.detector)
    device = _pick_device(cfg.device)
    detector = load_model(str(weights))[0]
    imgsz = int(cfg.imgsz or run_imgsz or detector.overrides.get("imgsz") or 416)
    gate = ClassifierGate(cfg.classifier, device, cfg.cls_threshold) if cfg.classifier else None
    run = _Run(detector, weights, device, imgsz, gate, truth_all)
    if cfg.overlays:
        from pneumo_hpc.detect.overlays import ContactSheet

        Path(cfg.overlays).mkdir(parents=True, exist_ok=True)
        run.sheet = ContactSheet(n=cfg.sheet_size)
    return run


def _read_batch(run: _Run, paths: list[Path], warn) -> tuple[list[str], list]:
    """(patientIds, full-resolution images) of the files that read; the others are reported and counted bad."""
    from pneumo_hpc.data.dicom import BadImage, read_pixels

    ids, images = [], []
    for path in paths:
        pid = path.stem
        if pid in run.seen:
            run.bad.append(str(path))
            warn(f"predict: skipped {path}: patientId {pid} already taken by {run.seen[pid]}")
            continue
        try:
            images.append(read_pixels(path))
        except BadImage as e:  # its message names the file and the reason
            run.bad.append(str(path))
            warn(f"predict: skipped {e}")
            continue
        run.seen[pid] = path
        ids.append(pid)
    return ids, images


def _predict_batch(cfg: PredictConfig, run: _Run, ids: list[str], images: list) -> None:
    """The detector (and the gate) over one batch: each image's submission row, and its overlay."""
    import cv2

    from pneumo_hpc.detect.rsna_metric import format_prediction_string
    from pneumo_hpc.detect.yolo import detect_boxes

    imgsz, gate = run.imgsz, run.gate
    small = [cv2.resize(im, (imgsz, imgsz), interpolation=cv2.INTER_AREA) for im in images]
    found = detect_boxes(run.detector, small, imgsz=imgsz, conf=cfg.conf, device=run.device, batch=cfg.batch)
    probs = gate.probabilities(images) if gate else [None] * len(images)
    cams = gate.cam(images) if cfg.cam and cfg.overlays else [None] * len(images)
    for pid, image, boxes, prob, cam in zip(ids, images, found, probs, cams):
        sy, sx = image.shape[0] / imgsz, image.shape[1] / imgsz
        boxes = [(c, x * sx, y * sy, w * sx, h * sy) for c, x, y, w, h in boxes]
        note = ""
        if prob is not None and prob < gate.threshold:
            run.gated += bool(boxes)
            note = f"classifier p={prob:.3f} < {gate.threshold:g}: {len(boxes)} box(es) dropped"
            boxes = []
        run.n_boxes += len(boxes)
        run.rows.append((pid, format_prediction_string(boxes)))
        if cfg.overlays:
            _write_overlay(cfg, run, pid, image, boxes, note, prob, cam)


def _write_overlay(cfg: PredictConfig, run: _Run, pid: str, image, boxes, note: str, prob, cam) -> None:
    """DIR/<patientId>.png, and the image's place on the contact sheet."""
    from pneumo_hpc.detect.overlays import outcome, render, write_png

    truth = None if run.truth_all is None else run.truth_all.get(pid)
    cam_note = f"Grad-CAM, classifier p={prob:.2f}" if cam is not None else ""
    canvas = render(image, boxes, truth, note, cam, cam_note)
    write_png(Path(cfg.overlays) / f"{pid}.png", canvas)
    run.sheet.add(pid, outcome(truth, boxes), canvas)


def _write_contact_sheet(cfg: PredictConfig, run: _Run):
    """DIR/contact_sheet.png (its path), with --overlays; else None."""
    if run.sheet is None:
        return None
    title = (f"{len(run.rows)} images - green: labelled, red: predicted (conf >= {cfg.conf:g})"
             if run.truth_all is not None else f"{len(run.rows)} images - red: predicted (conf >= {cfg.conf:g})")
    return run.sheet.write(Path(cfg.overlays) / "contact_sheet.png", title)
