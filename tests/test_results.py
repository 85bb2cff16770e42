"""Run records: concurrent appends stay whole, provenance is filled in, every input form loads, bad lines are named."""
import datetime
import json
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

import pneumo_hpc
from pneumo_hpc.report.provenance import git_revision, parse_visible_devices
from pneumo_hpc.report.record import ResultsError, SOURCE_KEY, append_result, load_results

PROCS, LINES, PAYLOAD = 4, 50, 20_000  # lines far above PIPE_BUF (4 KiB), so only the lock keeps them whole


def _writer(path, proc):
    for i in range(LINES):
        append_result(path, {"kind": "classifier", "proc": proc, "i": i, "payload": f"{proc}-{i}-" * (PAYLOAD // 6)})


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "deep" / "dir" / "results.jsonl"  # parents are created
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, p)) for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert len(lines) == PROCS * LINES
    seen = set()
    for line in lines:
        record = json.loads(line)  # a torn or interleaved line fails here
        assert record["payload"] == f"{record['proc']}-{record['i']}-" * (PAYLOAD // 6)
        seen.add((record["proc"], record["i"]))
    assert seen == {(p, i) for p in range(PROCS) for i in range(LINES)}
    assert len(load_results(path)) == PROCS * LINES


def test_append_adds_provenance_and_keeps_given_fields(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    monkeypatch.delenv("SLURM_NNODES", raising=False)
    path = tmp_path / "r.jsonl"
    full = append_result(path, {"kind": "classifier", "accuracy": np.float32(0.5), "roc_auc": float("nan"),
                                "world_size": np.int64(2), "run_dir": tmp_path / "run"})
    stored = json.loads(path.read_text())
    assert stored == full
    stamp = datetime.datetime.fromisoformat(stored["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 60
    assert isinstance(stored["git_revision"], str) and stored["git_revision"]
    hw = stored["hardware"]
    for key in ("cpu_model", "cpu_cores", "cpu_affinity", "gpu_name", "gpu_count", "hostname", "nodes"):
        assert key in hw
    assert hw["cpu_cores"] >= 1 and 1 <= hw["cpu_affinity"] <= hw["cpu_cores"]
    assert stored["nodes"] == 1 and stored["hostname"] == hw["hostname"]
    # numpy values become plain numbers, NaN becomes null (strict JSON), paths strings
    assert stored["accuracy"] == 0.5 and stored["world_size"] == 2 and stored["roc_auc"] is None
    assert stored["run_dir"] == str(tmp_path / "run")
    assert "NaN" not in path.read_text()

    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "3")
    assert append_result(path, {"kind": "classifier"})["nodes"] == 3
    assert append_result(path, {"kind": "classifier", "nodes": 2, "timestamp": "t"})["nodes"] == 2
    assert json.loads(path.read_text().splitlines()[-1])["timestamp"] == "t"


def test_append_after_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"kind": "classifier", "a": 1}\n{"kind": "classif')  # a writer killed mid-line
    append_result(path, {"kind": "detector", "gpus": 1})
    with pytest.raises(ResultsError, match=r"r\.jsonl:2: not a valid result record"):
        load_results(path)
    records = load_results(path, strict=False)
    assert [r["kind"] for r in records] == ["classifier", "detector"]


def test_hardware_hidden_gpus_and_no_torch_import(tmp_path):
    code = ("import sys, json; from pneumo_hpc.report.provenance import hardware_info; hw = hardware_info(); "
            "print(json.dumps([hw, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "SLURM_JOB_NUM_NODES": "4"})
    hw, torch_imported = json.loads(out.stdout)
    assert hw["gpu_count"] == 0 and hw["gpu_name"] is None and hw["nodes"] == 4
    assert hw["cpu_model"] and hw["cpu_model"] != "unknown"
    assert not torch_imported  # a CPU-only caller must not pay for importing torch


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", []), ("-1", []), ("0", ["0"]), ("0,1", ["0", "1"]), (" 2 , 3 ", ["2", "3"]),
    ("1,-1,2", ["1"]), ("GPU-8d1c0e,MIG-aa", ["GPU-8d1c0e", "MIG-aa"]), ("0,,1", ["0"]),
])
def test_parse_visible_devices(value, expected):
    assert parse_visible_devices(value) == expected


def test_hardware_info_never_initializes_cuda():
    # The trainer calls this beside a live process group; a CUDA context created here would cost GPU memory
    # and poison later forks. Only meaningful where a GPU exists, but cheap everywhere.
    code = ("import torch, json; from pneumo_hpc.report.provenance import hardware_info; hw = hardware_info(); "
            "print(json.dumps([hw['gpu_count'], torch.cuda.device_count(), torch.cuda.is_initialized()]))")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=env)
    gpu_count, torch_count, initialized = json.loads(out.stdout.splitlines()[-1])
    assert gpu_count == torch_count
    assert initialized is False


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_git_revision_clean_dirty_and_not_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("a")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "x")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_revision(repo) == head
    (repo / "untracked.txt").write_text("u")  # untracked files (run outputs) do not make a tree dirty
    assert git_revision(repo) == head
    (repo / "f.txt").write_text("b")
    assert git_revision(repo) == head + "-dirty"
    # Not a checkout, or a folder inside someone else's checkout: the installed version.
    assert git_revision(tmp_path / "nowhere") == pneumo_hpc.__version__
    (repo / "sub").mkdir()
    assert git_revision(repo / "sub") == pneumo_hpc.__version__


def test_load_results_jsonl_metrics_json_and_run_dir(tmp_path):
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text('{"kind": "classifier", "world_size": 1}\n\n   \n{"kind": "classifier", "world_size": 2}\n')
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"kind": "detector", "gpus": 2}, indent=2))  # pretty-printed object
    run = tmp_path / "runs" / "serial"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"kind": "classifier", "world_size": 1, "accuracy": 0.8}))
    sweep = tmp_path / "sweep"  # a directory of JSONL files, no metrics.json
    sweep.mkdir()
    (sweep / "a.jsonl").write_text('{"kind": "classifier", "world_size": 4}\n')

    records = load_results([jsonl, metrics, run, sweep])
    assert [r.get("world_size", r.get("gpus")) for r in records] == [1, 2, 2, 1, 4]
    assert records[0][SOURCE_KEY] == f"{jsonl}:1" and records[1][SOURCE_KEY] == f"{jsonl}:4"
    assert records[3]["run_dir"] == str(run) and records[3]["accuracy"] == 0.8
    assert load_results(str(jsonl))[1]["world_size"] == 2  # one path, as a string


