"""SLURM launch kit: rendered sbatch scripts against golden files, their fail-fast checks, the per-task entry,
and (marker slurm) real jobs submitted through the make targets to the single-node SLURM of conftest.py.

Regenerate the golden files after an intended change with: UPDATE_GOLDEN=1 pytest tests/test_launch.py
"""
import importlib.util
import json
import os
import re
import stat
import sys
import time
import tomllib
from pathlib import Path

import pytest

import pneumo_hpc
from conftest import REPO, VENV_BIN, run, tool_env

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
_spec = importlib.util.spec_from_file_location("render", REPO / "launch" / "render.py")
render_py = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_py)
TABLE = render_py.read_table()  # launch/variables.mk: the defaults make and render.py both use
VERSION = pneumo_hpc.__version__
# Everything launch.mk reads: the caller's environment must not leak into renders that are compared to goldens.
LAUNCH_VARS = [*render_py.DEFAULTS, "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"]
FIXED = ["DATA=/scratch/pneumo/prep", "RSNA=/scratch/pneumo/rsna", "RUNS_DIR=/scratch/pneumo/runs"]
# golden name -> make target and variables; together they cover every target and every optional directive.
CASES = {
    "sbatch-serial": ["sbatch-serial"],
    "sbatch-cpu-ddp": ["sbatch-cpu-ddp", "CPUS=4"],
    "sbatch-ddp": ["sbatch-ddp", "GPUS=2"],
    "sbatch-fsdp": ["sbatch-fsdp", "GPUS=3"],
    "sbatch-yolo": ["sbatch-yolo", "GPUS=4"],
    "sbatch-preprocess": ["sbatch-preprocess", "NODES=2"],
    "sbatch-report": ["sbatch-report"],
    "sbatch-scaling": ["sbatch-scaling"],
    "sbatch-ddp-sif": ["sbatch-ddp", "GPUS=4", "NODES=2", "SIF=/images/pneumo-hpc-gpu.sif", "PARTITION=gpu",
                       "ACCOUNT=proj42", "QOS=normal", "MEM=64G", "IFNAME=ib0", "TIME=02:00:00",
                       "MODEL=resnet18"],
    "sbatch-ddp-torchrun": ["sbatch-ddp", "GPUS=2", "NODES=2", "LAUNCHER=torchrun", "PRECISION=fp32"],
    "sbatch-doctor": ["sbatch-doctor", "NODES=2", "GPUS=4"],
    "sbatch-fsdp-doctor": ["sbatch-fsdp", "GPUS=3", "DOCTOR=1"],
}


def clean_env(**extra):
    env = tool_env(**extra)
    for key in LAUNCH_VARS:
        env.pop(key, None)
    env.update(extra)
    return env


def make(*args, env=None, check=True, timeout=120):
    return run(["make", "-s", "--no-print-directory", "-C", str(REPO), *args], env=env or clean_env(),
               check=check, timeout=timeout)


def render(target, *variables):
    return make(target, "DRY_RUN=1", *FIXED, *variables).stdout


