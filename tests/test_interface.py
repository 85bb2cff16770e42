"""The interface check: each variable's own matching rules, and an error that names node, rank and choices."""
import socket

import pytest

from pneumo_hpc.runtime import interface

PRESENT = ["eth0", "ib0", "lo"]


@pytest.mark.parametrize("variable, value, absent", [
    ("GLOO_SOCKET_IFNAME", "ib0", []),
    ("GLOO_SOCKET_IFNAME", "ib", ["ib"]),  # gloo wants exact names
    ("GLOO_SOCKET_IFNAME", "eth0,ib1", ["ib1"]),
    ("NCCL_SOCKET_IFNAME", "ib", []),  # NCCL matches prefixes
    ("NCCL_SOCKET_IFNAME", "=ib", ["ib"]),  # ... unless "=" asks for exact names
    ("NCCL_SOCKET_IFNAME", "^docker,lo", []),  # an exclusion list requires nothing
    ("NCCL_SOCKET_IFNAME", "hsn", ["hsn"]),
    ("PNEUMO_IFNAME", "", []),
])
def test_missing_follows_each_variables_rules(variable, value, absent):
    assert interface.missing(variable, value, PRESENT) == absent


def test_check_names_node_rank_variable_and_what_the_node_has():
    with pytest.raises(ValueError) as err:
        interface.check(3, {"GLOO_SOCKET_IFNAME": "ib7"}, present=PRESENT)
    msg = str(err.value)
    assert msg.startswith(f"node {socket.gethostname()}, rank 3: GLOO_SOCKET_IFNAME='ib7' names interface ib7")
    assert "(it has: eth0, ib0, lo)" in msg and "HINT" in msg
    interface.check(0, {"GLOO_SOCKET_IFNAME": "lo"})  # this machine's own loopback passes


def test_a_torchrun_rank_with_a_missing_interface_fails_before_the_rendezvous(tmp_path):
    from conftest import VENV_BIN, run, tool_env

    proc = run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "pneumo_hpc", "env",
                "--json", "--init", "--timeout", "600"], env=tool_env(GLOO_SOCKET_IFNAME="nope0"), check=False,
               timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "GLOO_SOCKET_IFNAME='nope0' names interface nope0, which this node does not have" in proc.stderr
