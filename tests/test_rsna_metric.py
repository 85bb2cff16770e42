"""The RSNA competition metric on hand-computed cases, and the submission format."""
import json
import math

import pytest
from click.testing import CliRunner

from pneumo_hpc.cli import main
from pneumo_hpc.detect.rsna_metric import (THRESHOLDS, SubmissionError, dataset_score, format_prediction_string,
                                           image_score, iou, parse_prediction_string, read_labels, read_submission,
                                           score_files)


def test_thresholds_are_exact_decimals():
    assert THRESHOLDS == (0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75)


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (20, 20, 5, 5), 0.0),
    ((0, 0, 10, 10), (10, 0, 10, 10), 0.0),  # touching edges share no area
    ((0, 0, 10, 10), (5, 0, 10, 10), 50 / 150),
    ((0, 0, 10, 10), (2, 2, 4, 4), 16 / 100),  # contained
])
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_perfect_and_missing_predictions():
    gt = [(0, 0, 10, 10)]
    assert image_score(gt, [(0.9, 0, 0, 10, 10)]) == 1.0
    assert image_score(gt, []) == 0.0  # ground truth, no prediction: all FN


def test_images_without_ground_truth():
    assert image_score([], []) is None  # not counted
    assert image_score([], [(0.1, 0, 0, 5, 5)]) == 0.0  # a false positive on a negative image counts as 0


def test_iou_exactly_at_threshold_is_not_a_match():
    # IoU 0.5 exactly: a match only for t = 0.40, 0.45 ("IoU > t"), so 2 of 8 thresholds score 1
    assert iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5
    assert image_score([(0, 0, 10, 10)], [(0.9, 0, 0, 10, 5)]) == pytest.approx(2 / 8)
    # IoU 0.75 exactly: every threshold but the last
    assert image_score([(0, 0, 100, 100)], [(0.9, 0, 0, 100, 75)]) == pytest.approx(7 / 8)


def test_multiple_boxes_tp_fp_fn():
    gt = [(0, 0, 10, 10), (100, 100, 10, 10)]
    preds = [(0.9, 0, 0, 10, 10), (0.8, 500, 500, 10, 10)]  # one hit, one miss, one GT unfound
    assert image_score(gt, preds) == pytest.approx(1 / 3)  # TP/(TP+FP+FN) = 1/3 at every threshold
    both = [(0.9, 0, 0, 10, 10), (0.8, 100, 100, 10, 10), (0.1, 300, 300, 10, 10)]
    assert image_score(gt, both) == pytest.approx(2 / 3)


def test_confidence_order_decides_the_matching():
    # P overlaps A (IoU 0.818) and B (0.538); Q is A itself and overlaps B by 0.4286.
    a, b = (0, 0, 10, 10), (4, 0, 10, 10)
    p, q = (1, 0, 10, 10), (0, 0, 10, 10)
    assert iou(p, a) == pytest.approx(90 / 110) and iou(p, b) == pytest.approx(70 / 130)
    assert iou(q, b) == pytest.approx(60 / 140)
    # P first takes A; Q then reaches B only at t = 0.40: (1 + 7 * 1/3) / 8
    p_first = image_score([a, b], [(0.9, *p), (0.8, *q)])
    assert p_first == pytest.approx(10 / 24)
    # Q first takes A; P reaches B for t <= 0.50: (3 * 1 + 5 * 1/3) / 8
    q_first = image_score([a, b], [(0.8, *p), (0.9, *q)])
    assert q_first == pytest.approx(14 / 24)
    # the order in the submission string does not matter, the confidences do
    assert image_score([a, b], [(0.9, *q), (0.8, *p)]) == pytest.approx(q_first)


def test_dataset_mean_counts_only_scored_images():
    truth = {"pos": [(0, 0, 10, 10)], "neg_quiet": [], "neg_noisy": [], "pos_missed": [(5, 5, 5, 5)]}
    preds = {"pos": [(0.9, 0, 0, 10, 10)], "neg_noisy": [(0.3, 1, 1, 2, 2)]}
    score, counted = dataset_score(truth, preds)
    assert counted == 3  # neg_quiet is not counted; pos_missed (absent from preds) counts as no prediction
    assert score == pytest.approx((1 + 0 + 0) / 3)
    assert math.isnan(dataset_score({"a": []}, {})[0])


