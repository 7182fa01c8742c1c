"""Benchmarks (`causal-rcm bench ...`): GPU timings written as JSON under benchmarks/results/."""

from __future__ import annotations

import datetime
import platform


def environment(benchmark: str, device) -> dict:
    """The header every result carries: what ran, when, on which device and software.

    ``device`` "cpu" names the processor and torch's threads instead of a GPU; triton is optional there."""
    import torch

    try:
        import triton
    except ImportError:  # a CPU build of torch comes without it
        triton = None
    dev = torch.device(device)
    where = ({"device": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else
             {"device": dev.type, "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()})
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **where,
        "torch": torch.__version__,
        "triton": None if triton is None else triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def check_video_size(height: int, width: int) -> None:
    """Video benchmarks' pixel sizes must map to whole latent patches (Wan: VAE /8, patch 2)."""
    import click

    if height % 16 or width % 16:
        raise click.BadParameter("height and width must be multiples of 16 (VAE /8, patch 2)")
