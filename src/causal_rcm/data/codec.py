"""Pixel codec: videos to latents by pixel-unshuffle, exactly invertible.

The embedded default's stand-in for the Wan VAE, with the same duck interface:
``encode(video [B, 3, F, H, W]) -> latents [B, C, F', H', W']``, ``decode`` back,
``latent_channels``, ``spatial_factor``, ``temporal_factor``.

Latent layout: channel ``((c * T + k) * f + i) * f + j`` of latent pixel ``(n, y, x)`` is colour
channel ``c`` of pixel ``(f y + i, f x + j)`` of frame ``T n + k``: spatially the order of
``torch.nn.functional.pixel_unshuffle``, so a ``1 x 2 x 2`` patch embedding of the latents
sees ``2 f x 2 f`` pixels. ``T`` (``frames``, default 1: ``F' = F``) packs consecutive frames
into the channels of one latent frame, as the Wan VAE compresses time 4x. Inside a latent
frame the order of its frames is then absolute (a channel index), so the direction of a motion
is a local feature of one token; with ``T = 1`` only attention over RoPE's relative temporal
positions can tell a video from its time reversal (``docs/results/shapes_direction.md``).

Scaling: ``latents = (unshuffle(video) - shift) * scale``. Both default to identity. The
shapes world's pixels have mean about -0.81 and std about 0.52 (mostly black background); set
``shift, scale`` from ``PixelCodec.fit`` to give a model zero-mean, unit-variance data, as the
Wan VAE's per-channel mean/std do.
"""

from __future__ import annotations

import torch

from causal_rcm.errors import UserError

__all__ = ["PixelCodec"]


class PixelCodec:
    """Pixel-unshuffle codec: spatial factor ``factor``, ``frames`` frames per latent frame, an affine latent scale."""

    def __init__(self, factor: int = 2, shift: float = 0.0, scale: float = 1.0, frames: int = 1):
        if factor < 1:
            raise UserError(f"pixel codec factor must be a positive integer, got {factor}")
        if frames < 1:
            raise UserError(f"pixel codec frames (per latent frame) must be a positive integer, got {frames}")
        if scale == 0:
            raise UserError("pixel codec scale must be non-zero")
        self.factor = int(factor)
        self.frames = int(frames)
        self.shift = float(shift)
        self.scale = float(scale)

    @property
    def spatial_factor(self) -> int:
        return self.factor

    @property
    def temporal_factor(self) -> int:
        return self.frames

    @property
    def latent_channels(self) -> int:
        return 3 * self.frames * self.factor**2

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F / T, H / f, W / f)`` of the latents of a ``[3, F, H, W]`` video."""
        self._check_size(height, width)
        self._check_frames(num_frames)
        return self.latent_channels, num_frames // self.frames, height // self.factor, width // self.factor

    def _check_frames(self, num_frames: int) -> None:
        if num_frames % self.frames:
            raise UserError(f"a {num_frames}-frame video cannot be packed {self.frames} frames to a latent frame: use a multiple of {self.frames}")

    def _check_size(self, height: int, width: int) -> None:
        if height % self.factor or width % self.factor:
            raise UserError(
                f"a {height}x{width} video cannot be pixel-unshuffled by {self.factor}: "
                f"use a height and width divisible by {self.factor}"
            )

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` ``[B, 3, F, H, W]`` in ``[-1, 1]`` -> latents ``[B, 3 T f^2, F/T, H/f, W/f]``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise UserError(f"pixel codec encodes videos [B, 3, F, H, W], got shape {list(video.shape)}")
        B, C, F, H, W = video.shape
        f, T = self.factor, self.frames
        self._check_size(H, W)
        self._check_frames(F)
        x = video.reshape(B, C, F // T, T, H // f, f, W // f, f)  # (B, C, n, k, h, i, w, j)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, C * T * f * f, F // T, H // f, W // f)  # (B, C T f f, n, h, w)
        return (x - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 3 T f^2, n, h, w]`` -> video ``[B, 3, n T, h f, w f]`` (exact inverse of ``encode``)."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise UserError(
                f"pixel codec decodes latents [B, {self.latent_channels}, F, h, w], got shape {list(latents.shape)}"
            )
        B, _, n, h, w = latents.shape
        f, T = self.factor, self.frames
        x = (latents / self.scale + self.shift).reshape(B, 3, T, f, f, n, h, w)  # (B, C, k, i, j, n, h, w)
        return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, 3, n * T, h * f, w * f)  # (B, C, n k, h i, w j)

    @staticmethod
    def fit(videos: torch.Tensor) -> tuple[float, float]:
        """``(shift, scale)`` = ``(mean, 1 / std)`` of a sample of videos: latents with zero mean, unit std."""
        mean, std = videos.float().mean().item(), videos.float().std().item()
        return mean, 1.0 / max(std, 1e-6)
