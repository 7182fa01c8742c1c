"""Shared test helpers: small model configs and a randomiser (Wan's init zeroes the output layer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when ``triton.jit`` decorates a kernel, that is when
# ``causal_rcm.kernels.flash`` is first imported, which any test directory may do first
# (bench, distill with jvp_backend=triton, kernels). So it is set here, at the root,
# before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests run tiny models, which gain nothing from threads: on a 2-core machine two threads spin against each other
# (a toy training step takes 0.2 s on one thread and 6 s on two). One thread here and in every process a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from causal_rcm.models.wan import CausalWanConfig, CausalWanModel


def small_config(**overrides) -> CausalWanConfig:
    base = dict(in_dim=4, out_dim=4, dim=32, ffn_dim=48, freq_dim=32, text_dim=24, text_len=8, num_heads=2, num_layers=2)
    return CausalWanConfig(**{**base, **overrides})


def random_model(config: CausalWanConfig | None = None, seed: int = 0, backend: str = "math", std: float = 0.2) -> CausalWanModel:
    """A model whose every parameter is random (so no output is trivially zero), in eval mode."""
    torch.manual_seed(seed)
    model = CausalWanModel(config or small_config(), attn_backend=backend)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


@pytest.fixture
def model() -> CausalWanModel:
    return random_model()


# Overrides for toy runs (a step or two of training: the plumbing, not quality).
FAST = [
    "model.dim=32", "model.num_heads=2", "model.num_layers=2", "model.ffn_dim=64",
    "train.batch_size=4", "train.eval_videos=2", "train.eval_steps=2", "train.log_every=1",
    "train.progress=false", "optim.warmup_steps=1", "data.num_frames=4", "data.frames_per_chunk=2",
]


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """``{"causal-teacher": path, "teacher": path}``: toy checkpoints written by `train`."""
    from causal_rcm.runs import load_config
    from causal_rcm.runs import train

    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for recipe in ("causal-teacher", "teacher"):
        config = load_config(recipe, None, FAST + ["train.steps=2", f"train.out_dir={root / recipe}", "train.eval_steps=1", "train.eval_drift=0"])
        train(config, restart=True)
        out[recipe] = root / recipe / "model"
    return out


@pytest.fixture(scope="session")
def breakout_shards(tmp_path_factory) -> Path:
    """A tiny collection from the real emulator: 3 Breakout episodes of the scripted player, 24 steps each,
    2 to a shard, the last one held out (``train-000000.tar``, ``heldout-000000.tar``)."""
    from causal_rcm.data.atari import CollectArgs, collect

    out = tmp_path_factory.mktemp("breakout") / "shards"
    collect(out, CollectArgs(env="ALE/Breakout-v5", policy="agent", episodes=3, max_steps=24, episodes_per_shard=2, holdout=0.34),
            progress=False, say=lambda line: None)
    return out
