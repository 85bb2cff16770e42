"""The synthetic RSNA download: Kaggle layout and CSV format (rsna-format.md), DICOM headers, determinism,
class and box statistics."""
import csv
import re
from collections import Counter, defaultdict

import numpy as np
import pydicom
import pytest

from pneumo_hpc.data.dicom import read_pixels
from pneumo_hpc.data.synth import CLASSES, generate

SIZE = 128
FLOAT = re.compile(r"^\d+\.0$")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsna")
    summary = generate(out, n=40, seed=5, image_size=SIZE, test_n=6)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_layout_and_summary(rsna):
    out, summary = rsna
    train = sorted(p.stem for p in (out / "stage_2_train_images").iterdir())
    test = sorted(p.stem for p in (out / "stage_2_test_images").iterdir())
    assert len(train) == 40 and len(test) == 6 and not set(train) & set(test)
    labels = read_csv(out / "stage_2_train_labels.csv")
    assert sorted({r[0] for r in labels[1:]}) == train
    submission = read_csv(out / "stage_2_sample_submission.csv")
    assert submission[0] == ["patientId", "PredictionString"]
    assert sorted(r[0] for r in submission[1:]) == test
    assert summary["n"] == 40 and summary["test_n"] == 6 and summary["n_label_rows"] == len(labels) - 1
    assert summary["n_boxes"] == sum(r[5] == "1" for r in labels[1:])
    assert summary["n_positive"] == summary["classes"]["Lung Opacity"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left behind


def test_label_and_class_csvs_follow_kaggle_format(rsna):
    out, _ = rsna
    labels = read_csv(out / "stage_2_train_labels.csv")
    classes = read_csv(out / "stage_2_detailed_class_info.csv")
    assert labels[0] == ["patientId", "x", "y", "width", "height", "Target"]
    assert classes[0] == ["patientId", "class"]
    assert len(labels) == len(classes)  # class rows repeat once per label row
    rows_per_patient = Counter(r[0] for r in labels[1:])
    for lab, cls in zip(labels[1:], classes[1:]):
        pid, *box, target = lab
        assert cls[0] == pid and cls[1] in CLASSES
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", pid)
        if target == "0":
            assert box == ["", "", "", ""] and rows_per_patient[pid] == 1 and cls[1] != "Lung Opacity"
        else:
            assert target == "1" and cls[1] == "Lung Opacity"
            assert all(FLOAT.match(v) for v in box), box
            x, y, w, h = map(float, box)
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
    assert any(n > 1 for n in rows_per_patient.values())  # one row per box


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # RSNA's bare-number ages, reproduced on purpose
def test_dicom_headers_look_like_rsna(rsna):
    out, _ = rsna
    for path in sorted((out / "stage_2_train_images").iterdir())[:8]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8 and ds.SamplesPerPixel == 1
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        assert ds.PatientID == path.stem and ds.PatientSex in ("M", "F") and str(ds.PatientAge).isdigit()
        assert ds.LossyImageCompression == "01"
        assert 0.13 * 1024 / SIZE < float(ds.PixelSpacing[0]) < 0.18 * 1024 / SIZE
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert len({ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}) == 3


def test_images_look_like_chest_films(rsna):
    out, _ = rsna
    for path in sorted((out / "stage_2_train_images").iterdir())[:8]:
        img = read_pixels(path).astype(float)
        corners = np.concatenate([img[:4, :4].ravel(), img[:4, -4:].ravel()])  # markers start further in
        lungs = np.concatenate([img[50:80, 30:45].ravel(), img[50:80, 83:98].ravel()])
        spine = img[20:60, 60:68]
        assert corners.mean() < lungs.mean() < spine.mean(), path.name  # air < lung < mediastinum
        assert img.std() > 25


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = generate(tmp_path / "a", n=12, seed=3, image_size=64)
    b = generate(tmp_path / "b", n=12, seed=3, image_size=64, workers=2)
    c = generate(tmp_path / "c", n=12, seed=4, image_size=64)
    assert a["n_boxes"] == b["n_boxes"]

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    fa, fb, fc = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(fa) == 14 and fa == fb  # DICOM bytes (pixels, UIDs, headers) and CSVs
    assert not set(fa) & {k for k in fc if k.endswith(".dcm")}


def test_class_and_box_proportions(tmp_path):
    summary = generate(tmp_path, n=400, seed=1, image_size=64)
    shares = {k: v / 400 for k, v in summary["classes"].items()}
    assert 0.19 < shares["Lung Opacity"] < 0.26
    assert 0.38 < shares["No Lung Opacity / Not Normal"] < 0.50
    assert 0.28 < shares["Normal"] < 0.38
    boxes = defaultdict(int)
    for r in read_csv(tmp_path / "stage_2_train_labels.csv")[1:]:
        boxes[r[0]] += r[5] == "1"
    per_positive = Counter(v for v in boxes.values() if v)
    assert set(per_positive) <= {1, 2, 3, 4}
    assert 0.3 < per_positive[2] / sum(per_positive.values()) < 0.75  # 54% of real positives have two boxes
    views = Counter(pydicom.dcmread(p, stop_before_pixels=True).ViewPosition
                    for p in (tmp_path / "stage_2_train_images").iterdir())
    assert 0.3 < views["AP"] / 400 < 0.6


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be >= 1"):
        generate(tmp_path, n=0)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, n=2, image_size=16)
