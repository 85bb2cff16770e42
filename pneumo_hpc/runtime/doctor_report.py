"""Rank 0's half of the doctor: every rank's report compared, folded into one table and one JSON document.

Pure functions over plain dicts (no torch, no sockets), so the table and the JSON are tested without a launch.
A rank's report is ``{"rank", "world_size", "local_rank", "local_world_size", "host", "launcher", "master_addr",
"master_port", "checks": {name: doctor_checks.result(...)}}``.
"""
from __future__ import annotations

from collections import defaultdict

from pneumo_hpc.runtime.doctor_checks import FAIL, OK, SKIP, WARN, cpu_ranges

ORDER = ("data", "device", "launcher", "address", "interface", "cpu", "versions", "rundir")
# a failure of these leaves the process group unable to form (or to form right): the all-reduce is not tried
BLOCKING = ("device", "launcher", "address", "interface")
SHOWN = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}
WORSE = {SKIP: 0, OK: 1, WARN: 2, FAIL: 3}


def rank_list(ranks) -> str:
    """[0, 1, 2, 3, 6] -> "0-3,6"; "?" for no rank."""
    ranks = sorted(r for r in ranks if r is not None)
    return cpu_ranges(ranks) if ranks else "?"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _where(rep: dict) -> str:
    return f"rank {rep['rank']} ({rep['host']})"


def _differs(reports, value, what, hint):
    """index -> failure for each report whose value (not None) differs from rank 0's (else the first one's)."""
    known = [(i, rep, value(rep)) for i, rep in enumerate(reports) if value(rep) is not None]
    if not known:
        return {}
    ref_i, ref, want = next(((i, r, v) for i, r, v in known if r["rank"] == 0), known[0])
    return {i: f"{what(v)} here, {what(want)} on {_where(ref)}. {hint}" for i, rep, v in known if v != want}


def _versions(reports) -> dict:
    out = {}
    for key in ("pneumo-hpc", "torch", "nccl", "python"):
        found = _differs(reports, lambda r, k=key: r["checks"].get("versions", {}).get("versions", {}).get(k),
                         lambda v, k=key: f"{k} {v}",
                         "HINT: run every node from one install (the same .venv or SIF on the shared filesystem: "
                         "PNEUMO_HPC_BIN=, SIF=), or install the same pinned requirements.txt everywhere")
        for i, msg in found.items():
            out[i] = f"{out[i]}; {msg}" if i in out else msg
    return out


def _duplicates(reports, key, say) -> dict:
    """index -> failure for every report that shares key(report) (not None) with another; say(report, the ranks
    sharing it) words it alike for the whole group, so the group is one row."""
    groups = defaultdict(list)
    for i, rep in enumerate(reports):
        k = key(rep)
        if k is not None:
            groups[k].append(i)
    return {i: say(reports[i], [reports[j]["rank"] for j in idx]) for idx in groups.values() if len(idx) > 1
            for i in idx}


def _launcher(reports, world) -> dict:
    out = _differs(reports, lambda r: r["world_size"], lambda v: f"world size {v}",
                   "HINT: every rank of one launch must agree: unset hand-set WORLD_SIZE/RANK")
    out.update(_duplicates(reports, lambda r: r["rank"], lambda rep, group: (
        f"rank {rep['rank']} is claimed by {len(group)} processes: two launches share this rendezvous. HINT: "
        "start the ranks with one launcher (srun, mpirun or torchrun), not one inside another")))
    out.update(_duplicates(reports, lambda r: (r["host"], r["local_rank"]), lambda rep, group: (
        f"local rank {rep['local_rank']} on {rep['host']} is ranks {rank_list(group)}: two launchers started "
        "ranks on this node (srun tasks each running torchrun --nproc-per-node?). HINT: one torchrun agent per node "
        "(srun --ntasks-per-node=1), or srun --ntasks-per-node=G without torchrun")))
    on_host = defaultdict(int)
    for rep in reports:
        on_host[rep["host"]] += 1
    if len(reports) == world:  # with ranks missing the counts cannot add up: the missing ranks' row says so
        for i, rep in enumerate(reports):
            if i not in out and on_host[rep["host"]] != rep["local_world_size"]:
                out[i] = (f"the launcher says {rep['local_world_size']} rank(s) on {rep['host']}, but "
                          f"{on_host[rep['host']]} run there. HINT: hosts with several names, or a hand-set "
                          "LOCAL_WORLD_SIZE: let the launcher set it")
    return out


def _device(reports) -> dict:
    return _duplicates(reports, lambda r: (r["host"], r["checks"].get("device", {}).get("gpu"))
                       if r["checks"].get("device", {}).get("gpu") is not None else None,
                       lambda rep, group: (
                           f"GPU {rep['checks']['device']['gpu']} on {rep['host']} is taken by ranks "
                           f"{rank_list(group)}: NCCL cannot share a GPU between ranks. HINT: one rank per GPU "
                           "(srun --ntasks-per-node=G, or one torchrun agent per node), --gpus-per-task=1"))


