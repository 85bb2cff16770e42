"""Train and evaluate a YOLOv8 pneumonia detector with ultralytics, offline, on one node.

    pneumo-hpc detect train --data data/prep/yolo --model yolov8n.yaml --epochs 30 --imgsz 416 --batch 32 \
        --gpus 0 --out runs/yolo-cpu                       # CPU, random init
    pneumo-hpc detect train --data data/prep/yolo --model ~/yolov8n.pt --gpus 4 --batch 64 --out runs/yolo-4gpu
    srun --nodes 1 --ntasks 1 --gpus-per-task 4 pneumo-hpc detect train ... --gpus 4   # SLURM: ONE task per node

Multi-GPU is ultralytics' own: with `--gpus N > 1` it starts torchrun on this node for N workers. So this command
must run as one process: under torchrun/mpirun/srun with several tasks it refuses (multi-node YOLO is not supported
by ultralytics); with one task, the launcher's RANK/LOCAL_RANK/WORLD_SIZE are cleared, since ultralytics would
otherwise take this process for one of its own workers.

RUN/metrics.json: kind "detector"; map50, map50_95, precision, recall (ultralytics, val set, best weights);
rsna_map and rsna_n_images (the competition metric of the best weights' predictions at `conf` on the val set);
train_time_s (wall time of ultralytics' train(): setup, epochs with their validation, final validation) and
images_per_s = n_train * epochs / train_time_s; loop_time_s (ultralytics' own clock for the epochs alone);
eval_time_s (the kit's evaluation after training, which a bare ultralytics run does not do). The record's every key:
docs/run-record.md (built by pneumo_hpc.report.record.detector_record).
ultralytics' run folder is RUN/ultralytics/train (weights/best.pt, results.csv, args.yaml).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pneumo_hpc.atomic import write_text
from pneumo_hpc.detect import DetectError
from pneumo_hpc.report.record import append_result, detector_record

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# What launchers export for their ranks; ultralytics reads these at import to decide whether it is a DDP worker.
_RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
              "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
ULTRA_NAME = "train"  # RUN/ultralytics/<name>: fixed so the weights are found after a DDP run
# as the user gave it: ultralytics, imported only inside load_model, sets it to 1 when unset
_USER_OMP_THREADS = os.environ.get("OMP_NUM_THREADS", "")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    model: str = "yolov8n.yaml"
    epochs: int = 30
    imgsz: int = 416
    batch: int = 16
    gpus: int = 0
    workers: int = 8
    seed: int = 0
    conf: float = 0.25  # confidence threshold for the rsna_map predictions (the same default as `predict`)
    results: Path | None = None  # JSON-lines results file; default RUN/../results.jsonl
    label: str | None = None  # the configuration's name in the report


# ------------------------------------------------------------------------------------------------ data set

def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DetectError(f"{path}: cannot read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise DetectError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(cfg, dict):
        raise DetectError(f"{path}: expected a mapping with path/train/val/nc/names, got {type(cfg).__name__}")
    return cfg


def list_images(root: Path, entry) -> list[Path]:
    """Images of one split entry as ultralytics reads it: a directory (searched recursively), an image list .txt
    (paths relative to `root`), or a list of those."""
    if isinstance(entry, (list, tuple)):
        return [p for e in entry for p in list_images(root, e)]
    path = Path(entry) if Path(entry).is_absolute() else root / entry
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.suffix == ".txt" and path.is_file():
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines]
    raise DetectError(f"{path}: split directory or image list not found")


def resolve_data(data, run_dir: Path) -> tuple[Path, dict]:
    """(absolute data.yaml to train on, its parsed content). `data` is the YOLO set's directory or its yaml.

    A relative (or missing) `path:` is taken relative to the yaml's folder, as a user expects; ultralytics would
    take it relative to its own datasets_dir. The resolved copy is written to RUN/data.yaml in that case.
    """
    data = Path(data).expanduser()
    yaml_path = (data / "data.yaml") if data.is_dir() else data
    if not yaml_path.is_file():
        what = "no such file or directory" if not data.exists() else "YOLO data.yaml not found"
        raise DetectError(f"{yaml_path}: {what}. HINT: pass the YOLO set's directory (PREP/yolo, written by "
                          "`pneumo-hpc preprocess`) or its data.yaml")
    yaml_path = yaml_path.resolve()
    cfg = _load_yaml(yaml_path)
    missing = [k for k in ("train", "val", "names") if k not in cfg]
    if missing:
        raise DetectError(f"{yaml_path}: missing key(s) {', '.join(missing)}")
    root = Path(cfg.get("path") or ".").expanduser()
    if not root.is_absolute():
        root = (yaml_path.parent / root).resolve()
        cfg["path"] = str(root)
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        yaml_path = run_dir / "data.yaml"
        write_text(yaml_path, yaml.safe_dump(cfg, sort_keys=False))
    for split in ("train", "val"):
        if not list_images(root, cfg[split]):
            raise DetectError(f"{yaml_path}: no images in the {split} split ({root / str(cfg[split])})")
    return yaml_path, cfg


def read_yolo_labels(label_path: Path, width: int, height: int) -> list[tuple]:
    """A YOLO label file (`cls cx cy w h`, normalized) -> [(x, y, w, h)] in pixels; a missing file means no box."""
    try:
        text = label_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            _, cx, cy, w, h = (float(f) for f in fields)
        except ValueError:
            raise DetectError(f"{label_path}:{n}: expected 'class cx cy w h', got {line!r}") from None
        boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height))
    return boxes


# ----------------------------------------------------------------------------------------------- launching

def single_process_env(environ=None) -> None:
    """Refuse multi-task launches; clear a single task's rank variables before ultralytics reads them."""
    from pneumo_hpc.runtime.launchers import detect as detect_launcher

    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    if launcher.world_size > 1:
        raise DetectError(
            f"detect train runs as ONE process per job, but {launcher.name} started {launcher.world_size} tasks. "
            "ultralytics starts its own per-GPU workers on one node (--gpus N) and does not train across nodes. "
            "HINT: launch it once, e.g. `srun --nodes 1 --ntasks 1 pneumo-hpc detect train --gpus 4 ...`, "
            "not under torchrun/mpirun with several processes")
    for key in _RANK_VARS:
        environ.pop(key, None)


