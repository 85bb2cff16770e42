"""torchrun / torchelastic, or anything else that already set the ``env://`` variables (``mp.spawn`` wrappers)."""
from __future__ import annotations

from typing import Mapping

from pneumo_hpc.runtime.launchers.base import ClusterEnvironment


class TorchrunEnvironment(ClusterEnvironment):
    name = "torchrun"
    ENV = {
        "rank": ("RANK",),
        "world_size": ("WORLD_SIZE",),
        "local_rank": ("LOCAL_RANK",),
        "local_world_size": ("LOCAL_WORLD_SIZE",),
        "node_rank": ("GROUP_RANK",),
    }

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return "TORCHELASTIC_RUN_ID" in environ or all(k in environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))

    # A hand-made launch may set only RANK/WORLD_SIZE/MASTER_*: that is one node, so local == global.
    # Several nodes launched that way must set LOCAL_RANK and LOCAL_WORLD_SIZE themselves.
    @property
    def local_rank(self) -> int:
        return self._int("local_rank", default=self.rank)

    @property
    def local_world_size(self) -> int:
        return self._int("local_world_size", default=self.world_size)