def _cpu(reports) -> dict:
    out = {}
    for i, rep in enumerate(reports):
        mine = set(rep["checks"].get("cpu", {}).get("cpus") or ())
        shared = [(o["rank"], mine & set(o["checks"].get("cpu", {}).get("cpus") or ()))
                  for j, o in enumerate(reports) if j != i and o["host"] == rep["host"]]
        shared = [(r, c) for r, c in shared if c]
        if shared:  # worded for the whole group (ranks and CPUs), so the group is one row
            cpus = set().union(*(c for _, c in shared))
            out[i] = (f"ranks {rank_list([rep['rank']] + [r for r, _ in shared])} share CPUs {cpu_ranges(cpus)}: "
                      "they compete for cores. HINT: srun --cpu-bind=cores, mpirun --bind-to core, or leave "
                      "PNEUMO_HPC_CPU_BIND unset so the kit splits the node's cores")
    return out


def _address(reports) -> dict:
    return _differs(reports, lambda r: f"{r['master_addr']}:{r['master_port']}", lambda v: f"rendezvous {v}",
                    "HINT: every rank must be given the same MASTER_ADDR/MASTER_PORT (or none)")


def judge(reports: list[dict], world: int, missing: list[int]) -> list[dict]:
    """One table's rows: per check, the ranks whose result matches folded into one row, worst first."""
    cross = {"data": (_differs(reports, lambda r: r["checks"].get("data", {}).get("sha256"),
                               lambda v: f"manifest sha256 {v[:12]}",
                               "HINT: the nodes see different data: one PREP on a shared path, or the same copy "
                               "in each node's scratch; preprocess again if it changed"), FAIL),
             "versions": (_versions(reports), FAIL), "launcher": (_launcher(reports, world), FAIL),
             "device": (_device(reports), FAIL), "cpu": (_cpu(reports), WARN), "address": (_address(reports), FAIL)}
    rows = []
    for name in ORDER:
        found, status = cross.get(name, ({}, FAIL))
        items = []
        for i, rep in enumerate(reports):
            res = rep["checks"].get(name) or {"status": SKIP, "detail": "not checked on this rank"}
            if i in found and WORSE[status] > WORSE[res["status"]]:  # a rank's own failure is kept: it is the cause
                res = {"status": status, "detail": found[i]}
            items.append((rep, res["status"], res["detail"]))
        rows += fold(name, items)
        if name == "launcher" and missing:
            rows.append(row(name, FAIL, [], missing, (
                f"rank(s) {rank_list(missing)} of {world} did not report: not started, crashed, or waiting in another "
                "launch (their own output says which). HINT: look at those ranks' output above; the launcher's "
                "task count must match the world size")))
    return rows


def row(check: str, status: str, hosts, ranks, detail: str) -> dict:
    hosts = list(dict.fromkeys(hosts))
    ranks = sorted(set(ranks))
    return {"check": check, "status": status, "node": ",".join(hosts) or "?", "rank": rank_list(ranks),
            "nodes": hosts, "ranks": ranks, "detail": detail}


def fold(name: str, items) -> list[dict]:
    """Items [(report, status, detail)] with the same status and detail become one row; failures first."""
    groups: dict = {}
    for rep, status, detail in items:
        groups.setdefault((status, detail), []).append(rep)
    ordered = sorted(groups.items(), key=lambda kv: -WORSE[kv[0][0]])
    out = []
    for (status, detail), reps in ordered:
        reps = sorted(reps, key=lambda r: (r["rank"] is None, r["rank"] or 0))  # hosts named in rank order
        out.append(row(name, status, [r["host"] for r in reps], [r["rank"] for r in reps], detail))
    return out


def allreduce_rows(bench: list[dict] | None, error: str | None, hosts, ranks, why: str | None) -> list[dict]:
    if why:
        return [row("allreduce", SKIP, hosts, ranks, f"not run: {why}")]
    if error:
        return [row("allreduce", FAIL, hosts, ranks, error)]
    return [row(f"allreduce {human_bytes(b['bytes'])}", OK, hosts, ranks,
                f"latency {b['latency_s']:.3g} s, algbw {b['algbw_gbps']:.3g} GB/s, busbw {b['busbw_gbps']:.3g} GB/s "
                f"({b['iters']} iters)") for b in bench or []]


def counts(rows) -> tuple[int, int]:
    return sum(r["status"] == FAIL for r in rows), sum(r["status"] == WARN for r in rows)


def table(rows: list[dict], head: str) -> str:
    """The text the user reads: a heading line, one line per row, a verdict line."""
    cols = ("check", "status", "node", "rank", "detail")
    cells = [("check", "status", "node", "rank", "detail / fix")] + [
        tuple(SHOWN[r[c]] if c == "status" else str(r[c]) for c in cols) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols) - 1)]
    lines = [head] + ["  ".join(c[i].ljust(w) for i, w in enumerate(widths)) + "  " + c[-1] for c in cells]
    failed, warned = counts(rows)
    bad = list(dict.fromkeys(r["check"] for r in rows if r["status"] == FAIL))  # rows come in ORDER already
    lines.append(f"doctor: FAIL ({failed} failed: {', '.join(bad)}; {warned} warning(s)): exit 1" if failed else
                 f"doctor: ok ({warned} warning(s))")
    return "\n".join(lines)


def document(rows: list[dict], reports: list[dict], bench: list[dict] | None, **about) -> dict:
    """The JSON document (keys in doctor.py's docstring)."""
    failed, warned = counts(rows)
    return {"doctor": 1, "ok": not failed, "failures": failed, "warnings": warned, **about,
            "checks": rows, "allreduce": bench or [], "ranks": reports}
