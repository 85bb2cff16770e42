"""The network interface the ranks are told to talk over must exist on this node, or the job fails at once.

gloo, NCCL and Dask given a name the node lacks do not fail: gloo and NCCL wait in the rendezvous until the
timeout, Dask's scheduler never comes up. ``check()`` turns that into an error naming the node, the rank, the
variable, the interface asked for and the ones the node has.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping

# variable -> how its names match (NCCL: prefixes, "^" excludes, "=" exact; the others: exact names)
VARIABLES = ("PNEUMO_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "PNEUMO_DASK_INTERFACE")


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def missing(variable: str, value: str, present: list[str]) -> list[str]:
    """The names in ``value`` that match no interface in ``present``, by the variable's own rules."""
    value = value.strip()
    if not value or value.startswith("^"):
        return []  # an exclusion list asks for nothing that must exist
    if variable == "NCCL_SOCKET_IFNAME":
        exact = value.startswith("=")
        names = [n.strip() for n in value.lstrip("=").split(",") if n.strip()]
        return [n for n in names if not any(p == n if exact else p.startswith(n) for p in present)]
    return [n.strip() for n in value.split(",") if n.strip() and n.strip() not in present]


def check(rank: int | None = None, environ: Mapping[str, str] | None = None,
          variables: tuple[str, ...] = VARIABLES, present: list[str] | None = None) -> None:
    """Raise ValueError when an interface named by ``variables`` is not on this node."""
    environ = os.environ if environ is None else environ
    present = interfaces() if present is None else present
    for variable in variables:
        absent = missing(variable, environ.get(variable, ""), present)
        if absent:
            who = f"node {socket.gethostname()}" + (f", rank {rank}" if rank is not None else "")
            raise ValueError(
                f"{who}: {variable}={environ[variable]!r} names interface {', '.join(absent)}, which this node "
                f"does not have (it has: {', '.join(present)}). HINT: set IFNAME (make sbatch-... IFNAME=...) "
                "to an interface every node has (`ip -br link` on a compute node), or leave it unset")
