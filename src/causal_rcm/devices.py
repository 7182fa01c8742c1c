"""The torch device a command runs on, checked where the user names it."""

from __future__ import annotations

import torch

from causal_rcm.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'; UserError for any other or a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but no CUDA device is available; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return device
