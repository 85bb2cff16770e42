#!/usr/bin/env python3
"""Render, and optionally submit, the sbatch script of one pneumo-hpc experiment (or the whole scaling table).

    python3 launch/render.py fsdp GPUS=3 DATA=/scratch/prep RUNS_DIR=/scratch/runs            # print the script
    python3 launch/render.py fsdp GPUS=3 DATA=/scratch/prep DRY_RUN=0 WAIT=1                  # sbatch --wait it
    python3 launch/render.py scaling SCALING="serial cpu-ddp:2 fsdp:3" DATA=... DRY_RUN=0     # table + report job
    python3 launch/render.py doctor NODES=2 GPUS=4 DATA=/scratch/prep DRY_RUN=0              # check the nodes

`make sbatch-<exp>` (launch/launch.mk) calls this with every launch variable of launch/variables.mk, the table
whose defaults this script reads too. A rendered script has three parts, after MLPerf's run.sub: #SBATCH
directives worked out from the experiment table below, an env-only config block (`export KEY=VALUE`, nothing
else), and launch/job.sbatch verbatim, which fails fast on a missing variable and runs launch/task.sh once per
rank. Standard library only: it runs on any login node's python3.
"""
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

LAUNCH_DIR = Path(__file__).resolve().parent
BODY = LAUNCH_DIR / "job.sbatch"

TABLE = LAUNCH_DIR / "variables.mk"
PYPROJECT = LAUNCH_DIR.parent / "pyproject.toml"
_TABLE_LINE = re.compile(r"([A-Z][A-Z0-9_]*) \?=(.*)")


def read_table(path=TABLE):
    """launch/variables.mk -> {NAME: default}, in its order: the one table of launch variables make includes."""
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _TABLE_LINE.fullmatch(line)
        value = match.group(2).lstrip() if match else ""
        if not match or "#" in value or "$" in value or match.group(1) in table:
            raise LaunchError(f"{path}:{n}: expected one `NAME ?= literal value` per variable (comments on their "
                              f"own line: make would keep the spaces before them), not {line!r}")
        table[match.group(1)] = value
    return table


INTS = ("NODES", "GPUS", "CPUS", "THREADS", "CPUS_PER_GPU", "PREP_TASKS", "EPOCHS", "BATCH", "IMG_SIZE",
        "YOLO_SIZE", "YOLO_BATCH", "REQUEUE_EXIT", "MAX_REQUEUE", "SIGNAL_SECONDS")
PATHS = ("DATA", "RSNA", "RUNS_DIR", "RESULTS", "SIF", "LAUNCH_DIR")

# experiment -> (mode, strategy, what it reproduces). Resources come from layout() below.
EXPERIMENTS = {
    "serial": ("train", "serial", "serial CNN on one CPU task (the study's 1x baseline)"),
    "cpu-ddp": ("train", "ddp", "CPU DDP over gloo, one task per core"),
    "ddp": ("train", "ddp", "GPU DDP, one task per GPU (NCCL; gloo on CPU when the GPUs have no CUDA)"),
    "fsdp": ("train", "fsdp", "FSDP2, one task per GPU (NCCL; gloo on CPU when the GPUs have no CUDA)"),
    "yolo": ("detect", "", "YOLOv8 detector: one task per node holding its GPUs (ultralytics spawns its workers)"),
    "preprocess": ("preprocess", "", "RSNA DICOM -> arrays + YOLO set with dask-mpi (rank 0 scheduler, 1 client)"),
    "report": ("report", "", "scaling table and plots from results.jsonl"),
    "doctor": ("doctor", "", "pneumo-hpc doctor on every node, one task per GPU (DOCTOR=1: before a training)"),
}
# Variables the job body reads, per mode (the config block exports exactly these, empty or not).
MODE_VARS = {
    "train": ("DATA", "MODEL", "EPOCHS", "BATCH", "LR", "PRECISION", "STRATEGY", "BACKEND", "LABEL", "DOCTOR"),
    "detect": ("DATA", "YOLO_MODEL", "EPOCHS", "YOLO_SIZE", "YOLO_BATCH", "GPUS", "LABEL", "DOCTOR"),
    "preprocess": ("RSNA", "DATA", "IMG_SIZE", "YOLO_SIZE"),
    "report": (),
    "doctor": ("DATA",),
}
COMMON_VARS = ("PNEUMO_MODE", "PNEUMO_LABEL", "PNEUMO_GPU", "SRUN_MPI", "RUNS_DIR", "RESULTS", "LAUNCH_DIR",
               "SIF", "APPTAINER", "PNEUMO_HPC_BIN", "LAUNCHER", "IFNAME", "REQUEUE_EXIT", "MAX_REQUEUE")


