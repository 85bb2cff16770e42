"""Scaling report: speedup/efficiency arithmetic, baselines, Amdahl fit, reference rows, and the CLI's files."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from pneumo_hpc.report import reference
from pneumo_hpc.cli import main
from pneumo_hpc.report.amdahl import amdahl_fit, amdahl_speedup
from pneumo_hpc.report.runs import ReportError, configuration_label
from pneumo_hpc.report.table import CSV_COLUMNS, REF_CSV_COLUMNS, build_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def clf(strategy="serial", world_size=1, time=100.0, device="cpu", model="small-cnn", data="prep-a", **extra):
    backend = {"serial": "none"}.get(strategy, "nccl" if device == "cuda" else "gloo")
    return {"kind": "classifier", "model": model, "strategy": strategy, "backend": backend,
            "launcher": "local" if strategy == "serial" else "torchrun", "world_size": world_size, "nodes": 1,
            "device": device, "epochs": 5, "batch_size": 32, "train_time_s": time, "samples_per_s": 1000.0 / time,
            "accuracy": 0.85, "precision": 0.8, "recall": 0.7, "f1": 0.75, "roc_auc": 0.9, "n_train": 600,
            "n_val": 200, "data": data, **extra}


def det(gpus=4, time=300.0, **extra):
    return {"kind": "detector", "model": "yolov8n.yaml", "gpus": gpus, "device": "cuda" if gpus else "cpu",
            "train_time_s": time, "images_per_s": 1300.0, "map50": 0.41, "map50_95": 0.15, "rsna_map": 0.2,
            "data": "prep-a", **extra}


def by_config(rows):
    return {r["configuration"]: r for r in rows}


def test_speedup_and_efficiency_from_known_times():
    rows, fits = build_table([clf(), clf("ddp", 2, 55.0), clf("ddp", 4, 30.0)])
    got = by_config(rows)
    assert list(got) == ["serial CNN (CPU)", "2-CPU DDP", "4-CPU DDP"]
    assert got["serial CNN (CPU)"]["speedup"] == pytest.approx(1.0)
    assert got["2-CPU DDP"]["speedup"] == pytest.approx(1.818, abs=1e-3)
    assert got["2-CPU DDP"]["efficiency"] == pytest.approx(0.909, abs=1e-3)
    assert got["4-CPU DDP"]["speedup"] == pytest.approx(3.333, abs=1e-3)
    assert got["4-CPU DDP"]["efficiency"] == pytest.approx(0.833, abs=1e-3)
    assert [f["series"] for f in fits] == ["classifier small-cnn DDP (CPU)"]
    assert fits[0]["points"] == [(2, pytest.approx(100 / 55)), (4, pytest.approx(100 / 30))]


@pytest.mark.parametrize("f_true", [0.0, 0.03, 0.1, 0.5, 1.0])
def test_amdahl_fit_recovers_serial_fraction(f_true):
    n = np.array([1, 2, 4, 8, 16, 32])
    assert amdahl_fit(n, amdahl_speedup(f_true, n)) == pytest.approx(f_true, abs=1e-3)


def test_amdahl_fit_noisy_and_bounded():
    rng = np.random.default_rng(0)
    n = np.array([2, 4, 8, 16] * 5)
    noisy = amdahl_speedup(0.1, n) * (1 + rng.normal(0, 0.01, n.size))
    assert amdahl_fit(n, noisy) == pytest.approx(0.1, abs=5e-3)
    assert amdahl_fit([2, 4], [2.5, 6.0]) == 0.0  # superlinear: clipped at the bound
    assert amdahl_fit([2, 4], [0.5, 0.4]) == 1.0  # slower than serial
    with pytest.raises(ValueError):
        amdahl_fit([], [])


def test_rows_without_baseline_get_dashes(tmp_path):
    records = [clf(), clf("ddp", 2, 55.0),
               clf("ddp", 2, 40.0, data="prep-b"),   # other data: the prep-a serial run is not its baseline
               clf("ddp", 2, 20.0, model="resnet18"),
               det(4)]
    rows, fits = build_table(records)
    got = by_config(rows)
    assert got["2-CPU DDP ResNet-18"]["speedup"] is None and got["2-CPU DDP ResNet-18"]["efficiency"] is None
    assert got["YOLOv8n (4 GPUs)"]["speedup"] is None
    other = [r for r in rows if r["data"] == "prep-b"]
    assert len(other) == 1 and other[0]["speedup"] is None
    assert len(fits) == 1  # only the prep-a CPU DDP series has a baseline

    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("| 2-CPU DDP ResNet-18 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "-" and cells[6] == "-"  # speedup, efficiency
    table = pd.read_csv(tmp_path / "rep" / "report.csv")
    assert table.loc[table.configuration == "2-CPU DDP ResNet-18", "speedup"].isna().all()


def test_baseline_prefers_same_device_then_falls_back():
    rows, fits = build_table([clf(time=100.0), clf(time=10.0, device="cuda"), clf("ddp", 2, 6.0, device="cuda"),
                              clf("fsdp", 3, 5.0, device="cuda", data="prep-b"), clf(data="prep-b", time=50.0)])
    got = {(r["configuration"], r["data"]): r for r in rows}
    gpu_ddp = got[("2-GPU DDP", "prep-a")]
    assert gpu_ddp["baseline"] == "serial CNN (GPU)" and gpu_ddp["speedup"] == pytest.approx(10 / 6)
    assert got[("serial CNN (GPU)", "prep-a")]["speedup"] == pytest.approx(1.0)
    fsdp = got[("3-GPU FSDP", "prep-b")]  # no GPU serial run for prep-b: the CPU one, as the reference study did
    assert fsdp["baseline"] == "serial CNN (CPU)" and fsdp["speedup"] == pytest.approx(10.0)
    assert not fsdp["_same_device_baseline"]
    assert {f["series"] for f in fits} == {"classifier small-cnn DDP (GPU)"}  # cross-device is not fitted


def test_precision_and_compile_are_separate_configurations():
    records = [clf(time=10.0, device="cuda", compute_dtype="fp32", compile=False),
               clf(time=6.0, device="cuda", compute_dtype="bf16", compile=True),
               clf("ddp", 2, 5.5, device="cuda", compute_dtype="fp32", compile=False),
               clf("ddp", 2, 3.3, device="cuda", compute_dtype="bf16", compile=True),
               clf("ddp", 4, 3.0, device="cuda", compute_dtype="bf16", compile=True)]
    rows, fits = build_table(records)
    ddp = {(r["workers"], r["compute_dtype"]): r for r in rows if r["strategy"] == "ddp"}
    assert len(rows) == 5  # nothing averaged across precisions
    assert ddp[(2, "fp32")]["speedup"] == pytest.approx(10 / 5.5)  # each against its own kind of serial run
    assert ddp[(2, "bf16")]["speedup"] == pytest.approx(6 / 3.3)
    assert sorted(f["series"] for f in fits) == ["classifier small-cnn DDP (GPU, bf16, compiled)",
                                                 "classifier small-cnn DDP (GPU, fp32)"]


def test_detector_model_named_by_its_file_stem():
    rows, _ = build_table([det(4), det(1, time=900.0, model="/home/u/weights/YOLOv8n.pt"), det(0, time=5000.0)])
    got = by_config(rows)
    assert set(got) == {"YOLOv8n (4 GPUs)", "YOLOv8n (1 GPU)", "YOLOv8n (CPU)"}
    assert got["YOLOv8n (4 GPUs)"]["speedup"] == pytest.approx(3.0)  # against the 1-GPU run, not the CPU one
    assert got["YOLOv8n (4 GPUs)"]["ref_configuration"] == "YOLOv8 (4 GPUs)"
    assert got["YOLOv8n (CPU)"]["workers"] == 1 and got["YOLOv8n (CPU)"]["speedup"] == pytest.approx(1.0)


def test_repeats_are_averaged_and_duplicates_dropped(tmp_path):
    a = clf("ddp", 2, 50.0, run_dir="/x/runs/ddp-a", timestamp="t1")
    b = clf("ddp", 2, 60.0, run_dir="/x/runs/ddp-b", timestamp="t2")
    run_dir = tmp_path / "ddp-a"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({k: v for k, v in a.items() if k != "run_dir"}))
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in (clf(), a, b)))
    from pneumo_hpc.report.record import load_results
    rows, _ = build_table(load_results([jsonl, run_dir]))  # ddp-a read twice: once counted
    ddp = by_config(rows)["2-CPU DDP"]
    assert ddp["runs"] == 2
    assert ddp["train_time_s"] == pytest.approx(55.0)
    assert ddp["train_time_std_s"] == pytest.approx(np.std([50.0, 60.0], ddof=1))
    assert ddp["speedup"] == pytest.approx(100 / 55)


def test_explicit_baseline_label_and_unknown_label():
    records = [clf(time=100.0), clf(time=10.0, device="cuda"), clf("ddp", 2, 5.0, device="cuda")]
    rows, _ = build_table(records, baseline="serial CNN (CPU)")
    assert by_config(rows)["2-GPU DDP"]["speedup"] == pytest.approx(20.0)
    with pytest.raises(ReportError, match=r"'nope' matches no record; configurations are: 2-GPU DDP, serial CNN"):
        build_table(records, baseline="nope")


def test_config_label_given_or_derived():
    assert configuration_label("classifier", "small-cnn", "serial", "cpu", 1) == "serial CNN (CPU)"
    assert configuration_label("classifier", "small-cnn", "ddp", "cpu", 4) == "4-CPU DDP"
    assert configuration_label("classifier", "small-cnn", "ddp", "cuda", 2) == "2-GPU DDP"
    assert configuration_label("classifier", "small-cnn", "fsdp", "cuda", 3) == "3-GPU FSDP"
    assert configuration_label("classifier", "resnet18", "ddp", "cuda", 8, nodes=2) == "8-GPU DDP ResNet-18, 2 nodes"
    assert configuration_label("detector", "yolov8n", None, "cuda", 4) == "YOLOv8n (4 GPUs)"
    rows, _ = build_table([clf(config="my run"), clf(device="cuda:0")])
    assert {r["configuration"] for r in rows} == {"my run", "serial CNN (GPU)"}


def test_bad_records_name_their_source():
    with pytest.raises(ReportError, match=r"f\.jsonl:7: classifier record without world_size"):
        build_table([{"kind": "classifier", "strategy": "ddp", "_source": "f.jsonl:7"}])
    with pytest.raises(ReportError, match=r"f\.jsonl:2: train_time_s='fast' is not a number"):
        build_table([{**clf(), "train_time_s": "fast", "_source": "f.jsonl:2"}])
    with pytest.raises(ReportError, match=r"kind='segmenter'"):
        build_table([{"kind": "segmenter"}])
    with pytest.raises(ReportError, match=r"world_size=0 must be a whole number >= 1"):
        build_table([clf(world_size=0)])
    with pytest.raises(ReportError, match="no result records"):
        build_table([])


def test_reference_rows_only_where_configurations_match():
    records = [clf(), clf("ddp", 2, 55.0), clf("ddp", 8, 20.0), clf("ddp", 2, 5.0, device="cuda"),
               clf("fsdp", 2, 5.0, device="cuda"), clf("fsdp", 3, 4.0, device="cuda"),
               clf("ddp", 4, 30.0, model="resnet18"), det(4), det(2)]
    rows, _ = build_table(records)
    matched = {r["configuration"]: r["ref_configuration"] for r in rows}
    assert matched == {
        "serial CNN (CPU)": "serial CNN (CPU)", "2-CPU DDP": "2-CPU DDP", "8-CPU DDP": None,
        "2-GPU DDP": "2-GPU DDP", "2-GPU FSDP": None, "3-GPU FSDP": "3-GPU FSDP", "4-CPU DDP ResNet-18": None,
        "YOLOv8n (4 GPUs)": "YOLOv8 (4 GPUs)", "YOLOv8n (2 GPUs)": None,
    }
    two = by_config(rows)["2-CPU DDP"]
    assert (two["ref_train_time_s"], two["ref_accuracy_pct"], two["ref_speedup"], two["ref_efficiency"]) == \
        (3273.0, 76.0, 1.69, 0.84)
    assert reference.match("classifier", "small-cnn", "ddp", "cpu", 4)["train_time_s"] == 3056.0
    rows, _ = build_table(records, reference=False)
    assert not any(k.startswith("ref_") for r in rows for k in r)


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_cli_writes_markdown_csv_and_plots(tmp_path):
    jsonl = tmp_path / "results.jsonl"
    records = [clf(), clf("ddp", 2, 55.0), clf("ddp", 4, 30.0), clf("ddp", 3, 50.0), det(4)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "report.csv", "report.md", "scaling_model.png",
                                                     "speedup.png", "time.png"]  # no temp files left behind
    for name in ("speedup.png", "time.png", "accuracy.png", "scaling_model.png"):
        _check_png(out / name)

    table = pd.read_csv(out / "report.csv")
    assert list(table.columns) == list(CSV_COLUMNS + REF_CSV_COLUMNS)
    assert list(table.configuration) == ["serial CNN (CPU)", "2-CPU DDP", "3-CPU DDP", "4-CPU DDP",
                                         "YOLOv8n (4 GPUs)"]
    four = table.set_index("configuration").loc["4-CPU DDP"]
    assert four.speedup == pytest.approx(10 / 3) and four.efficiency == pytest.approx(10 / 12)
    assert four.accuracy_pct == pytest.approx(85.0) and four.ref_configuration == "4-CPU DDP"
    assert pd.isna(table.set_index("configuration").loc["3-CPU DDP", "ref_configuration"])

    md = (out / "report.md").read_text()
    assert md.strip() in result.output  # the table goes to stdout too
    assert "| 2-CPU DDP | 2 | 55.0 s | 85.0 % | 18 | 1.82x | 0.91 | 2-CPU DDP | 3273 s | 76.0 % | 1.69x | 0.84 |" in md
    assert "| YOLOv8n (4 GPUs) | 4 | 300.0 s | mAP50 0.410 |" in md
    assert "reference study (published)" in md
    assert "serial fraction f" in md and "classifier small-cnn DDP (CPU)" in md

    plain = tmp_path / "plain"
    result = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(plain), "--no-reference"])
    assert result.exit_code == 0, result.output
    assert "ref." not in (plain / "report.md").read_text() and "3273" not in result.output
    assert not any(c.startswith("ref_") for c in pd.read_csv(plain / "report.csv").columns)


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps(clf()) + "\n{broken\n")
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert f"{bad}:2: not a valid result record" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "o"), "--skip-bad-lines"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["report", str(bad), "--out", str(tmp_path / "o"), "--baseline", "x",
                                         "--skip-bad-lines"])
    assert result.exit_code == 1 and "--baseline 'x' matches no record" in result.output


def _breakdown(data, compute, comm, other=0.5):
    return {"data_s": data, "compute_s": compute, "comm_s": comm, "optimizer_s": 1.0, "checkpoint_s": 0.5,
            "eval_s": 2.0, "other_s": other}


def test_time_breakdown_per_epoch_table_and_plot(tmp_path):
    from pneumo_hpc.report.write import write_report

    # epochs 5: the record's sums are five epochs' seconds
    records = [clf(time_breakdown=_breakdown(10.0, 80.0, 0.0), record_version=1),
               clf("ddp", 2, 55.0, time_breakdown=_breakdown(5.0, 40.0, 10.0), record_version=1),
               clf("ddp", 2, 57.0, time_breakdown=_breakdown(5.0, 40.0, 20.0), record_version=1),
               clf("ddp", 4, 30.0)]  # record_version 0: no breakdown, left out
    rows, _ = build_table(records)
    got = by_config(rows)
    assert got["serial CNN (CPU)"]["time_breakdown"]["compute_s"] == pytest.approx(16.0)
    assert got["2-CPU DDP"]["time_breakdown"]["comm_s"] == pytest.approx(3.0)  # mean of 2 and 4 per epoch
    assert got["4-CPU DDP"]["time_breakdown"] is None
    out = write_report(records, tmp_path / "rep")
    md = out["markdown"]
    assert "## Where the time goes" in md and "![time breakdown per epoch](time_breakdown.png)" in md
    table = md.split("## Where the time goes")[1].split("\n\n")[1].splitlines()
    assert table[0] == ("| configuration | runs | data | compute | comm | optimizer | checkpoint | eval | other | "
                        "total | data / step | comm / step |")
    assert table[2:] == [  # a step: data + compute + comm + optimizer (18.2 s and 12.2 s)
        "| serial CNN (CPU) | 1 | 2.00 | 16.00 | 0.00 | 0.20 | 0.10 | 0.40 | 0.10 | 18.80 | 11 % | 0 % |",
        "| 2-CPU DDP | 2 | 1.00 | 8.00 | 3.00 | 0.20 | 0.10 | 0.40 | 0.10 | 12.80 | 8 % | 25 % |"]
    _check_png(tmp_path / "rep" / "time_breakdown.png")
    plain = write_report([clf(), clf("ddp", 2, 55.0)], tmp_path / "plain")
    assert "Where the time goes" not in plain["markdown"] and not (tmp_path / "plain" / "time_breakdown.png").exists()


def test_label_key_and_old_config_key_name_the_row():
    rows, _ = build_table([clf(label="new", config="new"), clf(time=90.0, config="old"),
                           det(4, config={"not": "a label"})])
    assert {r["configuration"] for r in rows} == {"new", "old", "YOLOv8n (4 GPUs)"}
    assert by_config(rows)["YOLOv8n (4 GPUs)"]["throughput"] == 1300.0  # images_per_s read as samples_per_s
