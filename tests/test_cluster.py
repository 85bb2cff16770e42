"""Launcher detection, env:// export, port/address derivation and device/backend choice, from environment tables.

The tables are what the real launchers set (recorded from torchrun, Open MPI 4.1 mpirun, and srun / sbatch of
SLURM 22.05 on this machine); tests/test_dist_launch.py runs the launchers themselves.
"""
import json
import os
import socket
import subprocess
import sys
from unittest import mock

import pytest

from pneumo_hpc.runtime import dist
from pneumo_hpc.runtime.launchers import (LocalEnvironment, MPIEnvironment, SLURMEnvironment, TorchrunEnvironment,
                                derive_port, detect, first_host)

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
            "MASTER_ADDR": "node1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "none"}
OPENMPI = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "OMPI_COMM_WORLD_NODE_RANK": "1", "PMIX_RANK": "5",
           "PMIX_NAMESPACE": "2126643201", "OMPI_MCA_ess_base_jobid": "2126643201"}
HYDRA = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}  # MPICH / Intel MPI
SRUN = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_ID": "123456", "SLURM_JOBID": "123456", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
        "SLURM_JOB_NODELIST": "gpu-node[07-08]", "SLURM_NODELIST": "gpu-node[07-08]",
        "SLURM_STEP_NODELIST": "gpu-node[07-08]", "SLURM_GTIDS": "2,3"}
SRUN_PMIX = {**SRUN, "PMIX_RANK": "3", "PMIX_NAMESPACE": "slurm.pmix.123456.0", "SLURM_MPI_TYPE": "pmix"}
SRUN_PMI2 = {**SRUN, "PMI_RANK": "3", "PMI_SIZE": "4", "PMI_JOBID": "123456.0", "SLURM_MPI_TYPE": "pmi2"}
# the batch script itself (sbatch -n 4): SLURM_PROCID=0 and SLURM_NTASKS=4, but no step and one process
BATCH = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4",
         "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "gpu-node[07-08]",
         "SLURM_NODELIST": "gpu-node[07-08]"}
SALLOC = {"SLURM_JOB_ID": "78", "SLURM_NTASKS": "2", "SLURM_NODELIST": "vm", "SLURM_TASKS_PER_NODE": "2"}


