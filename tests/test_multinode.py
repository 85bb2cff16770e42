"""Across nodes for real: the 3-node SLURM of .ci/start-multinode.sh (conftest.py's `cluster`), every launcher.

Every client runs on the login node (its network namespace); ranks run on n1 and n2, each node with its own
address, hostname, /dev/shm and scratch. The jobs are submitted the way a user does (`make sbatch-...`), with no
PNEUMO_HPC_BIN and no venv on PATH: the checkout's own .venv must be found on the nodes.
"""
import hashlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN, run
from prep_fake import make_prep
from test_dist_launch import _rows as rows

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

PNEUMO = str(VENV_BIN / "pneumo-hpc")
ENV_INIT = ["env", "--json", "--init"]
EPOCHS, BATCH, LR = 6, 16, "3e-3"
TRAIN = ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", LR, "--precision", "fp32"]
_spec = importlib.util.spec_from_file_location("render", REPO / "launch" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def user_env(cluster, **extra):
    """A user's shell on the login node: the cluster's clients on PATH, no venv, no launch variables."""
    env = dict(cluster.env)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(VENV_BIN))
    for key in render.DEFAULTS:
        env.pop(key, None)
    env.update(extra)
    return env


def submit(cluster, target, *variables, runs, check=True, timeout=600, wait=True, **extra):
    return cluster.login("make", "-s", "--no-print-directory", "-C", str(REPO), target, f"WAIT={int(wait)}",
                         f"RUNS_DIR={runs}", *variables, env=user_env(cluster, **extra), check=check,
                         timeout=timeout)


def job_of(stdout):
    return re.search(r"job (\d+)", stdout).group(1)


def run_dir(runs, label):
    found = sorted(Path(runs).glob(f"{label}-[0-9]*/"))
    assert len(found) == 1, (label, list(Path(runs).iterdir()))
    return found[0]


def metrics(path):
    return json.loads((Path(path) / "metrics.json").read_text())


def assert_same_curve(a, b):
    assert len(a["history"]) == len(b["history"]) == EPOCHS
    for x, y in zip(a["history"], b["history"]):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-5 and abs(x["val_loss"] - y["val_loss"]) < 1e-5, (x, y)


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("mn-prep"), n_train=128, n_val=48, size=32)


@pytest.fixture(scope="module")
def references(prep, tmp_path_factory):
    """The same training serial and at world size 4 on one node (this machine, torchrun)."""
    base = tmp_path_factory.mktemp("mn-ref")
    run([PNEUMO, "train", "--data", str(prep), *TRAIN, "--out", str(base / "serial")], timeout=600)
    run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "4", "-m", "pneumo_hpc", "train",
         "--data", str(prep), *TRAIN, "--strategy", "ddp", "--out", str(base / "ddp-4")], timeout=600)
    return {"serial": metrics(base / "serial"), "one-node": metrics(base / "ddp-4")}


def test_nodes_are_separate_hosts_on_a_private_network(cluster):
    assert cluster.on("n1", "hostname").stdout.strip() == "n1"
    assert cluster.on("n2", "getent", "hosts", "n3").stdout.split()[0] == f"{cluster.NET}.13"
    for node in ("n1", "ctl"):
        routes = cluster.on(node, "ip", "-4", "route").stdout
        assert "default" not in routes and f"{cluster.NET}.0/24" in routes, routes
        links = cluster.on(node, "ip", "-br", "link").stdout.split("\n")
        assert sorted(ln.split()[0].split("@")[0] for ln in links if ln.strip()) == ["lo", cluster.IFNAME]
    # the root namespace answers "unreachable" for the cluster's subnet while the cluster runs
    assert "unreachable" in run(["ip", "-4", "route", "show", f"{cluster.NET}.0/24"]).stdout
    # each node has its own /dev/shm and node-local scratch
    tag = f"mn-{os.getpid()}"
    cluster.on("n1", "sh", "-c", f"touch /dev/shm/{tag} {cluster.BASE}/nodelocal/{tag}")
    for node in ("n2", "ctl"):
        probe = cluster.on(node, "sh", "-c", f"ls /dev/shm/{tag} {cluster.BASE}/nodelocal/{tag}", check=False)
        assert probe.returncode != 0, probe.stdout
    cluster.on("n1", "rm", "-f", f"/dev/shm/{tag}", f"{cluster.BASE}/nodelocal/{tag}")


LAUNCHES = {
    "srun": ["srun", "-N2", "--ntasks-per-node=2", "--mpi=none", PNEUMO, *ENV_INIT],
    "mpirun": ["salloc", "-N2", "--ntasks-per-node=2", "mpirun", "-np", "4", "--map-by", "ppr:2:node", "--bind-to",
               "none", "--mca", "btl_tcp_if_include", "pnc0", "--mca", "oob_tcp_if_include", "pnc0", PNEUMO,
               *ENV_INIT],
    "torchrun": ["srun", "-N2", "--ntasks-per-node=1", "--mpi=none", str(VENV_BIN / "torchrun"), "--nnodes", "2",
                 "--nproc-per-node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "n1:29511", "--rdzv-id",
                 "env", "-m", "pneumo_hpc", *ENV_INIT],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHES))