def test_prediction_strings_round_trip():
    assert parse_prediction_string("") == []
    assert parse_prediction_string("  ") == []
    preds = parse_prediction_string("0.5 10 20 30 40 0.9 1.5 2 3 4")
    assert preds == [(0.5, 10, 20, 30, 40), (0.9, 1.5, 2, 3, 4)]
    text = format_prediction_string(preds)
    assert text == "0.9000 1.5 2.0 3.0 4.0 0.5000 10.0 20.0 30.0 40.0"  # highest confidence first
    assert sorted(parse_prediction_string(text)) == sorted(preds)


@pytest.mark.parametrize("text, fragment", [
    ("0.5 10 20 30", "groups of 5"),
    ("0.5 10 20 x 40", "not a number"),
    ("0.5 10 20 0 40", "w, h > 0"),
    ("0.5 10 20 nan 40", "finite"),
])
def test_bad_prediction_strings(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_prediction_string(text)


def _write(path, text):
    path.write_text(text)
    return path


LABELS = ("patientId,x,y,width,height,Target\n"
          "a,0,0,10,10,1\n"
          "a,100,100,10,10,1\n"
          "b,,,,,0\n"
          "c,,,,,0\n"
          "d,50.0,50.0,20.0,20.0,1\n")


def test_score_files_and_missing_patients(tmp_path):
    labels = _write(tmp_path / "labels.csv", LABELS)
    sub = _write(tmp_path / "sub.csv", "patientId,PredictionString\n"
                 "a,0.9 0 0 10 10 0.8 100 100 10 10\n"
                 "b,\n"
                 "c,0.4 5 5 5 5\n"
                 "zz,0.4 5 5 5 5\n")
    assert read_labels(labels) == {"a": [(0, 0, 10, 10), (100, 100, 10, 10)], "b": [], "c": [],
                                   "d": [(50, 50, 20, 20)]}
    assert read_submission(sub)["b"] == []
    result = score_files(labels, sub)
    # a: 1, b: not counted, c: 0 (false positive), d: 0 (missing from the submission)
    assert result["n_images"] == 3
    assert result["rsna_map"] == pytest.approx(1 / 3)
    assert result["n_unlabeled"] == 1
    subset = score_files(labels, sub, only_submitted=True)  # d left out: a (1) and c (0)
    assert subset["n_images"] == 2 and subset["rsna_map"] == pytest.approx(0.5)


def test_bad_files_name_file_and_line(tmp_path):
    labels = _write(tmp_path / "labels.csv", LABELS)
    with pytest.raises(SubmissionError, match=r"sub\.csv:3: bad PredictionString for b"):
        score_files(labels, _write(tmp_path / "sub.csv", "patientId,PredictionString\na,\nb,0.5 1 2\n"))
    with pytest.raises(SubmissionError, match=r"nohead\.csv: missing column\(s\) PredictionString"):
        score_files(labels, _write(tmp_path / "nohead.csv", "patientId,boxes\na,\n"))
    with pytest.raises(SubmissionError, match=r"dup\.csv:3: patientId a appears twice"):
        score_files(labels, _write(tmp_path / "dup.csv", "patientId,PredictionString\na,\na,\n"))
    with pytest.raises(SubmissionError, match=r"badlabels\.csv:2: Target=1 row without a numeric box"):
        read_labels(_write(tmp_path / "badlabels.csv", "patientId,x,y,width,height,Target\na,,,,,1\n"))


def test_score_command_prints_one_json_object(tmp_path):
    labels = _write(tmp_path / "labels.csv", LABELS)
    sub = _write(tmp_path / "sub.csv", "patientId,PredictionString\na,0.9 0 0 10 10\n")
    result = CliRunner().invoke(main, ["detect", "score", "--labels", str(labels), "--submission", str(sub)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    # a: TP 1, FN 1 -> 1/2; d: 0; b, c not counted
    assert out["n_images"] == 2 and out["rsna_map"] == pytest.approx(0.25)
    bad = CliRunner().invoke(main, ["detect", "score", "--labels", str(tmp_path / "nope.csv"),
                                    "--submission", str(sub)])
    assert bad.exit_code != 0 and "nope.csv: cannot read" in bad.output
