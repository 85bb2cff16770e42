"""The doctor's checks on one rank: what this process can see by itself, before it talks to any other rank.

Each check returns ``{"status": "ok" | "warn" | "fail" | "skip", "detail": ..., **facts}``; the facts are what the
ranks must agree on (the manifest's hash, the GPU, the CPUs, the versions), compared on rank 0 by
``doctor_report.judge``. A failure's detail says what is wrong and ``HINT:`` how to fix it. Details of healthy
ranks are worded alike (no rank number in them), so the table folds them into one row.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
from pathlib import Path
from typing import Mapping

from pneumo_hpc.runtime import interface

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
# "RANK=VERSION": that rank reports VERSION as the kit's own, to see the version row fail (the tests only)
FAKE_VERSION = "PNEUMO_DOCTOR_FAKE_VERSION"
IFNAME_VARS = ("IFNAME", "PNEUMO_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
SPLITS = ("train", "val")


def result(status: str, detail: str, **facts) -> dict:
    return {"status": status, "detail": detail, **facts}


def cpu_ranges(cpus) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    cpus, parts = sorted(cpus), []
    for cpu in cpus:
        if parts and cpu == parts[-1][1] + 1:
            parts[-1][1] = cpu
        else:
            parts.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in parts) or "none"


def _npy_shape(path: Path) -> tuple:
    import numpy as np

    with open(path, "rb") as f:  # the header only: the doctor must stay fast on a large set
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read(f)[0])


def data(prep: Path) -> dict:
    """PREP readable here, its classifier arrays' headers, and the sha256 of its manifest.json."""
    prep = Path(prep)
    hint = ("HINT: put PREP on a filesystem every node mounts at the same path (or copy it whole to the same "
            "node-local path on every node); PREP is the --out of `pneumo-hpc preprocess`")
    if not prep.is_dir():
        return result(FAIL, f"{prep} {'is not a directory' if prep.exists() else 'does not exist'} on this node. "
                      f"{hint}", sha256=None)
    shapes = {}
    for split in SPLITS:
        for kind in ("images", "labels"):
            path = prep / "classifier" / f"{split}_{kind}.npy"
            try:
                shapes[f"{split}_{kind}"] = _npy_shape(path)
            except FileNotFoundError:
                return result(FAIL, f"{path} missing: {prep} is not a finished preprocess output. {hint}", sha256=None)
            except (OSError, ValueError) as exc:
                return result(FAIL, f"{path} unreadable on this node ({exc}). {hint}", sha256=None)
    images = shapes["train_images"]
    what = (f"train {images[0]} images {'x'.join(map(str, images[1:]))} px, "
            f"val {shapes['val_images'][0]}")
    manifest = prep / "manifest.json"
    try:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except FileNotFoundError:  # a hand-made set: its files' names and sizes stand in for the manifest
        listing = sorted((str(p.relative_to(prep)), p.stat().st_size) for p in (prep / "classifier").iterdir())
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return result(WARN, f"{manifest} missing (not written by `pneumo-hpc preprocess`, or it did not finish): "
                      f"compared the classifier files' names and sizes instead ({digest[:12]}); {what}. "
                      "HINT: rerun `pneumo-hpc preprocess --out PREP`", sha256=digest)
    except OSError as exc:
        return result(FAIL, f"{manifest} unreadable on this node ({exc}). {hint}", sha256=None)
    return result(OK, f"manifest.json sha256 {digest[:12]}; {what}", sha256=digest)


def device(requested: str, local_rank: int, local_world: int, environ: Mapping[str, str] = os.environ) -> dict:
    """The device training would take here (dist.choose_device), and which GPU that is, for duplicates."""
    import torch

    from pneumo_hpc.runtime.dist import choose_device, gpus_bound_per_task

    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    slots = [s.strip() for s in (cvd or "").split(",") if s.strip()]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bound = gpus_bound_per_task(environ, visible)
    try:
        chosen = choose_device(requested, local_rank, local_world, visible, bound_per_task=bound,
                               cuda_visible_devices=cvd)
    except ValueError as exc:
        return result(FAIL, str(exc), device=None, gpu=None)
    if chosen == "cpu":
        if not slots or (requested or "auto").lower() == "cpu":
            return result(OK, "cpu (no GPU asked for: gloo)" if slots else "cpu (no GPU here: gloo)",
                          device="cpu", gpu=None)
        slot = slots[0] if bound else slots[local_rank % len(slots)]  # the GPU this rank would have taken
        return result(WARN, f"cpu: CUDA_VISIBLE_DEVICES={cvd} but torch {torch.__version__} sees no CUDA GPU, so "
                      "training runs on the CPU over gloo. HINT: check nvidia-smi and the driver on this node and "
                      "that torch is a CUDA build; on a cluster of fake GPUs this is expected",
                      device="cpu", gpu=slot)
    index = int(chosen.split(":")[1])
    try:
        props = torch.cuda.get_device_properties(index)
        torch.ones(1, device=chosen).sum().item()  # a kernel runs: the GPU works, it is not only listed
    except Exception as exc:  # CUDA errors come as RuntimeError or its own classes
        return result(FAIL, f"{chosen} is listed but unusable ({type(exc).__name__}: {exc}). HINT: nvidia-smi on "
                      "this node; a GPU in exclusive mode held by another process, or a driver fault", device=chosen,
                      gpu=None)
    label = slots[index] if index < len(slots) else str(index)
    gpu = str(getattr(props, "uuid", "") or label)
    return result(OK, f"one GPU per rank ({props.name}, {props.total_memory / 2**30:.0f} GiB)", device=chosen,
                  gpu=gpu, gpu_label=f"{chosen} (GPU {label})")


