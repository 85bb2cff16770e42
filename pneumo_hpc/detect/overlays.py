"""What a person looks at: labelled and predicted boxes on the image, a legend, a contact sheet, Grad-CAM.

- Labelled boxes (the Kaggle labels, when known) are drawn in GREEN, predicted boxes in RED with their confidence;
  a legend in the top-left corner says which is which (pure BGR colours, so a test can find them by pixel).
- With a classifier's Grad-CAM the heat map is a second panel beside the boxes (same image, same boxes), so the
  colour map never hides a box colour.
- `ContactSheet` keeps a thumbnail of the first images of each outcome (true positive, miss, false alarm,
  negative) and writes one grid of about 16 of them, each captioned with its outcome and patientId.

Images are greyscale uint8 in their own pixels; boxes are (x, y, w, h) for truth, (conf, x, y, w, h) predicted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumo_hpc.atomic import write_bytes

TRUTH_BGR = (0, 255, 0)  # green: labelled
PRED_BGR = (0, 0, 255)  # red: predicted
TEXT_BGR = (255, 255, 255)
LEGEND_BG = (40, 40, 40)
OUTCOMES = ("true positive", "miss", "false alarm", "negative")
OUTCOME_BGR = {"true positive": (0, 200, 0), "miss": (0, 140, 255), "false alarm": (0, 0, 230),
               "negative": (160, 160, 160), "unlabelled": (200, 200, 200)}
IOU_HIT = 0.4  # a predicted box within this IoU of a labelled one is a hit (the RSNA metric's lowest threshold)


def _geometry(shape) -> tuple[int, float, float]:
    scale = max(shape) / 1024
    return max(1, round(3 * scale)), max(0.35, 0.9 * scale), scale


def draw_boxes(canvas, truth, preds) -> None:
    import cv2

    thick, font, _ = _geometry(canvas.shape[:2])
    for x, y, w, h in truth or ():
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), TRUTH_BGR, thick)
    for conf, x, y, w, h in preds or ():
        p1, p2 = (round(x), round(y)), (round(x + w), round(y + h))
        cv2.rectangle(canvas, p1, p2, PRED_BGR, thick)
        cv2.putText(canvas, f"{conf:.2f}", (p1[0] + thick, min(p2[1] - thick - 2, max(p1[1] - 6, 14))),
                    cv2.FONT_HERSHEY_SIMPLEX, font, PRED_BGR, max(1, thick - 1), cv2.LINE_AA)


def legend_entries(labelled: bool) -> list[tuple[str, tuple]]:
    return ([("labelled", TRUTH_BGR)] if labelled else []) + [("predicted (conf)", PRED_BGR)]


def draw_legend(canvas, entries, origin=(8, 8)) -> tuple[int, int, int, int]:
    """A dark box with one colour swatch and label per entry; returns its (x0, y0, x1, y1)."""
    import cv2

    _, font, scale = _geometry(canvas.shape[:2])
    font = max(0.4, 0.7 * scale)
    sw = max(12, round(26 * scale))  # swatch side
    pad = max(4, sw // 3)
    widths = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] for text, _ in entries]
    x0, y0 = origin
    x1 = x0 + 3 * pad + sw + max(widths)
    y1 = y0 + pad + len(entries) * (sw + pad)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), LEGEND_BG, -1)
    for i, (text, colour) in enumerate(entries):
        top = y0 + pad + i * (sw + pad)
        cv2.rectangle(canvas, (x0 + pad, top), (x0 + pad + sw, top + sw), colour, -1)
        cv2.putText(canvas, text, (x0 + 2 * pad + sw, top + sw - max(2, sw // 5)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    TEXT_BGR, 1, cv2.LINE_AA)
    return x0, y0, x1, y1


def heat_panel(image, cam) -> np.ndarray:
    """The image blended with a Grad-CAM map (any size, values 0..1; resized to the image) in the JET map."""
    import cv2

    cam = cv2.resize(np.asarray(cam, dtype=np.float32), (image.shape[1], image.shape[0]),
                     interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.clip(cam * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), 0.6, heat, 0.4, 0)


def render(image, preds, truth=None, note: str = "", cam=None, cam_note: str = "") -> np.ndarray:
    """BGR overlay: the boxes (truth None = labels unknown: no green entry in the legend) and a legend; with
    `cam`, a Grad-CAM panel with the same boxes to the right."""
    import cv2

    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    draw_boxes(canvas, truth, preds)
    draw_legend(canvas, legend_entries(truth is not None))
    thick, font, scale = _geometry(image.shape)
    if note:
        cv2.putText(canvas, note, (10, image.shape[0] - round(16 * scale) - 4), cv2.FONT_HERSHEY_SIMPLEX, font,
                    (0, 200, 255), max(1, thick - 1), cv2.LINE_AA)
    if cam is None:
        return canvas
    heat = heat_panel(image, cam)
    draw_boxes(heat, truth, preds)
    if cam_note:
        cv2.putText(heat, cam_note, (10, round(30 * scale) + 8), cv2.FONT_HERSHEY_SIMPLEX, font, TEXT_BGR,
                    max(1, thick - 1), cv2.LINE_AA)
    return np.concatenate([canvas, heat], axis=1)


def write_png(path: Path, canvas) -> None:
    import cv2

    from pneumo_hpc.detect import DetectError

    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise DetectError(f"{path}: PNG encoding failed")
    write_bytes(path, buf.tobytes())


def outcome(truth, preds) -> str:
    """Image-level outcome: a labelled box with a predicted box at IoU >= 0.4 is a true positive; labelled
    boxes without one, a miss; boxes on an image without labelled boxes, a false alarm; neither, a negative."""
    from pneumo_hpc.detect.rsna_metric import iou

    if truth is None:
        return "unlabelled"
    if truth:
        hit = any(iou(p[1:], g) >= IOU_HIT for p in preds for g in truth)
        return "true positive" if hit else "miss"
    return "false alarm" if preds else "negative"


class ContactSheet:
    """Thumbnails of the first images of each outcome, as they come; `write` lays out ~`n` of them in a grid, an
    equal share per outcome where there are enough (short outcomes are filled from the others)."""

    def __init__(self, n: int = 16, tile: int = 256, cols: int = 4):
        self.n, self.tile, self.cols = n, tile, cols
        self.kept: dict[str, list] = {}
        self.counts: dict[str, int] = {}

    def add(self, pid: str, kind: str, canvas) -> None:
        import cv2

        self.counts[kind] = self.counts.get(kind, 0) + 1
        tiles = self.kept.setdefault(kind, [])
        if len(tiles) < self.n:
            h, w = canvas.shape[:2]
            size = (self.tile * w // h, self.tile)
            tiles.append((pid, cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)))

    def chosen(self) -> list[tuple[str, str, np.ndarray]]:
        kinds = [k for k in OUTCOMES + ("unlabelled",) if self.kept.get(k)]
        share = {k: 0 for k in kinds}
        left = min(self.n, sum(len(self.kept[k]) for k in kinds))
        while left:  # round-robin: an equal share, the rest to the outcomes that have more
            for k in kinds:
                if left and share[k] < len(self.kept[k]):
                    share[k] += 1
                    left -= 1
        return [(k, pid, im) for k in kinds for pid, im in self.kept[k][:share[k]]]

    def write(self, path: Path, title: str = "") -> Path | None:
        import cv2

        chosen = self.chosen()
        if not chosen:
            return None
        tw = max(im.shape[1] for _, _, im in chosen)
        cap = 22
        cols = min(self.cols, len(chosen))
        rows = -(-len(chosen) // cols)
        head = 60
        sheet = np.full((head + rows * (self.tile + cap), cols * tw, 3), 255, np.uint8)
        for i, (kind, pid, im) in enumerate(chosen):
            r, c = divmod(i, cols)
            y, x = head + r * (self.tile + cap), c * tw
            cv2.rectangle(sheet, (x, y), (x + tw - 1, y + cap - 1), OUTCOME_BGR[kind], -1)
            cv2.putText(sheet, f"{kind}  {pid[:13]}", (x + 4, y + cap - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
            sheet[y + cap:y + cap + im.shape[0], x:x + im.shape[1]] = im
        counts = ", ".join(f"{k}: {self.counts[k]}" for k in OUTCOMES + ("unlabelled",) if k in self.counts)
        cv2.putText(sheet, title or "contact sheet", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        cv2.putText(sheet, f"all images - {counts}", (8, 46), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (60, 60, 60), 1,
                    cv2.LINE_AA)
        write_png(path, sheet)
        return path


# ------------------------------------------------------------------------------------------------------ Grad-CAM

def cam_layer(model):
    """The layer whose activations Grad-CAM weighs: small-cnn's last convolution, resnet18's layer4."""
    import torch.nn as nn

    if hasattr(model, "conv2") and isinstance(model.conv2, nn.Conv2d):
        return model.conv2
    if hasattr(model, "net") and hasattr(model.net, "layer4"):
        return model.net.layer4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM: the model has no convolution")
    return convs[-1]


def grad_cam(model, x, layer=None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of the pneumonia logit: ReLU(sum_c mean(dlogit/dA_c) * A_c) at `layer`,
    each map scaled to 0..1 (all zeros where nothing speaks for pneumonia). x: (N, 1, H, W) model input.
    Returns (N, h, w) float32 at the layer's resolution."""
    import torch

    layer = layer or cam_layer(model)
    saved = {}

    def keep(module, inputs, output):
        saved["a"] = output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().float())
            # the gradient reaches only the activations: the parameters' .grad stay untouched
            (g,) = torch.autograd.grad(logits.sum(), saved["a"])
        a, g = saved["a"].detach().float(), g.detach().float()
    finally:
        handle.remove()
        model.train(was_training)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1))
    top = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cam / top).cpu().numpy().astype(np.float32)
