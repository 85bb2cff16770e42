"""CPU ranks get their own cores unless a launcher bound them (pneumo_hpc/runtime/cpu_bind.py), with real launchers."""
import json
import os
import subprocess
import sys

import pytest
from conftest import run, tool_env
from test_dist_launch import ENV_INIT, _rows

from pneumo_hpc.runtime.cpu_bind import share

# Linux numbers hyperthreads core-major: CPUs 0-3 are the first thread of cores 0-3, CPUs 4-7 their siblings
SMT = {cpu: (0, cpu % 4) for cpu in range(8)}.__getitem__


@pytest.mark.parametrize("world, expected", [
    (2, [[0, 1, 4, 5], [2, 3, 6, 7]]),  # whole cores, both hyperthreads
    (3, [[0, 4], [1, 5], [2, 6]]),  # one core each; core 3 idles rather than being shared
    (4, [[0, 4], [1, 5], [2, 6], [3, 7]]),
    (8, [[0], [1], [2], [3], [4], [5], [6], [7]]),  # more ranks than cores: logical CPUs
])
def test_share_gives_disjoint_whole_cores(world, expected):
    assert [share(set(range(8)), r, world, SMT) for r in range(world)] == expected


def test_share_stays_inside_the_allowed_set():
    allowed = {2, 3, 6, 7}  # a cgroup's cpuset: cores 2 and 3
    assert [share(allowed, r, 2, SMT) for r in range(2)] == [[2, 6], [3, 7]]


BIND = "import json, sys; from pneumo_hpc.runtime.cpu_bind import bind; print(json.dumps(bind(int(sys.argv[1]), 2)))"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to narrow one process to one")
def test_a_process_its_launcher_bound_is_left_alone():
    cpu = min(os.sched_getaffinity(0))
    bound = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", BIND, "1"],
                           capture_output=True, text=True, check=True)
    assert json.loads(bound.stdout) == ["launcher", [cpu]]
    free = subprocess.run([sys.executable, "-c", BIND, "1"], capture_output=True, text=True, check=True)
    how, cpus = json.loads(free.stdout)
    assert how == "cores" and cpus == share(os.sched_getaffinity(0), 1, 2)
    off = subprocess.run([sys.executable, "-c", BIND, "1"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PNEUMO_HPC_CPU_BIND": "none"})
    assert json.loads(off.stdout) == ["none", sorted(os.sched_getaffinity(0))]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for two ranks")
def test_torchrun_ranks_get_their_own_cpus(tmp_path):
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "pneumo_hpc", *ENV_INIT]
    rows = sorted(_rows(run(cmd, timeout=180, cwd=tmp_path).stdout), key=lambda r: r["rank"])
    assert [r["cpu_bind"] for r in rows] == ["cores", "cores"], rows
    mine = os.sched_getaffinity(0)
    assert [r["cpus"] for r in rows] == [share(mine, 0, 2), share(mine, 1, 2)]
    assert not set(rows[0]["cpus"]) & set(rows[1]["cpus"])
    rows = _rows(run(cmd, timeout=180, cwd=tmp_path, env=tool_env(PNEUMO_HPC_CPU_BIND="none")).stdout)
    assert [(r["cpu_bind"], r["cpus"]) for r in rows] == [("none", sorted(mine))] * 2
    planned = _rows(run(cmd[:-1], timeout=180, cwd=tmp_path).stdout)  # without --init: what setup would do
    assert sorted((r["rank"], r["cpu_bind"], r["cpus"]) for r in planned) == \
        [(0, "cores", share(mine, 0, 2)), (1, "cores", share(mine, 1, 2))]


@pytest.mark.parametrize("how, own, machine, local, threads", [
    ("none", 16, 16, 8, 2),  # unbound: the CPU set shared by the node's ranks
    ("cores", 2, 16, 8, 2),  # bound by the kit: its own cores
    ("launcher", 8, 16, 8, 2),  # mpirun with >2 ranks binds each to its whole socket: not 8 threads each
    ("launcher", 2, 64, 8, 2),  # srun --cpu-bind=cores inside a 16-CPU cgroup of a 64-CPU node
    ("cores", 1, 2, 2, 1),
])
def test_threads_per_rank_follow_the_cpus_it_may_use(monkeypatch, how, own, machine, local, threads):
    from types import SimpleNamespace

    import torch

    from pneumo_hpc.classify import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(own)))
    monkeypatch.setattr(os, "cpu_count", lambda: machine)
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    ctx = SimpleNamespace(device=torch.device("cpu"), cpu_bind=how, local_world_size=local)
    train._set_threads(ctx)
    assert asked == [threads]
