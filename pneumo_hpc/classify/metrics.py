"""Classification metrics (scikit-learn), computed on the whole validation set on every world size.

Beside the 0.5-threshold figures: sensitivity (= recall), specificity, the confusion matrix [[TN, FP], [FN, TP]],
ROC AUC and PR AUC (average precision), and, with `target_sensitivity`, an operating threshold chosen on this set:
the highest threshold whose sensitivity reaches the target (so the fewest false alarms that still catch that share of
the positives), with the sensitivity, specificity, precision and accuracy it gives. Chosen and scored on the same
(validation) set, that operating point is optimistic for new data.
"""
from __future__ import annotations

import math

import numpy as np


def operating_threshold(y_true, prob, target_sensitivity: float) -> float | None:
    """The highest threshold t with sensitivity(prob >= t) >= target; None when the set has no positive."""
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"--target-sensitivity must be within (0, 1], got {target_sensitivity}")
    y_true = np.asarray(y_true).astype(int)
    pos = np.sort(np.asarray(prob, dtype=np.float64)[y_true == 1])[::-1]
    if len(pos) == 0:
        return None
    need = math.ceil(target_sensitivity * len(pos) - 1e-9)  # positives that must score >= t
    return float(pos[max(need, 1) - 1])


def _confusion(y_true, pred) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, pred, labels=[0, 1]).astype(int).tolist()


def _rates(cm) -> tuple[float, float]:
    (tn, fp), (fn, tp) = cm
    return (tp / (tp + fn) if tp + fn else 0.0), (tn / (tn + fp) if tn + fp else 0.0)


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5,
                           target_sensitivity: float | None = None) -> dict:
    from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, log_loss, precision_score,
                                 recall_score, roc_auc_score)

    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    pred = (prob >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    cm = _confusion(y_true, pred)
    sensitivity, specificity = _rates(cm)
    out = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "confusion_matrix": cm,  # [[TN, FP], [FN, TP]] at `threshold`
        # AUC is undefined on a one-class set: reported as null rather than a made-up number
        "roc_auc": float(roc_auc_score(y_true, prob)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_true, prob)) if both_classes else None,
        "val_loss": float(log_loss(y_true, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "n_val": int(len(y_true)),
        "n_val_positive": int(y_true.sum()),
        # what answering "no pneumonia" for every image scores on this set
        "all_negative_accuracy": float((y_true == 0).mean()) if len(y_true) else None,
        "threshold": threshold,
    }
    if target_sensitivity is not None:
        t = operating_threshold(y_true, prob, target_sensitivity)
        out.update({"target_sensitivity": target_sensitivity, "operating_threshold": t})
        if t is not None:
            op_pred = (prob >= t).astype(int)
            op_cm = _confusion(y_true, op_pred)
            op_sens, op_spec = _rates(op_cm)
            out.update({"operating_sensitivity": float(op_sens), "operating_specificity": float(op_spec),
                        "operating_precision": float(precision_score(y_true, op_pred, zero_division=0)),
                        "operating_accuracy": float(accuracy_score(y_true, op_pred)),
                        "operating_confusion_matrix": op_cm})
    return out


# the keys a classifier run copies from its last validation into metrics.json / results.jsonl
REPORTED_KEYS = ("accuracy", "precision", "recall", "f1", "sensitivity", "specificity", "confusion_matrix", "roc_auc",
                 "pr_auc", "val_loss", "threshold", "n_val_positive", "all_negative_accuracy", "target_sensitivity",
                 "operating_threshold", "operating_sensitivity", "operating_specificity", "operating_precision",
                 "operating_accuracy", "operating_confusion_matrix")


def save_val_predictions(path, y_true, prob) -> None:
    """The validation labels and probabilities (for ROC/PR curves), as .npz, written atomically."""
    import io

    from pneumo_hpc.atomic import write_bytes

    buf = io.BytesIO()
    np.savez(buf, y_true=np.asarray(y_true).astype(np.uint8), prob=np.asarray(prob, dtype=np.float32))
    write_bytes(path, buf.getvalue())


def finite_or_none(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
