"""The RSNA label reader, the patient-level split and the YOLO label conversion (no images needed)."""
from pathlib import Path

import pytest

from pneumo_hpc.data.rsna import (CLASS_CSV, LABELS_CSV, DataError, balance_train, clip_box, load_labels,
                                  split_patients)
from pneumo_hpc.data.yolo import data_yaml, yolo_lines

LABELS = """patientId,x,y,width,height,Target
p-neg,,,,,0
p-one,264.0,152.0,213.0,379.0,1
p-two,562.0,152.0,256.0,453.0,1
p-two,100.0,200.0,150.0,300.0,1
p-neg2,,,,,0
"""
CLASSES = """patientId,class
p-neg,Normal
p-one,Lung Opacity
p-two,Lung Opacity
p-two,Lung Opacity
p-neg2,No Lung Opacity / Not Normal
"""


def write(tmp_path: Path, labels=LABELS, classes=CLASSES) -> Path:
    (tmp_path / LABELS_CSV).write_text(labels)
    if classes is not None:
        (tmp_path / CLASS_CSV).write_text(classes)
    return tmp_path


def test_labels_aggregate_per_patient(tmp_path):
    labels = load_labels(write(tmp_path))
    by_id = {p.patient_id: p for p in labels.patients}
    assert [p.patient_id for p in labels.patients] == sorted(by_id) == ["p-neg", "p-neg2", "p-one", "p-two"]
    assert by_id["p-neg"].target == 0 and by_id["p-neg"].boxes == () and by_id["p-neg"].cls == "Normal"
    assert by_id["p-one"].boxes == ((264.0, 152.0, 213.0, 379.0),)
    assert by_id["p-two"].target == 1
    assert by_id["p-two"].boxes == ((562.0, 152.0, 256.0, 453.0), (100.0, 200.0, 150.0, 300.0))
    assert by_id["p-two"].cls == "Lung Opacity"  # the repeated class row collapses to one
    assert labels.quarantined == {} and labels.has_class_info
    assert any("1 duplicate class row" in note for note in labels.notes)


def test_class_info_is_optional(tmp_path):
    labels = load_labels(write(tmp_path, classes=None))
    assert len(labels.patients) == 4 and not labels.has_class_info
    assert {p.cls for p in labels.patients} == {""}


def test_conflicting_rows_quarantine_the_patient(tmp_path):
    labels_csv = LABELS + "p-mixed,,,,,0\np-mixed,10,10,50,50,1\np-nobox,,,,,1\np-stray,10,10,50,50,0\n"
    classes_csv = CLASSES + "p-neg,Lung Opacity\np-mixed,Normal\np-nobox,Lung Opacity\np-stray,Normal\n"
    labels = load_labels(write(tmp_path, labels_csv, classes_csv))
    assert labels.quarantined == {
        "p-mixed": "conflicting Target rows (both 0 and 1)",
        "p-neg": "conflicting class rows: Lung Opacity | Normal",
        "p-nobox": "Target=1 row without a box",
        "p-stray": "Target=0 row with a box",
    }
    assert [p.patient_id for p in labels.patients] == ["p-neg2", "p-one", "p-two"]


@pytest.mark.parametrize("csv_name, text, missing", [
    (LABELS_CSV, LABELS.replace(",Target", ",Tgt"), "Target"),
    (LABELS_CSV, LABELS.replace("patientId,x,y,", "patientId,"), "x, y"),
    (CLASS_CSV, CLASSES.replace(",class", ",klass"), "class"),
])
def test_missing_column_names_file_and_column(tmp_path, csv_name, text, missing):
    write(tmp_path)
    (tmp_path / csv_name).write_text(text)
    with pytest.raises(DataError, match=rf"{csv_name}: missing column\(s\) {missing} "):
        load_labels(tmp_path)