def render_text(name):
    """The golden form: the checkout's path and the package version as placeholders (a release changes neither)."""
    text = render(*CASES[name])
    assert f"# pneumo-hpc {VERSION}: " in text
    return text.replace(str(REPO), "@REPO@").replace(f"# pneumo-hpc {VERSION}: ", "# pneumo-hpc @VERSION@: ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_matches_golden(name):
    text = render_text(name)
    golden = GOLDEN / f"{name}.sbatch"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{name}: rendered script differs from {golden} (UPDATE_GOLDEN=1 if intended)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_is_valid_bash_with_the_slurm_essentials(name, tmp_path):
    text = render(*CASES[name])
    scripts = re.split(r"^# ======== .*\n", text, flags=re.M)
    scripts = [s for s in scripts if s.strip()]
    assert len(scripts) == (7 if name == "sbatch-scaling" else 1)
    for i, script in enumerate(scripts):
        path = tmp_path / f"{i}.sbatch"
        path.write_text(script)
        run(["bash", "-n", str(path)])
        assert script.startswith("#!/bin/bash\n")
        assert "set -euo pipefail" in script
        assert re.search(r"^#SBATCH --output=/scratch/pneumo/runs/[a-z0-9-]+-%j\.out$", script, re.M)
        assert "#SBATCH --open-mode=append" in script
        if "export PNEUMO_MODE=train" in script:  # training checkpoints on USR1 and is requeued
            assert "#SBATCH --signal=B:USR1@120" in script and "#SBATCH --requeue" in script
        else:  # ultralytics/dask would just die on USR1: they get neither
            assert "#SBATCH --signal" not in script and "#SBATCH --requeue" not in script
        assert "export RESULTS=/scratch/pneumo/runs/results.jsonl" in script


def test_gpu_jobs_request_gres_and_one_task_per_gpu():
    ddp = render("sbatch-ddp", "GPUS=4", "NODES=2")
    assert "#SBATCH --gres=gpu:4" in ddp and "#SBATCH --ntasks-per-node=4" in ddp and "#SBATCH --nodes=2" in ddp
    assert "export BACKEND=auto" in ddp and "export PNEUMO_LABEL=ddp-8" in ddp and "export LABEL='8-GPU DDP'" in ddp
    yolo = render("sbatch-yolo", "GPUS=4", "CPUS_PER_GPU=8")
    assert "#SBATCH --gres=gpu:4" in yolo and "#SBATCH --ntasks-per-node=1" in yolo
    assert "#SBATCH --cpus-per-task=32" in yolo
    cpu = render("sbatch-cpu-ddp", "CPUS=4")
    assert "--gres" not in cpu and "#SBATCH --ntasks=4" in cpu and "export BACKEND=gloo" in cpu


def test_sif_and_ifname_reach_the_job():
    text = render(*CASES["sbatch-ddp-sif"][:1], *CASES["sbatch-ddp-sif"][1:])
    assert "export SIF=/images/pneumo-hpc-gpu.sif" in text and "export PNEUMO_GPU=1" in text
    assert "export IFNAME=ib0" in text
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --qos=normal", "#SBATCH --mem=64G",
                 "#SBATCH --time=02:00:00"):
        assert line in text


def test_relative_paths_become_absolute(tmp_path):
    text = make("sbatch-serial", "DRY_RUN=1", "DATA=some/prep", "RUNS_DIR=runs-x").stdout
    assert f"export DATA={REPO}/some/prep" in text
    assert f"#SBATCH --output={REPO}/runs-x/serial-%j.out" in text


