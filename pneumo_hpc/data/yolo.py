"""Export the preprocessed set in the layout ultralytics trains from.

    PREP/yolo/images/{train,val}/<patientId>.png   greyscale, yolo_size x yolo_size
    PREP/yolo/labels/{train,val}/<patientId>.txt   `0 cx cy w h` per box, normalized; empty for negatives
    PREP/yolo/data.yaml                            absolute path, nc: 1, names: {0: pneumonia}, channels: 1

The images are resized without letterboxing (RSNA images are square), so normalized box coordinates are those of
the original image.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pneumo_hpc.data.rsna import clip_box

SPLITS = ("train", "val")
CLASS_NAME = "pneumonia"


def yolo_lines(boxes, width: int, height: int) -> tuple[list[str], int, list[str]]:
    """Label lines for pixel boxes (x, y, w, h) on a width x height image; also (n boxes clipped, notes).

    Boxes past an edge are clipped to the image; a box with nothing left inside is dropped with a note.
    """
    lines, clipped, notes = [], 0, []
    for box in boxes:
        inside = clip_box(box, width, height)
        if inside is None:
            notes.append(f"box {tuple(round(v, 1) for v in box)} lies outside the {width}x{height} image: dropped")
            continue
        clipped += inside != tuple(box)
        x, y, w, h = inside
        lines.append(f"0 {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}")
    return lines, clipped, notes


def data_yaml(root: Path) -> str:
    """ultralytics dataset file; `path` is absolute so training works from any directory."""
    import yaml

    return yaml.safe_dump({"path": str(Path(root).resolve()), "train": "images/train", "val": "images/val",
                           "nc": 1, "names": {0: CLASS_NAME}, "channels": 1}, sort_keys=False)


def _place(src: Path, dst: Path) -> None:
    """Hard link when the filesystem allows (the cache already holds the bytes), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_tree(final: Path, entries) -> dict[str, int]:
    """Build the whole tree beside `final`, then swap it in: a reader sees the old set or the new one.

    entries: (patient_id, split, png_path, label_lines) tuples. Returns images per split.
    """
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.*-*"):  # left by a run that was killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    for kind in ("images", "labels"):
        for split in SPLITS:
            (tmp / kind / split).mkdir(parents=True)
    counts = dict.fromkeys(SPLITS, 0)
    for patient_id, split, png, lines in entries:
        _place(Path(png), tmp / "images" / split / f"{patient_id}.png")
        (tmp / "labels" / split / f"{patient_id}.txt").write_text("".join(f"{line}\n" for line in lines))
        counts[split] += 1
    (tmp / "data.yaml").write_text(data_yaml(final))
    replace_dir(tmp, final)
    return counts


def replace_dir(new: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
