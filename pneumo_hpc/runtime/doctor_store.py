"""Where the doctor's ranks meet: a TCP key-value store (torch's TCPStore) on the rendezvous port, with deadlines.

Rank 0 hosts it on MASTER_PORT, which is the port check itself (the bind fails when something holds the port);
the other ranks connect, which is the reachability check. Under torchrun the agent already hosts a store there
(TORCHELASTIC_USE_AGENT_STORE) and every rank, rank 0 too, is its client. A TCPStore client that reaches a process
squatting on the port (it accepts, then never answers) blocks past its own timeout, so each connection is made in
a thread that is given up on. If rank 0 cannot listen on its port it listens on the next one, where the others look
when the first does not answer as this job's store: the table then still has every rank's rows.
"""
from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

from pneumo_hpc.runtime import doctor_checks as checks
from pneumo_hpc.runtime.doctor_checks import FAIL, OK, result

PREFIX = "pneumo-doctor/"
ATTEMPT_S = 3.0  # one connection attempt: a squatter on the port is given up on this fast
ABANDONED: list[threading.Thread] = []  # attempts given up on while still inside C++ (see doctor.run)


def _in_thread(fn, seconds: float):
    """fn() given up on after ``seconds``: a TCPStore client that reached a squatter blocks past its own timeout."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller, whatever it is
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        ABANDONED.append(worker)
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _connect(addr: str, ports, deadline: float, hello: bool):
    """(store, port) of the first port whose store answers (and, with hello, has rank 0's greeting)."""
    from torch.distributed import TCPStore

    last: Exception | None = None
    while time.monotonic() < deadline:
        for port in ports:
            wait = max(0.5, min(ATTEMPT_S, deadline - time.monotonic()))
            try:
                store = _in_thread(lambda p=port, w=wait: TCPStore(addr, p, is_master=False,
                                                                   timeout=timedelta(seconds=w)), wait + 1)
                if hello:
                    _in_thread(lambda s=store, w=wait: s.wait([PREFIX + "hello"], timedelta(seconds=w)), wait + 1)
                return store, port
            except Exception as exc:  # refused, timed out, a squatter: try the next port until the deadline
                last = exc
    raise TimeoutError(f"{type(last).__name__}: {str(last).splitlines()[0] if last else 'no attempt'}")


def _join(fields: dict, where: str, timeout: float, agent: bool):
    """The other ranks (every rank under torchrun's agent store): connect to rank 0's store."""
    port, rank = fields["master_port"], fields["rank"]
    try:
        store, used = _connect(fields["master_addr"], (port,) if agent else (port, port + 1),
                               time.monotonic() + timeout, hello=rank != 0)
    except TimeoutError as exc:
        return None, result(FAIL, f"cannot reach rank 0 at {where} within {timeout:.0f} s ({exc}). HINT: rank 0 did "
                            "not start or died (its output says why), a firewall between the nodes, or MASTER_ADDR "
                            "is an address the nodes cannot route to")
    if agent:
        if rank == 0:
            store.set(PREFIX + "hello", "1")
        return store, result(OK, f"torchrun's rendezvous store at {where} reachable")
    if used != port:
        return store, result(FAIL, f"{where} answers, but not as this job's rendezvous: another process holds the "
                             f"port on rank 0's node (the doctor went on at port {used}). HINT: see rank 0's row: "
                             "free the port or set MASTER_PORT")
    return store, result(OK, f"rank 0 at {where} reachable")


def _host(fields: dict, ips: list[str], where: str, timeout: float):
    """Rank 0: listen on the rendezvous port (the next one if it is taken, so the others still find the doctor)."""
    from torch.distributed import TCPStore

    addr, port, host = fields["master_addr"], fields["master_port"], socket.gethostname()
    status = result(OK, f"rank 0 listens at {where}: the port was free")
    if not any(checks.is_local(ip) for ip in ips):
        status = result(FAIL, f"MASTER_ADDR {addr!r} is {', '.join(ips)}, not an address of {host}, where rank 0 "
                        "runs. HINT: leave MASTER_ADDR unset (the launcher finds rank 0's host), or name this host")

    def listen(on: int):
        return TCPStore(addr, on, is_master=True, timeout=timedelta(seconds=timeout), wait_for_workers=False)

    try:
        store = listen(port)
    except RuntimeError as exc:  # DistNetworkError
        why = str(exc)
        if "EADDRINUSE" not in why and "in use" not in why:
            return None, result(FAIL, f"rank 0 cannot listen on port {port} of {host}: {why.splitlines()[0][:200]}. "
                                "HINT: set MASTER_PORT to a free port above 1024")
        status = result(FAIL, f"port {port} on {host} is taken by another process (EADDRINUSE): rank 0 cannot listen "
                        f"there. HINT: a stale run or another job holds it (`ss -ltnp 'sport = :{port}'` on {host}): "
                        "end it, or set MASTER_PORT to a free port")
        try:
            store = listen(port + 1)
        except RuntimeError:
            return None, status
    store.set(PREFIX + "hello", "1")
    return store, status


def rendezvous(fields: dict, timeout: float, environ) -> tuple[object | None, dict]:
    """The doctor's store (None when there is none to be had) and the address row."""
    addr, port = fields["master_addr"], fields["master_port"]
    try:
        ips = checks.resolve(addr)
    except OSError as exc:
        return None, result(FAIL, f"rank 0's address {addr!r} does not resolve on this node ({exc}). HINT: "
                            "MASTER_ADDR must name rank 0's host as every node knows it (DNS or /etc/hosts)")
    where = f"{addr}:{port} ({', '.join(ips)})"
    agent = fields["launcher"] == "torchrun" and environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    if fields["rank"] != 0 or agent:
        return _join(fields, where, timeout, agent)
    return _host(fields, ips, where, timeout)


def wait_get(store, key: str, seconds: float) -> bytes:
    """The value of PREFIX + key once some rank set it; DistStoreError after ``seconds``."""
    store.wait([PREFIX + key], timedelta(seconds=seconds))
    return store.get(PREFIX + key)
