"""Tiny random checkpoints in our layout (config.json with a pipeline section + model.safetensors).

An untrained model outputs noise, which is all the plumbing tests (pipeline, CLI, server) need.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .conftest import random_model, small_config
from causal_rcm.models.adapters import current_path, save_model


def pipeline_section(*, causal: bool = True, num_actions: int = 0, frames_per_chunk: int = 2, num_frames: int = 8,
                     sink_frames: int = 1, window_frames: int = 4, solver: str = "consistency", steps: int = 2,
                     guidance: float = 1.0, codec_frames: int = 1, text_len: int = 16) -> dict:
    """The pipeline config of a 32 px shapes-world checkpoint (pixel codec factor 4: 48 T x 8 x 8 latents)."""
    return {
        "source": "shapes",
        "resolution": 32,
        "num_frames": num_frames,
        "frames_per_chunk": frames_per_chunk,
        "causal": causal,
        "codec": {"kind": "pixel", "factor": 4, "frames": codec_frames, "shift": -0.81, "scale": 1.92},
        "text": {"kind": "toy", "dim": 16, "text_len": text_len, "seed": 0},
        "sampler": {"solver": solver, "steps": steps, "shift": 3.0, "guidance": guidance},
        "stream": {"sink_frames": sink_frames, "window_frames": window_frames},
        "fps": 8,
        "num_actions": num_actions,
    }


def make_checkpoint(path: Path, *, seed: int = 0, num_actions: int = 0, **pipeline) -> Path:
    """Write a random 2-layer model (dim 32, 16 tokens a frame) with its pipeline config to ``path``."""
    channels = 48 * pipeline.get("codec_frames", 1)
    config = small_config(in_dim=channels, out_dim=channels, text_dim=16, text_len=pipeline.get("text_len", 16),
                          num_actions=num_actions)
    model = random_model(config, seed=seed, backend="sdpa")
    return save_model(model, path, pipeline=pipeline_section(num_actions=num_actions, **pipeline))


BREAKOUT = {
    "id": "ALE/Breakout-v5", "num_actions": 4, "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"], "frameskip": 4,
    "repeat_action_probability": 0.25, "emulator_fps": 60.0, "fps": 15.0,
}


def make_world_checkpoint(path: Path, *, seed: int = 0, action_scale: float = 100.0, num_actions: int = 4, **pipeline) -> Path:
    """A random Breakout world model at 32 px (``make_checkpoint``'s network) whose action embedding is scaled by
    ``action_scale``: its frames then depend mostly on the action (a random model's would hardly), so tests can
    see that keys reach it. ``num_actions=0`` makes the no-action model of the same game."""
    channels = 48
    config = small_config(in_dim=channels, out_dim=channels, text_dim=16, text_len=16, num_actions=num_actions)
    model = random_model(config, seed=seed, backend="sdpa")
    if num_actions:
        with torch.no_grad():
            model.action_embedding.weight.mul_(action_scale)
    section = {**pipeline_section(num_actions=num_actions, **pipeline), "source": "atari", "env": BREAKOUT, "fps": 15.0}
    return save_model(model, path, pipeline=section)


def read_training_checkpoint(out_dir: Path) -> dict:
    """A trainer's sharded checkpoint (``out_dir/checkpoint``) as one dict: the entries of its ``meta.pt`` and its
    tensors gathered whole (``models``, ``optimizers``, ``ema``), as one process would see them."""
    import tempfile
    import warnings

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = current_path(Path(out_dir) / "checkpoint")  # or, while a save swaps it in, the previous one
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized": one process, as intended
        dcp_to_torch_save(folder, Path(tmp) / "whole.pt")
        tensors = torch.load(Path(tmp) / "whole.pt", weights_only=False)
    return {**torch.load(folder / "meta.pt", weights_only=False), **tensors}