def test_env_init_on_two_nodes(cluster, launcher, tmp_path):
    found = rows(cluster.login(*LAUNCHES[launcher], timeout=240, cwd=tmp_path).stdout)
    assert sorted(r["rank"] for r in found) == [0, 1, 2, 3], found
    for r in found:
        assert r["launcher"] == {"srun": "slurm", "mpirun": "mpi"}.get(launcher, launcher), r
        assert (r["world_size"], r["local_world_size"], r["allreduce"], r["allreduce_ok"]) == (4, 2, 10, True), r
        assert r["hostname"] == f"n{r['node_rank'] + 1}", r
        assert r["master_addr"] in ("n1", f"{cluster.NET}.11"), r
    for node in (0, 1):
        assert sorted(r["local_rank"] for r in found if r["node_rank"] == node) == [0, 1], found
    assert len({(r["master_addr"], r["master_port"]) for r in found}) == 1


TRAININGS = {  # name -> make target, variables, launcher recorded (one thread per rank: 8 ranks share 2 vCPUs here)
    "cpu-ddp": ("sbatch-cpu-ddp", ["CPUS=4"], "slurm"),
    "ddp": ("sbatch-ddp", ["GPUS=2", "IFNAME=pnc0", "CPUS_PER_GPU=1"], "slurm"),
    "fsdp": ("sbatch-fsdp", ["GPUS=2", "CPUS_PER_GPU=1"], "slurm"),
    "ddp-mpirun": ("sbatch-ddp", ["GPUS=2", "LAUNCHER=mpirun", "IFNAME=pnc0", "CPUS_PER_GPU=1"], "mpi"),
    "ddp-torchrun": ("sbatch-ddp", ["GPUS=2", "LAUNCHER=torchrun", "CPUS_PER_GPU=1"], "torchrun"),
}


@pytest.mark.parametrize("name", sorted(TRAININGS))
def test_training_on_two_nodes_equals_one_node_and_serial(cluster, name, prep, references, tmp_path):
    target, variables, launcher = TRAININGS[name]
    runs = tmp_path / "runs"
    submit(cluster, target, "NODES=2", *variables, f"DATA={prep}", f"EPOCHS={EPOCHS}", f"BATCH={BATCH}",
           f"LR={LR}", "PRECISION=fp32", runs=runs)
    label = {"cpu-ddp": "cpu-ddp-4"}.get(name, f"{target.split('-', 1)[1]}-4")
    m = metrics(run_dir(runs, label))
    assert (m["world_size"], m["nodes"], m["launcher"], m["compute_dtype"]) == (4, 2, launcher, "fp32"), m
    assert sorted(set(m["hosts"])) == ["n1", "n2"] and len(m["hosts"]) == 4, m["hosts"]
    assert_same_curve(m, references["one-node"])
    assert_same_curve(m, references["serial"])


def test_a_wrong_interface_fails_at_once_naming_the_node(cluster, prep, tmp_path):
    t0 = time.monotonic()
    proc = submit(cluster, "sbatch-ddp", "NODES=2", "GPUS=2", "IFNAME=ib7", f"DATA={prep}", "EPOCHS=1",
                  f"BATCH={BATCH}", runs=tmp_path / "runs", check=False, PNEUMO_DIST_TIMEOUT="300")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    log = (run_dir(tmp_path / "runs", "ddp-4") / "slurm.out").read_text()
    assert re.search(r"node n[12], rank \d: GLOO_SOCKET_IFNAME='ib7' names interface ib7, which this node does not"
                     r" have \(it has: lo, pnc0\)", log), log[-3000:]
    assert elapsed < 120, f"{elapsed:.0f} s: the job waited instead of failing"  # the rendezvous timeout is 300 s


def test_preprocessing_across_nodes_matches_local(cluster, rsna_dir, tmp_path):
    local, spread = tmp_path / "local", tmp_path / "spread"
    run([PNEUMO, "preprocess", "--rsna", str(rsna_dir), "--out", str(local), "--size", "64", "--yolo-size", "64",
         "--cluster", "local", "--workers", "1"], timeout=600)
    submit(cluster, "sbatch-preprocess", "NODES=2", "PREP_TASKS=3", f"RSNA={rsna_dir}", f"DATA={spread}",
           "IMG_SIZE=64", "YOLO_SIZE=64", "IFNAME=pnc0", runs=tmp_path / "runs")
    log = (run_dir(tmp_path / "runs", "preprocess-6") / "slurm.out").read_text()
    assert "cluster=mpi" in log and "--interface pnc0" in log, log[-2000:]
    workers = set(re.findall(r"worker on (n\d)", log))
    assert workers == {"n1", "n2"}, log[-3000:]

    run_record = json.loads((spread / "run.json").read_text())
    assert (run_record["cluster"], run_record["config"]["interface"]) == ("mpi", "pnc0"), run_record

    def digests(root):  # every output; the run's own record (times, cluster) and its absolute path aside
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes().replace(str(root).encode(), b"ROOT"))
                .hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "run.json"}

    assert digests(spread) == digests(local) and len(digests(local)) > 10


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def job_info(cluster, job):
    out = cluster.login("scontrol", "show", "job", job, check=False).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what, predicate, timeout, explain):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s: {explain()}"
        time.sleep(0.5)


