"""Toy teachers shared by the distillation tests (trained for a step or two: the plumbing, not quality)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAST = [
    "model.dim=32", "model.num_heads=2", "model.num_layers=2", "model.ffn_dim=64",
    "train.batch_size=4", "train.eval_videos=2", "train.eval_steps=2", "train.log_every=1",
    "train.progress=false", "optim.warmup_steps=1", "data.num_frames=4", "data.frames_per_chunk=2",
]


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """``{"causal-teacher": path, "teacher": path}``: toy checkpoints written by `train`."""
    from causal_rcm.config import load_config
    from causal_rcm.train import train

    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for recipe in ("causal-teacher", "teacher"):
        config = load_config(recipe, None, FAST + ["train.steps=2", f"train.out_dir={root / recipe}", "train.eval_steps=1", "train.eval_drift=0"])
        train(config, restart=True)
        out[recipe] = root / recipe / "model"
    return out
