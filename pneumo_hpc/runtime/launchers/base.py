"""What every launcher tells a rank: who it is, how many there are, and where rank 0 listens.

Each subclass maps one launcher's environment variables onto these fields through a small table
(``ENV``: field -> variable names, first present wins). ``export()`` then writes the variables that
``torch.distributed.init_process_group(init_method="env://")`` reads.
"""
from __future__ import annotations

import os
import zlib
from abc import ABC, abstractmethod
from typing import ClassVar, Mapping, MutableMapping

PORT_BASE = 15000
PORT_SPAN = 10000
DEFAULT_PORT = 29500  # torchrun's default; used only when there is no job id to derive one from


def derive_port(job_id: str) -> int:
    """A port in [15000, 25000) that every rank of one job computes alike, without talking.

    Numeric ids map by remainder, so consecutive jobs sharing nodes get distinct ports; other ids
    (PMIx namespaces, ``123_4`` array ids) go through crc32, which unlike ``hash()`` is not salted per process.
    """
    job_id = str(job_id).strip()
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return PORT_BASE + number % PORT_SPAN


class ClusterEnvironment(ABC):
    """One launcher's view of this process. ``environ`` defaults to ``os.environ``; tests pass dicts."""

    name: ClassVar[str]
    ENV: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ

    @classmethod
    @abstractmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        """True when this launcher started the current process."""

    def _var(self, field: str) -> tuple[str, str] | None:
        for name in self.ENV.get(field, ()):
            value = self.environ.get(name)
            if value not in (None, ""):
                return name, value
        return None

    def _int(self, field: str, default: int | None = None) -> int:
        found = self._var(field)
        if found is None:
            if default is not None:
                return default
            names = " or ".join(self.ENV.get(field, ())) or "(no variable)"
            raise ValueError(f"{self.name} launch detected but {names} is not set: cannot tell this rank's {field}")
        name, value = found
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an integer ({self.name} launcher, field {field})") from None

    @property
    def rank(self) -> int:
        return self._int("rank")

    @property
    def world_size(self) -> int:
        return self._int("world_size")

    @property
    def local_rank(self) -> int:
        return self._int("local_rank")

    @property
    def local_world_size(self) -> int:
        return self._int("local_world_size")

    @property
    def node_rank(self) -> int:
        # launchers that do not name the node index: right for block mapping, which is every default here
        return self._int("node_rank", default=self.rank // max(self.local_world_size, 1))

    @property
    def master_addr(self) -> str:
        return self.environ.get("MASTER_ADDR") or self._default_master_addr()

    @property
    def master_port(self) -> int:
        value = self.environ.get("MASTER_PORT")
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"MASTER_PORT={value!r} is not a port number") from None
        return self._default_master_port()

    def _default_master_addr(self) -> str:
        return "127.0.0.1"

    def _default_master_port(self) -> int:
        return DEFAULT_PORT

    def as_dict(self) -> dict:
        return {"launcher": self.name, "rank": self.rank, "local_rank": self.local_rank,
                "world_size": self.world_size, "local_world_size": self.local_world_size,
                "node_rank": self.node_rank, "master_addr": self.master_addr, "master_port": self.master_port}

    def export(self, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
        """Write what ``env://`` needs into ``environ`` (default ``os.environ``); returns the variables it set.

        A variable already present is never overwritten: a preset MASTER_ADDR/MASTER_PORT is the user's choice.
        A preset rank or size that contradicts this launcher (a stale ``RANK`` left in a shell, say) would pair
        the wrong ranks and hang in init, so that is an error instead.
        """
        environ = os.environ if environ is None else environ
        wanted = {"RANK": self.rank, "LOCAL_RANK": self.local_rank, "WORLD_SIZE": self.world_size,
                  "LOCAL_WORLD_SIZE": self.local_world_size, "MASTER_ADDR": self.master_addr,
                  "MASTER_PORT": self.master_port}
        clashes = [f"{k}={environ[k]!r} (the {self.name} launcher says {v})" for k, v in wanted.items()
                   if k in environ and environ[k] != str(v) and not k.startswith("MASTER_")]
        if clashes:
            raise ValueError("environment contradicts the detected launcher: " + "; ".join(clashes)
                             + ". HINT: unset these variables (leftovers from another launch?) or launch with torchrun,"
                             " which sets them consistently")
        written = {k: str(v) for k, v in wanted.items() if k not in environ}
        environ.update(written)
        return written

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"
