"""Shared fixtures: real services (SLURM, Open MPI) and one small synthetic RSNA set per session.

The services are started for real; a machine that cannot run them (not root, no apt) skips those tests with
the reason, while CI (root, fresh machine) always runs them.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SLURM_BASE = os.environ.get("PNEUMO_TEST_SLURM_BASE", "/tmp/pneumo-hpc-slurm")


def tool_env(**extra):
    """Environment for child processes: the venv's bin first, offline, Open MPI allowed as root."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
        "NO_ALBUMENTATIONS_UPDATE": "1", "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
    })
    for k in [k for k in env if k.startswith(("SLURM_", "OMPI_COMM_WORLD", "PMIX_", "PMI_"))]:
        env.pop(k)  # a test run inside an allocation must not leak its own ranks into the children
    env.pop("RANK", None); env.pop("WORLD_SIZE", None); env.pop("LOCAL_RANK", None)
    env.update(extra)
    return env


def run(cmd, timeout=300, env=None, check=True, **kw):
    """subprocess.run with captured text output; on failure the output is in the assertion message."""
    proc = subprocess.run(cmd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                             f"--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def mpirun():
    exe = shutil.which("mpirun")
    if exe is None:
        pytest.skip("Open MPI's mpirun is not installed (make test installs it as root: containers/install.sh system)")
    return [exe, "--allow-run-as-root", "--oversubscribe", "--mca", "btl_tcp_if_include", "lo",
            "--mca", "oob_tcp_if_include", "lo"]


KEEP = os.environ.get("KEEP_CLUSTER") == "1"  # leave the daemons running after the suite, for debugging


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM (slurmctld, slurmd, munge; 8 CPUs, 3 fake GPUs). Returns its environment."""
    if shutil.which("slurmctld") is None and os.geteuid() != 0:
        pytest.skip("SLURM is not installed and this user cannot install it (run as root: make test)")
    env = tool_env(SLURM_BASE=SLURM_BASE, SLURM_CPUS="8", FAKE_GPUS="3")
    script = str(REPO / ".ci" / "start-slurm.sh")
    run(["bash", script], env=env, timeout=600)
    env["SLURM_CONF"] = f"{SLURM_BASE}/etc/slurm.conf"
    yield env
    if not KEEP:
        run(["bash", script, "stop"], env=env, timeout=120)


class Cluster:
    """The multi-node SLURM of .ci/start-multinode.sh: nodes n1..nN in network namespaces, login node ctl."""
    SCRIPT = str(REPO / ".ci" / "start-multinode.sh")
    BASE = os.environ.get("PNEUMO_TEST_CLUSTER_BASE", "/tmp/pneumo-hpc-cluster")
    KNOBS = {"NODES": "3", "CPUS": "4", "FAKE_GPUS": "2", "SLURMD_TIMEOUT": "20", "CRED_EXPIRE": "10"}
    IFNAME = "pnc0"
    NET = "10.201.0"

    def __init__(self):
        # the SLURM clients in bin/ re-exec themselves on the login node; SLURM_CONF is theirs to set
        self.env = tool_env(PATH=f"{self.BASE}/bin{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                            PNC_BASE=self.BASE)
        self.env.pop("SLURM_CONF", None)

    def script(self, *args, timeout=300):
        return run(["bash", self.SCRIPT, *args], env=dict(self.env, **self.KNOBS), timeout=timeout)

    def login(self, *cmd, **kw):
        """Run a command on the login node (its namespaces), as a user of the cluster would."""
        return run([f"{self.BASE}/bin/pnc-exec", *cmd], env=kw.pop("env", self.env), **kw)

    def on(self, node, *cmd, **kw):
        return run([f"{self.BASE}/bin/pnc-enter", node, *cmd], env=kw.pop("env", self.env), **kw)


@pytest.fixture(scope="session")
def cluster():
    """A real 3-node SLURM (own munge, slurmctld on the login node, one slurmd per node namespace)."""
    if os.geteuid() != 0:
        pytest.skip("the multi-node cluster needs root (network namespaces, daemons): run make test as root")
    c = Cluster()
    c.script("start", timeout=600)
    yield c
    if not KEEP:
        c.script("stop", timeout=180)


@pytest.fixture(scope="session")
def rsna_dir(tmp_path_factory):
    """A small synthetic RSNA download (real JPEG-Baseline DICOMs, Kaggle CSVs)."""
    from pneumo_hpc.data.synth import generate
    out = tmp_path_factory.mktemp("rsna")
    generate(out, n=96, seed=7)
    return out


@pytest.fixture(scope="session")
def prep_dir(rsna_dir, tmp_path_factory):
    """rsna_dir preprocessed to the classifier arrays and the YOLO set."""
    from pneumo_hpc.data.preprocess import PreprocessConfig, run_preprocess
    out = tmp_path_factory.mktemp("prep")
    run_preprocess(PreprocessConfig(rsna=rsna_dir, out=out, size=128, yolo_size=128, val_frac=0.25, seed=0,
                                    workers=1))
    return out