def _double_launch(name: str, fields: dict, environ: Mapping[str, str]) -> list[str]:
    """A torchrun inside an srun step must be one agent per node joined in one rendezvous; hand-set ranks in an srun
    step must follow srun's."""
    from pneumo_hpc.runtime.launchers import SLURMEnvironment
    from pneumo_hpc.runtime.launchers.slurm import srun_task

    if name != "torchrun" or not srun_task(environ):
        return []
    step = SLURMEnvironment(environ)
    try:
        tasks, here, task = step.world_size, step.local_world_size, step.rank
    except ValueError:
        return []
    world, per_agent = fields["world_size"], fields["local_world_size"]
    if "TORCHELASTIC_RUN_ID" not in environ:
        if world == tasks and fields["rank"] != task:
            return [f"RANK={fields['rank']} set by hand, but srun says this is task {task} of {tasks}: ranks collide. "
                    "HINT: unset RANK/WORLD_SIZE/LOCAL_RANK (srun's own variables are read)"]
        return []
    if here > 1:
        return [f"srun started {here} tasks on this node and each runs torchrun --nproc-per-node {per_agent}: "
                "their workers take the same local ranks (GPUs, CPUs). HINT: one torchrun agent per node (srun "
                "--ntasks-per-node=1 torchrun --nproc-per-node G), or srun --ntasks-per-node=G without torchrun"]
    if world != tasks * per_agent:
        return [f"srun started {tasks} torchrun agents of {per_agent} workers ({tasks * per_agent} ranks) but "
                f"torchrun's world is {world}: the agents did not join one rendezvous. HINT: give every agent "
                f"--nnodes {tasks} and the same --rdzv-endpoint and --rdzv-id (not --standalone)"]
    return []


def launcher(environ: Mapping[str, str] = os.environ) -> tuple[dict | None, dict]:
    """(the launcher's fields or None, the check): who started this rank, and whether its view holds together."""
    from pneumo_hpc.runtime.launchers import detect

    try:
        cluster = detect(environ)
        fields = cluster.as_dict()  # reads every field (under MPI a collective: every rank gets here alike)
    except (ValueError, RuntimeError) as exc:
        return None, result(FAIL, str(exc))
    problems = []
    try:
        cluster.export(dict(environ))  # a copy: only the contradiction check is wanted here
    except ValueError as exc:
        problems.append(str(exc))
    rank, world, local, per_node = (fields[k] for k in ("rank", "world_size", "local_rank", "local_world_size"))
    if not (0 <= rank < world and 0 <= local < per_node <= world):
        problems.append(f"rank {rank} of {world}, local rank {local} of {per_node} is not a possible layout. HINT: "
                        "unset hand-set RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE and let the launcher set them")
    problems += _double_launch(cluster.name, fields, environ)
    if problems:
        return fields, result(FAIL, "; ".join(problems))
    return fields, result(OK, f"{cluster.name}: {world} rank(s), {per_node} on this node; rendezvous "
                              f"{fields['master_addr']}:{fields['master_port']}")


def interfaces_named(rank: int | None, environ: Mapping[str, str] = os.environ) -> dict:
    """Every interface named by IFNAME and the *_SOCKET_IFNAME variables present on this node (interface.check)."""
    present = interface.interfaces()
    named = [v for v in IFNAME_VARS if environ.get(v, "").strip()]
    errors, wrong = [], []
    for variable in named:
        try:
            interface.check(rank, environ, variables=(variable,), present=present)
        except ValueError as exc:
            errors.append(re.sub(r"^node \S+, rank \S+: ", "", str(exc)))  # the row's own columns say them
            wrong.append(f"{variable}={environ[variable]!r}")
    if errors:
        head, hint, fix = errors[0].partition(". HINT:")
        also = f" (also wrong: {', '.join(wrong[1:])})" if len(wrong) > 1 else ""
        return result(FAIL, head + also + hint + fix)
    if not named:
        return result(OK, f"none named: gloo/NCCL pick one (this node has {', '.join(present)})")
    return result(OK, ", ".join(f"{v}={environ[v]}" for v in named) + f" present (the node has {', '.join(present)})")