def test_load_results_bad_input_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "classifier"}\n\n{"kind": "classifier", oops}\n[1, 2]\n')
    with pytest.raises(ResultsError, match=rf"{bad}:3: not a valid result record"):
        load_results(bad)
    kept = load_results(bad, strict=False)
    assert len(kept) == 1

    arr = tmp_path / "arr.jsonl"
    arr.write_text("[1, 2]\n")
    with pytest.raises(ResultsError, match=r"arr\.jsonl:1: .*expected a JSON object, got list"):
        load_results(arr)
    broken = tmp_path / "run" / "metrics.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.raises(ResultsError, match=r"metrics\.json: not valid JSON"):
        load_results(broken.parent)
    with pytest.raises(ResultsError, match=r"missing\.jsonl: no such results file"):
        load_results(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=r"empty: a directory without metrics\.json"):
        load_results(tmp_path / "empty")


# --- the schema: builders, upgrade of older records ----------------------------------------------------------------

from pneumo_hpc.report.record import (BREAKDOWN_KEYS, CLASSIFIER_KEYS, DETECTOR_KEYS, RECORD_VERSION,  # noqa: E402
                                      classifier_record, detector_record, jsonable, upgrade)

CLF_FIELDS = {"model": "small-cnn", "strategy": "ddp", "world_size": 2, "device": "cpu", "epochs": 2,
              "train_time_s": 10.0}


def breakdown(scale=1.0):
    return {k: scale * (i + 1) for i, k in enumerate(BREAKDOWN_KEYS)}


def test_classifier_record_is_ordered_clean_and_labelled(tmp_path):
    history = [{"epoch": 1, "train_loss": float("nan"), "time_breakdown": breakdown()}]
    record = classifier_record(label="2-CPU DDP", history=history, roc_auc=float("inf"), run_dir=tmp_path,
                               time_breakdown=breakdown(2), accuracy=np.float32(0.5), **CLF_FIELDS)
    assert record["kind"] == "classifier" and record["record_version"] == RECORD_VERSION == 2
    assert record["label"] == record["config"] == "2-CPU DDP"
    assert list(record) == [k for k in CLASSIFIER_KEYS if k in record]  # the schema's order, whatever was passed
    assert record["roc_auc"] is None and record["history"][0]["train_loss"] is None
    assert record["accuracy"] == 0.5 and record["run_dir"] == str(tmp_path)
    assert record["time_breakdown"]["other_s"] == 14.0
    json.dumps(record, allow_nan=False)
    assert classifier_record(**CLF_FIELDS)["label"] is None  # no label: both keys present, null