def long_run(cluster, prep, runs, *variables, **extra):
    """A 2-node DDP job of twice the reference's epochs, submitted without waiting: (job id, its log)."""
    out = submit(cluster, "sbatch-ddp", "NODES=2", "GPUS=2", "CPUS_PER_GPU=1", *variables, f"DATA={prep}", f"EPOCHS={2 * EPOCHS}",
                 f"BATCH={BATCH}", f"LR={LR}", "PRECISION=fp32", runs=runs, wait=False, **extra).stdout
    job = job_of(out)
    return job, Path(runs) / f"ddp-4-{job}.out"


def text(log):
    return log.read_text() if log.is_file() else "(no log yet)"


def finish(cluster, job, log, timeout=420):
    wait_for(f"job {job} completed", lambda: job_info(cluster, job).get("JobState") in FINAL, timeout,
             lambda: f"{job_info(cluster, job)}\n{text(log)[-3000:]}")
    info = job_info(cluster, job)
    assert info["JobState"] == "COMPLETED", f"{info}\n{text(log)[-4000:]}"
    return info


def assert_resumed_like_uninterrupted(runs, log, references):
    m = metrics(run_dir(runs, "ddp-4"))
    assert (m["world_size"], m["nodes"], len(m["history"])) == (4, 2, 2 * EPOCHS), m
    assert re.search(r"resumed from .*checkpoint", text(log)), text(log)[-3000:]
    reference = references["one-node"]["history"]
    for x, y in zip(m["history"][:EPOCHS], reference):  # the first EPOCHS epochs are the reference run's
        assert abs(x["val_loss"] - y["val_loss"]) < 1e-5 and abs(x["train_loss"] - y["train_loss"]) < 1e-4, (x, y)
    leftovers = [p for p in (run_dir(runs, "ddp-4") / "checkpoint").rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers  # nothing half-written
    return m


def test_torchrun_time_limit_checkpoints_requeues_and_resumes(cluster, prep, references, tmp_path):
    """torchrun does not pass USR1 to its workers: the kit's task.sh does, so the time-limit path holds."""
    runs = tmp_path / "runs"
    job, log = long_run(cluster, prep, runs, "LAUNCHER=torchrun")
    wait_for("epoch 1 done", lambda: "epoch 1/" in text(log), 300, lambda: text(log)[-3000:])
    cluster.login("scancel", "--batch", "--signal=USR1", job)
    info = finish(cluster, job, log)
    assert info["Restarts"] == "1", info
    assert "checkpointed" in text(log) and f"requeueing job {job} (restart 1 of 3)" in text(log), text(log)[-4000:]
    m = assert_resumed_like_uninterrupted(runs, log, references)
    assert m["launcher"] == "torchrun"


@pytest.mark.parametrize("loss", ["crash", "silent"])
def test_a_node_lost_mid_training_fails_fast_requeues_and_resumes(cluster, loss, prep, references, tmp_path):
    """crash: every process of a node killed (peers see the sockets close). silent: its link cut first, then
    killed (peers see nothing; only the collective's timeout ends their wait)."""
    runs, timeout = tmp_path / "runs", 15  # below SlurmdTimeout (20 s): the ranks' own timeout ends their wait
    job, log = long_run(cluster, prep, runs, PNEUMO_DIST_TIMEOUT=str(timeout))
    wait_for("the first checkpoint", lambda: "epoch 2/" in text(log), 300, lambda: text(log)[-3000:])
    nodes = cluster.login("scontrol", "show", "hostnames", job_info(cluster, job)["NodeList"]).stdout.split()
    victim = nodes[-1]  # not the node the batch script runs on
    if loss == "silent":
        cluster.script("unplug", victim)
    cluster.script("kill-node", victim)
    t0 = time.monotonic()
    wait_for("the survivors failed", lambda: " exit " in text(log) or job_info(cluster, job).get("Restarts", "0")
             != "0" or job_info(cluster, job).get("JobState") != "RUNNING", timeout + 60, lambda: text(log)[-3000:])
    failed_after = time.monotonic() - t0
    print(f"{loss}: survivors out {failed_after:.1f} s after losing {victim}")
    wait_for("requeued", lambda: job_info(cluster, job).get("Restarts", "0") != "0", 180,
             lambda: f"{job_info(cluster, job)}\n{text(log)[-3000:]}")
    t1 = time.monotonic()
    try:
        # the requeued job runs on the nodes left (a node that returns while its old job id runs again is told by
        # the controller to end that job: SLURM's own clean-up)
        finish(cluster, job, log)
    finally:
        cluster.script("boot", victim)
    print(f"{loss}: requeued and completed {time.monotonic() - t1:.1f} s after the loss")
    m = assert_resumed_like_uninterrupted(runs, log, references)
    assert victim not in m["hosts"] and len(set(m["hosts"])) == 2, m["hosts"]
