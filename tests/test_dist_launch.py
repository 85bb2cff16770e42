"""The real launchers, two ranks each: torchrun, Open MPI's mpirun, srun and sbatch on a real single-node SLURM.

Each rank runs ``pneumo-hpc env --json --init``: one JSON line per rank, a real gloo group, and an all-reduce of
rank+1 that must sum to 3. The last tests kill or stall one rank and check the other fails in bounded time.
"""
import json
import shlex
import socket
import subprocess
import sys
import time

import pytest
from conftest import VENV_BIN, run, tool_env

ENV_INIT = ["env", "--json", "--init"]
PNEUMO = str(VENV_BIN / "pneumo-hpc")


def _rows(stdout):
    """Every JSON object in the ranks' merged output. mpirun forwards each rank's writes as they come, so with
    unbuffered output one rank's line can land before another's newline: parse objects, not lines."""
    decoder, rows, i = json.JSONDecoder(), [], stdout.find("{")
    while i != -1:
        row, end = decoder.raw_decode(stdout, i)
        rows.append(row)
        i = stdout.find("{", end)
    return rows


def _assert_two_ranks(rows, launcher):
    assert sorted(r["rank"] for r in rows) == [0, 1], rows
    for r in rows:
        assert (r["launcher"], r["world_size"], r["local_world_size"], r["node_rank"]) == (launcher, 2, 2, 0), r
        assert (r["backend"], r["device"], r["allreduce"], r["allreduce_ok"]) == ("gloo", "cpu", 3, True), r
        assert r["local_rank"] == r["rank"]
    assert len({(r["master_addr"], r["master_port"]) for r in rows}) == 1, "ranks disagree on the rendezvous"


def test_torchrun_two_ranks(tmp_path):
    proc = run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "pneumo_hpc", *ENV_INIT],
               timeout=180, cwd=tmp_path)
    _assert_two_ranks(_rows(proc.stdout), "torchrun")


@pytest.mark.mpi
def test_mpirun_two_ranks(mpirun, tmp_path):
    proc = run([*mpirun, "-np", "2", PNEUMO, *ENV_INIT], timeout=180, cwd=tmp_path)
    rows = _rows(proc.stdout)
    _assert_two_ranks(rows, "mpi")
    assert rows[0]["master_addr"] == "127.0.0.1"  # one node: no mpi4py needed
    # Open MPI binds its ranks itself (kept: "launcher") unless told not to (then the kit binds: "cores")
    assert {r["cpu_bind"] for r in rows} <= {"launcher", "cores"}, rows
    assert not set(rows[0]["cpus"]) & set(rows[1]["cpus"]), rows
    assert 15000 <= rows[0]["master_port"] < 25000  # from the mpirun's job id


MPI4PY_PATHS = """
import json, os
from pneumo_hpc.runtime.launchers import MPIEnvironment
ompi = {k: v for k, v in os.environ.items() if k.startswith("OMPI_COMM_WORLD")}
as_if_two_nodes = MPIEnvironment({**ompi, "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
pmix_only = MPIEnvironment({k: os.environ[k] for k in ("PMIX_RANK", "PMIX_NAMESPACE")})
print(json.dumps({"addr": as_if_two_nodes.master_addr, "rank": pmix_only.rank, "world": pmix_only.world_size,
                  "local": pmix_only.local_rank, "local_world": pmix_only.local_world_size,
                  "port": pmix_only.master_port}))
"""


@pytest.mark.mpi
def test_mpi4py_fills_what_the_environment_lacks(mpirun, tmp_path):
    # rank 0's host broadcast (several nodes), and world/local sizes under a PMIx-only launcher
    proc = run([*mpirun, "-np", "2", sys.executable, "-c", MPI4PY_PATHS], timeout=120, cwd=tmp_path)
    rows = sorted(_rows(proc.stdout), key=lambda r: r["rank"])
    assert [(r["rank"], r["local"], r["world"], r["local_world"]) for r in rows] == [(0, 0, 2, 2), (1, 1, 2, 2)]
    assert {r["addr"] for r in rows} == {socket.gethostname()}
    assert len({r["port"] for r in rows}) == 1


