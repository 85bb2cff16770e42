"""The scaling model validated on the 3-node cluster: 2-node DDP (gloo on CPU, one rank per node, IFNAME=pnc0) on
links rate-limited by tbf to 1 Gbit/s and 200 Mbit/s, with and without --grad-compress bf16, predicted step within
20 % of the measured one. benchmarks/scaling_validation.py holds the measurement and says where each of the model's
inputs is measured: the network (alpha, beta from an all-reduce benchmark on the limited link; the gradient bytes)
always apart from the training; the CPU parts asserted are the run's own ("same window"), because the other users
of this 2-vCPU VM move a separate 1-rank measurement by up to 40 % within a minute; that independent prediction
("probe") is printed and recorded beside it. The helpers it fits and reads with are tested here on known inputs.

    .venv/bin/python -m pytest -s tests/test_scaling_validation.py    # -s: the table of predicted vs measured
"""
import importlib.util
import json

import pytest

from conftest import REPO
from prep_fake import make_prep

_spec = importlib.util.spec_from_file_location("scaling_validation", REPO / "benchmarks" / "scaling_validation.py")
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)

BOUND = 0.20  # |predicted - measured| / measured, the issue's


def test_fit_network_recovers_alpha_and_beta():
    alpha, beta = 2e-4, 24e6  # s per hop, bytes/s
    sizes = [4 << 20, 16 << 20, 32 << 20]
    bandwidth, latency = (float(c) for c in sv.comm_terms(2))
    times = [bandwidth * n / beta + latency * alpha for n in sizes]
    fit = sv.fit_network(sizes, times)
    assert fit["alpha_s"] == pytest.approx(alpha, rel=1e-6) and fit["beta_bytes_s"] == pytest.approx(beta, rel=1e-6)
    # tbf's burst lets the first bytes through at once: a negative intercept is no negative latency
    burst = sv.fit_network(sizes, [t - 0.01 for t in times])
    assert burst["alpha_s"] == 0.0 and burst["beta_bytes_s"] == pytest.approx(beta, rel=0.05)
    with pytest.raises(ValueError):
        sv.fit_network([1 << 20, 1 << 20], [0.1, 0.1])


def test_steady_leaves_out_the_first_epoch():
    tb = {"data_s": 0.8, "compute_s": 2.4, "comm_s": 4.0, "optimizer_s": 0.8, "other_s": 0.0}
    metrics = {"n_train": 32, "batch_size": 4, "history": [
        {"epoch_time_s": 20.0, "time_breakdown": {k: 3 * v for k, v in tb.items()}},
        {"epoch_time_s": 8.0, "time_breakdown": tb}]}
    got = sv.steady(metrics)
    assert got["steps"] == 8 and got["step_s"] == pytest.approx(1.0)
    assert (got["compute_s"], got["comm_s"], got["optimizer_s"]) == pytest.approx((0.3, 0.5, 0.1))
    with pytest.raises(ValueError):
        sv.steady({**metrics, "history": metrics["history"][:1]})


def test_predict_on_known_inputs():
    n, beta = 8_000_000, 32e6  # 32 MB of fp32 gradient at 32 MB/s: 1 s of all-reduce on 2 ranks; 0.5 s in bf16
    net = {"alpha_s": 0.0, "beta_bytes_s": beta}
    probe = {"compute_s": 0.2, "optimizer_s": 0.05, "compress_s": 0.01, "decompress_s": 0.02,
             "global": {"compute_s": 0.3, "optimizer_s": 0.05}}
    ddp = {"n_params": n, "data_s": 0.01, "compute_s": 0.25, "other_s": 0.04, "optimizer_s": 0.06}
    fp32 = sv.predict(probe, ddp, net, "none")
    assert fp32["comm_model_s"] == pytest.approx(1.0)
    assert fp32["probe_predicted_s"] == pytest.approx(0.2 + 0.05 + 1.0)
    assert fp32["predicted_s"] == pytest.approx(0.01 + 0.25 + 0.04 + 0.06 + 1.0)
    assert fp32["linear_s"] == pytest.approx(0.3 / 2 + 0.05 + 1.0)  # the report's reading: half the global step
    bf16 = sv.predict(probe, ddp, net, "bf16")
    assert bf16["probe_predicted_s"] == pytest.approx(0.2 + 0.05 + 0.03 + 0.5)  # both casts
    assert bf16["predicted_s"] == pytest.approx(0.36 + 0.02 + 0.5)  # the run's compute holds the compress already


@pytest.mark.multinode
@pytest.mark.slow
def test_predicted_ddp_step_within_20_percent_on_limited_links(cluster, tmp_path):
    prep = make_prep(tmp_path / "prep", n_train=24, n_val=16, size=128)  # 8.4 M parameters: 33.6 MB of gradient
    try:
        rows = sv.validate(cluster, prep, tmp_path, rates=("1gbit", "200mbit"))
    finally:  # validate removes its limits; a failure inside the script must not leave one either
        for node in sv.NODES:
            cluster.script("link", node, "off")
    print("\n" + sv.table(rows))
    out = tmp_path / "scaling_validation.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"rows: {out}")
    assert [(r["rate"], r["compress"]) for r in rows] == [(rate, c) for rate in ("1gbit", "200mbit")
                                                          for c in ("none", "bf16")]
    for r in rows:  # the benchmark measured the limited link (TCP/IP headers take a few per cent of the rate)
        line_rate = {"1gbit": 1e9, "200mbit": 200e6}[r["rate"]] / 8
        assert 0.85 * line_rate < r["beta_bytes_s"] < 1.02 * line_rate, r["network"]
    for node in sv.NODES:
        assert "tbf" not in cluster.on(node, "tc", "qdisc", "show", "dev", sv.IFNAME).stdout
    off = [f"{r['rate']} {r['compress']}: predicted {r['predicted_s']:.3f} s, measured {r['measured_s']:.3f} s"
           for r in rows if abs(r["ratio"] - 1) > BOUND]
    assert not off, "\n".join(off) + "\n" + sv.table(rows)
