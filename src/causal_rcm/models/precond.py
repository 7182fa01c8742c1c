"""Parameterisations of a flow-matching (Wan) velocity network: TrigFlow F_theta and its x0."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from causal_rcm.diffusion.conversions import (
    time_dtype,
    trigflow_to_flow_time,
    trigflow_to_flow_x,
    trigflow_to_x0,
    velocity_to_trigflow,
)
from causal_rcm.diffusion.schedules import to_net_time

__all__ = ["TrigFlowWrapper"]


class TrigFlowWrapper(nn.Module):
    """TrigFlow network F_theta(x_t, t) over a flow-matching velocity network (sCM, Lu & Song 2024, sigma_d = 1).

    ``net(x_s, t_net, context, **kw) -> v`` with ``t_net = 1000 s`` (Wan units) is evaluated at
    ``s = sin t / (cos t + sin t)`` and ``x_s = x_t / (cos t + sin t)``, and its velocity is
    mapped to ``F = ((cos t - sin t) x_t + v) / (cos t + sin t)`` (derivation in
    :mod:`causal_rcm.diffusion.conversions`). No parameters of its own, no in-place ops and
    no host syncs: differentiable and usable under ``torch.func.jvp`` with tangents on
    (x_t, t). The wrapped module stays reachable as ``.net`` (for sampling, FSDP, state dicts).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **net_kwargs: Any) -> torch.Tensor:
        """F_theta.

        Args:
            x_t: (B, C, F, H, W) TrigFlow state; t: (B, F) TrigFlow time in [0, pi/2] per frame.
            context: (B, L, D); net_kwargs: passed to ``net`` (mask, kv_cache, actions, ...).
        Returns:
            (B, C, F, H, W) F_theta, in x_t's dtype promoted to at least float32.
        """
        t = t.to(time_dtype(x_t))
        x_s = trigflow_to_flow_x(x_t, t).to(x_t.dtype)  # the net sees data in its own dtype
        v = self.net(x_s, to_net_time(trigflow_to_flow_time(t)), context, **net_kwargs)
        return velocity_to_trigflow(v, x_t, t)

    def F_theta(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **net_kwargs: Any) -> torch.Tensor:
        """Alias of calling the module (paper notation)."""
        return self(x_t, t, context, **net_kwargs)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **net_kwargs: Any) -> torch.Tensor:
        """Consistency function f_theta(x_t, t) = cos t x_t - sin t F_theta(x_t, t): the x0 estimate (B, C, F, H, W)."""
        return trigflow_to_x0(self(x_t, t, context, **net_kwargs), x_t, t)
