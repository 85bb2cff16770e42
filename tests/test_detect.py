"""YOLOv8 detection end to end, for real and offline: `detect train` (1 CPU epoch on the synthetic set) with every
outbound connection made to fail, then `predict` on DICOMs (one corrupt), then `detect score` on its CSV."""
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import pytest

from conftest import VENV_BIN, run, tool_env
from pneumo_hpc.detect import DetectError
from pneumo_hpc.detect.rsna_metric import read_labels, read_submission
from pneumo_hpc.detect.yolo import single_process_env

# Loaded by every Python child through PYTHONPATH: any non-loopback connect/resolve is logged and refused.
NO_NETWORK = textwrap.dedent('''
    import ipaddress, os, socket, traceback

    def _local(host):
        if isinstance(host, bytes):
            host = host.decode()
        if host in (None, "", "localhost"):
            return True
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def _deny(what, target):
        with open(os.environ["NO_NETWORK_LOG"], "a") as log:
            log.write(f"{what} {target!r} pid {os.getpid()}\\n" + "".join(traceback.format_stack()) + "\\n")
        raise OSError(f"network disabled by the test: {what} {target!r}")

    _getaddrinfo = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            _deny("getaddrinfo", host)
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo

    _create_connection = socket.create_connection
    def create_connection(address, *args, **kwargs):
        if not _local(address[0]):
            _deny("create_connection", address)
        return _create_connection(address, *args, **kwargs)
    socket.create_connection = create_connection

    def _guard(name):
        original = getattr(socket.socket, name)
        def method(self, address, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
                _deny(name, address)
            return original(self, address, *args, **kwargs)
        setattr(socket.socket, name, method)
    _guard("connect")
    _guard("connect_ex")
''')

METRIC_KEYS = {"kind", "map50", "map50_95", "precision", "recall", "rsna_map", "train_time_s", "images_per_s",
               "gpus", "epochs", "imgsz", "batch", "model", "n_train", "n_val", "device"}


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """Child environment with the network patched off and a fresh ultralytics config dir (no font, no settings)."""
    base = tmp_path_factory.mktemp("nonet")
    (base / "site").mkdir()
    (base / "site" / "sitecustomize.py").write_text(NO_NETWORK)
    log = base / "network.log"
    env = tool_env(PYTHONPATH=str(base / "site"), NO_NETWORK_LOG=str(log), PNEUMO_HPC_CACHE=str(base / "cache"))
    env.pop("YOLO_CONFIG_DIR", None)
    return env, log


def cli(*args):
    return [str(VENV_BIN / "pneumo-hpc"), *map(str, args)]


def test_network_guard_really_blocks(offline_env):
    """The guard itself: without it the zero-attempt assertions below would prove nothing."""
    env, log = offline_env
    log = log.with_name("guard.log")
    env = {**env, "NO_NETWORK_LOG": str(log)}
    probe = textwrap.dedent("""
        import socket, urllib.request
        attempts = [lambda: urllib.request.urlopen("http://example.com", timeout=2),
                    lambda: socket.getaddrinfo("pypi.org", 443),
                    lambda: socket.socket().connect(("1.1.1.1", 53)),
                    lambda: socket.socket().connect_ex(("8.8.8.8", 53))]
        for attempt in attempts:
            try:
                attempt()
            except OSError:
                pass
            else:
                raise SystemExit("not blocked")
    """)
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)
    text = log.read_text()
    for seen in ("create_connection ('example.com', 80)", "getaddrinfo 'pypi.org'", "connect ('1.1.1.1', 53)",
                 "connect_ex ('8.8.8.8', 53)"):
        assert seen in text


@pytest.fixture(scope="module")
def det_run(prep_dir, offline_env, tmp_path_factory):
    env, log = offline_env
    out = tmp_path_factory.mktemp("det") / "yolo"
    proc = run(cli("detect", "train", "--data", prep_dir / "yolo", "--model", "yolov8n.yaml", "--epochs", 1,
                   "--imgsz", 64, "--batch", 8, "--workers", 0, "--gpus", 0, "--out", out), env=env, timeout=600)
    return out, proc, log


