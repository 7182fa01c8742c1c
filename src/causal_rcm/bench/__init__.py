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
