"""3D rotary position embedding as in Wan2.1 (Su et al. 2021, RoFormer; Wan's (t, h, w) split).

The head dimension D is split into a temporal part of D - 4 (D // 6) channels and two spatial
parts of 2 (D // 6) channels each (44 / 42 / 42 for D = 128). Each part rotates consecutive
channel pairs (2i, 2i+1), as the complex number x_2i + i x_2i+1, by ``pos * theta ** (-2i / d_part)``
(one complex multiply, as Wan's ``rope_apply``). Positions are explicit tensors,
so callers choose temporal positions freely: teacher forcing repeats them for the noisy
chunks, and the KV cache re-assigns them inside its window (see ``kv_cache.py``).
"""

from __future__ import annotations

import torch

__all__ = ["rope_split", "rope_freqs", "apply_rope"]


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of (t, h, w) in one head: Wan's split."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"RoPE needs an even head dim >= 6, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (P, dim / 2)


def rope_freqs(
    frame_positions: torch.Tensor, height: int, width: int, head_dim: int, theta: float = 10000.0
) -> torch.Tensor:
    """The rotations cos + i sin of every token of a (frames, height, width) grid.

    Args:
        frame_positions: (F,) temporal index of each frame.
    Returns:
        (F * height * width, head_dim // 2) complex64, tokens in (f, h, w) order; angles in
        float64, cos and sin rounded to float32.
    """
    d_t, d_h, d_w = rope_split(head_dim)
    device = frame_positions.device
    num_frames = frame_positions.numel()
    a_t = _axis_angles(frame_positions, d_t, theta)  # (F, d_t/2)
    a_h = _axis_angles(torch.arange(height, device=device), d_h, theta)  # (H, d_h/2)
    a_w = _axis_angles(torch.arange(width, device=device), d_w, theta)  # (W, d_w/2)
    angles = torch.cat(
        [
            a_t[:, None, None, :].expand(num_frames, height, width, -1),
            a_h[None, :, None, :].expand(num_frames, height, width, -1),
            a_w[None, None, :, :].expand(num_frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(num_frames * height * width, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it is float64: the model's "fp32 math" never lowers precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, S, H, D) by freqs (S, D/2) from :func:`rope_freqs`; fp32 math, x's dtype out.

    (x_2i + i x_2i+1)(cos + i sin) is (x_2i cos - x_2i+1 sin) + i (x_2i sin + x_2i+1 cos): the
    real-valued rotation, in one op instead of six (to float rounding: a fused multiply-add).
    ``freqs`` may also be the table's real view (S, D/2, 2) (``torch.view_as_real``): the six-op
    form then, for compiled code (inductor makes no code for complex tensors; it fuses the six ops).
    """
    if not freqs.is_complex():
        x0, x1 = at_least_fp32(x).unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, H, D/2) each
        cos, sin = freqs[None, :, None].unbind(-1)  # (1, S, 1, D/2) each
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).to(x.dtype)
    x_c = torch.view_as_complex(at_least_fp32(x).contiguous().unflatten(-1, (-1, 2)))  # (B, S, H, D/2)
    return torch.view_as_real(x_c * freqs[None, :, None, :]).flatten(-2).to(x.dtype)