@pytest.mark.slurm
@pytest.mark.parametrize("mpi_plugin", ["none", "pmix"])
def test_srun_two_tasks(slurm, tmp_path, mpi_plugin):
    # --mpi=pmix adds PMIX_RANK but no OMPI_* sizes: SLURM launched the tasks and its variables are complete,
    # so both plugins report launcher "slurm"
    proc = run(["srun", "-n", "2", f"--mpi={mpi_plugin}", "-t", "5", PNEUMO, *ENV_INIT], env=slurm, timeout=240,
               cwd=tmp_path)
    rows = _rows(proc.stdout)
    _assert_two_ranks(rows, "slurm")
    assert rows[0]["master_addr"] == socket.gethostname().split(".")[0]  # first (only) node of the step
    assert 15000 <= rows[0]["master_port"] < 25000  # from SLURM_JOB_ID


def _wait_job(job_id, env, limit_s=240):
    """Final state of a batch job; polls faster than `sbatch --wait`, which sleeps up to ~20 s past the end."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        fields = run(["scontrol", "-o", "show", "job", job_id], env=env, check=False).stdout.split()
        state = next((f.split("=", 1)[1] for f in fields if f.startswith("JobState=")), "UNKNOWN")
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "UNKNOWN"):
            return state
        time.sleep(0.5)
    run(["scancel", job_id], env=env, check=False)
    raise AssertionError(f"batch job {job_id} still {state} after {limit_s} s")


@pytest.mark.slurm
@pytest.mark.mpi
def test_sbatch_shell_is_one_process_and_mpirun_inside_wins(slurm, mpirun, tmp_path):
    # The batch shell sees SLURM_PROCID=0 and SLURM_NTASKS=2 but is one process; mpirun inside it leaves
    # SLURM_PROCID=0 on every rank, so the MPI variables must win.
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nset -e\n"
                      f"{PNEUMO} env --json\n"
                      f"{shlex.join(mpirun)} -np 2 {PNEUMO} {' '.join(ENV_INIT)}\n")
    out = tmp_path / "job.out"
    job = run(["sbatch", "--parsable", "-n", "2", "-t", "5", "-o", str(out), str(script)], env=slurm,
              cwd=tmp_path).stdout.strip().split(";")[0]
    assert _wait_job(job, slurm) == "COMPLETED", out.read_text() if out.exists() else "no output"
    rows = _rows(out.read_text())
    shell, ranks = rows[0], rows[1:]
    assert (shell["launcher"], shell["world_size"], shell["backend"]) == ("local", 1, "none"), out.read_text()
    _assert_two_ranks(ranks, "mpi")


PEER = """
import os, sys, time
import torch, torch.distributed as tdist
from pneumo_hpc.runtime import dist
t0 = None
try:
    ctx = dist.setup()  # timeout from PNEUMO_DIST_TIMEOUT
    if ctx.rank == 1:
        if sys.argv[1] == "die":
            os._exit(1)
        time.sleep(120)  # stall: alive, holding its sockets, never joining the collective
        os._exit(0)
    t0 = time.monotonic()
    tdist.all_reduce(torch.ones(1))
except Exception as exc:  # rank 1 may even die while rank 0 is still finishing init: then waited is 0
    print(f"FAILED after {time.monotonic() - t0 if t0 else 0.0:.1f} s: {type(exc).__name__}: {exc}", flush=True)
    dist.teardown()  # as the kit's commands do: left to interpreter exit, gloo can abort after a timed-out op
    sys.exit(3)
print("NO ERROR", flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode, timeout_s", [("die", 30), ("stall", 4)])
def test_lost_peer_fails_rank0_in_bounded_time(tmp_path, mode, timeout_s):
    """Two hand-launched ranks (no launcher to clean up after them): rank 1 dies or stalls before the all-reduce."""
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
              "PNEUMO_DIST_TIMEOUT": str(timeout_s)}
    procs = [subprocess.Popen([sys.executable, str(script), mode], env=tool_env(RANK=str(r), **common),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
             for r in (0, 1)]
    try:
        out0, _ = procs[0].communicate(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("rank 0 still running 90 s after its peer died or stalled: the dead rank hung it")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 3, out0[-3000:]
    waited = float(out0.split("FAILED after ")[1].split(" s")[0])
    if mode == "die":
        assert procs[1].returncode == 1
        assert waited < timeout_s / 2, out0[-3000:]  # the closed socket is noticed, not waited out
    else:
        assert timeout_s - 0.5 <= waited < timeout_s + 10, out0[-3000:]  # the timeout bounds the collective