def test_train_offline_writes_metrics(det_run, prep_dir):
    out, proc, log = det_run
    assert not log.exists(), f"ultralytics tried the network:\n{log.read_text()[:3000]}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    assert metrics["kind"] == "detector" and metrics["device"] == "cpu" and metrics["gpus"] == 0
    # from scratch on tiny data mAP is ~0: check ranges, never mAP > 0
    for key in ("map50", "map50_95", "precision", "recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["rsna_map"] is None or 0.0 <= metrics["rsna_map"] <= 1.0
    n_train = len(list((prep_dir / "yolo" / "images" / "train").glob("*.png")))
    n_val = len(list((prep_dir / "yolo" / "images" / "val").glob("*.png")))
    assert (metrics["n_train"], metrics["n_val"]) == (n_train, n_val)
    assert metrics["images_per_s"] == pytest.approx(n_train / metrics["train_time_s"], rel=1e-2)
    assert (out / "ultralytics" / "train" / "weights" / "best.pt").is_file()
    assert (out / "ultralytics" / "train" / "results.csv").is_file()
    assert json.loads(proc.stdout.strip().splitlines()[-1])["gpus"] == 0
    record = json.loads((out.parent / "results.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "detector" and record["run_dir"] == str(out)


def test_cli_import_stays_light():
    """The click module must not import ultralytics (it sets OMP_NUM_THREADS=1) or torch."""
    code = ("import os, sys; os.environ.pop('OMP_NUM_THREADS', None)\n"
            "import pneumo_hpc.cli, pneumo_hpc.detect.commands, pneumo_hpc.detect.yolo, pneumo_hpc.detect.predict\n"
            "heavy = [m for m in ('ultralytics', 'torch', 'cv2') if m in sys.modules]\n"
            "assert not heavy and 'OMP_NUM_THREADS' not in os.environ, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


THREADS_PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    from pneumo_hpc.detect.yolo import load_model

    model, kwargs = load_model("yolov8n.yaml")
    seen = {}
    model.add_callback("on_train_batch_start", lambda t: seen.setdefault("train", torch.get_num_threads()))
    model.add_callback("on_predict_batch_start", lambda p: seen.setdefault("predict", torch.get_num_threads()))
    model.train(data=sys.argv[1], epochs=1, imgsz=32, batch=8, device="cpu", workers=0, project=sys.argv[2],
                name="t", plots=False, val=False, verbose=False, **kwargs)
    model.predict(np.zeros((32, 32), np.uint8), imgsz=32, device="cpu", verbose=False)
    print(json.dumps({**seen, "affinity": len(os.sched_getaffinity(0)), "cpus": os.cpu_count()}))
""")


ULTRALYTICS_THREADS = min(8, max(1, (os.cpu_count() or 1) - 1))


@pytest.mark.parametrize("omp", [None, str(ULTRALYTICS_THREADS + 1)])
def test_cpu_runs_use_the_process_cpus(prep_dir, tmp_path, omp):
    """ultralytics sets torch to min(8, cores - 1) threads whenever it picks the CPU; the kit's models train and
    predict on OMP_NUM_THREADS when the user set it, else on every CPU the process may use."""
    if not omp and len(os.sched_getaffinity(0)) == ULTRALYTICS_THREADS:
        pytest.skip("on this machine ultralytics' own choice equals the kit's: this case cannot tell them apart")
    env = tool_env()
    env.pop("OMP_NUM_THREADS")
    if omp:
        env["OMP_NUM_THREADS"] = omp
    proc = run([str(VENV_BIN / "python"), "-c", THREADS_PROBE, str(prep_dir / "yolo" / "data.yaml"), str(tmp_path)],
               env=env, timeout=600)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    want = int(omp) if omp else seen["affinity"]
    assert (seen["train"], seen["predict"]) == (want, want)


def test_multi_task_launch_is_refused(prep_dir, tmp_path):
    """Under torchrun with 2 processes both refuse, before ultralytics is imported, and say how to launch."""
    cmd = [VENV_BIN / "torchrun", "--standalone", "--nproc_per_node", 2, "-m", "pneumo_hpc", "detect", "train",
           "--data", prep_dir / "yolo", "--epochs", 1, "--out", tmp_path / "run"]
    proc = run([str(c) for c in cmd], check=False, timeout=300)
    assert proc.returncode != 0
    assert "torchrun started 2 tasks" in proc.stderr and "HINT" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_single_task_rank_variables_are_cleared():
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "KEEP": "1"}
    single_process_env(env)
    assert env == {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "KEEP": "1"}
    srun_two = {"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2",
                "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_JOB_ID": "7"}
    with pytest.raises(DetectError, match="slurm started 2 tasks"):
        single_process_env(srun_two)


def test_bad_data_weights_and_gpus_are_named(prep_dir, tmp_path):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: pneumonia}\n")
    proc = run(cli("detect", "train", "--data", tmp_path, "--out", tmp_path / "run"), check=False)
    assert proc.returncode != 0 and "images/train: split directory or image list not found" in proc.stderr
    proc = run(cli("detect", "train", "--data", tmp_path / "missing", "--out", tmp_path / "run"), check=False)
    assert proc.returncode != 0 and "missing: no such file or directory" in proc.stderr
    proc = run(cli("detect", "train", "--data", prep_dir / "yolo", "--model", tmp_path / "yolov8n.pt",
                   "--out", tmp_path / "run"), check=False)
    assert proc.returncode != 0 and "yolov8n.pt: weights file not found" in proc.stderr
    proc = run(cli("detect", "train", "--data", prep_dir / "yolo", "--gpus", 64, "--out", tmp_path / "run"),
               check=False)
    assert proc.returncode != 0 and "--gpus 64 asked for, but this node shows" in proc.stderr


@pytest.fixture(scope="module")
def dicoms(rsna_dir, tmp_path_factory):
    """Six good DICOMs (with and without boxes) and one truncated file."""
    labels = read_labels(rsna_dir / "stage_2_train_labels.csv")
    pos = [p for p, boxes in labels.items() if boxes][:3]
    neg = [p for p, boxes in labels.items() if not boxes][:3]
    folder = tmp_path_factory.mktemp("dicoms")
    for pid in pos + neg:
        shutil.copy(rsna_dir / "stage_2_train_images" / f"{pid}.dcm", folder)
    whole = (rsna_dir / "stage_2_train_images" / f"{pos[0]}.dcm").read_bytes()
    (folder / "corrupt-0001.dcm").write_bytes(whole[: len(whole) // 3])
    return folder, pos + neg


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A classifier run directory as `pneumo-hpc train` leaves it (untrained weights: only gating is tested)."""
    import torch

    from pneumo_hpc.classify.models import build_model

    run_dir = tmp_path_factory.mktemp("cls")
    (run_dir / "checkpoint").mkdir()
    model = build_model("small-cnn", size=32)
    torch.save({"state_dict": model.state_dict(), "meta": {"model": "small-cnn", "size": 32}},
               run_dir / "checkpoint" / "model.pt")
    return run_dir


def _rows(path):
    with open(path, newline="") as fh:
        return {r["patientId"]: r["PredictionString"] for r in csv.DictReader(fh)}


def test_predict_then_score(det_run, dicoms, rsna_dir, offline_env, tmp_path):
    run_dir, _, log = det_run
    env = offline_env[0]
    folder, good = dicoms
    preds = tmp_path / "preds.csv"
    # conf 0.001 so the barely trained model still emits boxes to draw, scale and score
    proc = run(cli("predict", "--detector", run_dir, "--out", preds, "--overlays", tmp_path / "png",
                   "--conf", 0.001, folder), env=env)
    assert not log.exists(), f"prediction tried the network:\n{log.read_text()[:3000]}"
    assert "corrupt-0001.dcm" in proc.stderr and "truncated" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["n_files"], summary["n_predicted"], summary["n_bad"]) == (len(good) + 1, len(good), 1)
    rows = _rows(preds)
    assert sorted(rows) == sorted(good)
    submitted = read_submission(preds)
    assert sum(map(len, submitted.values())) == summary["n_boxes"] > 0
    # boxes are in the original 1024-px frame, not the detector's 64 px
    assert max(x + w for boxes in submitted.values() for _, x, _, w, _ in boxes) > 64
    assert all(0 <= x and x + w <= 1024.5 for boxes in submitted.values() for _, x, _, w, _ in boxes)
    png = cv2.imread(str(tmp_path / "png" / f"{good[0]}.png"))
    assert png.shape == (1024, 1024, 3)
    assert sorted(p.stem for p in (tmp_path / "png").glob("*.png")) == sorted(good + ["contact_sheet"])
    assert summary["contact_sheet"] == str(tmp_path / "png" / "contact_sheet.png")

    score = run(cli("detect", "score", "--labels", rsna_dir / "stage_2_train_labels.csv", "--submission", preds))
    result = json.loads(score.stdout)
    labels = read_labels(rsna_dir / "stage_2_train_labels.csv")
    # counted: every labelled positive (absent from the CSV = no prediction) + negatives given any box
    expected = sum(1 for pid, boxes in labels.items() if boxes or submitted.get(pid))
    assert result["n_images"] == expected
    assert 0.0 <= result["rsna_map"] <= 1.0


def test_predict_classifier_gating(det_run, dicoms, classifier_run, tmp_path):
    run_dir = det_run[0]
    folder, good = dicoms
    # probabilities are < 1.0, so every image is gated; test_predict_then_score shows the same call ungated has boxes
    proc = run(cli("predict", "--detector", run_dir, "--classifier", classifier_run, "--conf", 0.001,
                   "--cls-threshold", 1.0, "--out", tmp_path / "gated.csv", folder))
    assert sorted(_rows(tmp_path / "gated.csv").items()) == [(pid, "") for pid in sorted(good)]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_boxes"] == 0 and summary["n_gated"] > 0 and summary["cls_threshold"] == 1.0


def test_predict_needs_a_detector_run(tmp_path, dicoms):
    proc = run(cli("predict", "--detector", tmp_path, "--out", tmp_path / "p.csv", dicoms[0]), check=False)
    assert proc.returncode != 0 and "neither a weights file nor a `detect train` run" in proc.stderr
