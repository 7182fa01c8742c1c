"""Benchmarks (`causal-rcm bench ...`): GPU timings written as JSON under benchmarks/results/."""

from __future__ import annotations

import datetime
import platform


def environment(benchmark: str, device) -> dict:
    """The header every result carries: what ran, when, on which device and software."""
    import torch
    import triton

    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def check_video_size(height: int, width: int) -> None:
    """Video benchmarks' pixel sizes must map to whole latent patches (Wan: VAE /8, patch 2)."""
    import click

    if height % 16 or width % 16:
        raise click.BadParameter("height and width must be multiples of 16 (VAE /8, patch 2)")
