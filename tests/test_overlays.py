"""Overlays a person reads: box colours and legend by pixel, outcomes, the contact sheet, Grad-CAM, and
`predict --overlays --labels` end to end with a stand-in detector (no YOLO training here)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumo_hpc.detect import overlays as ov


def _grey(size=512, value=90):
    return np.full((size, size), value, np.uint8)


def _is(pixel, bgr):
    return tuple(int(v) for v in pixel) == tuple(bgr)


def test_boxes_and_legend_by_pixel():
    image = _grey()
    truth = [(100.0, 200.0, 120.0, 100.0)]
    preds = [(0.87, 300.0, 320.0, 150.0, 120.0)]
    canvas = ov.render(image, preds, truth)
    assert canvas.shape == (512, 512, 3)
    # truth (green) on its left edge, prediction (red) on its left edge; a box's inside stays the image's grey
    assert _is(canvas[250, 100], ov.TRUTH_BGR)
    assert _is(canvas[400, 300], ov.PRED_BGR)
    assert _is(canvas[250, 160], (90, 90, 90))
    assert not any(_is(canvas[250, 100], c) for c in (ov.PRED_BGR,))
    # the legend: a dark box with a green then a red swatch in the top-left corner
    legend = ov.draw_legend(_grey()[..., None].repeat(3, 2).copy(), ov.legend_entries(True))
    x0, y0, x1, y1 = legend
    region = canvas[y0:y1, x0:x1].reshape(-1, 3)
    greens = np.all(region == ov.TRUTH_BGR, axis=1).sum()
    reds = np.all(region == ov.PRED_BGR, axis=1).sum()
    assert greens >= 100 and reds >= 100
    ys_green = np.where(np.all(canvas[y0:y1, x0:x1] == ov.TRUTH_BGR, axis=2))[0]
    ys_red = np.where(np.all(canvas[y0:y1, x0:x1] == ov.PRED_BGR, axis=2))[0]
    assert ys_green.mean() < ys_red.mean()  # "labelled" is listed first
    assert _is(canvas[y0 + 1, x1 - 1], ov.LEGEND_BG)


def test_no_labels_no_green():
    canvas = ov.render(_grey(), [(0.5, 50.0, 300.0, 100.0, 100.0)], truth=None)
    assert not np.all(canvas == ov.TRUTH_BGR, axis=2).any()
    assert np.all(canvas == ov.PRED_BGR, axis=2).sum() > 200


def test_cam_panel_beside_the_boxes():
    cam = np.zeros((8, 8), np.float32)
    cam[2:4, 2:4] = 1.0
    canvas = ov.render(_grey(256), [], [(10.0, 10.0, 50.0, 50.0)], cam=cam)
    assert canvas.shape == (256, 512, 3)
    left, right = canvas[:, :256], canvas[:, 256:]
    assert _is(right[30, 10], ov.TRUTH_BGR)  # the same boxes on the heat panel
    hot = right[96, 96].astype(int)
    cold = right[220, 220].astype(int)
    assert hot[2] > hot[0] and cold[0] > cold[2]  # JET: red where the map is 1, blue where 0
    assert _is(left[200, 200], (90, 90, 90))


@pytest.mark.parametrize("truth,preds,expected", [
    ([(0, 0, 100, 100)], [(0.9, 10, 10, 100, 100)], "true positive"),
    ([(0, 0, 100, 100)], [(0.9, 500, 500, 100, 100)], "miss"),
    ([(0, 0, 100, 100)], [], "miss"),
    ([], [(0.9, 10, 10, 100, 100)], "false alarm"),
    ([], [], "negative"),
    (None, [], "unlabelled"),
])
def test_outcome(truth, preds, expected):
    assert ov.outcome(truth, preds) == expected


def test_contact_sheet_shares_and_fills(tmp_path):
    sheet = ov.ContactSheet(n=16, tile=64, cols=4)
    for i in range(10):
        sheet.add(f"tp{i}", "true positive", np.zeros((128, 128, 3), np.uint8))
    for i in range(2):
        sheet.add(f"m{i}", "miss", np.zeros((128, 128, 3), np.uint8))
    for i in range(6):
        sheet.add(f"n{i}", "negative", np.zeros((128, 128, 3), np.uint8))
    kinds = [k for k, _, _ in sheet.chosen()]
    assert len(kinds) == 16 and kinds.count("miss") == 2 and kinds.count("negative") == 6
    assert kinds.count("true positive") == 8
    path = sheet.write(tmp_path / "sheet.png", "t")
    img = cv2.imread(str(path))
    assert img.shape[1] == 4 * 64 and img.shape[0] > 4 * 64
    assert ov.ContactSheet().write(tmp_path / "none.png") is None


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_grad_cam_shapes_and_range(name):
    import torch

    from pneumo_hpc.classify.models import build_model

    torch.manual_seed(0)
    model = build_model(name, size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    cam = ov.grad_cam(model, x)
    assert cam.shape == ((3, 16, 16) if name == "small-cnn" else (3, 1, 1))  # conv2 (after a pool); layer4
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_predict_overlays_with_labels(rsna_dir, tmp_path, monkeypatch):
    """predict --overlays --labels with a stand-in detector that returns each image's labelled boxes (positives)
    and one box on the first negative: green and red where they belong, and a contact sheet of the outcomes."""
    import shutil

    from pneumo_hpc.detect import yolo
    from pneumo_hpc.detect.predict import PredictConfig, predict
    from pneumo_hpc.detect.rsna_metric import read_labels

    labels_csv = rsna_dir / "stage_2_train_labels.csv"
    labels = read_labels(labels_csv)
    pos = [p for p, b in labels.items() if b][:3]
    neg = [p for p, b in labels.items() if not b][:3]
    folder = tmp_path / "dcm"
    folder.mkdir()
    for pid in pos + neg:
        shutil.copy(rsna_dir / "stage_2_train_images" / f"{pid}.dcm", folder)
    imgsz = 64
    from pneumo_hpc.data.dicom import read_pixels

    side = read_pixels(folder / f"{pos[0]}.dcm").shape[0]
    scale = imgsz / side
    order = sorted(pos + neg)

    class Fake:
        overrides = {"imgsz": imgsz}

    def fake_boxes(model, images, *, imgsz, conf, device, batch=16):
        out = []
        for pid in order[:len(images)]:
            if pid in pos:
                # the labelled box moved 30 px right and down: still a hit (IoU >= 0.4), both edges visible
                out.append([(0.9, (x + 30) * scale, (y + 30) * scale, w * scale, h * scale)
                            for x, y, w, h in labels[pid]])
            elif pid == neg[0]:
                out.append([(0.4, 20.0, 20.0, 20.0, 20.0)])
            else:
                out.append([])
        del order[:len(images)]
        return out

    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"x")
    monkeypatch.setattr(yolo, "load_model", lambda spec: (Fake(), {}))
    monkeypatch.setattr(yolo, "detect_boxes", fake_boxes)
    out = tmp_path / "png"
    summary = predict(PredictConfig(inputs=[folder], out=tmp_path / "p.csv", detector=weights, overlays=out,
                                    labels=labels_csv, device="cpu"))
    assert summary["outcomes"] == {"true positive": 3, "false alarm": 1, "negative": 2}
    assert Path(summary["contact_sheet"]) == out / "contact_sheet.png"
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 4 * 200
    img = cv2.imread(str(out / f"{pos[0]}.png"))
    x, y, w, h = labels[pos[0]][0]
    assert _is(img[round(y + h / 2), round(x)], ov.TRUTH_BGR)  # the labelled box's left edge
    assert _is(img[round(y + 30 + h / 2), round(x + 30)], ov.PRED_BGR)  # the predicted box's left edge
    assert _is(img[round(y + h / 2), round(x + w / 2)], img[round(y + h / 2), round(x + w / 2)][[0, 0, 0]])
    whole = img.reshape(-1, 3)
    assert np.all(whole == ov.TRUTH_BGR, axis=1).sum() > 100  # legend swatch and truth boxes
    neg_img = cv2.imread(str(out / f"{neg[1]}.png")).reshape(-1, 3)
    legend_only = np.all(neg_img == ov.TRUTH_BGR, axis=1).sum()
    assert 0 < legend_only < np.all(whole == ov.TRUTH_BGR, axis=1).sum()
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 7 and json.dumps(summary)
