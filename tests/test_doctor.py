"""pneumo-hpc doctor: the table and JSON (pure), 2 ranks under torchrun here, and on the 3-node SLURM cluster
(conftest.py's `cluster`): healthy on 2 nodes x 2 ranks, and each fault caught by name, fast.

The cluster's nodes share /tmp (as NFS) but not their node-local scratch, so data put there on one node is missing
on the other; every fault below fails before the process group would have waited out a timeout.
"""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import VENV_BIN, run, tool_env
from prep_fake import make_prep
from pneumo_hpc.runtime import doctor_report as report
from pneumo_hpc.runtime.doctor import bandwidth, parse_sizes
from pneumo_hpc.runtime.doctor_report import ORDER

PNEUMO = str(VENV_BIN / "pneumo-hpc")
TIMEOUT = 60  # the default: a passing run never waits it out, a slow start (heavy load) stays inside it
FAST = ["--sizes", "4K,64K", "--iters", "2", "--timeout", str(TIMEOUT), "--json"]
SRUN = ["srun", "-N2", "-w", "n1,n2", "--ntasks-per-node=2", "--mpi=none"]


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    """A tiny classifier set with a manifest.json, as `pneumo-hpc preprocess` leaves it (on the shared /tmp)."""
    out = make_prep(tmp_path_factory.mktemp("doctor-prep"), n_train=32, n_val=16, size=16)
    (out / "manifest.json").write_text(json.dumps({"n_ok": 48, "size": 16}, indent=2) + "\n")
    return out


def document(stdout):
    """Rank 0's JSON document: its own line after the table."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith('{"doctor": ')]
    assert len(lines) == 1, stdout[-4000:]
    return json.loads(lines[0])


def assert_no_wait_ran_out(doc):
    """Rank 0's own time (after its imports) stayed under --timeout: no rank waited for a peer that never came.
    Wall-clock time says little here: 5 agents' tests share 2 vCPUs, and 4 torch imports alone took 20-90 s."""
    assert doc["seconds"] < TIMEOUT, doc["seconds"]


def rows(doc, check, status=None):
    return [r for r in doc["checks"] if r["check"] == check and status in (None, r["status"])]


def assert_table_row(stdout, check, status, node, ranks, detail):
    """The printed table names the check, the node and the rank of a finding."""
    pattern = rf"^{re.escape(check)}\s+{status}\s+{re.escape(node)}\s+{re.escape(ranks)}\s+.*{detail}"
    assert re.search(pattern, stdout, re.M), f"no row /{pattern}/ in\n{stdout[-4000:]}"


# ---- pure: the table and the JSON from hand-made reports


def fake_report(rank, host, local, **checks):
    base = {name: {"status": "ok", "detail": f"{name} fine"} for name in ORDER}
    base["data"]["sha256"] = "a" * 64
    base["device"].update(device="cpu", gpu=str(local))
    base["cpu"].update(cpus=[local], how="cores")
    base["versions"]["versions"] = {"pneumo-hpc": "0.1.0", "torch": "2.14.1"}
    for name, over in checks.items():
        base[name] = {**base[name], **over}
    return {"rank": rank, "world_size": 4, "local_rank": local, "local_world_size": 2, "host": host,
            "launcher": "slurm", "master_addr": "n1", "master_port": 15000, "checks": base}


def four(by_rank=None):
    """4 ranks, 2 per node; by_rank: rank -> {check: fields over the healthy ones}."""
    return [fake_report(r, f"n{r // 2 + 1}", r % 2, **(by_rank or {}).get(r, {})) for r in range(4)]


def test_a_healthy_world_folds_into_one_row_per_check():
    found = report.judge(four(), 4, [])
    assert [r["check"] for r in found] == list(ORDER)
    assert all((r["status"], r["node"], r["rank"], r["nodes"], r["ranks"]) == ("ok", "n1,n2", "0-3", ["n1", "n2"],
                                                                             [0, 1, 2, 3]) for r in found), found
    bench = [{**bandwidth(4096, 1e-4, 4), "iters": 2}]
    found += report.allreduce_rows(bench, None, ["n1", "n2"], range(4), None)
    text = report.table(found, "head")
    assert text.splitlines()[0] == "head" and text.splitlines()[-1] == "doctor: ok (0 warning(s))"
    assert re.search(r"^allreduce 4 KiB\s+ok\s+n1,n2\s+0-3\s+latency 0.0001 s, algbw 0.041 GB/s, busbw 0.0614 GB/s",
                     text, re.M), text
    doc = report.document(found, four(), bench, launcher="slurm", world_size=4)
    assert (doc["doctor"], doc["ok"], doc["failures"], doc["warnings"]) == (1, True, 0, 0)
    assert doc["allreduce"] == [{"bytes": 4096, "latency_s": 0.0001, "algbw_gbps": 0.04096, "busbw_gbps": 0.06144,
                                 "iters": 2}]
    json.dumps(doc)  # plain data all through


