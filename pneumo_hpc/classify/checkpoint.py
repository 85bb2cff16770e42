"""Atomic, resumable checkpoints.

Layout under RUN/checkpoint/:
  step-00000120/      one complete checkpoint (state.pt for serial/DDP; a torch.distributed.checkpoint
                      directory for FSDP, each rank writing its shards) + meta.json
  latest              the name of the newest complete checkpoint, replaced atomically after every rank finished
  model.pt            full (unsharded) weights + meta for evaluate/predict, loadable with weights_only=True

A checkpoint directory is written as step-N.tmp and renamed only once complete, and `latest` moves only after
that: a crash or kill at any point leaves the previous good state.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pneumo_hpc.atomic import write_text, write_with
from pneumo_hpc.classify.parallel import unwrap


def atomic_torch_save(obj, path: Path) -> None:
    write_with(path, lambda f: torch.save(obj, f))


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, run_dir: Path, strategy: str, is_main: bool, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoint"
        self.strategy = strategy
        self.is_main = is_main
        self.keep = keep
        if is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
        _barrier()

    # ---------------------------------------------------------------- save
    def save(self, model, optimizer, meta: dict) -> Path:
        name = f"step-{meta['global_step']:08d}"
        final, tmp = self.dir / name, self.dir / f"{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        if self.strategy == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        elif self.is_main:
            torch.save({"model": unwrap(model).state_dict(), "optim": optimizer.state_dict()}, tmp / "state.pt")
        _barrier()
        if self.is_main:
            write_text(tmp / "meta.json", json.dumps(meta, indent=1), durable=True)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(self.dir / "latest", name + "\n", durable=True)
            self._prune(keep_name=name)
        _barrier()
        return final

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in steps[:-self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    def save_model(self, model, meta: dict) -> None:
        """Full weights for evaluation/prediction (every rank must call: FSDP gathers the shards)."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
        if self.is_main:
            atomic_torch_save({"state_dict": state, "meta": meta}, self.dir / "model.pt")
        _barrier()

    # ---------------------------------------------------------------- load
    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        path = self.dir / pointer.read_text().strip()
        return path if (path / "meta.json").is_file() else None

    def load(self, model, optimizer) -> dict | None:
        """Restore the newest complete checkpoint into the (already wrapped) model and optimizer."""
        path = self.latest()
        if path is None:
            return None
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("strategy") != self.strategy and "fsdp" in (meta.get("strategy"), self.strategy):
            raise ValueError(f"{path}: written by --strategy {meta.get('strategy')}, cannot resume as "
                             f"{self.strategy} (FSDP checkpoints are sharded). HINT: resume with the same strategy.")
        if meta.get("strategy") == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(path))
            set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            unwrap(model).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optim"])
        return meta


def load_model_file(run_dir: Path) -> tuple[dict, dict]:
    path = Path(run_dir) / "checkpoint" / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model here. HINT: --run is the --out of `pneumo-hpc train`.")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"], blob["meta"]