# launcher -> the job modes it can start (torchrun runs the classifier; ultralytics spawns its own workers)
LAUNCHERS = {"srun": ("train", "detect", "preprocess", "report", "doctor"),
             "mpirun": ("train", "preprocess", "report", "doctor"), "torchrun": ("train", "report", "doctor")}


class LaunchError(ValueError):
    pass


# Every variable the make targets pass, with the table's defaults; by hand (no make) DRY_RUN=1: print, not submit.
DEFAULTS = dict(read_table(), LAUNCH_DIR=str(LAUNCH_DIR), DRY_RUN="1")


def truthy(value):
    return value.strip().lower() not in ("", "0", "no", "false", "off")


def load_vars(assignments, cwd=None):
    """KEY=VALUE strings over DEFAULTS -> validated dict (integers checked, paths made absolute)."""
    values = dict(DEFAULTS)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise LaunchError(f"unknown launch variable {item!r}; known: {' '.join(sorted(DEFAULTS))}")
        values[key] = value
    for key in INTS:
        if not re.fullmatch(r"[0-9]+", values[key].strip()):
            raise LaunchError(f"{key}={values[key]!r} must be a whole number (e.g. make sbatch-ddp {key}=2)")
        values[key] = values[key].strip()
    base = Path(cwd or os.getcwd())
    for key in PATHS:  # jobs, srun steps and container binds all need the paths as seen from anywhere
        if values[key]:
            values[key] = os.path.normpath(base / os.path.expanduser(values[key]))
    if "/" in values["PNEUMO_HPC_BIN"]:
        values["PNEUMO_HPC_BIN"] = os.path.normpath(base / values["PNEUMO_HPC_BIN"])
    launchers = LAUNCHERS.get(values["LAUNCHER"])
    if launchers is None:
        raise LaunchError(f"LAUNCHER={values['LAUNCHER']!r}: use one of {', '.join(LAUNCHERS)}")
    if not values["RESULTS"]:
        values["RESULTS"] = os.path.join(values["RUNS_DIR"], "results.jsonl")
    values["DOCTOR"] = "1" if truthy(values["DOCTOR"]) else "0"  # job.sbatch compares with 1
    return values


def positive(values, key, hint):
    n = int(values[key])
    if n < 1:
        raise LaunchError(f"{key}={n}: {hint}")
    return n


def layout(exp, v):
    """Experiment + variables -> (label, #SBATCH resource options, exported extras).

    The extras' LABEL names the configuration in the report the way the reference study's table does."""
    nodes = positive(v, "NODES", "a job needs at least one node")
    model = "" if v["MODEL"] == "small-cnn" else f" {v['MODEL']}"
    if exp == "serial":
        return ("serial", [("nodes", 1), ("ntasks", 1), ("cpus-per-task", v["THREADS"])],
                {"BACKEND": "gloo", "LABEL": v["LABEL"] or f"serial {model.strip() or 'CNN'} (CPU)"})
    if exp == "cpu-ddp":
        n = positive(v, "CPUS", "CPU DDP needs at least one task (make sbatch-cpu-ddp CPUS=4)")
        return (f"cpu-ddp-{n}", [("nodes", nodes), ("ntasks", n), ("cpus-per-task", v["THREADS"])],
                {"BACKEND": "gloo", "LABEL": v["LABEL"] or f"{n}-CPU DDP{model}"})
    if exp in ("ddp", "fsdp", "doctor"):
        cpu_run = "make sbatch-cpu-ddp" + (" DOCTOR=1" if exp == "doctor" else "")
        g = positive(v, "GPUS", f"GPU {exp} needs GPUS>=1 per node (for CPU runs use {cpu_run})")
        resources = [("nodes", nodes), ("ntasks-per-node", g), ("gres", f"gpu:{g}"),
                     ("cpus-per-task", v["CPUS_PER_GPU"])]
        if exp == "doctor":
            return f"doctor-{nodes * g}", resources, {}
        return (f"{exp}-{nodes * g}", resources,
                {"BACKEND": v["GPU_BACKEND"], "LABEL": v["LABEL"] or f"{nodes * g}-GPU {exp.upper()}{model}"})
    if exp == "yolo":
        g = positive(v, "GPUS", "the detector needs GPUS>=1")
        if nodes != 1:
            raise LaunchError(f"NODES={nodes}: ultralytics trains on one node only (its own torchrun); use NODES=1")
        return (f"yolo-{g}", [("nodes", 1), ("ntasks-per-node", 1), ("gres", f"gpu:{g}"),
                              ("cpus-per-task", g * int(v["CPUS_PER_GPU"]))],
                {"LABEL": v["LABEL"] or f"YOLOv8 ({g} GPU{'s' if g > 1 else ''})"})
    if exp == "preprocess":
        ranks = nodes * positive(v, "PREP_TASKS", "preprocess needs MPI ranks")
        if ranks < 3:
            raise LaunchError(f"NODES*PREP_TASKS={ranks}: dask-mpi needs at least 3 ranks "
                              "(scheduler, client, one worker); raise PREP_TASKS")
        return (f"preprocess-{ranks}", [("nodes", nodes), ("ntasks-per-node", v["PREP_TASKS"]),
                                        ("cpus-per-task", v["THREADS"])], {})
    if exp == "report":
        return "report", [("nodes", 1), ("ntasks", 1), ("cpus-per-task", 1)], {}
    raise LaunchError(f"unknown experiment {exp!r}; known: {', '.join(EXPERIMENTS)}, scaling")