def test_cross_rank_findings_name_the_node_and_rank():
    reports = four({3: {"data": {"sha256": "b" * 64},
                        "versions": {"versions": {"pneumo-hpc": "9.9", "torch": "2.14.1"}}},
                    2: {"interface": {"status": "fail", "detail": "IFNAME='ib7' names interface ib7 HINT: x"}}})
    reports[1].update(local_rank=0, host="n1")  # two launches: local rank 0 twice on n1
    reports[1]["checks"]["device"]["gpu"] = "0"
    reports[1]["checks"]["cpu"]["cpus"] = [0]
    found = report.judge(reports, 4, [])
    (data,) = rows({"checks": found}, "data", "fail")
    assert (data["node"], data["rank"]) == ("n2", "3") and "a" * 12 + " on rank 0 (n1)" in data["detail"], data
    (version,) = rows({"checks": found}, "versions", "fail")
    assert (version["rank"], version["detail"][:36]) == ("3", "pneumo-hpc 9.9 here, pneumo-hpc 0.1."), version
    (launch,) = rows({"checks": found}, "launcher", "fail")
    assert (launch["node"], launch["rank"]) == ("n1", "0-1") and "local rank 0 on n1 is ranks 0-1" in launch["detail"]
    (gpu,) = rows({"checks": found}, "device", "fail")
    assert gpu["rank"] == "0-1" and "GPU 0 on n1 is taken by ranks 0-1" in gpu["detail"]
    (cpu,) = rows({"checks": found}, "cpu", "warn")
    assert cpu["rank"] == "0-1" and "ranks 0-1 share CPUs 0" in cpu["detail"]
    (iface,) = rows({"checks": found}, "interface", "fail")
    assert (iface["node"], iface["rank"]) == ("n2", "2")
    assert found.index(iface) < found.index(rows({"checks": found}, "interface", "ok")[0])  # failures first
    text = report.table(found + report.allreduce_rows(None, None, [], [], "fix the interface failure(s) first"), "h")
    assert text.splitlines()[-1].startswith("doctor: FAIL (5 failed: data, device, launcher, interface, versions")
    assert_table_row(text, "allreduce", "skip", "?", "?", "not run: fix the interface")


def test_missing_ranks_are_a_launcher_failure():
    found = report.judge(four()[:2], 4, [2, 3])
    (missing,) = rows({"checks": found}, "launcher", "fail")
    assert (missing["node"], missing["rank"]) == ("?", "2-3") and "did not report" in missing["detail"]


def test_sizes_and_bandwidth():
    assert parse_sizes("4K,256K,4M,32M") == (4096, 262144, 4 << 20, 32 << 20)
    assert parse_sizes("4kib, 1000") == (4096, 1000)
    for bad in ("", "0", "4X", "-1"):
        with pytest.raises(ValueError, match="size"):
            parse_sizes(bad)
    assert bandwidth(1 << 20, 0.001, 8)["busbw_gbps"] == pytest.approx((1 << 20) / 0.001 / 1e9 * 2 * 7 / 8, 1e-5)
    assert bandwidth(4096, 0.001, 1)["busbw_gbps"] == 0  # nothing crosses a link at world size 1


# ---- one node, no SLURM: torchrun with 2 ranks


def torchrun(*args, env=None, timeout=180):
    return run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "pneumo_hpc", "doctor",
                *args], env=env, check=False, timeout=timeout)


