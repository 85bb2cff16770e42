"""Classification metrics: sensitivity/specificity/confusion matrix/PR AUC beside ROC AUC, the all-negative
baseline, and the operating threshold chosen for a target sensitivity."""
import numpy as np
import pytest

from pneumo_hpc.classify.metrics import REPORTED_KEYS, classification_metrics, operating_threshold, save_val_predictions

Y = np.array([0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.6, 0.2, 0.4, 0.7, 0.9])


def test_new_keys_at_half():
    m = classification_metrics(Y, P)
    # at 0.5: TN 1 (0.1), FP 1 (0.6), FN 2 (0.2, 0.4), TP 2 (0.7, 0.9)
    assert m["confusion_matrix"] == [[1, 1], [2, 2]]
    assert m["sensitivity"] == pytest.approx(0.5) == m["recall"]
    assert m["specificity"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(6 / 8)
    from sklearn.metrics import average_precision_score

    assert m["pr_auc"] == pytest.approx(average_precision_score(Y, P))
    assert m["all_negative_accuracy"] == pytest.approx(2 / 6)
    assert m["threshold"] == 0.5 and "operating_threshold" not in m


def test_operating_threshold_known_case():
    # positives sorted: 0.9, 0.7, 0.4, 0.2; 75 % sensitivity needs 3 of 4 -> threshold 0.4
    assert operating_threshold(Y, P, 0.75) == pytest.approx(0.4)
    assert operating_threshold(Y, P, 0.76) == pytest.approx(0.2)
    assert operating_threshold(Y, P, 0.25) == pytest.approx(0.9)
    assert operating_threshold(Y, P, 1.0) == pytest.approx(0.2)
    assert operating_threshold(np.zeros(3), [0.1, 0.2, 0.3], 0.9) is None
    with pytest.raises(ValueError):
        operating_threshold(Y, P, 0.0)
    m = classification_metrics(Y, P, target_sensitivity=0.75)
    assert m["threshold"] == 0.5  # the default threshold's figures stay as they were
    assert m["operating_threshold"] == pytest.approx(0.4)
    assert m["operating_sensitivity"] == pytest.approx(0.75)
    assert m["operating_specificity"] == pytest.approx(0.5)  # 0.6 >= 0.4 is a false alarm, 0.1 is not
    assert m["operating_confusion_matrix"] == [[1, 1], [1, 3]]
    assert set(m) <= set(REPORTED_KEYS) | {"n_val", "val_loss"}


def test_reaches_target_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 500), 0, 1)
    for target in (0.5, 0.8, 0.9, 0.95):
        m = classification_metrics(y, p, target_sensitivity=target)
        assert m["operating_sensitivity"] >= target
        # the highest such threshold: a hair above it, sensitivity drops below the target
        above = (p >= m["operating_threshold"] + 1e-9)[y == 1].mean()
        assert above < target


def test_one_class_set():
    m = classification_metrics(np.zeros(4), [0.1, 0.2, 0.7, 0.3], target_sensitivity=0.9)
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["operating_threshold"] is None
    assert m["specificity"] == pytest.approx(0.75) and m["all_negative_accuracy"] == 1.0


def test_val_predictions_file(tmp_path):
    save_val_predictions(tmp_path / "v.npz", Y, P)
    with np.load(tmp_path / "v.npz") as z:
        assert z["y_true"].tolist() == Y.tolist()
        assert np.allclose(z["prob"], P)
    assert [p.name for p in tmp_path.iterdir()] == ["v.npz"]


def test_report_reads_clinical_keys_and_draws_curves(tmp_path):
    from pneumo_hpc.classify.metrics import classification_metrics as cm
    from pneumo_hpc.report.write import write_report

    records = []
    for strategy, world in (("serial", 1), ("ddp", 2)):
        run_dir = tmp_path / strategy
        save_val_predictions(run_dir / "val_predictions.npz", Y, P)
        m = cm(Y, P, target_sensitivity=0.75)
        records.append({"kind": "classifier", "model": "small-cnn", "strategy": strategy, "world_size": world,
                        "device": "cpu", "epochs": 2, "train_time_s": 10.0 / world, "samples_per_s": 50.0,
                        "data": "d", "run_dir": str(run_dir), **{k: m[k] for k in REPORTED_KEYS if k in m}})
    records.append({"kind": "detector", "model": "yolov8n.yaml", "gpus": 0, "device": "cpu", "train_time_s": 5.0,
                    "map50": 0.71, "map50_95": 0.3, "rsna_map": 0.52, "data": "d", "epochs": 3})
    out = write_report(records, tmp_path / "report")
    md = out["markdown"]
    assert "## What a clinician reads" in md and "TP 2 / FN 2 / FP 1 / TN 1" in md
    assert "33.3 %" in md  # all-negative accuracy
    assert "0.400" in md and "0.750" in md  # operating threshold, its sensitivity
    assert "RSNA metric" in md and "0.520" in md
    assert "Published figures on the real RSNA data" in md and "0.468" in md and "0.253" in md and "0.88" in md
    assert (tmp_path / "report" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "curves.png" in md
    quiet = write_report(records, tmp_path / "r2", reference=False)["markdown"]
    assert "Published figures" not in quiet