def check_batch(label, resources, v):
    """BATCH is the global batch: the trainer refuses one that does not split evenly over the ranks."""
    opts = dict(resources)
    world = int(opts.get("ntasks") or int(opts["nodes"]) * int(opts["ntasks-per-node"]))
    batch = int(v["BATCH"])
    if batch % world:
        fit = -(-batch // world) * world
        raise LaunchError(f"BATCH={batch} is the global batch and must divide evenly over the {world} ranks of "
                          f"{label}: use e.g. BATCH={fit} (BATCH=48 splits over 1, 2, 3, 4 and 6 ranks)")


def version():
    """The kit's version, from this checkout's pyproject.toml (the package's metadata comes from it too)."""
    try:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def render(exp, v):
    """(label, full sbatch script text) for one experiment."""
    mode, strategy, what = EXPERIMENTS.get(exp, (None, None, None))
    label, resources, extra = layout(exp, v)
    if mode not in LAUNCHERS[v["LAUNCHER"]]:
        raise LaunchError(f"LAUNCHER={v['LAUNCHER']} cannot start {exp} (it starts: "
                          f"{', '.join(e for e, spec in EXPERIMENTS.items() if spec[0] in LAUNCHERS[v['LAUNCHER']])})"
                          "; use LAUNCHER=srun")
    train = mode == "train"
    if train:
        check_batch(label, resources, v)
    gpu = any(key == "gres" for key, _ in resources)
    directives = [("job-name", f"pneumo-{label}"), *resources,
                  ("time", v["REPORT_TIME"] if mode == "report" else v["TIME"]),
                  ("output", os.path.join(v["RUNS_DIR"], f"{label}-%j.out")), ("open-mode", "append")]
    if train:  # the batch shell traps USR1, forwards it to the ranks (checkpoint) and requeues the job
        directives += [("signal", f"B:USR1@{v['SIGNAL_SECONDS']}"), ("requeue", None)]
    for key in ("PARTITION", "ACCOUNT", "QOS", "MEM"):
        if v[key]:
            directives.append((key.lower(), v[key]))
    config = dict(v, **extra, PNEUMO_MODE=mode, PNEUMO_LABEL=label, PNEUMO_GPU="1" if gpu else "0",
                  STRATEGY=strategy, SRUN_MPI=v["MPI"] if mode == "preprocess" else "none")
    lines = ["#!/bin/bash",
             f"# pneumo-hpc {version()}: {label} - {what}",
             f"# Rendered by launch/render.py (make sbatch-{exp}); change the make variables, not this file.",
             *(f"#SBATCH --{key}" + ("" if value is None else f"={value}") for key, value in directives),
             "set -euo pipefail",
             "",
             "# ---- config: environment only",
             *(f"export {key}={shlex.quote(str(config[key]))}" for key in COMMON_VARS + MODE_VARS[mode]),
             ""]
    return label, "\n".join(lines) + BODY.read_text()


def scaling_plan(v):
    """SCALING="serial cpu-ddp:2 ..." -> [(experiment, variables)]; the number sets CPUS or GPUS."""
    plan = []
    for item in v["SCALING"].split():
        exp, _, n = item.partition(":")
        if exp not in EXPERIMENTS or exp in ("preprocess", "report", "doctor"):
            raise LaunchError(f"SCALING item {item!r}: expected serial, cpu-ddp:N, ddp:N, fsdp:N or yolo:N")
        if n and not n.isdigit():
            raise LaunchError(f"SCALING item {item!r}: the count after ':' must be a whole number")
        overrides = {"cpu-ddp": "CPUS"}.get(exp, "GPUS") if n else None
        pv = dict(v, LABEL="")  # one LABEL cannot name every configuration
        plan.append((exp, dict(pv, **{overrides: n}) if overrides else pv))
    if not plan:
        raise LaunchError("SCALING is empty: list experiments like SCALING=\"serial cpu-ddp:2 fsdp:3\"")
    return plan


def check_inputs(exp, v):
    """Before queueing: the inputs the job will read must exist (a missing one would fail only at run time)."""
    mode = EXPERIMENTS[exp][0]
    needed = {"train": ("DATA",), "detect": ("DATA",), "doctor": ("DATA",), "preprocess": ("RSNA",)}.get(mode, ())
    for key in needed + (("SIF",) if v["SIF"] else ()):
        if not os.path.exists(v[key]):
            raise LaunchError(f"{key}={v[key]} does not exist (set {key}=... on the make command line)")


def sbatch(label, script, v, wait=False, dependency=None):
    """Submit a rendered script on stdin; returns the job id."""
    cmd = ["sbatch", "--parsable"] + (["--wait"] if wait else [])
    cmd += [f"--dependency=afterany:{':'.join(dependency)}"] if dependency else []
    cmd += shlex.split(v["SBATCH_ARGS"])
    os.makedirs(v["RUNS_DIR"], exist_ok=True)  # SLURM does not create the --output directory
    try:
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise LaunchError("sbatch is not on PATH: submit from a SLURM login node, or render with DRY_RUN=1")
    job_id = proc.stdout.strip().split(";")[0].splitlines()[0] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        log = os.path.join(v["RUNS_DIR"], f"{label}-{job_id}.out")
        if wait and job_id:  # the job ran and failed: say how it ended, and what it printed last
            sys.stderr.write(job_ending(job_id, log))
        where = f" (job {job_id}: see {log})" if job_id else ""
        raise LaunchError(f"{' '.join(cmd)} exited {proc.returncode}{where}")
    return job_id


def job_ending(job_id, log, lines=40):
    """SLURM's state of a finished job and the tail of its log, for the message of a failed WAIT=1."""
    out = []
    try:
        show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        show = ""  # the log below still says what the job printed
    fields = dict(re.findall(r"(\w+)=(\S*)", show))
    state = [f"{k}={fields[k]}" for k in ("JobState", "Reason", "ExitCode", "RunTime", "NodeList") if k in fields]
    if state:
        out.append(f"job {job_id}: {' '.join(state)}")
    try:
        tail = Path(log).read_text(errors="replace").splitlines()[-lines:]
        out += [f"--- the last {len(tail)} lines of {log}", *tail, "---"]
    except OSError as err:
        out.append(f"job {job_id}: its log {log} cannot be read: {err.strerror}")
    return "".join(line + "\n" for line in out)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    exp, v = argv[0], load_vars(argv[1:])
    dry, wait = truthy(v["DRY_RUN"]), truthy(v["WAIT"])
    plan = scaling_plan(v) if exp == "scaling" else [(exp, v)]
    scripts = [(e, *render(e, pv)) for e, pv in plan]
    if exp == "scaling":
        scripts.append(("report", *render("report", v)))
    if dry:
        for e, label, script in scripts:
            if len(scripts) > 1:
                dep = " --dependency=afterany:<" + ">:<".join(s[1] for s in scripts[:-1]) + ">" if e == "report" else ""
                print(f"# ======== sbatch{dep} <<< {label}")
            sys.stdout.write(script)
        return 0
    for e, pv in plan:
        check_inputs(e, pv)
    ids = []
    for i, (e, label, script) in enumerate(scripts):
        last = i == len(scripts) - 1
        dep = ids if exp == "scaling" and last else None
        job = sbatch(label, script, v, wait=wait and last, dependency=dep)
        ids.append(job)
        print(f"{label}: job {job} -> {os.path.join(v['RUNS_DIR'], f'{label}-{job}')}/", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except LaunchError as err:
        sys.exit(f"launch/render.py: {err}")
