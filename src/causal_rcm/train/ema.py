"""Exponential moving average of a model's parameters (works on FSDP2-sharded parameters)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm-up (as in many DiT codebases): early averages do not drag in the random init.
        decay = min(self.decay, (1 + step) / (10 + step))
        names, params = zip(*model.named_parameters())
        # One fused multi-tensor update instead of a kernel launch per parameter.
        torch._foreach_lerp_([self.shadow[n] for n in names], [p.detach().float() for p in params], 1.0 - decay)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Shadow weights as full CPU tensors (gathers DTensor shards)."""
        out = {}
        for name, value in self.shadow.items():
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            out[name] = full.detach().cpu()
        return out