def cpu(local_rank: int, local_world: int, device_type: str, environ: Mapping[str, str] = os.environ) -> dict:
    """The CPUs this rank runs on once set up like training (cpu_bind.plan), and its threads."""
    import torch

    from pneumo_hpc.runtime import cpu_bind

    if device_type == "cuda":  # GPU ranks are not bound by the kit (dist._context)
        how, cpus = "none", sorted(os.sched_getaffinity(0))
    else:
        how, cpus = cpu_bind.plan(local_rank, local_world, environ)
    threads = torch.get_num_threads()
    who = {"cores": "bound by the kit", "launcher": "bound by the launcher", "none": "not bound"}[how]
    detail = f"{who}: {len(cpus)} CPU(s) and {threads} thread(s) per rank"
    if threads > len(cpus):
        return result(WARN, f"{detail}: the threads oversubscribe the CPUs. HINT: OMP_NUM_THREADS={len(cpus)} "
                      "(launch/task.sh sets it from --cpus-per-task), or give each rank more CPUs",
                      how=how, cpus=cpus, threads=threads)
    return result(OK, detail, how=how, cpus=cpus, threads=threads)


def versions(rank: int, environ: Mapping[str, str] = os.environ) -> dict:
    import torch

    from pneumo_hpc import __version__

    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # a CPU-only torch has no NCCL at all
        nccl = "none"
    found = {"pneumo-hpc": __version__, "torch": torch.__version__, "nccl": nccl,
             "python": platform.python_version()}
    who, _, fake = environ.get(FAKE_VERSION, "").partition("=")
    if fake.strip() and who.strip() == str(rank):
        found["pneumo-hpc"] = fake.strip()
    return result(OK, ", ".join(f"{k} {v}" for k, v in found.items()), versions=found)


def resolve(addr: str) -> list[str]:
    """The IPv4/IPv6 addresses of a host name; OSError when it does not resolve here."""
    return sorted({info[4][0] for info in socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)})


def is_local(address: str) -> bool:
    """True when this node owns the address (rank 0 must: the others connect to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def write_probe(run_dir: Path, token: str, label: str) -> dict:
    """Rank 0: the run directory exists or is made, and takes a file written with an atomic rename."""
    from pneumo_hpc.atomic import write_text

    probe = Path(run_dir) / f".doctor-probe-{token}"
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_text(probe, token)
        seen = probe.read_text()
    except OSError as exc:
        return result(FAIL, f"{run_dir}: cannot write there ({exc.strerror or exc}). HINT: --out a directory you "
                      "can write on the filesystem every node shares", probe=None)
    if seen != token:
        return result(FAIL, f"{probe} read back {seen!r}, not what was written. HINT: a broken or caching "
                      "filesystem: use another --out", probe=None)
    return result(OK, f"{label}: an atomic write and rename work, rank 0's file is seen", probe=str(probe))


def read_probe(run_dir: str, label: str, probe: str | None, token: str, rank: int) -> dict:
    """The other ranks, once rank 0 wrote: they see its file (a shared filesystem) and can write there too."""
    from pneumo_hpc.atomic import write_text

    if probe is None:
        return result(SKIP, f"{label}: rank 0 could not write there")
    try:
        seen = Path(probe).read_text()
    except OSError:
        return result(FAIL, f"rank 0 wrote {probe} but this node does not see it: {label} is not shared by the "
                      "nodes (node-local disk, /tmp?). HINT: --out a directory on the filesystem every node mounts")
    mine = Path(run_dir) / f".doctor-probe-{token}-{rank}"
    try:
        write_text(mine, token)
        mine.unlink()
    except OSError as exc:
        return result(FAIL, f"{run_dir}: rank 0's file is seen but this rank cannot write there "
                      f"({exc.strerror or exc}). HINT: permissions of the run directory on this node")
    if seen != token:
        return result(FAIL, f"{probe} reads {seen!r} here, not rank 0's {token!r}: stale file cache. HINT: "
                      "another --out, or the filesystem's attribute caching (NFS actimeo)")
    return result(OK, f"{label}: an atomic write and rename work, rank 0's file is seen")
