"""No launcher: one process, world size 1."""
from __future__ import annotations

import socket
from functools import cached_property
from typing import Mapping

from pneumo_hpc.runtime.launchers.base import ClusterEnvironment


class LocalEnvironment(ClusterEnvironment):
    name = "local"

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return True

    rank = local_rank = node_rank = property(lambda self: 0)
    world_size = local_world_size = property(lambda self: 1)

    @cached_property
    def _free_port(self) -> int:
        # Only this process binds it, so a free port beats a fixed 29500 that two local runs would fight over.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _default_master_port(self) -> int:
        return self._free_port
