"""A tiny learnable classifier set in the preprocess output format, made directly with numpy, so the trainer's
tests do not depend on the DICOM pipeline (which has its own tests)."""
from pathlib import Path

import numpy as np


def make_prep(out: Path, n_train: int = 128, n_val: int = 64, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = Path(out) / "classifier"
    base.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("val", n_val)):
        labels = (rng.random(n) < 0.4).astype(np.uint8)
        images = rng.normal(90, 25, size=(n, size, size))
        for i in np.flatnonzero(labels):  # a faint blob where the "opacity" is
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            images[i] += 45 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        np.save(base / f"{split}_images.npy", np.clip(images, 0, 255).astype(np.uint8))
        np.save(base / f"{split}_labels.npy", labels)
        ids = [f"p{split}{i:04d}" for i in range(n)]
        (base / f"{split}.csv").write_text("patientId,Target,class\n" + "".join(
            f"{p},{t},{'Lung Opacity' if t else 'Normal'}\n" for p, t in zip(ids, labels)))
    return Path(out)
