"""Time schedules: the flow-matching shift, sampling time grids, and training-time samplers.

Conventions (fixed across the project):

* Flow-matching time ``s`` in [0, 1] (Wan / rectified flow): ``x_s = (1 - s) x0 + s eps``.
  The network's time input is in Wan units, ``t_net = 1000 * s`` (:func:`to_net_time`).
* TrigFlow time ``t`` in [0, pi/2] (Lu & Song 2024, sCM): ``x_t = cos t x0 + sin t eps``.
  Conversions between the two live in :mod:`causal_rcm.diffusion.conversions`.
* A sampling *grid* is a strictly decreasing 1-D float64 tensor of flow-matching times that
  ends with exactly 0, like k-diffusion's ``get_sigmas_*`` (which append sigma = 0): a sampler
  evaluates the network at ``grid[:-1]`` and lands on ``grid[-1] = 0``.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "WAN_NET_TIME_SCALE",
    "shift_time",
    "unshift_time",
    "to_net_time",
    "flow_time_grid",
    "check_time_grid",
    "sample_flow_time",
    "sample_trigflow_time",
]

WAN_NET_TIME_SCALE = 1000.0


def shift_time(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Wan / SD3 timestep shift ``k s / (1 + (k - 1) s)`` (Esser et al. 2024, Eq. (23)).

    Maps [0, 1] onto itself monotonically, keeping 0 and 1 fixed; ``shift > 1`` spends more
    of a uniform grid at high noise. Wan2.1 480p uses ``shift = 5``.
    """
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def unshift_time(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Inverse of :func:`shift_time`: ``s / (k - (k - 1) s)``."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return s / (shift - (shift - 1) * s)


def to_net_time(s: torch.Tensor) -> torch.Tensor:
    """Flow-matching time s in [0, 1] -> the network's time input in Wan units (1000 s)."""
    return s * WAN_NET_TIME_SCALE


def flow_time_grid(steps: int, shift: float = 1.0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(steps + 1,) float64 grid ``shift(1 - i / steps)``, i = 0..steps: from s = 1 to s = 0.

    Uniform in the unshifted time, then shifted (as Wan's flow solvers do). The first value is
    pure noise (s = 1), the last is 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
    return shift_time(u, shift)


def check_time_grid(times: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Validate a user-given grid and return it as a float64 CPU tensor.

    It must be 1-D, strictly decreasing, within [0, 1], with at least two entries and end at 0
    (append 0 yourself for a list of evaluation times). Raises ``ValueError`` otherwise.
    """
    grid = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"a time grid needs at least two entries (e.g. [1.0, 0.0]), got {grid.tolist()}")
    if grid[-1] != 0:
        raise ValueError(f"a time grid must end at 0 (clean data), got {grid.tolist()}")
    if grid[0] > 1 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"a time grid must be strictly decreasing within [0, 1], got {grid.tolist()}")
    return grid


def sample_flow_time(
    shape: Sequence[int],
    *,
    kind: str = "uniform",
    shift: float = 1.0,
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times s in (0, 1) for flow matching, then shifted.

    ``kind="uniform"``: u ~ U(0, 1). ``kind="logit_normal"``: u = sigmoid(n), n ~ N(loc, scale^2)
    (SD3, Esser et al. 2024, Eq. (19)). Returns ``shift_time(u, shift)`` with shape ``shape``
    (float32). For per-frame training times pass ``shape=(B, F)``; for one time per video,
    sample ``(B, 1)`` and expand.
    """
    if kind == "uniform":
        u = torch.rand(shape, generator=generator, device=device)
    elif kind == "logit_normal":
        u = torch.sigmoid(loc + scale * torch.randn(shape, generator=generator, device=device))
    else:
        raise ValueError(f"unknown flow time distribution {kind!r}; use 'uniform' or 'logit_normal'")
    return shift_time(u, shift)


def sample_trigflow_time(
    shape: Sequence[int],
    *,
    p_mean: float = -1.0,
    p_std: float = 1.4,
    sigma_d: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """TrigFlow training times t in (0, pi/2): ``t = arctan(exp(tau) / sigma_d)``, tau ~ N(p_mean, p_std^2).

    Lu & Song 2024 (sCM), Sec. 4 / App.: log-normal proposal on the EDM noise level
    ``sigma = exp(tau) = sigma_d tan t``. With our unit-variance noise ``sigma_d = 1`` (as rCM
    uses for rectified-flow teachers) and ``tan t`` is itself log-normal. A noise multiplier m
    (rCM's ``video_noise_multiplier``) equals ``p_mean + log(m)``. Returns float32.
    """
    if p_std < 0 or sigma_d <= 0:
        raise ValueError(f"need p_std >= 0 and sigma_d > 0, got p_std={p_std}, sigma_d={sigma_d}")
    tau = p_mean + p_std * torch.randn(shape, generator=generator, device=device)
    return torch.atan(torch.exp(tau) / sigma_d)

