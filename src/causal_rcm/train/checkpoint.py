"""Atomic training checkpoints: temp file + rename, so a crash never leaves a broken file."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from causal_rcm.models.adapters import write_whole


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` whole or not at all; first removes what saves of dead processes left beside ``path``."""
    write_whole(path, lambda tmp: torch.save(obj, tmp))


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
