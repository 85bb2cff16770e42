"""Synthetic RSNA Pneumonia Detection Challenge data, in the exact Kaggle layout and file formats.

The kit's demo and tests run on this instead of the real download (which needs a Kaggle account). Images are
procedural chest radiographs: body envelope, two lung fields, spine, mediastinum, heart, ribs, clavicles, vascular
texture, noise, per-patient exposure. "Lung Opacity" patients get soft-edged, patchy opacities (fainter than heart
or bone) inside their labelled boxes; "No Lung Opacity / Not Normal" patients get other findings (nodules, effusion,
diffuse interstitial change, cardiomegaly, devices) so the task is not trivial. The opacity contrast is calibrated so
that the reference small CNN on 128x128 downscales of 640 images lands in the reference study's accuracy band:
clearly above the 77.5% of calling every image normal, short of perfect, whether the files are drawn at 256 or
1024 px (see OPACITY_STRENGTH; the measured figures are in docs/performance.md).

    from pneumo_hpc.data.synth import generate
    generate("data/rsna", n=800, seed=0)            # 1024x1024 JPEG-Baseline DICOMs + the three Kaggle CSVs
    generate("/tmp/rsna", n=96, seed=7, image_size=256, test_n=16)

Everything derives from `seed`: the same call writes the same bytes (pixel data, headers, UIDs, CSVs).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from pneumo_hpc.atomic import write_csv
from pneumo_hpc.data.dicom import write_dicom

CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
# Patient counts of the stage 2 training set (rsna-format.md): the shares the generator reproduces.
CLASS_COUNTS = (6012, 11821, 8851)
BOXES_PER_POSITIVE = {1: 2614, 2: 3266, 3: 119, 4: 13}
TRAIN_DIR, TEST_DIR = "stage_2_train_images", "stage_2_test_images"
LABELS_CSV, CLASS_CSV = "stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"
SUBMISSION_CSV = "stage_2_sample_submission.csv"
# Real RSNA PixelSpacing values (mm) for 1024 px; scaled when the generated image is smaller.
PIXEL_SPACINGS = (0.139, 0.143, 0.143, 0.168, 0.171)

# The calibration knob: peak added density of an opacity (air-filled lung sits ~0.3 below soft tissue), before the
# patchy texture and the fade to the box edges. Much fainter and the CNN never predicts a positive; stronger and the
# demo leaves the reference-like accuracy band (the calibration runs and the demo's figures: docs/performance.md).
OPACITY_STRENGTH = (0.19, 0.34)
GAMMA = (0.75, 1.3)  # per-patient film gamma (exposure latitude)
_WORK_MAX = 512  # anatomy is drawn at most at this size, then upsampled: 4x cheaper at 1024, same look at 128


# ------------------------------------------------------------------------------------------------ patient plans

def class_plan(n: int, rng: np.random.Generator) -> list[str]:
    """Exactly proportional class counts (largest remainder), shuffled: small sets keep the real shares."""
    shares = np.array(CLASS_COUNTS, float) / sum(CLASS_COUNTS)
    counts = np.floor(shares * n).astype(int)
    for i in np.argsort(-(shares * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(labels)
    return [CLASSES[i] for i in labels]


def _patient_id(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


class _Anatomy:
    """One patient's geometry in normalised image coordinates (0..1, x to the right, y down)."""

    def __init__(self, rng: np.random.Generator, view: str):
        self.cx = cx = 0.5 + rng.normal(0, 0.015)
        self.s = s = rng.uniform(0.9, 1.05)
        self.top = top = rng.uniform(0.1, 0.16)
        ap = view == "AP"  # AP (supine, portable) films: shallower inspiration, magnified heart
        base = top + s * rng.uniform(0.58, 0.66) * (0.93 if ap else 1.0)
        # (centre x, apex y, costophrenic y, half width, outward sign, dome height); image left = patient's right
        self.lungs = []
        for side, a, drop in ((-1, 0.175, 0.0), (1, 0.165, 0.015)):
            a *= s * rng.uniform(0.94, 1.06)
            self.lungs.append((cx + side * (0.045 * s + a), top + rng.uniform(-0.01, 0.01), base + drop, a, side,
                               s * rng.uniform(0.05, 0.09)))
        hf = 1.12 if ap else 1.0
        self.heart = (cx + 0.045 * s, base - 0.12 * s, 0.14 * s * hf, 0.11 * s * hf)

    def lung_box(self, i: int) -> tuple[float, float, float, float]:
        x, top, base, a, _, _ = self.lungs[i]
        return x - a, top, x + a, base