def device_string(gpus: int) -> str:
    """ultralytics' device= for N GPUs of this node ("cpu", "0", "0,1,2,3")."""
    if gpus < 0:
        raise DetectError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return "cpu"
    import torch

    found = torch.cuda.device_count()
    if found < gpus:
        raise DetectError(f"--gpus {gpus} asked for, but this node shows {found} CUDA device(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                          "HINT: request them from SLURM (--gpus-per-task) or pass --gpus 0 for the CPU")
    return ",".join(str(i) for i in range(gpus))


def cpu_threads() -> int:
    """Intra-op threads for a CPU run: OMP_NUM_THREADS when the user set it, else every CPU this process may use
    (a SLURM allocation or a binding may hold a few of the node's)."""
    given = _USER_OMP_THREADS.strip()
    return int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))


def _keep_threads(model, threads: int) -> None:
    # ultralytics sets torch to min(8, cores - 1) threads whenever it selects the CPU (one on a 2-core node, half
    # the speed); these callbacks run after that choice, before the first batch of a training, validation or
    # prediction. GPU runs keep ultralytics' threads, beside its data-loading workers
    import torch

    def set_threads(owner) -> None:
        if getattr(getattr(owner, "device", None), "type", None) == "cpu":
            torch.set_num_threads(threads)

    for event in ("on_pretrain_routine_start", "on_val_start", "on_predict_start"):
        model.add_callback(event, set_threads)


def load_model(spec: str):
    """A YOLO model from a packaged cfg name (yolov8n.yaml: random init) or a local weights file, set to run on
    cpu_threads() threads when on the CPU. Returns (YOLO, train kwargs): pretrained=False for a cfg, so nothing is
    looked for; a .pt keeps its weights."""
    from pneumo_hpc.detect.offline import import_ultralytics

    ultralytics = import_ultralytics()
    if spec.endswith((".yaml", ".yml")):
        model, kwargs = ultralytics.YOLO(spec), {"pretrained": False}
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DetectError(f"{spec}: weights file not found. Pretrained weights cannot be downloaded here: fetch "
                              "yolov8n.pt from Ultralytics' GitHub releases on a machine with internet and pass its "
                              "path, or train from scratch with --model yolov8n.yaml")
        model, kwargs = ultralytics.YOLO(str(path.resolve())), {}
    _keep_threads(model, cpu_threads())
    return model, kwargs


# ------------------------------------------------------------------------------------------------ evaluation

def model_channels(model) -> int:
    return int(getattr(model.model, "yaml", {}).get("channels", 3))


def detect_boxes(model, images, *, imgsz: int, conf: float, device: str, batch: int = 16) -> list[list[tuple]]:
    """[(conf, x, y, w, h) per box, in each image's pixels] for greyscale uint8 images, `batch` at a time."""
    import cv2

    gray = model_channels(model) == 1
    out = []
    for start in range(0, len(images), batch):
        chunk = [im if gray else cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) for im in images[start:start + batch]]
        for result in model.predict(chunk, imgsz=imgsz, conf=conf, device=device, verbose=False):
            xyxy = result.boxes.xyxy.cpu().numpy().tolist()
            scores = result.boxes.conf.cpu().numpy().tolist()
            out.append([(s, x1, y1, x2 - x1, y2 - y1) for s, (x1, y1, x2, y2) in zip(scores, xyxy)])
    return out