@pytest.mark.parametrize("environ, launcher, ranks", [
    # ranks: (rank, local_rank, world_size, local_world_size, node_rank)
    pytest.param({}, "local", (0, 0, 1, 1, 0), id="nothing"),
    pytest.param(TORCHRUN, "torchrun", (3, 1, 8, 2, 1), id="torchrun"),
    pytest.param({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "torchrun",
                 (1, 1, 2, 2, 0), id="hand-made-env-launch"),
    pytest.param(OPENMPI, "mpi", (5, 1, 8, 4, 1), id="openmpi"),
    pytest.param(HYDRA, "mpi", (2, 0, 4, 2, 1), id="mpich-hydra"),
    pytest.param(SRUN, "slurm", (3, 1, 4, 2, 1), id="srun"),
    pytest.param(SRUN_PMIX, "slurm", (3, 1, 4, 2, 1), id="srun-mpi-pmix"),
    pytest.param(SRUN_PMI2, "slurm", (3, 1, 4, 2, 1), id="srun-mpi-pmi2"),
    pytest.param(BATCH, "local", (0, 0, 1, 1, 0), id="sbatch-script-shell"),
    pytest.param(SALLOC, "local", (0, 0, 1, 1, 0), id="salloc-shell"),
    # precedence
    pytest.param({**SRUN, **TORCHRUN}, "torchrun", (3, 1, 8, 2, 1), id="torchrun-inside-srun"),
    pytest.param({**OPENMPI, **TORCHRUN}, "torchrun", (3, 1, 8, 2, 1), id="torchrun-beats-mpi"),
    pytest.param({**BATCH, **OPENMPI}, "mpi", (5, 1, 8, 4, 1), id="mpirun-inside-sbatch"),
    pytest.param({**SRUN, "SLURM_PROCID": "0", **OPENMPI}, "mpi", (5, 1, 8, 4, 1), id="mpirun-inside-srun-step"),
    pytest.param({**SRUN, **HYDRA}, "mpi", (2, 0, 4, 2, 1), id="hydra-inside-srun-step"),
    pytest.param({"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1",
                  "SLURM_NODEID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "vm"}, "slurm", (0, 0, 1, 1, 0),
                 id="srun-n1"),
])
def test_detect(environ, launcher, ranks):
    env = detect(dict(environ))
    assert env.name == launcher
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == ranks


def test_detect_reads_os_environ_by_default():
    with mock.patch.dict(os.environ, SRUN, clear=True):
        assert isinstance(detect(), SLURMEnvironment)
    with mock.patch.dict(os.environ, {}, clear=True):
        assert isinstance(detect(), LocalEnvironment)


def test_pmix_without_slurm_is_mpi_and_keeps_its_rank():
    env = detect({"PMIX_RANK": "6", "PMIX_NAMESPACE": "prterun-vm-1234@1"})
    assert isinstance(env, MPIEnvironment) and env.rank == 6  # sizes come from mpi4py: see test_dist_launch


@pytest.mark.parametrize("nodelist, first", [
    ("gpu-node[07-09,12]", "gpu-node07"),
    ("jean-zay-ia[810-812]", "jean-zay-ia810"),
    ("a,b", "a"),
    ("n[1-2]-ib,x", "n1-ib"),
    ("node[001-003]", "node001"),
    ("r[1-2]n[3-4]", "r1n3"),
    ("vm", "vm"),
])
@pytest.mark.parametrize("var", ["SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_STEP_NODELIST"])
def test_slurm_master_addr_is_first_node(nodelist, first, var):
    environ = {k: v for k, v in SRUN.items() if not k.endswith("NODELIST")} | {var: nodelist}
    assert SLURMEnvironment(environ).master_addr == first
    assert first_host(nodelist) == first


def test_master_addr_from_environment_wins():
    assert SLURMEnvironment({**SRUN, "MASTER_ADDR": "10.0.0.5"}).master_addr == "10.0.0.5"
    assert MPIEnvironment({**OPENMPI, "MASTER_ADDR": "10.0.0.5"}).master_addr == "10.0.0.5"


def test_bad_nodelist_names_it():
    with pytest.raises(ValueError, match=r"gpu\[07-"):
        SLURMEnvironment({**SRUN, "SLURM_STEP_NODELIST": "gpu[07-"}).master_addr


@pytest.mark.parametrize("tasks_per_node, node, expected", [
    ("4", 0, 4), ("2(x3),1", 2, 2), ("2(x3),1", 3, 1), ("3,1", 1, 1),
])
def test_slurm_local_world_size_from_tasks_per_node(tasks_per_node, node, expected):
    environ = {**SRUN, "SLURM_NODEID": str(node), "SLURM_STEP_TASKS_PER_NODE": tasks_per_node}
    assert SLURMEnvironment(environ).local_world_size == expected


def test_slurm_step_layout_beats_job_layout():
    # srun -n 1 inside an sbatch -n 4 job: the step is one task
    environ = {**BATCH, "SLURM_STEP_ID": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1",
               "SLURM_TASKS_PER_NODE": "2(x2)"}
    env = SLURMEnvironment(environ)
    assert (env.world_size, env.local_world_size) == (1, 1)


def test_slurm_gtids_fallback():
    environ = {k: v for k, v in SRUN.items() if "TASKS_PER_NODE" not in k}
    assert SLURMEnvironment(environ).local_world_size == 2


@pytest.mark.parametrize("environ, message", [
    ({**SRUN, "SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not an integer"),
    ({"TORCHELASTIC_RUN_ID": "1", "WORLD_SIZE": "2"}, "RANK is not set"),
    ({**SRUN, "MASTER_PORT": "http"}, "MASTER_PORT='http'"),
])
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        detect(environ).export({})


@pytest.mark.parametrize("job_id, port", [("123456", 18456), ("7", 15007), ("99999", 24999), ("10000", 15000)])
def test_port_from_numeric_job_id(job_id, port):
    assert derive_port(job_id) == port


def test_port_derivation_per_launcher():
    assert SLURMEnvironment(SRUN).master_port == 18456  # job 123456, step 0
    second_step = SLURMEnvironment({**SRUN, "SLURM_STEP_ID": "1"}).master_port
    assert second_step != 18456 and 15000 <= second_step < 25000  # concurrent steps of one job
    assert MPIEnvironment(OPENMPI).master_port == derive_port("2126643201") == 18201
    assert MPIEnvironment({**BATCH, **OPENMPI}).master_port == 18201  # the mpirun's id, not the batch job's
    assert MPIEnvironment(HYDRA).master_port == 29500  # nothing to derive from
    assert SLURMEnvironment({**SRUN, "MASTER_PORT": "4242"}).master_port == 4242


def test_string_port_is_the_same_in_every_process():
    # hash() is salted per interpreter; ranks must agree without talking
    namespace = "prterun-node1-4242@1"
    code = f"from pneumo_hpc.runtime.launchers import derive_port; print(derive_port({namespace!r}))"
    seen = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout.strip() for seed in ("1", "2")}
    assert seen == {str(derive_port(namespace))}
    assert 15000 <= derive_port(namespace) < 25000


def test_local_port_is_free_and_stable():
    env = LocalEnvironment({})
    assert env.master_port == env.master_port  # export() and the JSON report must agree
    with socket.socket() as s:
        s.bind(("127.0.0.1", env.master_port))


@pytest.mark.parametrize("environ", [TORCHRUN, OPENMPI, HYDRA, SRUN, SRUN_PMIX, {}], ids=lambda e: detect(e).name)
def test_export_writes_env_init_variables(environ):
    cluster = detect(dict(environ))
    target = {}
    written = cluster.export(target)
    assert set(target) == {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    assert written == target
    assert (target["RANK"], target["WORLD_SIZE"]) == (str(cluster.rank), str(cluster.world_size))
    assert target["MASTER_PORT"] == str(cluster.master_port)


def test_export_never_overwrites():
    target = {"MASTER_ADDR": "ib-gw", "MASTER_PORT": "31000", "RANK": "3"}  # user's choices, RANK agrees
    written = SLURMEnvironment(SRUN).export(target)
    assert target["MASTER_ADDR"] == "ib-gw" and target["MASTER_PORT"] == "31000" and target["RANK"] == "3"
    assert set(written) == {"LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"}


def test_export_refuses_a_contradicting_rank():
    target = {"RANK": "0", "WORLD_SIZE": "4"}  # stale leftovers, say
    with pytest.raises(ValueError, match=r"RANK='0' \(the slurm launcher says 3\).*HINT: unset"):
        SLURMEnvironment(SRUN).export(target)
    assert target == {"RANK": "0", "WORLD_SIZE": "4"}


def test_export_defaults_to_os_environ():
    with mock.patch.dict(os.environ, OPENMPI, clear=True):
        detect().export()
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == ("5", "8", "18201")
        assert isinstance(detect(), TorchrunEnvironment)  # what a child process would now see, same numbers
        assert detect().rank == 5
    assert "RANK" not in os.environ


def test_mpi_single_node_needs_no_mpi4py():
    with mock.patch.dict(sys.modules, {"mpi4py": None}):
        assert MPIEnvironment({**OPENMPI, "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}).master_addr == "127.0.0.1"


def test_mpi_multi_node_without_mpi4py_says_how_to_fix():
    with mock.patch.dict(sys.modules, {"mpi4py": None}):  # import mpi4py -> ImportError
        with pytest.raises(RuntimeError, match=r"mpi4py.*pip install 'pneumo-hpc\[mpi\]'.*MASTER_ADDR"):
            MPIEnvironment(OPENMPI).master_addr


# ---------------------------------------------------------------- device and backend choice


@pytest.mark.parametrize("requested, local_rank, local_world, visible, bound, expected", [
    ("auto", 0, 1, 0, False, "cpu"),
    ("auto", 1, 2, 0, False, "cpu"),
    ("cpu", 1, 4, 4, False, "cpu"),
    ("auto", 1, 2, 2, False, "cuda:1"),
    ("auto", 3, 4, 8, False, "cuda:3"),
    ("cuda", 0, 1, 1, False, "cuda:0"),
    ("auto", 1, 2, 1, True, "cuda:0"),  # srun --gpus-per-task 1: each task sees only its own GPU
    ("cuda:1", 0, 4, 2, False, "cuda:1"),  # explicit index: the user knows the layout
])
def test_choose_device(requested, local_rank, local_world, visible, bound, expected):
    assert dist.choose_device(requested, local_rank, local_world, visible, bound_per_task=bound) == expected


@pytest.mark.parametrize("requested, local_world, visible, message", [
    ("auto", 4, 2, r"4 ranks on this node but only 2 GPUs visible \(CUDA_VISIBLE_DEVICES='0,1'\).*HINT"),
    ("cuda", 2, 1, r"2 ranks on this node but only 1 GPUs visible"),
    ("cuda", 1, 0, r"no CUDA GPU is visible"),
    ("cuda:2", 1, 2, r"'cuda:2' does not exist: 2 GPU\(s\) visible"),
    ("tpu", 1, 0, r"unknown device 'tpu'"),
])
def test_choose_device_errors(requested, local_world, visible, message):
    with pytest.raises(ValueError, match=message):
        dist.choose_device(requested, 0, local_world, visible, cuda_visible_devices="0,1")


@pytest.mark.parametrize("environ, visible, bound", [
    ({"SLURM_GPUS_ON_NODE": "2"}, 1, True),  # --gpus-per-task=1 with 2 tasks (recorded)
    ({"SLURM_GPUS_ON_NODE": "2"}, 2, False),  # --gres=gpu:2: every task sees both
    ({}, 1, False),
    ({"SLURM_GPUS_ON_NODE": "2"}, 0, False),
])
def test_gpus_bound_per_task(environ, visible, bound):
    assert dist.gpus_bound_per_task(environ, visible) is bound


@pytest.mark.parametrize("requested, device_type, expected", [
    ("auto", "cpu", "gloo"), ("auto", "cuda", "nccl"), ("gloo", "cpu", "gloo"), ("gloo", "cuda", "gloo"),
    ("nccl", "cuda", "nccl"), ("NCCL", "cuda", "nccl"),
])
def test_choose_backend(requested, device_type, expected):
    assert dist.choose_backend(requested, device_type) == expected


def test_choose_backend_errors():
    with pytest.raises(ValueError, match="backend nccl needs a CUDA device.*HINT: use --backend gloo"):
        dist.choose_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        dist.choose_backend("mpi", "cpu")


def test_resolve_timeout():
    assert dist.resolve_timeout(None, {}) == 300
    assert dist.resolve_timeout(None, {"PNEUMO_DIST_TIMEOUT": "12.5"}) == 12.5
    assert dist.resolve_timeout(7, {"PNEUMO_DIST_TIMEOUT": "12.5"}) == 7
    with pytest.raises(ValueError, match="PNEUMO_DIST_TIMEOUT='soon'"):
        dist.resolve_timeout(None, {"PNEUMO_DIST_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="positive"):
        dist.resolve_timeout(0, {})


# ---------------------------------------------------------------- describe/setup on this (CPU) machine

BASE = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ} | {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("environ, backend, expected", [
    ({}, "auto", {"launcher": "local", "world_size": 1, "backend": "none", "device": "cpu", "distributed": False}),
    (TORCHRUN, "auto", {"launcher": "torchrun", "rank": 3, "backend": "gloo", "device": "cpu",
                        "master_addr": "node1", "master_port": 29400, "distributed": True}),
    (SRUN, "gloo", {"launcher": "slurm", "master_addr": "gpu-node07", "master_port": 18456, "backend": "gloo"}),
])
def test_describe(environ, backend, expected):
    with mock.patch.dict(os.environ, {**BASE, **environ}, clear=True):
        before = dict(os.environ)
        info = dist.describe(backend=backend)
        assert dict(os.environ) == before  # describe exports nothing, whatever the launcher's variables
    assert {k: info[k] for k in expected} == expected
    assert json.loads(json.dumps(info)) == info
    assert {"launcher", "rank", "local_rank", "world_size", "local_world_size", "master_addr", "master_port",
            "backend", "device", "node_rank", "hostname"} <= set(info)


def test_describe_rejects_nccl_on_cpu():
    with mock.patch.dict(os.environ, {**BASE, **TORCHRUN}, clear=True):
        with pytest.raises(ValueError, match="backend nccl needs a CUDA device"):
            dist.describe(backend="nccl")


def test_setup_single_rank_group_and_teardown_twice(capsys):
    import torch
    import torch.distributed as tdist

    with mock.patch.dict(os.environ, BASE, clear=True):
        ctx = dist.setup(init_single=True, timeout_s=30)
        try:
            assert (ctx.launcher, ctx.backend, ctx.distributed, ctx.is_main) == ("local", "gloo", True, True)
            assert os.environ["WORLD_SIZE"] == "1" and os.environ["MASTER_PORT"] == str(ctx.cluster.master_port)
            value = torch.ones(1)
            tdist.all_reduce(value)
            assert tdist.get_world_size() == 1 and value.item() == 1
            dist.print0("from rank 0")
        finally:
            dist.teardown(ctx)
        dist.teardown(ctx)
        assert not tdist.is_initialized()
        ctx = dist.setup()  # world 1 without init_single: no group
        assert (ctx.backend, ctx.distributed, tdist.is_initialized()) == ("none", False, False)
        dist.teardown(ctx)
    assert capsys.readouterr().out == "from rank 0\n"


def test_print0_only_on_rank_0(capsys):
    for rank in ("1", "0"):
        with mock.patch.dict(os.environ, {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, clear=True):
            dist.print0("hello", rank)
    assert capsys.readouterr().out == "hello 0\n"


def test_env_command_human_and_errors():
    from click.testing import CliRunner

    from pneumo_hpc.runtime.commands import env

    with mock.patch.dict(os.environ, BASE, clear=True):
        result = CliRunner().invoke(env, [])
        assert result.exit_code == 0, result.output
        assert "launcher" in result.output and "local" in result.output and "world_size" in result.output
        result = CliRunner().invoke(env, ["--json", "--backend", "nccl"])
        assert result.exit_code == 1 and "backend nccl needs a CUDA device" in result.output


def test_cli_modules_stay_light():
    code = ("import sys, pneumo_hpc.runtime.commands, pneumo_hpc.runtime.launchers, pneumo_hpc.runtime.dist; "
            "print(sorted(m for m in ('torch', 'mpi4py', 'hostlist') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
