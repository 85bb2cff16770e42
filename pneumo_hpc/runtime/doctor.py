"""``pneumo-hpc doctor``: every rank checks what a training run needs, rank 0 prints one table, as one fast step.

    pneumo-hpc doctor --data data/prep                                        # alone (world 1)
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc doctor --data data/prep --json
    srun -N2 --ntasks-per-node=2 pneumo-hpc doctor --data /scratch/prep --out runs/doctor
    mpirun -np 4 pneumo-hpc doctor --data /scratch/prep --sizes 4K,1M
    make sbatch-doctor NODES=2 GPUS=2 DATA=/scratch/prep                       # the launch kit's job

Rows (one per check; ranks with the same result share a row): data (PREP readable, its manifest.json's sha256 the
same on every rank), device (the device training would take, no GPU shared by two ranks), launcher (ranks, world
size, no duplicated rank or (host, local rank): srun x torchrun), address (rank 0's address resolves; its port
free on rank 0, reachable from the others), interface (IFNAME / PNEUMO_IFNAME / GLOO_SOCKET_IFNAME /
NCCL_SOCKET_IFNAME present on the node), cpu (binding and threads per rank; cores shared on a node are a warning),
versions (pneumo-hpc, torch, NCCL, Python alike everywhere), rundir (--out, else a temporary directory beside
PREP: an atomic write works and rank 0's file is seen by every node), then ``allreduce <size>`` rows. docs/doctor.md
says what each row means and how each failure is fixed. Exit 0 when nothing failed (warnings allowed), else 1.

How it cannot hang: the ranks meet in a TCP key-value store that rank 0 hosts on the rendezvous port (torchrun's
agent hosts it under torchrun). Every wait there has a deadline (``--timeout``, 60 s); a connection is made in a
thread given up on at its deadline, as a process squatting on the port accepts and then never answers. A rank that
cannot reach rank 0 prints its own rows and exits 1. If rank 0 finds its port taken it carries on at the next port,
where the others look next, so the table still has every rank. The all-reduce runs only when no blocking check
(device, launcher, address, interface) failed, in a process group bounded by the same timeout.

The JSON document (``--json`` prints it on one line after the table; ``--out DIR`` writes DIR/doctor.json and
DIR/doctor.txt, atomically). Another tool (the scaling model) reads ``allreduce``; keep these keys stable:

    doctor        1 (the document's format version)
    ok            true when no check failed; failures, warnings: counts of such rows
    launcher, world_size, nodes (hosts in rank order, once each), backend, device (rank 0's), data, run_dir, seconds
    checks        [{"check", "status": "ok"|"warn"|"fail"|"skip", "node": "n1,n2", "rank": "0-3",
                    "nodes": [...], "ranks": [...], "detail"}]   the table's rows
    allreduce     [{"bytes": int, "latency_s": float, "algbw_gbps": float, "busbw_gbps": float, "iters": int}]
                  one per --sizes entry, in that order; [] when not run. latency_s: mean seconds per all-reduce
                  (sum, float32), the slowest rank's; algbw = bytes / latency_s / 1e9; busbw = algbw * 2(W-1)/W
                  (nccl-tests' bus bandwidth: what each link carries in a ring; 0 at world size 1)
    ranks         every rank's own report (facts and per-check results)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from pneumo_hpc.runtime import doctor_checks as checks
from pneumo_hpc.runtime import doctor_report as report
from pneumo_hpc.runtime.doctor_checks import FAIL, SKIP, result
from pneumo_hpc.runtime.doctor_store import ABANDONED, PREFIX, rendezvous, wait_get

DEFAULT_SIZES = (4 << 10, 256 << 10, 4 << 20, 32 << 20)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass
class DoctorConfig:
    data: Path
    out: Path | None = None
    as_json: bool = False
    sizes: tuple[int, ...] = DEFAULT_SIZES
    iters: int = 5
    timeout: float = 60.0
    backend: str = "auto"
    device: str = "auto"
    environ: dict = field(default_factory=lambda: os.environ)


def parse_sizes(text: str) -> tuple[int, ...]:
    """"4K,256K,4M" -> (4096, 262144, 4194304); K/M/G are binary (KiB...), a plain number is bytes."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:I?B)?", part.upper())
        if not m or int(m.group(1)) == 0:
            raise ValueError(f"{part!r} is not a message size: use bytes or K/M/G (KiB/MiB/GiB), e.g. 4K,256K,4M")
        sizes.append(max(4, int(m.group(1)) * UNITS[m.group(2)] // 4 * 4))  # whole float32s
    if not sizes:
        raise ValueError("no all-reduce size given: e.g. --sizes 4K,256K,4M,32M")
    return tuple(sizes)


def _guess(environ) -> dict:
    """Who this rank probably is when the launcher cannot be read: enough to name it in its own rows."""
    rank = next((environ[k] for k in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID") if k in environ),
                None)
    return {"launcher": "?", "rank": int(rank) if rank and rank.isdigit() else None, "world_size": None,
            "local_rank": None, "local_world_size": None, "node_rank": None, "master_addr": "?", "master_port": None}


def local_report(cfg: DoctorConfig) -> dict:
    """This rank's own checks (everything that needs no other rank)."""
    from pneumo_hpc.runtime.dist import choose_backend

    fields, launched = checks.launcher(cfg.environ)
    me = {**(fields or _guess(cfg.environ)), "host": socket.gethostname(), "pid": os.getpid(),
          "known": fields is not None, "checks": {"launcher": launched}}
    rank, local, per_node = me["rank"], me["local_rank"] or 0, me["local_world_size"] or 1
    c = me["checks"]
    c["data"] = checks.data(cfg.data)
    c["device"] = checks.device(cfg.device, local, per_node, cfg.environ)
    device = c["device"].get("device") or "cpu"
    try:
        me["backend"] = choose_backend(cfg.backend, device.split(":")[0])
    except ValueError as exc:
        me["backend"] = None
        c["device"] = result(FAIL, str(exc), device=device, gpu=c["device"].get("gpu"))
    c["interface"] = checks.interfaces_named(rank, cfg.environ)
    c["cpu"] = checks.cpu(local, per_node, device.split(":")[0], cfg.environ)
    c["versions"] = checks.versions(rank, cfg.environ)
    return me


def bandwidth(nbytes: int, latency_s: float, world: int) -> dict:
    """nccl-tests' figures for one all-reduce: algbw = bytes / time; busbw = algbw * 2(W-1)/W, what each link of a
    ring carries, comparable across world sizes (and with the link's own speed)."""
    algbw = nbytes / latency_s / 1e9
    return {"bytes": nbytes, "latency_s": float(f"{latency_s:.6g}"), "algbw_gbps": float(f"{algbw:.6g}"),
            "busbw_gbps": float(f"{algbw * 2 * (world - 1) / world:.6g}")}


def allreduce(store, me: dict, cfg: DoctorConfig) -> list[dict]:
    """Init a process group over the doctor's store, check one all-reduce's sum, then time each size."""
    import torch
    import torch.distributed as tdist

    from pneumo_hpc.runtime.cpu_bind import apply

    device, backend, world = torch.device(me["checks"]["device"]["device"]), me["backend"], me["world_size"]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # as training does, before gloo starts its threads
        apply(me["checks"]["cpu"]["how"], me["checks"]["cpu"]["cpus"])
    if cfg.environ.get("PNEUMO_IFNAME"):
        cfg.environ.setdefault("GLOO_SOCKET_IFNAME" if backend == "gloo" else "NCCL_SOCKET_IFNAME",
                               cfg.environ["PNEUMO_IFNAME"])
    kwargs = {"device_id": device} if backend == "nccl" else {}
    tdist.init_process_group(backend, store=tdist.PrefixStore(PREFIX + "pg", store), rank=me["rank"],
                             world_size=world, timeout=timedelta(seconds=cfg.timeout), **kwargs)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        value = torch.tensor([float(me["rank"] + 1)], device=device)
        tdist.all_reduce(value)
        if value.item() != world * (world + 1) / 2:
            raise RuntimeError(f"the all-reduce of rank+1 gave {value.item()}, not {world * (world + 1) // 2}: "
                               "a broken transport. HINT: try --backend gloo, or NCCL_DEBUG=INFO for NCCL's view")
        out = []
        for nbytes in cfg.sizes:
            buf = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)  # zeros: repeated sums stay finite
            tdist.all_reduce(buf)  # warm-up: connections and buffers
            tdist.all_reduce(value)  # every rank starts the clock together
            sync()
            t0 = time.perf_counter()
            for _ in range(cfg.iters):
                tdist.all_reduce(buf)
            sync()
            slowest = torch.tensor([(time.perf_counter() - t0) / cfg.iters], dtype=torch.float64, device=device)
            tdist.all_reduce(slowest, op=tdist.ReduceOp.MAX)
            out.append({**bandwidth(nbytes, slowest.item(), world), "iters": cfg.iters})
        return out
    finally:
        tdist.destroy_process_group()


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")  # one write: lines of several ranks do not interleave
    sys.stdout.flush()


def _finish(cfg: DoctorConfig, rows: list[dict], reports: list[dict], bench, head: str, t0: float) -> int:
    """Print the table (and the JSON), write them under --out; the exit code."""
    me = reports[0]
    doc = report.document(rows, reports, bench, launcher=me["launcher"], world_size=me["world_size"],
                          nodes=list(dict.fromkeys(r["host"] for r in reports)), backend=me.get("backend"),
                          device=me["checks"]["device"].get("device"), data=str(cfg.data),
                          run_dir=str(cfg.out) if cfg.out else None, seconds=round(time.monotonic() - t0, 2))
    text = report.table(rows, head)
    _say(text + ("\n" + json.dumps(doc) if cfg.as_json else ""))
    if cfg.out and me["rank"] in (0, None):
        from pneumo_hpc.atomic import write_text

        try:
            write_text(Path(cfg.out) / "doctor.json", json.dumps(doc, indent=2) + "\n")
            write_text(Path(cfg.out) / "doctor.txt", text + "\n")
        except OSError as exc:  # the rundir row already says why
            _say(f"doctor: could not write {cfg.out}/doctor.json ({exc})")
    return 0 if doc["ok"] else 1


def _alone(cfg: DoctorConfig, me: dict, t0: float) -> int:
    """This rank could not meet rank 0: its own rows, so its output names what is wrong here."""
    me["checks"].setdefault("rundir", result(SKIP, "not checked: rank 0 was not reached"))
    rows = report.judge([me], me["world_size"] or 1, []) + report.allreduce_rows(
        None, None, [me["host"]], [me["rank"]], "this rank could not meet the others")
    head = (f"pneumo-hpc doctor: rank {me['rank'] if me['rank'] is not None else '?'} on {me['host']}, alone "
            "(it could not meet the other ranks: see the address/launcher rows)")
    _say(report.table(rows, head))
    return 1


def _probe(cfg: DoctorConfig, me: dict, token: str) -> tuple[dict, str | None]:
    """Rank 0's half of the rundir check: (what the others need to look for it, a temporary dir to remove)."""
    made = None
    try:
        run_dir = Path(cfg.out) if cfg.out else Path(made := tempfile.mkdtemp(prefix=".pneumo-doctor-",
                                                                                dir=cfg.data.parent))
        label = str(run_dir) if cfg.out else f"{cfg.data.parent} (a temporary directory there)"
        me["checks"]["rundir"] = checks.write_probe(run_dir, token, label)
    except OSError as exc:
        run_dir, label = cfg.data.parent, str(cfg.data.parent)
        me["checks"]["rundir"] = result(FAIL, f"cannot make a directory in {run_dir} ({exc.strerror or exc}). HINT: "
                                        "--out a directory on the shared filesystem", probe=None)
    return {"run_dir": str(run_dir), "label": label, "probe": me["checks"]["rundir"].get("probe"),
            "token": token}, made


def _gather(store, world: int, timeout: float) -> list[dict]:
    """The other ranks' reports, as many as arrived within the timeout."""
    deadline = time.monotonic() + timeout
    while store.add(PREFIX + "arrived", 0) < world - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    return [json.loads(store.get(f"{PREFIX}rep/{i}")) for i in range(1, store.add(PREFIX + "arrived", 0) + 1)]


def _bench_all(store, cfg: DoctorConfig, reports: list[dict]) -> tuple[list[dict] | None, str | None]:
    """Rank 0 times the all-reduce with the others; (figures, the errors any rank met)."""
    me, bench, errors = reports[0], None, []
    try:
        bench = allreduce(store, me, cfg)
    except Exception as exc:  # a dead peer or the timeout: the row says so
        errors.append(f"rank 0 ({me['host']}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    for i, rep in enumerate(reports[1:], start=1):
        try:
            error = json.loads(wait_get(store, f"post/{i}", cfg.timeout))["error"]
        except Exception:  # that rank died in the all-reduce: its own output says how
            error = f"rank {rep['rank']} ({rep['host']}) did not finish"
        errors += [error] if error else []
    if not errors:
        return bench, None
    return None, "; ".join(errors) + (
        ". HINT: a rank died, or a link between the nodes is blocked or too slow for --timeout "
        f"({cfg.timeout:.0f} s): look at that rank's output; NCCL_DEBUG=INFO; the IFNAME the nodes share")


def _rank0(cfg: DoctorConfig, store, me: dict, t0: float) -> int:
    world = me["world_size"]
    shared, made = _probe(cfg, me, uuid.uuid4().hex[:12])
    store.set(PREFIX + "r0", json.dumps(shared))
    reports = [me] + _gather(store, world, cfg.timeout)
    if made:  # every rank that arrived has looked at the probe by now
        shutil.rmtree(made, ignore_errors=True)
    elif shared["probe"]:
        Path(shared["probe"]).unlink(missing_ok=True)
    missing = sorted(set(range(world)) - {r["rank"] for r in reports})
    rows = report.judge(reports, world, missing)
    blocked = list(dict.fromkeys(r["check"] for r in rows if r["status"] == FAIL and r["check"] in report.BLOCKING))
    why = f"fix the {', '.join(blocked)} failure(s) first" if blocked else "ranks are missing" if missing else None
    store.set(PREFIX + "verdict", json.dumps({"go": why is None}))
    bench, error = _bench_all(store, cfg, reports) if why is None else (None, None)
    hosts = list(dict.fromkeys(r["host"] for r in reports))
    rows += report.allreduce_rows(bench, error, hosts, [r["rank"] for r in reports], why)
    head = (f"pneumo-hpc doctor: {world} rank(s) on {len(hosts)} node(s) ({', '.join(hosts)}), launcher "
            f"{me['launcher']}, backend {me.get('backend')}, data {cfg.data}, {time.monotonic() - t0:.1f} s")
    code = _finish(cfg, rows, reports, bench, head, t0)
    store.set(PREFIX + "final", str(code))
    deadline = time.monotonic() + min(cfg.timeout, 10)  # the others read "final" from this rank's store
    while store.add(PREFIX + "done", 0) < len(reports) - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return code


def _other(cfg: DoctorConfig, store, me: dict, t0: float) -> int:
    try:
        r0 = json.loads(wait_get(store, "r0", 2 * cfg.timeout))
        me["checks"]["rundir"] = checks.read_probe(r0["run_dir"], r0["label"], r0["probe"], r0["token"],
                                                   me["rank"])
        index = store.add(PREFIX + "arrived", 1)
        store.set(f"{PREFIX}rep/{index}", json.dumps(me))
        verdict = json.loads(wait_get(store, "verdict", 2 * cfg.timeout))
    except Exception as exc:  # rank 0 went away: this rank says what it saw
        me["checks"]["address"] = result(FAIL, f"rank 0 stopped answering ({type(exc).__name__}). HINT: rank 0's "
                                         "own output says why")
        return _alone(cfg, me, t0)
    error = None
    if verdict["go"]:
        try:
            allreduce(store, me, cfg)
        except Exception as exc:  # reported by rank 0, which prints the table
            error = f"rank {me['rank']} ({me['host']}): {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    try:
        store.set(f"{PREFIX}post/{index}", json.dumps({"error": error}))
        code = int(wait_get(store, "final", 2 * cfg.timeout))
        store.add(PREFIX + "done", 1)
    except Exception:  # rank 0 went away after the table (or before): this rank fails
        return 1
    return code


def run(cfg: DoctorConfig) -> int:
    """Every rank: its own checks, then the meeting at rank 0; rank 0 prints the table. Returns the exit code (or
    exits with it, when a connection attempt is still hanging in a thread)."""
    t0 = time.monotonic()
    cfg.data = Path(os.path.abspath(cfg.data))
    cfg.out = Path(os.path.abspath(cfg.out)) if cfg.out else None
    me = local_report(cfg)
    if not me["known"]:
        me["checks"]["address"] = result(SKIP, "not checked: the launcher could not be read")
        return _alone(cfg, me, t0)
    store, me["checks"]["address"] = rendezvous(me, cfg.timeout, cfg.environ)
    code = _alone(cfg, me, t0) if store is None else (_rank0 if me["rank"] == 0 else _other)(cfg, store, me, t0)
    if ABANDONED and any(t.is_alive() for t in ABANDONED):
        # a connection attempt still inside TCPStore's C++ would abort the interpreter's exit (std::terminate,
        # exit 134): end the process here, with the doctor's own code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