def test_structurally_bad_values_raise(tmp_path):
    with pytest.raises(DataError, match=rf"{LABELS_CSV}: column Target row 2: '2' is not 0 or 1"):
        load_labels(write(tmp_path, LABELS.replace("213.0,379.0,1", "213.0,379.0,2")))
    with pytest.raises(DataError, match=rf"{LABELS_CSV}: column x row 2: 'abc' is not a number"):
        load_labels(write(tmp_path, LABELS.replace("264.0", "abc")))
    (tmp_path / LABELS_CSV).write_text("")
    with pytest.raises(DataError, match=rf"{LABELS_CSV}: cannot read as CSV \(EmptyDataError"):
        load_labels(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"empty/{LABELS_CSV}: file not found"):
        load_labels(tmp_path / "empty")
    with pytest.raises(DataError, match="nowhere: RSNA directory not found"):
        load_labels(tmp_path / "nowhere")


def _targets(n_pos=30, n_neg=70):
    return {**{f"pos{i:03d}": 1 for i in range(n_pos)}, **{f"neg{i:03d}": 0 for i in range(n_neg)}}


def test_split_is_patient_level_stratified_and_deterministic():
    targets = _targets()
    split = split_patients(targets, val_frac=0.2, seed=3)
    assert set(split) == set(targets)  # every patient in exactly one split
    val = {p for p, s in split.items() if s == "val"}
    train = {p for p, s in split.items() if s == "train"}
    assert not val & train
    assert sum(targets[p] for p in val) == 6 and len(val) == 20  # 20% of each class
    assert split == split_patients(dict(reversed(list(targets.items()))), val_frac=0.2, seed=3)  # order-free
    assert split != split_patients(targets, val_frac=0.2, seed=4)
    assert set(split_patients(targets, val_frac=0.0, seed=3).values()) == {"train"}
    with pytest.raises(ValueError, match="val_frac"):
        split_patients(targets, val_frac=1.0, seed=3)


def test_balance_downsamples_the_majority_in_train_only():
    targets = _targets()
    split = split_patients(targets, val_frac=0.2, seed=0)
    dropped = balance_train(targets, split, seed=0)
    kept = [p for p, s in split.items() if s == "train" and p not in dropped]
    assert sum(targets[p] for p in kept) == 24 and len(kept) == 48
    assert all(split[p] == "train" and targets[p] == 0 for p in dropped)
    assert dropped == balance_train(targets, split, seed=0)


def test_clip_box():
    assert clip_box((10, 20, 30, 40), 100, 100) == (10, 20, 30, 40)
    assert clip_box((-10, 90, 30, 40), 100, 100) == (0, 90, 20, 10)
    assert clip_box((120, 20, 30, 40), 100, 100) is None


def test_yolo_lines_normalize_and_clip_past_right_bottom_edge():
    lines, clipped, notes = yolo_lines([(256.0, 512.0, 512.0, 256.0)], 1024, 1024)
    assert lines == ["0 0.500000 0.625000 0.500000 0.250000"] and clipped == 0 and notes == []
    # past the right and bottom edges: x 900..1100 -> 900..1024, y 950..1150 -> 950..1024
    lines, clipped, notes = yolo_lines([(900.0, 950.0, 200.0, 200.0), (1030.0, 10.0, 50.0, 50.0)], 1024, 1024)
    cx, cy, w, h = (float(v) for v in lines[0].split()[1:])
    assert lines[0].startswith("0 ") and len(lines) == 1 and clipped == 1
    assert (cx, cy, w, h) == pytest.approx(((900 + 62) / 1024, (950 + 37) / 1024, 124 / 1024, 74 / 1024), abs=1e-6)
    assert cx + w / 2 <= 1.0 and cy + h / 2 <= 1.0
    assert notes == ["box (1030.0, 10.0, 50.0, 50.0) lies outside the 1024x1024 image: dropped"]
    assert yolo_lines([], 1024, 1024) == ([], 0, [])


def test_data_yaml(tmp_path):
    import yaml

    data = yaml.safe_load(data_yaml(tmp_path / "yolo"))
    assert data == {"path": str((tmp_path / "yolo").resolve()), "train": "images/train", "val": "images/val",
                    "nc": 1, "names": {0: "pneumonia"}, "channels": 1}