@pytest.mark.parametrize("variables, message", [
    (["sbatch-fsdp", "GPUS=3", "BATCH=32"], "BATCH=32 is the global batch and must divide evenly over the 3 ranks"),
    (["sbatch-ddp", "GPUS=0"], "GPU ddp needs GPUS>=1"),
    (["sbatch-ddp", "GPUS=two"], "GPUS='two' must be a whole number"),
    (["sbatch-yolo", "NODES=2"], "ultralytics trains on one node only"),
    (["sbatch-preprocess", "PREP_TASKS=2"], "dask-mpi needs at least 3 ranks"),
    (["sbatch-scaling", "SCALING=serial bogus:2"], "SCALING item 'bogus:2'"),
    (["sbatch-scaling", "SCALING=serial fsdp:3", "BATCH=32"], "over the 3 ranks of fsdp-3"),
    (["sbatch-ddp", "LAUNCHER=pdsh"], "LAUNCHER='pdsh': use one of srun, mpirun, torchrun"),
    (["sbatch-yolo", "LAUNCHER=torchrun"], "LAUNCHER=torchrun cannot start yolo"),
])
def test_bad_settings_fail_before_anything_is_queued(variables, message):
    proc = make(*variables[:1], "DRY_RUN=1", "DATA=/x", *variables[1:], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# ---- one table of launch variables (launch/variables.mk) and the version from the package metadata

SHOW_VARS = "show-launch-vars: ; @:$(foreach v,$(LAUNCH_VARS),$(info $(v)=$($(v))))"


@pytest.mark.parametrize("makefile", ["Makefile", "launch/launch.mk"])
def test_render_defaults_are_what_make_sees(makefile):
    out = make("-f", makefile, f"--eval={SHOW_VARS}", "show-launch-vars").stdout
    seen = dict(line.split("=", 1) for line in out.splitlines())
    assert list(seen) == list(TABLE) and "DOCTOR" in seen
    # render.py's own two: the directory it lives in, and DRY_RUN=1 by hand (make passes its 0: submit)
    assert render_py.DEFAULTS == dict(seen, LAUNCH_DIR=str(REPO / "launch"), DRY_RUN="1")


def test_render_by_hand_gives_what_make_gives():
    by_hand = run([sys.executable, str(REPO / "launch" / "render.py"), "fsdp", "GPUS=3"], env=clean_env(), cwd=REPO)
    assert by_hand.stdout == make("sbatch-fsdp", "GPUS=3", "DRY_RUN=1").stdout


@pytest.mark.parametrize("line", ["BATCH ?= 48  # make keeps these spaces", "BATCH ?= $(GPUS)0", "BATCH = 48",
                                  "GPUS ?= 4"])
def test_table_reader_refuses_lines_make_would_read_differently(tmp_path, line):
    table = tmp_path / "variables.mk"
    table.write_text(f"# a comment\nGPUS ?= 2\n{line}\n")
    with pytest.raises(render_py.LaunchError, match=r"variables.mk:3: expected one `NAME \?= literal value`"):
        render_py.read_table(table)


def test_rendered_version_is_the_package_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert render_py.version() == project["version"] == VERSION


# ---- DOCTOR=1 and sbatch-doctor: the body run under bash with stand-ins for srun and pneumo-hpc

def doctor_job(tmp_path, target, *variables, doctor_rc=0):
    """(process, pneumo-hpc calls) of a rendered job: srun runs its command once, pneumo-hpc logs its arguments,
    its doctor exits doctor_rc and its training writes metrics.json."""
    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    stub(bindir / "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    stub(bindir / "pneumo-hpc", f'echo "$*" >>{calls}\n'
         f'if [ "$1" = doctor ]; then exit {doctor_rc}; fi\n'
         'prev=; for a in "$@"; do if [ "$prev" = --out ]; then out=$a; fi; prev=$a; done\n'
         'echo "{}" >"$out/metrics.json"\n')
    script = tmp_path / "job.sbatch"
    script.write_text(render(target, f"RUNS_DIR={tmp_path}/runs", f"PNEUMO_HPC_BIN={bindir}/pneumo-hpc", *variables))
    env = clean_env(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node1")
    env["PATH"] = f"{bindir}:{env['PATH']}"
    proc = run(["bash", str(script)], env=env, check=False)
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("doctor", ["0", "1"])
def test_doctor_runs_first_only_when_asked(tmp_path, doctor):
    proc, calls = doctor_job(tmp_path, "sbatch-cpu-ddp", "CPUS=2", f"DOCTOR={doctor}")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs" / "cpu-ddp-2-4242"
    expected = [f"doctor --data /scratch/pneumo/prep --out {run_dir}/doctor"] if doctor == "1" else []
    assert calls[:-1] == expected and calls[-1].startswith("train --data /scratch/pneumo/prep")


def test_a_failing_doctor_stops_the_training_and_names_its_output(tmp_path):
    proc, calls = doctor_job(tmp_path, "sbatch-yolo", "GPUS=2", "DOCTOR=1", doctor_rc=3)
    assert proc.returncode == 3 and [c.split()[0] for c in calls] == ["doctor"]
    assert f"the doctor failed (exit 3): not training; its findings are in {tmp_path}/runs/yolo-2-4242/doctor" \
        in proc.stderr


@pytest.mark.parametrize("doctor_rc", [0, 4])
def test_sbatch_doctor_is_one_doctor_step(tmp_path, doctor_rc):
    proc, calls = doctor_job(tmp_path, "sbatch-doctor", "GPUS=2", doctor_rc=doctor_rc)
    out = tmp_path / "runs" / "doctor-2-4242" / "doctor"
    assert proc.returncode == doctor_rc and calls == [f"doctor --data /scratch/pneumo/prep --out {out}"]
    assert (f"its findings are in {out}" in proc.stderr) == bool(doctor_rc)


def test_submit_refuses_missing_inputs(tmp_path):
    proc = make("sbatch-cpu-ddp", "CPUS=2", f"DATA={tmp_path}/nope", f"RUNS_DIR={tmp_path}/runs", "DRY_RUN=0",
                check=False)
    assert proc.returncode != 0
    assert f"DATA={tmp_path}/nope does not exist" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_job_body_fails_fast_on_a_missing_variable(tmp_path):
    script = render("sbatch-cpu-ddp", "CPUS=2", f"RUNS_DIR={tmp_path}/runs")
    no_data = "\n".join(line for line in script.splitlines() if not line.startswith("export DATA="))
    (tmp_path / "job.sbatch").write_text(no_data)
    env = clean_env(SLURM_JOB_ID="4242")
    proc = run(["bash", str(tmp_path / "job.sbatch")], env=env, check=False)
    assert proc.returncode != 0 and "DATA" in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be created before the checks pass"
    (tmp_path / "job.sbatch").write_text(script)
    proc = run(["bash", str(tmp_path / "job.sbatch")], env=clean_env(), check=False)
    assert proc.returncode != 0 and "run this script with sbatch" in proc.stderr


# ---- launch/task.sh, the per-rank entry

def stub(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_task_runs_native_install_with_pinned_threads(tmp_path):
    probe = tmp_path / "probe"
    stub(probe, 'echo "threads=$OMP_NUM_THREADS mkl=$MKL_NUM_THREADS args=$*"\n')
    env = clean_env(PNEUMO_HPC_BIN=str(probe), SLURM_CPUS_PER_TASK="3", OMP_NUM_THREADS="16")
    out = run([str(REPO / "launch" / "task.sh"), "train", "--out", "x y"], env=env).stdout
    assert out.strip() == "threads=3 mkl=3 args=train --out x y"
    real = run([str(REPO / "launch" / "task.sh"), "--version"],
               env=clean_env(PNEUMO_HPC_BIN=str(VENV_BIN / "pneumo-hpc"))).stdout
    assert f"pneumo-hpc, version {VERSION}" in real


def test_task_says_how_to_fix_a_missing_install(tmp_path):
    env = clean_env(PNEUMO_HPC_BIN=str(tmp_path / "missing"))
    proc = run([str(REPO / "launch" / "task.sh"), "--version"], env=env, check=False)
    assert proc.returncode == 127 and "PNEUMO_HPC_BIN" in proc.stderr and "SIF=" in proc.stderr


@pytest.mark.parametrize("gpu, flag", [("1", "--nv "), ("0", "")])
def test_task_runs_the_image_with_nv_only_on_gpu_jobs(tmp_path, gpu, flag):
    # Apptainer cannot run on this machine: a stand-in on PATH records how task.sh calls it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub(bindir / "apptainer", 'echo "apptainer $*"\n')
    env = clean_env(SIF="/images/p.sif", PNEUMO_GPU=gpu)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    out = run([str(REPO / "launch" / "task.sh"), "train", "--data", "/d"], env=env).stdout.strip()
    assert out == f"apptainer exec {flag}/images/p.sif pneumo-hpc train --data /d"


# ---- real SLURM (conftest's single node: 8 CPUs, 3 fake GPUs without CUDA)

def submit(slurm, target, *variables, timeout=600):
    env = dict(slurm)
    for key in LAUNCH_VARS:
        env.pop(key, None)
    return make(target, f"PNEUMO_HPC_BIN={VENV_BIN / 'pneumo-hpc'}", *variables, env=env, timeout=timeout)


def job_dir(runs, prefix):
    dirs = sorted(runs.glob(f"{prefix}-[0-9]*/"))
    assert len(dirs) == 1, f"expected one {prefix}-<jobid>/ in {runs}: {list(runs.iterdir())}"
    return dirs[0]


def results(runs):
    return [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slurm
def test_sbatch_fsdp_three_fake_gpus_runs_on_cpu_gloo(slurm, prep_dir, tmp_path):
    runs = tmp_path / "runs"
    out = submit(slurm, "sbatch-fsdp", "GPUS=3", f"DATA={prep_dir}", "EPOCHS=1", "BATCH=24", f"RUNS_DIR={runs}",
                 "WAIT=1").stdout
    run_dir = job_dir(runs, "fsdp-3")
    assert f"-> {run_dir}/" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 3 and metrics["strategy"] == "fsdp"
    assert metrics["launcher"] == "slurm" and metrics["backend"] == "gloo"
    assert [r["config"] for r in results(runs)] == ["3-GPU FSDP"]
    log = (run_dir / "slurm.out").read_text()  # the symlink into RUNS_DIR/<label>-<jobid>.out
    assert re.search(r"pneumo-hpc fsdp-3: job \d+ exit 0 after \d+ s", log)
    assert (run_dir / "job.sbatch").read_text().startswith("#!/bin/bash")


@pytest.mark.slurm
def test_sbatch_cpu_ddp_two_tasks(slurm, prep_dir, tmp_path):
    runs = tmp_path / "runs"
    submit(slurm, "sbatch-cpu-ddp", "CPUS=2", f"DATA={prep_dir}", "EPOCHS=1", "BATCH=24", f"RUNS_DIR={runs}",
           "WAIT=1")
    metrics = json.loads((job_dir(runs, "cpu-ddp-2") / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["strategy"] == "ddp" and metrics["backend"] == "gloo"
    assert [r["config"] for r in results(runs)] == ["2-CPU DDP"]


@pytest.mark.slurm
def test_doctor_first_then_the_training_on_real_slurm(slurm, prep_dir, tmp_path):
    if run([str(VENV_BIN / "pneumo-hpc"), "doctor", "--help"], check=False).returncode != 0:
        pytest.skip("this checkout's pneumo-hpc has no doctor command yet")
    runs = tmp_path / "runs"
    submit(slurm, "sbatch-cpu-ddp", "CPUS=2", "DOCTOR=1", f"DATA={prep_dir}", "EPOCHS=1", "BATCH=24",
           f"RUNS_DIR={runs}", "WAIT=1")
    run_dir = job_dir(runs, "cpu-ddp-2")
    log = (run_dir / "slurm.out").read_text()
    assert log.index(f"doctor --data {prep_dir} --out {run_dir}/doctor") < log.index("exit 0 after"), log
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slurm
def test_a_failing_job_fails_the_make_target_and_points_at_its_log(slurm, prep_dir, tmp_path):
    runs = tmp_path / "runs"
    env = {k: v for k, v in slurm.items() if k not in LAUNCH_VARS}
    proc = make("sbatch-serial", f"PNEUMO_HPC_BIN={VENV_BIN / 'pneumo-hpc'}", f"DATA={prep_dir}",
                "MODEL=no-such-model", f"RUNS_DIR={runs}", "WAIT=1", env=env, check=False, timeout=300)
    assert proc.returncode != 0
    log = re.search(r"see (\S+\.out)\)", proc.stderr)
    assert log, proc.stderr
    text = Path(log.group(1)).read_text()
    assert "no-such-model" in text and re.search(r"job \d+ exit [1-9]", text)
    # the make output itself says how the job ended and shows the log's last lines
    assert re.search(r"job \d+: JobState=FAILED .*ExitCode=[1-9]", proc.stderr), proc.stderr
    assert "--- the last" in proc.stderr and "no-such-model" in proc.stderr.split("--- the last", 1)[-1], proc.stderr


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")  # transient ones (REQUEUED, COMPLETING, CONFIGURING...) are fine


def scontrol_job(env, job):
    out = run(["scontrol", "show", "job", job], env=env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def node_is_idle(env):
    out = run(["scontrol", "show", "node"], env=env).stdout
    return re.search(r"\bState=IDLE\b", out) is not None and "CPUAlloc=0" in out


def why(env, job, log):
    """Everything that explains a job's state: scontrol, the controller's and slurmd's lines on it, the job log."""
    lines = [run(["scontrol", "show", "job", job], env=env, check=False).stdout]
    base = Path(env["SLURM_CONF"]).parents[1] / "state" / "log"
    for name in ("slurmctld.log", "slurmd.log"):
        if (base / name).is_file():
            lines += [f"--- {name}"] + [ln for ln in (base / name).read_text(errors="replace").splitlines()
                                         if re.search(rf"(JobId=|job |\[|StepId=){job}\b", ln)][-40:]
    lines += ["--- job log", log.read_text() if log.is_file() else "(none)"]
    return "\n".join(lines)


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_resumes(slurm, prep_dir, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@120 sends) -> ranks checkpoint, exit 99 -> requeue -> resume."""
    runs = tmp_path / "runs"
    out = submit(slurm, "sbatch-cpu-ddp", "CPUS=2", f"DATA={prep_dir}", "EPOCHS=8", "BATCH=12",
                 f"RUNS_DIR={runs}").stdout
    job = re.search(r"job (\d+)", out).group(1)
    log = runs / f"cpu-ddp-2-{job}.out"
    deadline = time.time() + 240
    while not (log.is_file() and "epoch 1/8" in log.read_text()):  # training has started: 8 epochs to go
        assert time.time() < deadline, f"job {job} did not finish an epoch: {log.read_text() if log.is_file() else ''}"
        time.sleep(1)
    run(["scancel", "--batch", "--signal=USR1", job], env=slurm)
    # SLURM holds a requeued job back ~2 minutes (BeginTime), which also lets the first run's batch step finish
    # tearing down. Start it now instead, but only once that teardown is over: a restart that overlaps the old
    # step's completion can be marked FAILED by it (seen once in CI).
    while True:
        info = scontrol_job(slurm, job)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING" and node_is_idle(slurm) \
                and run(["pgrep", "-f", f"slurmstepd: \\[{job}\\."], check=False).returncode != 0:
            break
        assert info.get("JobState") not in FINAL_STATES, why(slurm, job, log)
        assert time.time() < deadline, f"job {job} was not requeued: {why(slurm, job, log)}"
        time.sleep(1)
    time.sleep(1)
    run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm)
    while scontrol_job(slurm, job).get("JobState") != "COMPLETED":
        assert scontrol_job(slurm, job).get("JobState") not in FINAL_STATES, why(slurm, job, log)
        assert time.time() < deadline + 240, f"job {job} did not complete: {why(slurm, job, log)}"
        time.sleep(2)
    text = log.read_text()  # --open-mode=append: both runs in one log
    assert "checkpointed" in text and "exit 99" in text, text
    assert f"requeueing job {job} (restart 1 of 3)" in text
    assert re.search(r"resumed from .*checkpoint", text)
    assert f"job {job} on" in text and "restart 1:" in text
    metrics = json.loads((job_dir(runs, "cpu-ddp-2") / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 8
    assert len(results(runs)) == 1


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_preprocess_with_dask_mpi(slurm, rsna_dir, tmp_path):
    out_dir = tmp_path / "prep"
    submit(slurm, "sbatch-preprocess", "PREP_TASKS=3", f"RSNA={rsna_dir}", f"DATA={out_dir}", "IMG_SIZE=64",
           "YOLO_SIZE=64", "IFNAME=lo", f"RUNS_DIR={tmp_path / 'runs'}", "WAIT=1")
    log = (job_dir(tmp_path / "runs", "preprocess-3") / "slurm.out").read_text()
    assert "cluster=mpi" in log
    assert (out_dir / "manifest.json").is_file() and (out_dir / "yolo").is_dir()


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_scaling_runs_the_table_then_the_report(slurm, prep_dir, tmp_path):
    runs = tmp_path / "runs"
    out = submit(slurm, "sbatch-scaling", "SCALING=serial cpu-ddp:2", f"DATA={prep_dir}", "EPOCHS=1", "BATCH=32",
                 f"RUNS_DIR={runs}", "WAIT=1").stdout
    ids = re.findall(r"^(\S+): job (\d+)", out, re.M)
    assert [label for label, _ in ids] == ["serial", "cpu-ddp-2", "report"]
    report_job = ids[-1][1]
    assert sorted(r["config"] for r in results(runs)) == ["2-CPU DDP", "serial CNN (CPU)"]
    report_dir = runs / f"report-{report_job}"
    assert (report_dir / "report.md").is_file(), list(report_dir.iterdir())
    report = (report_dir / "report.md").read_text()  # it ran after both (afterany): both rows are in it
    assert "2-CPU DDP" in report and "serial CNN (CPU)" in report