def rsna_on_split(model, root: Path, entry, *, imgsz: int, conf: float, device: str) -> tuple[float, int]:
    """The RSNA metric of `model` on a YOLO split (images + labels/ beside images/)."""
    import cv2
    from ultralytics.data.utils import img2label_paths

    from pneumo_hpc.detect.rsna_metric import dataset_score

    paths = list_images(root, entry)
    truth, images = {}, []
    for path, label in zip(paths, img2label_paths([str(p) for p in paths])):
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise DetectError(f"{path}: unreadable image")
        truth[str(path)] = read_yolo_labels(Path(label), img.shape[1], img.shape[0])
        images.append(img)
    preds = detect_boxes(model, images, imgsz=imgsz, conf=conf, device=device)
    return dataset_score(truth, dict(zip(truth, preds)))


def _box_metrics(metrics) -> dict:
    """ultralytics' DetMetrics (single process) or results dict (a DDP run's checkpoint) -> our keys."""
    d = getattr(metrics, "results_dict", metrics) or {}
    keys = {"precision": "metrics/precision(B)", "recall": "metrics/recall(B)", "map50": "metrics/mAP50(B)",
            "map50_95": "metrics/mAP50-95(B)"}
    return {ours: float(d[theirs]) for ours, theirs in keys.items() if theirs in d}


def _loop_time(csv_path: Path) -> float | None:
    try:
        lines = csv_path.read_text(encoding="utf-8").splitlines()
        header = [h.strip() for h in lines[0].split(",")]
        return float(lines[-1].split(",")[header.index("time")])
    except (OSError, IndexError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- training

def train(cfg: TrainConfig) -> dict:
    """Train, evaluate, write RUN/metrics.json (and append to the results file when that module exists)."""
    run_dir = Path(cfg.out).expanduser().resolve()
    data_yaml, data = resolve_data(cfg.data, run_dir)
    root = Path(data["path"])
    n_train, n_val = len(list_images(root, data["train"])), len(list_images(root, data["val"]))
    single_process_env()
    device = device_string(cfg.gpus)
    model, model_kwargs = load_model(cfg.model)
    from pneumo_hpc.detect.offline import amp_mode

    amp = amp_mode(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                         workers=cfg.workers, seed=cfg.seed, project=str(run_dir / "ultralytics"), name=ULTRA_NAME,
                         exist_ok=True, amp=amp, plots=False, verbose=False, **model_kwargs)
    train_time = time.perf_counter() - start
    save_dir = Path(model.trainer.save_dir) if getattr(model, "trainer", None) else run_dir / "ultralytics" / ULTRA_NAME
    weights = save_dir / "weights" / "best.pt"
    if not weights.is_file():
        weights = save_dir / "weights" / "last.pt"
    best = model  # train() leaves the best (else last) checkpoint loaded, in the DDP parent too
    eval_start = time.perf_counter()
    box = _box_metrics(result)
    eval_device = "cpu" if device == "cpu" else "0"
    if len(box) < 4:  # neither the validator nor the checkpoint carried them: validate the best weights here
        box = _box_metrics(best.val(data=str(data_yaml), imgsz=cfg.imgsz, batch=cfg.batch, device=eval_device,
                                    plots=False, verbose=False, project=str(run_dir / "ultralytics"), name="val",
                                    exist_ok=True))
    rsna, rsna_n = rsna_on_split(best, root, data["val"], imgsz=cfg.imgsz, conf=cfg.conf, device=eval_device)
    eval_time = time.perf_counter() - eval_start
    loop_time = _loop_time(save_dir / "results.csv")
    metrics = detector_record(
        label=cfg.label or None, **box, rsna_map=rsna, rsna_n_images=rsna_n, rsna_conf=cfg.conf,
        train_time_s=round(train_time, 3), images_per_s=round(n_train * cfg.epochs / train_time, 3),
        loop_time_s=loop_time,
        loop_images_per_s=round(n_train * cfg.epochs / loop_time, 3) if loop_time else None,
        eval_time_s=round(eval_time, 3),  # the kit's own evaluation after training (rsna_map)
        gpus=cfg.gpus, epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, model=cfg.model,
        n_train=n_train, n_val=n_val,
        # the report reads device as a type; ultralytics' own device string is kept beside it
        device="cpu" if device == "cpu" else "cuda", device_arg=device, amp=amp,
        threads_per_rank=cpu_threads() if device == "cpu" else None,
        strategy="ddp" if cfg.gpus > 1 else "serial", world_size=max(cfg.gpus, 1), nodes=1,
        seed=cfg.seed, workers=cfg.workers, data=str(root), data_yaml=str(data_yaml),
        weights=str(weights), ultralytics_dir=str(save_dir), run_dir=str(run_dir))
    write_metrics(run_dir, metrics, cfg.results or run_dir.parent / "results.jsonl")
    return metrics


def write_metrics(run_dir: Path, metrics: dict, results: Path) -> None:
    """`metrics`: a detector_record (NaN already null: no val image counted is not JSON)."""
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    append_result(results, metrics)