def _boxes(rng: np.random.Generator, anat: _Anatomy) -> list[tuple[float, float, float, float]]:
    """1-4 boxes (x0, y0, w, h, normalised) inside the lung fields; two boxes usually one per lung."""
    counts, weights = zip(*BOXES_PER_POSITIVE.items())
    k = int(rng.choice(counts, p=np.array(weights) / sum(weights)))
    first = int(rng.integers(2))
    sides = [first, 1 - first] if k == 2 and rng.random() < 0.85 else list(rng.integers(0, 2, k))
    boxes = []
    for side in sides:
        lx0, ly0, lx1, ly1 = anat.lung_box(int(side))
        # real widths 40-528 px (median 217), heights 45-942 (median 298) of 1024; bounded by the lung here
        w = float(np.clip(0.212 * np.exp(rng.normal(0, 0.35)), 0.045, (lx1 - lx0) * 0.9))
        h = float(np.clip(0.29 * np.exp(rng.normal(0, 0.35)), 0.05, (ly1 - ly0) * 0.8))
        x0 = rng.uniform(lx0 + 0.05 * (lx1 - lx0), lx1 - w)
        y0 = ly0 + (ly1 - ly0 - h) * rng.beta(2.5, 1.2)  # consolidation favours the mid and lower zones
        boxes.append((x0, y0, w, h))
    return boxes


# ------------------------------------------------------------------------------------------------ rendering

