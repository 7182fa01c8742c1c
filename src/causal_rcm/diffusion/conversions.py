"""Named, parameter-free conversions between flow matching and TrigFlow.

Flow matching (Wan; Lipman et al. 2023, Liu et al. 2023): ``x_s = (1 - s) x0 + s eps``,
s in [0, 1], velocity ``v = dx_s/ds = eps - x0``.

TrigFlow (Lu & Song 2024, "Simplifying, stabilizing and scaling continuous-time consistency
models", Sec. 3, with sigma_d = 1): ``x_t = cos t x0 + sin t eps``, t in [0, pi/2], network
target ``F = dx_t/dt = cos t eps - sin t x0`` and consistency function
``f(x_t, t) = cos t x_t - sin t F = x0``.

The two are the same path up to a per-time rescaling (derived here, checked in the tests):
dividing x_t by ``cos t + sin t`` gives weights ``cos t / (cos t + sin t)`` and
``sin t / (cos t + sin t)`` that sum to one, so

    s = sin t / (cos t + sin t)  <=>  t = atan2(s, 1 - s),     x_s = x_t / (cos t + sin t).

Substituting ``x0 = x_s - s v`` and ``eps = x_s + (1 - s) v`` into F and using
``sin t * s + cos t * (1 - s) = 1 / (cos t + sin t)``:

    F = ((cos t - sin t) x_t + v) / (cos t + sin t),    v = (cos t + sin t) F - (cos t - sin t) x_t.

Time arguments broadcast against the data by :func:`expand_time`: a Python float, a 0-d
tensor, a per-sample ``(B,)`` tensor, a per-frame ``(B, F)`` tensor for video latents
``(B, C, F, H, W)``, or a tensor already broadcastable. Everything is pure tensor arithmetic
(no in-place ops, no ``.item()``), so it is differentiable and ``torch.func.jvp``-friendly.
"""

from __future__ import annotations

import torch

__all__ = [
    "time_dtype",
    "expand_time",
    "velocity_to_x0",
    "x0_to_velocity",
    "velocity_to_eps",
    "eps_to_velocity",
    "flow_to_trigflow_time",
    "trigflow_to_flow_time",
    "flow_to_trigflow_x",
    "trigflow_to_flow_x",
    "velocity_to_trigflow",
    "trigflow_to_velocity",
    "trigflow_to_x0",
    "x0_to_trigflow",
    "trigflow_to_eps",
]

Time = torch.Tensor | float


def time_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype time coefficients are computed in for data ``x``: at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_time(t: Time, x: torch.Tensor) -> torch.Tensor:
    """Reshape a time to broadcast against ``x``; move it to ``x``'s device and a float dtype.

    ``(B, F)`` with a 5-D ``x`` (B, C, F, H, W) becomes ``(B, 1, F, 1, 1)`` (per-frame time);
    ``(B,)`` becomes ``(B, 1, ..., 1)``; 0-d tensors and floats stay scalars; any other shape
    must already broadcast. The dtype is ``x``'s promoted to at least float32, so the
    trigonometry never runs in half precision (results of bf16 inputs come back in float32).
    """
    t = torch.as_tensor(t, device=x.device).to(time_dtype(x))
    if t.ndim == 1 and x.ndim > 1:
        return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
    if t.ndim == 2 and x.ndim == 5:
        return t[:, None, :, None, None]
    return t


# --------------------------------------------------------------------- flow matching
def velocity_to_x0(v: torch.Tensor, x_s: torch.Tensor, s: Time) -> torch.Tensor:
    """x0 = x_s - s v (from ``x_s = (1 - s) x0 + s eps``, ``v = eps - x0``). Shapes as x_s."""
    return x_s - expand_time(s, x_s) * v


def x0_to_velocity(x0: torch.Tensor, x_s: torch.Tensor, s: Time) -> torch.Tensor:
    """v = (x_s - x0) / s; undefined at s = 0. Shapes as x_s."""
    return (x_s - x0) / expand_time(s, x_s)


def velocity_to_eps(v: torch.Tensor, x_s: torch.Tensor, s: Time) -> torch.Tensor:
    """eps = x_s + (1 - s) v. Shapes as x_s."""
    return x_s + (1 - expand_time(s, x_s)) * v


def eps_to_velocity(eps: torch.Tensor, x_s: torch.Tensor, s: Time) -> torch.Tensor:
    """v = (eps - x_s) / (1 - s); undefined at s = 1. Shapes as x_s."""
    return (eps - x_s) / (1 - expand_time(s, x_s))


# ------------------------------------------------------------------------ time / state
def flow_to_trigflow_time(s: torch.Tensor) -> torch.Tensor:
    """t = atan2(s, 1 - s) in [0, pi/2]: tan t = s / (1 - s), exact at s = 0 and s = 1."""
    return torch.atan2(s, 1 - s)


def trigflow_to_flow_time(t: torch.Tensor) -> torch.Tensor:
    """s = sin t / (cos t + sin t) in [0, 1]."""
    return torch.sin(t) / (torch.cos(t) + torch.sin(t))


def flow_to_trigflow_x(x_s: torch.Tensor, t: Time) -> torch.Tensor:
    """x_t = (cos t + sin t) x_s, with t the TrigFlow time of s. Shapes as x_s."""
    t = expand_time(t, x_s)
    return (torch.cos(t) + torch.sin(t)) * x_s


def trigflow_to_flow_x(x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """x_s = x_t / (cos t + sin t). Shapes as x_t."""
    t = expand_time(t, x_t)
    return x_t / (torch.cos(t) + torch.sin(t))


# ---------------------------------------------------------------------------- TrigFlow
def velocity_to_trigflow(v: torch.Tensor, x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """F = ((cos t - sin t) x_t + v) / (cos t + sin t), for v = v(x_s, s) at the matching (x_s, s)."""
    t = expand_time(t, x_t)
    cos_t, sin_t = torch.cos(t), torch.sin(t)
    return ((cos_t - sin_t) * x_t + v) / (cos_t + sin_t)


def trigflow_to_velocity(F: torch.Tensor, x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """v = (cos t + sin t) F - (cos t - sin t) x_t (inverse of :func:`velocity_to_trigflow`)."""
    t = expand_time(t, x_t)
    cos_t, sin_t = torch.cos(t), torch.sin(t)
    return (cos_t + sin_t) * F - (cos_t - sin_t) * x_t


def trigflow_to_x0(F: torch.Tensor, x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """Consistency function f(x_t, t) = cos t x_t - sin t F (sCM, Lu & Song 2024, Sec. 3)."""
    t = expand_time(t, x_t)
    return torch.cos(t) * x_t - torch.sin(t) * F


def x0_to_trigflow(x0: torch.Tensor, x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """F = (cos t x_t - x0) / sin t (inverse of :func:`trigflow_to_x0`); undefined at t = 0."""
    t = expand_time(t, x_t)
    return (torch.cos(t) * x_t - x0) / torch.sin(t)


def trigflow_to_eps(F: torch.Tensor, x_t: torch.Tensor, t: Time) -> torch.Tensor:
    """eps = sin t x_t + cos t F."""
    t = expand_time(t, x_t)
    return torch.sin(t) * x_t + torch.cos(t) * F
