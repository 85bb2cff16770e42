"""Preprocessing end to end on small synthetic RSNA sets: outputs, quarantine, determinism, cache, worker loss."""
import csv
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import VENV_BIN, run, tool_env

from pneumo_hpc.data.preprocess import KILL_WORKER_ENV, PreprocessConfig, run_preprocess
from pneumo_hpc.data.rsna import CLASS_CSV, LABELS_CSV, TRAIN_IMAGES

SIZE, YOLO_SIZE, IMAGE_SIZE, CHUNK = 64, 96, 256, 8


@pytest.fixture(scope="module")
def clean_rsna(tmp_path_factory):
    from pneumo_hpc.data.synth import generate

    out = tmp_path_factory.mktemp("rsna-clean")
    generate(out, n=40, seed=11, image_size=IMAGE_SIZE)
    return out


def preprocess(rsna, out, **kw) -> dict:
    cfg = dict(rsna=rsna, out=out, size=SIZE, yolo_size=YOLO_SIZE, val_frac=0.25, seed=0, chunk_size=CHUNK)
    return run_preprocess(PreprocessConfig(**{**cfg, **kw}))


def digest_tree(out: Path) -> dict[str, str]:
    """sha256 of every output file; run.json (timings) and the cache left out, data.yaml's absolute path masked."""
    digests = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel.startswith(".cache/") or rel == "run.json":
            continue
        data = path.read_bytes()
        if rel == "yolo/data.yaml":
            data = data.replace(str(out.resolve()).encode(), b"<OUT>")
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def run_stats(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def clean_prep(clean_rsna, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep-clean")
    return out, preprocess(clean_rsna, out)


def test_outputs_shapes_dtypes_and_layout(clean_rsna, clean_prep):
    out, manifest = clean_prep
    labels = pd.read_csv(clean_rsna / LABELS_CSV)
    truth = labels.groupby("patientId")["Target"].max().to_dict()
    n_boxes = labels.groupby("patientId")["x"].count().to_dict()
    seen = set()
    for split in ("train", "val"):
        images = np.load(out / "classifier" / f"{split}_images.npy")
        targets = np.load(out / "classifier" / f"{split}_labels.npy")
        table = pd.read_csv(out / "classifier" / f"{split}.csv", dtype={"patientId": str})
        assert images.dtype == np.uint8 and images.shape == (manifest["splits"][split], SIZE, SIZE)
        assert targets.dtype == np.uint8 and targets.shape == (len(images),)
        assert list(table.columns) == ["patientId", "Target", "class"]
        assert list(table["patientId"]) == sorted(table["patientId"])
        assert list(table["Target"]) == list(targets) == [truth[p] for p in table["patientId"]]
        assert images.reshape(len(images), -1).std(axis=1).min() > 5  # real pictures, not zero fill
        for pid, target in zip(table["patientId"], targets):
            png = out / "yolo" / "images" / split / f"{pid}.png"
            assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape == (YOLO_SIZE, YOLO_SIZE)
            lines = (out / "yolo" / "labels" / split / f"{pid}.txt").read_text().splitlines()
            assert len(lines) == n_boxes[pid] and (target == 1) == bool(lines)
            for line in lines:
                cls, *coords = line.split()
                assert cls == "0" and all(0.0 <= float(v) <= 1.0 for v in coords)
        seen |= set(table["patientId"])
    assert seen == set(truth)  # each patient in exactly one split (sizes add up below)
    assert manifest["splits"]["train"] + manifest["splits"]["val"] == manifest["n_ok"] == 40
    assert manifest["splits"]["val"] == 10 and manifest["n_positive"] == sum(truth.values())
    assert manifest["n_quarantined"] == 0 and manifest["n_unlabelled_images"] == 0
    assert (out / "quarantine.csv").read_text() == "patientId,path,reason\n"
    assert (out / "yolo" / "data.yaml").read_text().startswith(f"path: {(out / 'yolo').resolve()}\n")
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.fixture(scope="module")
def bad_rsna(clean_rsna, tmp_path_factory):
    """The clean set with one of each problem the reader must survive. Returns (dir, {case: patientId})."""
    out = tmp_path_factory.mktemp("rsna-bad")
    shutil.copytree(clean_rsna, out, dirs_exist_ok=True)
    images = out / TRAIN_IMAGES
    labels = pd.read_csv(out / LABELS_CSV, dtype=str, keep_default_na=False)
    classes = pd.read_csv(out / CLASS_CSV, dtype=str, keep_default_na=False)
    neg = sorted(set(labels.loc[labels.Target == "0", "patientId"]))
    pos = sorted(set(labels.loc[labels.Target == "1", "patientId"]))
    case = {"truncated": neg[0], "not_dicom": neg[1], "no_image": neg[2], "dup_class": neg[3],
            "conflict_class": neg[4], "clipped": pos[0], "outside": pos[1]}
    data = (images / f"{case['truncated']}.dcm").read_bytes()
    (images / f"{case['truncated']}.dcm").write_bytes(data[: len(data) * 2 // 3])
    (images / f"{case['not_dicom']}.dcm").write_text("patientId,this is a CSV saved under a .dcm name\n")
    (images / f"{case['no_image']}.dcm").unlink()
    shutil.copyfile(images / f"{neg[5]}.dcm", images / "zz-unlabelled.dcm")
    # a box past the right/bottom edge (clipped) and a box wholly outside the image (dropped, with a note)
    row = labels.index[labels.patientId == case["clipped"]][0]
    labels.loc[row, ["x", "y", "width", "height"]] = ["200.0", "180.0", "120.0", "150.0"]
    extra = pd.DataFrame([[case["outside"], "300.0", "10.0", "40.0", "40.0", "1"]], columns=labels.columns)
    classes_extra = pd.DataFrame([[case["dup_class"], classes.loc[classes.patientId == case["dup_class"], "class"]
                                   .iloc[0]], [case["outside"], "Lung Opacity"],
                                  [case["conflict_class"], "Lung Opacity"]], columns=classes.columns)
    pd.concat([labels, extra]).to_csv(out / LABELS_CSV, index=False)
    pd.concat([classes, classes_extra]).to_csv(out / CLASS_CSV, index=False)
    return out, case


def test_bad_inputs_are_quarantined_and_the_run_goes_on(bad_rsna, tmp_path):
    rsna, case = bad_rsna
    manifest = preprocess(rsna, tmp_path)
    with open(tmp_path / "quarantine.csv", newline="") as f:
        quarantine = {row["patientId"]: row for row in csv.DictReader(f)}
    assert set(quarantine) == {case["truncated"], case["not_dicom"], case["no_image"], case["conflict_class"]}
    assert "truncated pixel data" in quarantine[case["truncated"]]["reason"]
    assert "not a DICOM file" in quarantine[case["not_dicom"]]["reason"]
    assert quarantine[case["no_image"]]["reason"] == "labelled patient has no image file"
    assert quarantine[case["conflict_class"]]["reason"].startswith("conflicting class rows: Lung Opacity | ")
    assert quarantine[case["truncated"]]["path"].endswith(f"{TRAIN_IMAGES}/{case['truncated']}.dcm")

    assert manifest["n_labelled_patients"] == 40 == manifest["n_ok"] + manifest["n_quarantined"]
    assert manifest["n_quarantined"] == 4 and manifest["n_ok"] == 36
    assert manifest["n_positive"] + manifest["n_negative"] == manifest["n_ok"]
    assert sum(manifest["splits"].values()) == manifest["n_ok"]
    assert manifest["n_images"] == 40  # 39 labelled files (one deleted) + 1 unlabelled
    assert manifest["n_unlabelled_images"] == 1
    assert (tmp_path / "unlabelled.csv").read_text().splitlines()[1].startswith("zz-unlabelled,")
    assert manifest["quarantine_reasons"]["labelled patient has no image file"] == 1

    kept = set()
    for split in ("train", "val"):
        table = pd.read_csv(tmp_path / "classifier" / f"{split}.csv", dtype={"patientId": str})
        assert len(np.load(tmp_path / "classifier" / f"{split}_images.npy")) == len(table)
        kept |= set(table["patientId"])
    assert not kept & set(quarantine) and "zz-unlabelled" not in kept
    assert case["dup_class"] in kept  # an exact duplicate class row is harmless

    assert manifest["n_boxes_clipped"] == 1 and manifest["n_boxes_dropped"] == 1
    assert manifest["box_notes"] == [f"{case['outside']}: box (300.0, 10.0, 40.0, 40.0) lies outside the "
                                     f"{IMAGE_SIZE}x{IMAGE_SIZE} image: dropped"]
    clipped = next(tmp_path.glob(f"yolo/labels/*/{case['clipped']}.txt")).read_text().splitlines()
    # x 200..320 -> 200..256, y 180..330 -> 180..256 on a 256 px image
    assert f"0 {228 / 256:.6f} {218 / 256:.6f} {56 / 256:.6f} {76 / 256:.6f}" in clipped


def test_missing_column_cli_exits_nonzero_naming_file_and_column(clean_rsna, tmp_path):
    rsna = tmp_path / "rsna"
    shutil.copytree(clean_rsna, rsna)
    text = (rsna / LABELS_CSV).read_text()
    (rsna / LABELS_CSV).write_text(text.replace(",Target\n", ",Tgt\n", 1))
    proc = run([str(VENV_BIN / "pneumo-hpc"), "preprocess", "--rsna", str(rsna), "--out", str(tmp_path / "p")],
               check=False, timeout=120)
    assert proc.returncode != 0
    assert f"Error: {rsna / LABELS_CSV}: missing column(s) Target" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_two_workers_cli_is_byte_identical_to_one(clean_rsna, clean_prep, tmp_path):
    out1, _ = clean_prep
    out2 = tmp_path / "prep2"
    proc = run([str(VENV_BIN / "pneumo-hpc"), "preprocess", "--rsna", str(clean_rsna), "--out", str(out2),
                "--size", str(SIZE), "--yolo-size", str(YOLO_SIZE), "--val-frac", "0.25", "--seed", "0",
                "--chunk-size", str(CHUNK), "--workers", "2"], timeout=300, env=tool_env())
    assert "40 ok" in proc.stdout
    assert run_stats(out2)["workers"] == 2 and run_stats(out2)["n_decoded"] == 40
    assert digest_tree(out2) == digest_tree(out1)


def test_rerun_skips_cached_chunks_and_redecodes_only_changed_files(clean_rsna, tmp_path):
    rsna = tmp_path / "rsna"
    shutil.copytree(clean_rsna, rsna)
    out = tmp_path / "prep"
    first = preprocess(rsna, out)
    stats = run_stats(out)
    assert stats["n_chunks"] == 5 and stats["n_chunks_cached"] == 0 and stats["n_decoded"] == 40
    digests = digest_tree(out)

    assert preprocess(rsna, out) == first
    stats = run_stats(out)
    assert stats["n_chunks_cached"] == 5 and stats["n_decoded"] == 0
    assert digest_tree(out) == digests

    # new bytes in one file: only its chunk is decoded again, and the output follows the new content
    ids = sorted(p.stem for p in (rsna / TRAIN_IMAGES).glob("*.dcm"))
    shutil.copyfile(rsna / TRAIN_IMAGES / f"{ids[1]}.dcm", rsna / TRAIN_IMAGES / f"{ids[0]}.dcm")
    changed = preprocess(rsna, out)
    stats = run_stats(out)
    assert stats["n_chunks_cached"] == 4 and stats["n_decoded"] == CHUNK
    assert changed["input_hash"] != first["input_hash"]
    assert digest_tree(out) != digests


def test_killed_worker_is_retried_and_output_is_identical(clean_rsna, clean_prep, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_WORKER_ENV, str(marker))  # the spawned worker processes inherit it
    out = tmp_path / "prep"
    preprocess(clean_rsna, out, workers=2)
    assert marker.exists()  # a worker really died in the middle of a chunk
    assert digest_tree(out) == digest_tree(clean_prep[0])
    assert len(list((out / ".cache").rglob("*.npz"))) == 5  # every chunk once, nothing lost or doubled


def test_no_yolo_and_balance(clean_rsna, clean_prep, tmp_path):
    manifest = preprocess(clean_rsna, tmp_path, yolo=False, balance=True)
    assert not (tmp_path / "yolo").exists() and manifest["yolo_splits"] is None
    targets = np.load(tmp_path / "classifier" / "train_labels.npy")
    assert targets.sum() * 2 == len(targets) == manifest["splits"]["train"]  # balanced train
    val = np.load(tmp_path / "classifier" / "val_labels.npy")
    assert np.array_equal(val, np.load(clean_prep[0] / "classifier" / "val_labels.npy"))  # val untouched
    assert manifest["n_dropped_by_balance"] == clean_prep[1]["splits"]["train"] - len(targets)