def _smooth_noise(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise, about unit variance: the same texture at every resolution."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _ramp(x, edge: float):
    """Soft step 0 -> 1 around x = 0, `edge` wide (a clipped line; the final blur rounds it)."""
    return np.clip(x * (1.0 / edge) + 0.5, 0.0, 1.0)


class _Canvas:
    """The density image being drawn (bright = dense) and its normalised pixel-centre coordinates."""

    def __init__(self, w: int):
        self.w = w
        self.c = (np.arange(w, dtype=np.float32) + 0.5) / w
        self.d = np.zeros((w, w), np.float32)

    def window(self, x0, y0, x1, y1):
        """Slices covering the normalised box, and its coordinates as a row (u) and a column (v)."""
        w = self.w
        cols = slice(min(max(int(x0 * w), 0), w), min(max(int(np.ceil(x1 * w)), 0), w))
        rows = slice(min(max(int(y0 * w), 0), w), min(max(int(np.ceil(y1 * w)), 0), w))
        return (rows, cols), self.c[None, cols], self.c[rows, None]

    def blob(self, cx, cy, rx, ry, amount):
        win, u, v = self.window(cx - rx, cy - ry, cx + rx, cy + ry)
        self.d[win] += amount * np.clip(1.0 - ((u - cx) / rx) ** 2 - ((v - cy) / ry) ** 2, 0.0, None) ** 1.5

    def line(self, p, q, width, amount):
        (px, py), (qx, qy) = p, q
        win, u, v = self.window(min(px, qx) - width, min(py, qy) - width, max(px, qx) + width,
                                max(py, qy) + width)
        dx, dy = qx - px, qy - py
        t = np.clip(((u - px) * dx + (v - py) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        self.d[win] += amount * _ramp(width - np.hypot(u - px - t * dx, v - py - t * dy), width * 0.8)


def _lung_mask(u, v, lung):
    """Rounded apex, near-vertical walls, diaphragm dome highest a little medial of the lung's middle."""
    x, top, base, a, side, dome = lung
    t = np.clip((v - top) / (0.45 * (base - top)), 0.0, 1.0)
    half = a * np.sqrt(1.0 - (1.0 - t) ** 2) * (0.9 + 0.1 * np.clip((v - top) / (base - top), 0.0, 1.0))
    diaphragm = base - dome * np.clip(1.0 - ((u - x + side * 0.15 * a) / (1.1 * a)) ** 2, 0.0, None)
    return _ramp(half - np.abs(u - x), 0.025) * _ramp(diaphragm - v, 0.02)


def _findings(rng: np.random.Generator, klass: str, view: str) -> list[str]:
    devices = rng.random() < {"Normal": 0.05, "Lung Opacity": 0.3}.get(klass, 0.3) * (1.6 if view == "AP" else 1.0)
    found = ["devices"] if devices else []
    if klass == "No Lung Opacity / Not Normal":
        pool = ["nodules", "effusion", "diffuse", "cardiomegaly", "devices", "hyperinflation"]
        pick = rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False,
                          p=[0.2, 0.18, 0.22, 0.14, 0.16, 0.1])
        found += [pool[i] for i in pick if pool[i] not in found]
    elif klass == "Lung Opacity" and rng.random() < 0.2:
        found.append(str(rng.choice(["effusion", "cardiomegaly", "diffuse"])))
    return found


def _opacity(rng, cv: _Canvas, lung, box):
    """Pneumonia: a patchy, blurry, low-contrast consolidation filling part of the box, only where there is lung."""
    x0, y0, bw, bh = box
    win, u, v = cv.window(x0, y0, x0 + bw, y0 + bh)
    envelope = np.zeros((v.shape[0], u.shape[1]), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        bx, by = x0 + bw * rng.uniform(0.3, 0.7), y0 + bh * rng.uniform(0.3, 0.7)
        rx, ry = bw * rng.uniform(0.3, 0.55), bh * rng.uniform(0.3, 0.55)
        envelope = np.maximum(envelope, 1.0 - ((u - bx) / rx) ** 2 - ((v - by) / ry) ** 2)
    e = np.clip(envelope, 0.0, 1.0)
    # fade out towards the box edges: no box-shaped edge for a classifier to find
    fade = (np.clip(np.minimum(u - x0, x0 + bw - u) / (0.15 * bw), 0.0, 1.0)
            * np.clip(np.minimum(v - y0, y0 + bh - v) / (0.15 * bh), 0.0, 1.0))
    texture = np.clip(0.65 + 0.35 * _smooth_noise(rng, 6, e.shape), 0.0, None)
    strength = rng.uniform(*OPACITY_STRENGTH)
    cv.d[win] += strength * (e * (2.0 - e)) * fade * texture * lung[win]


def _devices(rng, cv: _Canvas, cx, s):
    """ECG leads, a tube down the midline, maybe a pacemaker: bright foreign bodies over the chest."""
    for _ in range(int(rng.integers(2, 5))):  # ECG electrodes and their wires
        x, y = rng.uniform(cx - 0.35 * s, cx + 0.35 * s), rng.uniform(0.15, 0.75)
        cv.blob(x, y, 0.014, 0.014, 0.35)
        cv.line((x, y), (x + rng.uniform(-0.3, 0.3), 1.0), 0.003, 0.12)
    if rng.random() < 0.6:  # endotracheal / nasogastric tube
        x = cx + rng.uniform(-0.02, 0.02)
        cv.line((x, 0.0), (x + rng.uniform(-0.03, 0.05), rng.uniform(0.35, 0.8)), 0.005, 0.2)
    if rng.random() < 0.25:  # pacemaker can in the upper chest, lead to the heart
        x = cx + rng.choice([-1, 1]) * rng.uniform(0.2, 0.3)
        win, _, _ = cv.window(x - 0.035, 0.175, x + 0.035, 0.225)
        cv.d[win] += 0.5
        cv.line((x, 0.2), (cx + 0.05, 0.55), 0.004, 0.25)


def render(rng: np.random.Generator, anat: _Anatomy, view: str, findings: list[str],
           boxes: list[tuple[float, float, float, float]], size: int) -> np.ndarray:
    """uint8 (size, size) radiograph, bright = dense (MONOCHROME2)."""
    # the steps draw from rng in this order, which the seeded output depends on: reorder none of them
    w = min(size, _WORK_MAX)
    cv = _Canvas(w)
    lungs, heart = _fields(rng, anat, findings)
    body = _soft_tissue(rng, cv, anat)
    lung = _lungs(rng, cv, lungs, findings)
    _mediastinum(cv, anat, heart, lung)
    _ribs_and_clavicles(rng, cv, anat, view, lungs, body, lung)
    _other_findings(rng, cv, anat, lungs, lung, findings)
    for box in boxes:
        _opacity(rng, cv, lung, box)
    if "devices" in findings:
        _devices(rng, cv, anat.cx, anat.s)
    _side_marker(rng, cv)
    return _expose(rng, cv.d, w, size)


def _fields(rng, anat: _Anatomy, findings):
    """The lungs and heart as this patient's findings reshape them: (lungs, heart)."""
    lungs = anat.lungs
    if "hyperinflation" in findings:  # flat, low diaphragm
        lungs = [(x, t, b + 0.04, a * 1.04, sd, dome * 0.4) for x, t, b, a, sd, dome in lungs]
    heart = anat.heart
    if "cardiomegaly" in findings:
        k = rng.uniform(1.25, 1.45)
        heart = (heart[0] + 0.02, heart[1] - 0.01, heart[2] * k, heart[3] * k)
    return lungs, heart


def _soft_tissue(rng, cv: _Canvas, anat: _Anatomy):
    """The body's density added to the canvas; returns the body mask (the ribs lie only inside it)."""
    c, d = cv.c, cv.d
    s, cx = anat.s, anat.cx
    # soft tissue: a superellipse torso (square shoulders) and the neck
    fu, fv = ((c - cx) / (0.47 * s)) ** 4, ((c - 0.64) / 0.72) ** 4
    body = _ramp(1.0 - (fu[None, :] + fv[:, None]), 0.3)
    neck = _ramp(0.075 * s - np.abs(c - cx), 0.03)[None, :] * (c < 0.3)[:, None]
    body = np.maximum(body, neck)
    d += 0.04 + body * (0.44 + 0.04 * _smooth_noise(rng, 6, d.shape))
    return body


def _lungs(rng, cv: _Canvas, lungs, findings):
    """The lung fields' air and vessels added to the canvas; returns the lung mask (0..1)."""
    d = cv.d
    # lungs: air, with vessels radiating from the hila
    lung = np.zeros_like(d)
    vessels = 0.022 * _smooth_noise(rng, 20, d.shape) + 0.014 * _smooth_noise(rng, 44, d.shape)
    air = rng.uniform(0.27, 0.33) * (1.15 if "hyperinflation" in findings else 1.0)
    for L in lungs:
        x, top, base, a, side, _ = L
        win, u, v = cv.window(x - a - 0.02, top - 0.02, x + a + 0.02, base + 0.02)
        m = _lung_mask(u, v, L)
        lung[win] = np.maximum(lung[win], m)
        hilum = np.clip(1.0 - np.hypot(u - (x - side * 0.6 * a), (v - top - 0.4 * (base - top)) * 0.7) / 0.25, 0, 1)
        lower = np.clip((v - top) / (base - top), 0.0, 1.0)  # bases lie under more soft tissue
        d[win] += m * (-air * (1.0 - 0.2 * lower) + vessels[win] * (0.5 + hilum) + 0.06 * hilum ** 2)
    return lung


def _mediastinum(cv: _Canvas, anat: _Anatomy, heart, lung) -> None:
    d = cv.d
    s, cx = anat.s, anat.cx
    # spine (vertebral bodies), aortic knob, heart
    win, u, v = cv.window(cx - 0.06, 0.0, cx + 0.06, 1.0)
    d[win] += 0.2 * _ramp(0.036 * s - np.abs(u - cx), 0.02) * (0.88 + 0.12 * np.cos(2 * np.pi * v / (0.047 * s)))
    cv.blob(cx + 0.05 * s, anat.top + 0.14 * s, 0.04 * s, 0.035 * s, 0.1)
    hx, hy, ha, hb = heart
    win, u, v = cv.window(hx - ha, hy - hb, hx + ha, hy + hb)
    # the heart replaces lung air; over the mediastinum and abdomen it is soft tissue like its surroundings
    d[win] += 0.24 * _ramp(1.0 - ((u - hx) / ha) ** 2 - ((v - hy) / hb) ** 2, 0.3) * (0.2 + 0.8 * lung[win])


def _ribs_and_clavicles(rng, cv: _Canvas, anat: _Anatomy, view: str, lungs, body, lung) -> None:
    c, d = cv.c, cv.d
    s, cx = anat.s, anat.cx
    # ribs: bands arcing down and out from the spine; clavicles
    wx = np.abs(c - cx)
    win, _, _ = cv.window(0.0, anat.top - 0.05, 1.0, max(L[2] for L in lungs) + 0.04)
    rows = win[0]
    phase = ((c[rows] / (0.066 * s))[:, None] + ((0.55 * wx - 1.1 * wx * wx) / (0.066 * s))[None, :]
             + rng.uniform(0, 1))
    ribs = _ramp(np.cos(2 * np.pi * phase) - 0.3, 0.6)
    d[rows] += rng.uniform(0.04, 0.07) * ribs * body[rows] * (0.15 + 0.85 * lung[rows])
    clav_y = anat.top + rng.uniform(0.0, 0.03) - (0.03 if view == "AP" else 0.0)
    for side in (-1, 1):
        cv.line((cx + side * 0.06, clav_y + 0.03), (cx + side * 0.3 * s, clav_y - 0.03), 0.012, 0.09)


def _other_findings(rng, cv: _Canvas, anat: _Anatomy, lungs, lung, findings) -> None:
    """The findings of "not normal" patients that are not opacities: interstitial change, nodules, effusion."""
    d = cv.d
    if "diffuse" in findings:  # interstitial change: fine reticular texture, hazy both lungs
        d += lung * (rng.uniform(0.015, 0.035) + rng.uniform(0.025, 0.05) * np.abs(_smooth_noise(rng, 70, d.shape)))
    if "nodules" in findings:
        for _ in range(int(rng.integers(1, 7))):
            x0, y0, x1, y1 = anat.lung_box(int(rng.integers(2)))
            r = rng.uniform(0.007, 0.022)
            x = rng.uniform(x0 + 0.2 * (x1 - x0), x1 - 0.2 * (x1 - x0))
            y = rng.uniform(y0 + 0.2 * (y1 - y0), y1 - 0.1 * (y1 - y0))
            cv.blob(x, y, r, r, rng.uniform(0.1, 0.22))
    if "effusion" in findings:  # fluid fills the base with a meniscus rising laterally
        for L in lungs if rng.random() < 0.35 else [lungs[int(rng.integers(2))]]:
            x, top, base, a, side, _ = L
            level = base - (base - top) * rng.uniform(0.12, 0.3)
            win, u, v = cv.window(x - a - 0.02, level - 0.1, x + a + 0.02, base + 0.02)
            d[win] += rng.uniform(0.12, 0.25) * _lung_mask(u, v, L) * _ramp(
                v - level + 0.12 * np.clip((u - x) * side / a, 0, None), 0.05)


def _side_marker(rng, cv: _Canvas) -> None:
    if rng.random() < 0.7:  # lead side marker in an upper corner
        x0 = rng.uniform(0.04, 0.12) if rng.random() < 0.5 else rng.uniform(0.85, 0.92)
        y0 = rng.uniform(0.04, 0.12)
        cv.d[cv.window(x0, y0, x0 + 0.025, y0 + 0.035)[0]] += 0.6


def _expose(rng, d: np.ndarray, w: int, size: int) -> np.ndarray:
    """The density drawn at w px as the uint8 film at size px: blur, exposure, upsampling, grain."""
    # exposure: film latitude differs per patient (gamma, level, contrast)
    d = cv2.GaussianBlur(d, (0, 0), max(w / 512, 0.6))
    lo, hi = rng.uniform(0.0, 0.06), rng.uniform(0.78, 1.0)
    img = cv2.pow(np.clip(d, 0.0, 1.0), rng.uniform(*GAMMA)) * np.float32(255.0 * (hi - lo)) + np.float32(255 * lo)
    if w != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    # quantum noise at full resolution: uniform, from raw bytes (far cheaper than normal draws at 1024)
    grain = np.frombuffer(rng.bytes(size * size), np.int8).reshape(size, size)
    return cv2.addWeighted(img, 1.0, grain, rng.uniform(1.5, 3.0) / 128, 0.5, dtype=cv2.CV_8U)


# ------------------------------------------------------------------------------------------------ files

def _headers(rng: np.random.Generator, seed: int, pid: str, view: str, size: int) -> dict:
    spacing = f"{float(rng.choice(PIXEL_SPACINGS)) * 1024 / size:.6g}"
    age = int(np.clip(rng.normal(47, 16.5), 1, 92))
    uid = lambda kind: generate_uid(entropy_srcs=["pneumo-hpc synth", str(seed), pid, kind])  # noqa: E731
    return dict(
        SpecificCharacterSet="ISO_IR 100", SOPInstanceUID=uid("sop"), StudyInstanceUID=uid("study"),
        SeriesInstanceUID=uid("series"), StudyDate="19010101", StudyTime="000000.00", AccessionNumber="",
        Modality="CR", ConversionType="WSD", ReferringPhysicianName="", SeriesDescription=f"view: {view}",
        PatientBirthDate="", PatientSex="M" if rng.random() < 0.57 else "F", PatientAge=str(age),
        BodyPartExamined="CHEST", ViewPosition=view, StudyID="", SeriesNumber="1", InstanceNumber="1",
        PatientOrientation="", PixelSpacing=[spacing, spacing],
    )


def _view(rng: np.random.Generator, klass: str) -> str:
    # in RSNA, AP (portable, sicker patients) is far more common among opacities
    return "AP" if rng.random() < {"Lung Opacity": 0.7, "Normal": 0.3}.get(klass, 0.45) else "PA"


def make_patient(seed: int, split: int, index: int, klass: str, image_size: int):
    """(patientId, boxes in pixels, uint8 image, DICOM headers) for one patient; pure function of its arguments."""
    rng = np.random.default_rng([seed, split, index])
    pid = _patient_id(rng)
    view = _view(rng, klass)
    headers = _headers(rng, seed, pid, view, image_size)
    anat = _Anatomy(rng, view)
    boxes = _boxes(rng, anat) if klass == CLASSES[0] else []
    img = render(rng, anat, view, _findings(rng, klass, view), boxes, image_size)
    px = [tuple(float(round(c * image_size)) for c in box) for box in boxes]
    return pid, px, img, headers


def _write_patient(job) -> tuple[str, list]:
    out, seed, split, index, klass, size = job
    pid, boxes, img, headers = make_patient(seed, split, index, klass, size)
    write_dicom(Path(out) / f"{pid}.dcm", img, patient_id=pid, **headers)
    return pid, boxes


def _num(x: float) -> str:
    return f"{x:.1f}"


def generate(out_dir, n: int, seed: int = 0, image_size: int = 1024, test_n: int = 0, workers: int = 1) -> dict:
    """Write a synthetic RSNA download into out_dir (see module docstring); returns a summary dict.

    workers > 1 renders in that many processes; the output is identical either way. Files of an earlier, larger
    generation in the same directory are left alone: the CSVs name the patients that belong to this one.
    """
    if n < 1 or test_n < 0:
        raise ValueError(f"n must be >= 1 and test_n >= 0 (got n={n}, test_n={test_n})")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 px (got {image_size})")
    t0 = time.perf_counter()
    out = Path(out_dir)
    train, test = out / TRAIN_DIR, out / TEST_DIR
    train.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    classes = class_plan(n, rng)
    jobs = [(train, seed, 0, i, k, image_size) for i, k in enumerate(classes)]
    if test_n:
        test.mkdir(parents=True, exist_ok=True)
        jobs += [(test, seed, 1, i, k, image_size) for i, k in enumerate(class_plan(test_n, rng))]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_write_patient, jobs, chunksize=8))
    else:
        results = [_write_patient(job) for job in jobs]

    labels, info = [], []
    for (pid, boxes), klass in zip(results[:n], classes):
        for box in boxes or [None]:
            labels.append([pid, *(map(_num, box) if box else ["", "", "", ""]), int(box is not None)])
            info.append([pid, klass])
    write_csv(out / LABELS_CSV, ["patientId", "x", "y", "width", "height", "Target"], labels)
    write_csv(out / CLASS_CSV, ["patientId", "class"], info)
    if test_n:  # Kaggle's sample submission: one constant box per test image
        write_csv(out / SUBMISSION_CSV, ["patientId", "PredictionString"],
                  [[pid, "0.5 0 0 100 100"] for pid, _ in results[n:]])
    n_pos = sum(1 for _, boxes in results[:n] if boxes)
    return {
        "out_dir": str(out), "n": n, "seed": seed, "image_size": image_size, "test_n": test_n,
        "n_positive": n_pos, "n_boxes": sum(len(b) for _, b in results[:n]), "n_label_rows": len(labels),
        "classes": {k: classes.count(k) for k in CLASSES}, "seconds": round(time.perf_counter() - t0, 3),
    }