def test_builders_refuse_what_the_schema_does_not_name():
    with pytest.raises(TypeError, match=r"unknown key\(s\) acuracy; a new key goes into"):
        classifier_record(acuracy=0.5, **CLF_FIELDS)
    with pytest.raises(TypeError, match="the builder sets kind"):
        classifier_record(config="x", **CLF_FIELDS)
    with pytest.raises(TypeError, match="missing world_size, train_time_s"):
        classifier_record(model="m", strategy="serial", device="cpu", epochs=1)
    with pytest.raises(ValueError, match=r"time_breakdown: expected the keys data_s, .*got \['data_s'\]"):
        classifier_record(time_breakdown={"data_s": 1.0}, **CLF_FIELDS)
    with pytest.raises(ValueError, match=r"history\[1\]\.time_breakdown: comm_s must be seconds >= 0"):
        classifier_record(history=[{}, {"time_breakdown": {**breakdown(), "comm_s": -1.0}}], **CLF_FIELDS)
    with pytest.raises(TypeError, match="unknown key"):
        detector_record(world_size=1, accuracy=0.5, model="yolov8n.yaml", gpus=0, device="cpu", epochs=1,
                        train_time_s=1.0)


def test_every_reported_validation_key_is_in_the_schema():
    from pneumo_hpc.classify.metrics import REPORTED_KEYS

    assert set(REPORTED_KEYS) <= set(CLASSIFIER_KEYS)


def test_detector_record_as_the_trainer_builds_it():
    record = detector_record(label=None, precision=0.5, recall=0.4, map50=0.3, map50_95=0.1, rsna_map=float("nan"),
                             rsna_n_images=0, rsna_conf=0.25, train_time_s=2.0, images_per_s=40.0, loop_time_s=None,
                             loop_images_per_s=None, eval_time_s=0.5, gpus=0, epochs=1, imgsz=64, batch=8,
                             model="yolov8n.yaml", n_train=80, n_val=20, device="cpu", device_arg="cpu", amp=False,
                             strategy="serial", world_size=1, nodes=1, seed=0, workers=0, data="d",
                             data_yaml="d/data.yaml", weights="w.pt", ultralytics_dir="u", run_dir="r")
    assert record["rsna_map"] is None and record["samples_per_s"] == record["images_per_s"] == 40.0
    assert record["record_version"] == RECORD_VERSION and record["kind"] == "detector" and record["label"] is None
    assert list(record) == [k for k in DETECTOR_KEYS if k in record]
    assert upgrade(record) == {**record}  # a current record needs nothing


def test_jsonable_is_the_one_nan_policy(tmp_path):
    value = {1: (float("nan"), np.float64("inf"), np.arange(2)), "p": tmp_path, "ok": [1.5, None, "s"]}
    assert jsonable(value) == {"1": [None, None, [0, 1]], "p": str(tmp_path), "ok": [1.5, None, "s"]}


def test_version_0_records_are_read_in_the_current_schema(tmp_path):
    old_clf = {"kind": "classifier", "strategy": "ddp", "world_size": 2, "device": "cuda:1", "config": "mine",
               "images_per_s": 12.0}
    old_det = {"kind": "detector", "model": "yolov8n.yaml", "gpus": 4, "batch": 16, "images_per_s": 99.0,
               "config": "4-GPU YOLO"}
    in_checkpoint = {"kind": "classifier", "config": {"run": {"label": None}}}  # a checkpoint's config dict
    no_kind = {"strategy": "serial", "world_size": 1}
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (old_clf, old_det, in_checkpoint, no_kind)))
    clf, det, ckpt, bare = load_results(path)
    assert clf["record_version"] == 0 and clf["label"] == "mine" and clf["samples_per_s"] == 12.0
    assert clf["device"] == "cuda"
    assert (det["world_size"], det["strategy"], det["device"], det["batch_size"], det["samples_per_s"],
            det["label"]) == (4, "ddp", "cuda", 16, 99.0, "4-GPU YOLO")
    assert "label" not in ckpt or ckpt["label"] is None
    assert bare["kind"] == "classifier"
    cpu = upgrade({"kind": "detector", "gpus": 0})
    assert (cpu["world_size"], cpu["strategy"], cpu["device"]) == (1, "serial", "cpu")
    assert upgrade({"kind": "detector", "gpus": "many"}).get("world_size") is None  # left for the reader to reject
    assert upgrade(upgrade(old_det)) == upgrade(old_det)
    assert "record_version" not in old_det  # the caller's dict is not changed
