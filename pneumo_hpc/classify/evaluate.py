"""Scoring a classifier: the validation pass every epoch runs (on any world size), and re-scoring a saved run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pneumo_hpc.classify.augment import to_input
from pneumo_hpc.classify.metrics import classification_metrics
from pneumo_hpc.classify.parallel import Plan


def _gather(array: np.ndarray) -> np.ndarray:
    if not dist.is_initialized():
        return array
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


@torch.no_grad()
def evaluate_split(model, split, plan: Plan, batch: int = 256, target_sensitivity: float | None = None,
                   keep: dict | None = None) -> dict:
    """Scores the whole split on every world size: each rank scores a contiguous shard (padded to equal batch
    counts, since FSDP forwards are collectives), then the probabilities are gathered and the padding dropped."""
    model.eval()
    n, w, r = len(split), plan.world_size, plan.rank
    shard = -(-n // w)
    idx = np.arange(r * shard, min(n, (r + 1) * shard))
    real = len(idx)
    idx = np.concatenate([idx, np.zeros(shard - real, dtype=idx.dtype)])
    probs = []
    for i in range(0, shard, batch):
        x = torch.from_numpy(split.images[idx[i:i + batch]]).to(plan.device)
        with plan.autocast():
            logits = model(to_input(x, plan.channels_last))
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    prob = np.concatenate(probs)[:real] if probs else np.zeros(0, np.float32)
    prob = _gather(prob)
    model.train()
    if keep is not None:
        keep["prob"] = prob  # the validation probabilities, for ROC/PR curves (val_predictions.npz)
    return classification_metrics(split.labels, prob, target_sensitivity=target_sensitivity)


def load_classifier(run_dir: Path, device: str = "cpu"):
    """(model in eval mode, meta) from RUN/checkpoint/model.pt."""
    from pneumo_hpc.classify.checkpoint import load_model_file
    from pneumo_hpc.classify.models import build_model

    state, meta = load_model_file(run_dir)
    model = build_model(meta["model"], size=meta["size"])
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def evaluate_run(run_dir: Path, data: Path, split: str = "val", device: str = "cpu",
                 target_sensitivity: float | None = None) -> dict:
    from pneumo_hpc.data.layout import load_split

    model, meta = load_classifier(run_dir, device)
    # same arithmetic as training's own validation, so a re-score reproduces metrics.json
    plan = Plan("serial", 1, 0, 1, torch.device(device), bf16=meta.get("compute_dtype") == "bf16",
                channels_last=bool(meta.get("channels_last", False)))
    metrics = evaluate_split(model, load_split(data, split), plan, target_sensitivity=target_sensitivity)
    return {"run": str(run_dir), "data": str(data), "split": split, "model": meta["model"],
            "strategy": meta["strategy"], **metrics}
