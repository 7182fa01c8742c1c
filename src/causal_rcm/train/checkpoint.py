"""Training checkpoints: a folder of ``torch.distributed.checkpoint`` (DCP) shards, whole or absent.

Each process writes its own shards of the tensors (FSDP2's DTensors as they are sharded, plain tensors once) and
the main process writes ``meta.pt`` (what is not a tensor: step, config, data position, RNG, history). DCP records
every tensor's global shape and its pieces, so a checkpoint saved by N processes loads into any other number of
processes, each reading the pieces of its own shards (resharding), or into one process.

The folder is written beside its path and renamed into place by the main process
(``models.adapters.write_whole``: a reader sees the old checkpoint or the new one, never half of one; a killed
save's leftovers are removed by the next one).
"""

from __future__ import annotations

import random
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from causal_rcm.errors import UserError
from causal_rcm.models.adapters import current_path, write_whole
from causal_rcm.train.parallel import DistEnv, barrier

META = "meta.pt"


@contextmanager
def _one_process_is_intended():
    """DCP warns that it assumes one process when none is joined: here that is what a run without torchrun wants."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _shared(value: str | None, world: DistEnv) -> str:
    """The main process's ``value``, on every process."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded(path: Path, tensors: dict[str, Any], meta: dict[str, Any], world: DistEnv) -> None:
    """Save ``tensors`` (a nested dict of tensors / DTensors, e.g. state dicts) with DCP and ``meta`` beside them as
    the folder ``path``, whole or not at all; every process calls this (a collective)."""
    if world.is_main:
        def write(tmp: Path) -> None:
            tmp.mkdir()
            _shared(str(tmp), world)
            with _one_process_is_intended():
                dcp.save(tensors, checkpoint_id=tmp, no_dist=not world.distributed)
            torch.save(meta, tmp / META)

        write_whole(path, write)
    else:
        dcp.save(tensors, checkpoint_id=_shared(None, world))
    barrier(world)


def read_meta(path: Path) -> dict[str, Any] | None:
    """The ``meta`` of the checkpoint folder ``path`` (None when there is none); UserError for an unreadable one."""
    folder = current_path(path)
    if not folder.exists():
        return None
    try:
        return torch.load(folder / META, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign or damaged file raises
        raise UserError(f"cannot resume from {path}: {exc}; delete it or use another train.out_dir") from None


def load_sharded(path: Path, tensors: dict[str, Any], world: DistEnv) -> None:
    """Load the checkpoint folder ``path`` into ``tensors`` in place (same structure as saved; each process reads the
    pieces of its own shards, whatever the number of processes that saved them)."""
    try:
        with _one_process_is_intended():
            dcp.load(tensors, checkpoint_id=current_path(path), no_dist=not world.distributed)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP wraps reader errors in CheckpointException
        raise UserError(f"cannot resume from {path}: {str(exc).splitlines()[0][:300]}; delete it or use another "
                        "train.out_dir") from None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