def test_two_ranks_under_torchrun_pass_and_write_the_document(prep, tmp_path):
    out = tmp_path / "run"
    proc = torchrun("--data", str(prep), "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("pneumo-hpc doctor: ") == 1  # rank 0 alone prints
    doc = document(proc.stdout)
    assert (doc["ok"], doc["world_size"], doc["launcher"], doc["backend"]) == (True, 2, "torchrun", "gloo"), doc
    assert json.loads((out / "doctor.json").read_text()) == doc
    assert (out / "doctor.txt").read_text().splitlines()[-1] == "doctor: ok (0 warning(s))"
    assert [b["bytes"] for b in doc["allreduce"]] == [4096, 65536]
    for b in doc["allreduce"]:
        assert set(b) == {"bytes", "latency_s", "algbw_gbps", "busbw_gbps", "iters"} and b["latency_s"] > 0
        assert b["busbw_gbps"] == pytest.approx(b["algbw_gbps"], rel=1e-3)  # 2(W-1)/W = 1 at W = 2
    assert not [p for p in out.iterdir() if p.name.startswith(".doctor-probe")]  # the probe is cleaned up


def test_a_wrong_interface_and_another_version_fail_by_name_on_one_node(prep):
    env = tool_env(PNEUMO_IFNAME="ib7", PNEUMO_DOCTOR_FAKE_VERSION="1=9.9.9")
    proc = torchrun("--data", str(prep), *FAST, env=env)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc, host = document(proc.stdout), os.uname().nodename
    assert_table_row(proc.stdout, "interface", "FAIL", host, "0-1", "PNEUMO_IFNAME='ib7' names interface ib7")
    assert_table_row(proc.stdout, "versions", "FAIL", host, "1", "pneumo-hpc 9.9.9 here, pneumo-hpc .* on rank 0")
    assert rows(doc, "allreduce", "skip") and not doc["allreduce"]
    assert "PNEUMO_DOCTOR_FAKE_VERSION" not in run([PNEUMO, "doctor", "--help"]).stdout


# ---- the 3-node cluster


def srun_doctor(cluster, prep, tmp_path, *args, srun=SRUN, timeout=240, **env):
    t0 = time.monotonic()
    proc = cluster.login(*srun, PNEUMO, "doctor", "--data", str(prep), *FAST, *args, env=dict(cluster.env, **env),
                         check=False, timeout=timeout, cwd=tmp_path)
    return proc, time.monotonic() - t0


@pytest.mark.multinode
def test_doctor_passes_on_two_healthy_nodes(cluster, prep, tmp_path):
    out = tmp_path / "run"
    proc, took = srun_doctor(cluster, prep, tmp_path, "--out", str(out), srun=[*SRUN, "--gres=gpu:2"])
    print(proc.stdout.split('\n{"doctor"')[0], f"\n({took:.0f} s)")  # the table, for the record (pytest -s)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = document(proc.stdout)
    assert (doc["ok"], doc["world_size"], doc["nodes"], doc["launcher"]) == (True, 4, ["n1", "n2"], "slurm"), doc
    assert json.loads((out / "doctor.json").read_text()) == doc
    for name in ORDER:
        assert rows(doc, name) and not rows(doc, name, "fail"), rows(doc, name)
    assert rows(doc, "device", "warn")  # the cluster's GPUs are fake: CUDA_VISIBLE_DEVICES, no CUDA
    assert [(b["bytes"], b["latency_s"] > 0, b["busbw_gbps"] > 0) for b in doc["allreduce"]] == [
        (4096, True, True), (65536, True, True)]


@pytest.mark.multinode
def test_data_on_one_node_only_and_another_version_on_one_rank_are_named(cluster, prep, tmp_path):
    """Two faults that leave the network alone, in one run (each run costs ~30 s here): the all-reduce still runs."""
    local = f"{cluster.BASE}/nodelocal/doctor-{os.getpid()}"
    cluster.on("n1", "cp", "-r", str(prep), local)
    try:
        proc, _ = srun_doctor(cluster, local, tmp_path, "--out", str(tmp_path / "run"),
                              PNEUMO_DOCTOR_FAKE_VERSION="3=0.0.0-fake")
    finally:
        cluster.on("n1", "rm", "-rf", local)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_table_row(proc.stdout, "data", "FAIL", "n2", "2-3", f"{local} does not exist on this node")
    assert_table_row(proc.stdout, "data", "ok", "n1", "0-1", "manifest.json sha256")
    assert_table_row(proc.stdout, "versions", "FAIL", "n2", "3",
                     r"pneumo-hpc 0.0.0-fake here, pneumo-hpc \S+ on rank 0 \(n1\)")
    assert_table_row(proc.stdout, "versions", "ok", "n1,n2", "0-2", "torch")
    assert len(document(proc.stdout)["allreduce"]) == 2


@pytest.mark.multinode
def test_a_wrong_ifname_fails_at_once_naming_the_nodes(cluster, prep, tmp_path):
    proc, took = srun_doctor(cluster, prep, tmp_path, IFNAME="ib7", GLOO_SOCKET_IFNAME="ib7")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_table_row(proc.stdout, "interface", "FAIL", "n1,n2", "0-3",
                     r"IFNAME='ib7' names interface ib7, which this node does not have \(it has: lo, pnc0\) "
                     r"\(also wrong: GLOO_SOCKET_IFNAME='ib7'\)\. HINT: set IFNAME")
    assert_table_row(proc.stdout, "allreduce", "skip", "n1,n2", "0-3", "fix the interface failure")
    assert_no_wait_ran_out(document(proc.stdout))
    print(f"ib7: {took:.0f} s in all")


@pytest.mark.multinode
def test_a_taken_rendezvous_port_is_caught_on_its_node(cluster, prep, tmp_path):
    port = 20000 + os.getpid() % 5000
    squat = ("import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
             f" s.bind(('0.0.0.0', {port})); s.listen(16); print('ready', flush=True); time.sleep(120)")
    squatter = subprocess.Popen([f"{cluster.BASE}/bin/pnc-enter", "n1", str(VENV_BIN / "python"), "-c", squat],
                                stdout=subprocess.PIPE, text=True, env=cluster.env)
    try:
        assert squatter.stdout.readline().strip() == "ready"
        proc, took = srun_doctor(cluster, prep, tmp_path, MASTER_PORT=str(port))
    finally:
        squatter.kill()
        squatter.wait()
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_table_row(proc.stdout, "address", "FAIL", "n1", "0", f"port {port} on n1 is taken by another process")
    assert_table_row(proc.stdout, "address", "FAIL", "n1,n2", "1-3", "answers, but not as this job's rendezvous")
    assert_no_wait_ran_out(document(proc.stdout))
    print(f"taken port: {took:.0f} s in all")


@pytest.mark.multinode
def test_srun_tasks_each_running_torchrun_duplicate_local_ranks(cluster, prep, tmp_path):
    endpoint = f"n1:{29400 + os.getpid() % 500}"
    twice = ["srun", "-N1", "-w", "n1", "-n2", "--gres=gpu:2", "--mpi=none", str(VENV_BIN / "torchrun"), "--nnodes",
             "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "twice",
             "-m", "pneumo_hpc"]
    t0 = time.monotonic()
    proc = cluster.login(*twice, "doctor", "--data", str(prep), *FAST, check=False, timeout=240, cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_table_row(proc.stdout, "launcher", "FAIL", "n1", "0-3", "srun started 2 tasks on this node and each runs "
                     "torchrun --nproc-per-node 2")
    assert_table_row(proc.stdout, "device", "FAIL", "n1", "0,2", "GPU 0 on n1 is taken by ranks 0,2")
    assert_no_wait_ran_out(document(proc.stdout))
    print(f"srun x torchrun: {time.monotonic() - t0:.0f} s in all")


@pytest.mark.multinode
def test_make_sbatch_doctor_checks_the_nodes_and_writes_the_document(cluster, prep, tmp_path):
    from test_multinode import run_dir, submit  # the way the multi-node tests submit a make target

    runs = tmp_path / "runs"
    proc = submit(cluster, "sbatch-doctor", "NODES=2", "GPUS=2", "CPUS_PER_GPU=1", f"DATA={prep}", runs=runs)
    where = run_dir(runs, "doctor-4")
    log = (where / "slurm.out").read_text()
    assert proc.returncode == 0, log[-4000:]
    print((where / "doctor" / "doctor.txt").read_text())  # the default sizes' figures, for the record (pytest -s)
    doc = json.loads((where / "doctor" / "doctor.json").read_text())
    assert (doc["ok"], doc["world_size"], doc["nodes"]) == (True, 4, ["n1", "n2"]), doc
    assert [b["bytes"] for b in doc["allreduce"]] == [4 << 10, 256 << 10, 4 << 20, 32 << 20]  # the defaults
    assert "doctor: ok" in log and (where / "doctor" / "doctor.txt").read_text() in log
