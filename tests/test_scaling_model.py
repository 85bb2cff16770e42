"""The scaling model: the alpha-beta fit recovers known inputs, predictions follow the formula, a given network uses
the measured overlap, and the report writes the model's table, plot and cost."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pneumo_hpc.cli import main
from pneumo_hpc.report.scaling_model import (allreduce_s, comm_terms, cost_hours, fit_alpha_beta, predict_step_s,
                                             series_models)
from pneumo_hpc.report.table import build_table
from pneumo_hpc.report.write import write_report

ALPHA, TAU, COMPUTE = 2e-3, 0.05, 1.0  # s per hop, s per gradient message, s per serial step
STEPS = 5 * (600 // 32)  # epochs x (n_train // batch) of the records below


def step_time(w, alpha=ALPHA, tau=TAU, compute=COMPUTE):
    bandwidth, latency = comm_terms(w)
    return compute / np.asarray(w, dtype=float) + bandwidth * tau + latency * alpha


def clf(strategy="serial", world_size=1, time=None, **extra):
    return {"kind": "classifier", "model": "small-cnn", "strategy": strategy, "world_size": world_size,
            "device": "cpu", "epochs": 5, "batch_size": 32, "n_train": 600, "data": "d", "accuracy": 0.8,
            "train_time_s": STEPS * float(step_time(world_size)) if time is None else time, **extra}


@pytest.mark.parametrize("workers", [[1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 32, 64], [2, 3, 4, 6, 8]])
def test_fit_recovers_alpha_beta_and_compute(workers):
    fit = fit_alpha_beta(workers, step_time(workers))
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=0.02)
    assert fit["beta_s"] == pytest.approx(TAU, rel=0.02)
    assert fit["compute_s"] == pytest.approx(COMPUTE, rel=0.02)
    known = fit_alpha_beta(workers, step_time(workers), compute_s=COMPUTE)
    assert (known["alpha_s"], known["beta_s"]) == (pytest.approx(ALPHA, rel=0.02), pytest.approx(TAU, rel=0.02))


def test_fit_with_noise_and_its_bounds():
    rng = np.random.default_rng(0)
    w = np.array([1, 2, 4, 8, 16, 32] * 4)
    noisy = step_time(w) * (1 + rng.normal(0, 0.002, w.size))
    fit = fit_alpha_beta(w, noisy)
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=0.05) and fit["beta_s"] == pytest.approx(TAU, rel=0.05)
    superlinear = fit_alpha_beta([1, 2, 4], [1.0, 0.4, 0.2], compute_s=1.0)
    assert superlinear["alpha_s"] == 0.0 and superlinear["beta_s"] == 0.0  # no negative network
    single = fit_alpha_beta([2, 2], [0.6, 0.6], compute_s=1.0)  # one worker count: bandwidth only
    assert single["alpha_s"] == 0.0 and single["beta_s"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        fit_alpha_beta([], [])


def test_series_model_fitted_from_records_predicts_to_1024():
    records = [clf()] + [clf("ddp", w) for w in (2, 4, 8, 16)]
    rows, _ = build_table(records)
    (model,) = series_models(rows)
    assert model.source == "fitted" and model.series == "classifier small-cnn DDP (CPU)"
    assert model.alpha_s == pytest.approx(ALPHA, rel=0.02) and model.beta_s == pytest.approx(TAU, rel=0.02)
    assert model.step_s(1) == pytest.approx(COMPUTE)
    for w in (2, 16, 1024):
        assert model.step_s(w) == pytest.approx(float(step_time(w)), rel=0.02)
        assert model.efficiency(w) == pytest.approx(COMPUTE / float(step_time(w)) / w, rel=0.02)
    assert dict(model.measured)[8] == pytest.approx(COMPUTE / float(step_time(8)))


def test_given_network_uses_the_measured_overlap_and_replicated_optimizer():
    n_params, tau = 1_000_000, 0.05
    beta = 4 * n_params / tau  # bytes/s that make tau the time of one fp32 gradient message
    modelled = float(comm_terms(2)[0] * tau + comm_terms(2)[1] * ALPHA)
    serial_tb = {"data_s": 0.0, "compute_s": 0.9 * STEPS, "comm_s": 0.0, "optimizer_s": 0.1 * STEPS,
                 "checkpoint_s": 0.0, "eval_s": 0.0, "other_s": 0.0}
    ddp_tb = {**serial_tb, "comm_s": 0.5 * modelled * STEPS}  # half of the modelled all-reduce was exposed
    records = [clf(time_breakdown=serial_tb, n_params=n_params),
               clf("ddp", 2, time_breakdown=ddp_tb, n_params=n_params),
               clf("fsdp", 2, n_params=n_params)]
    rows, _ = build_table(records)
    ddp, fsdp = series_models(rows, alpha_s=ALPHA, beta_bytes_s=beta)
    assert ddp.source == "given" and ddp.beta_s == pytest.approx(tau) and ddp.overlap == pytest.approx(0.5)
    assert ddp.replicated_s == pytest.approx(0.1) and fsdp.replicated_s == 0.0  # FSDP shards the optimizer
    assert ddp.step_s(2) == pytest.approx(0.9 / 2 + 0.1 + 0.5 * modelled)
    assert fsdp.overlap == 0.0 and fsdp.step_s(2) == pytest.approx(0.5 + modelled)  # no breakdown: none hidden
    (no_bytes,) = series_models(build_table([clf(), clf("ddp", 2), clf("ddp", 4)])[0], ALPHA, beta)
    assert no_bytes.source.startswith("fitted (no n_params")


def test_one_configuration_predicted_from_known_inputs():
    n_params, beta, alpha = 2_000_000, 100e6, 1e-3  # 8 MB of fp32 gradient at 100 MB/s: tau 0.08 s
    assert allreduce_s(n_params, 2, alpha, beta) == pytest.approx(0.08 + 2 * alpha)  # 2 (W-1)/W = 1, 2 (W-1) hops
    assert allreduce_s(n_params, 2, alpha, beta, "bf16") == pytest.approx(0.04 + 2 * alpha)  # half the bytes
    assert allreduce_s(n_params, 4, 0.0, beta) == pytest.approx(1.5 * 0.08)
    assert allreduce_s(n_params, 1, alpha, beta) == 0.0
    step = predict_step_s(0.4, 0.05, n_params, 2, alpha_s=alpha, beta_bytes_s=beta)
    assert step == pytest.approx(0.4 / 2 + 0.05 + 0.08 + 2 * alpha)
    hidden = predict_step_s(0.4, 0.05, n_params, 4, alpha_s=alpha, beta_bytes_s=beta, compress="bf16", overlap=0.25)
    assert hidden == pytest.approx(0.1 + 0.05 + 0.75 * (1.5 * 0.04 + 6 * alpha))
    # the same formula as a series' model
    model = series_models(build_table([clf(), clf("ddp", 2), clf("ddp", 4)])[0])[0]
    one_param_beta = 4 / model.beta_s  # bytes/s at which one fp32 parameter takes the series' tau
    assert model.step_s(4) == pytest.approx(predict_step_s(model.parallel_s, model.replicated_s, 1, 4, model.alpha_s,
                                                           one_param_beta))
    for bad in ({"compress": "fp8"}, {"overlap": 1.5}, {"beta_bytes_s": 0.0}):
        with pytest.raises(ValueError):
            predict_step_s(**{"compute_s": 0.4, "replicated_s": 0.0, "n_params": n_params, "workers": 2,
                              "alpha_s": alpha, "beta_bytes_s": beta, **bad})


def test_cost_in_worker_hours_by_device():
    rows, _ = build_table([clf(time=3600.0), clf("ddp", 4, 1800.0, device="cuda")])
    assert [cost_hours(r) for r in rows] == [(1.0, "CPU-hours"), (2.0, "GPU-hours")]


def test_report_writes_model_table_plot_and_cost(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps(clf(*a)) + "\n" for a in [(), ("ddp", 2), ("ddp", 4), ("ddp", 8)]))
    result = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Scaling model" in md and "Assumptions: serial step 1 s" in md and "network fitted" in md
    assert "| 1024 |" in md and "## Cost" in md and "CPU-hours" in md and "(scaling_model.png)" in md
    assert (tmp_path / "rep" / "scaling_model.png").read_bytes()[:4] == b"\x89PNG"
    given = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(tmp_path / "g"), "--alpha-s", "1e-5",
                                      "--beta-gb-s", "10"])
    assert given.exit_code == 0, given.output  # no n_params in these records: the model says it fitted instead
    assert "no n_params in the records" in (tmp_path / "g" / "report.md").read_text()
    half = CliRunner().invoke(main, ["report", str(jsonl), "--out", str(tmp_path / "h"), "--alpha-s", "1e-5"])
    assert half.exit_code == 2 and "--alpha-s and --beta-gb-s go together" in half.output
    plain = write_report([clf(), clf("ddp", 2, device="cuda")], tmp_path / "none")  # no same-device series
    assert "## Scaling model" not in plain["markdown"] and not (tmp_path / "none" / "scaling_model.png").exists()
