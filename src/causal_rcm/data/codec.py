"""Video codecs: the :class:`VideoCodec` interface, and the pixel codec, videos to latents by pixel-unshuffle.

A codec turns videos ``[B, 3, F, H, W]`` in ``[-1, 1]`` into the latents ``[B, C, F', h, w]`` a model is trained
on (normalised to about zero mean and unit variance) and back. Streams decode chunk by chunk with the decoder
:meth:`VideoCodec.stream_decoder` returns, whose chunks, concatenated, are the whole video's decode: causal
codecs (Wan's VAE) keep state between chunks there. Implementations: :class:`PixelCodec` (the shapes world and
Atari episodes) and ``data.wan_vae.WanVAECodec`` (Wan2.1's VAE); ``data.components.make_codec`` builds the one a
checkpoint's pipeline section names.

The pixel codec is the embedded default's stand-in for the Wan VAE, exactly invertible.

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

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from causal_rcm.errors import UserError
from causal_rcm.limits import ranged

__all__ = ["PixelCodec", "PixelCodecSpec", "StreamDecoder", "VideoCodec"]


class StreamDecoder(Protocol):
    """Decodes one stream's latents chunk by chunk; the chunks' frames, concatenated, are the whole decode."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The next latent frames ``[B, C, f, h, w]`` (normalised) -> their frames ``[B, 3, f', H, W]`` in ``[-1, 1]``."""
        ...


class VideoCodec(Protocol):
    """Videos <-> normalised latents (see the module docstring).

    ``spatial_factor``: pixels per latent pixel along each side; ``temporal_factor``: frames per latent frame (Wan's
    VAE: 4, except its first latent frame, which holds one frame, see :meth:`video_frames`).
    """

    @property
    def latent_channels(self) -> int: ...

    @property
    def spatial_factor(self) -> int: ...

    @property
    def temporal_factor(self) -> int: ...

    def video_frames(self, latent_frames: int) -> int:
        """Frames that ``latent_frames`` latent frames decode to."""
        ...

    def latent_frames(self, frames: int) -> int:
        """Latent frames that decode to at least ``frames`` frames."""
        ...

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F', h, w)`` of the latents of a ``[3, num_frames, height, width]`` video (UserError if it has no latents)."""
        ...

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, F, H, W]`` in ``[-1, 1]`` -> normalised latents ``[B, C, F', h, w]``."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, F', h, w]`` -> video ``[B, 3, F, H, W]`` (about ``[-1, 1]``), float32."""
        ...

    def stream_decoder(self, *, tiled: bool = False) -> StreamDecoder:
        """A fresh decoder for one stream; ``tiled``: in spatial tiles, for memory, where the codec has any (the same
        frames to the tiles' blending)."""
        ...


@dataclass(frozen=True)
class PixelCodecSpec:
    """A checkpoint's pixel codec: pixel-unshuffle by ``factor``, ``frames`` frames packed per latent frame,
    latents normalised as ``(pixel - shift) * scale``."""

    kind: ClassVar[str] = "pixel"
    factor: int = ranged(1, 1, 64)
    frames: int = ranged(1, 1, 64)
    shift: float = ranged(0.0, -1e6, 1e6)
    scale: float = ranged(1.0, 0, 1e6, above=True)


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

    def video_frames(self, latent_frames: int) -> int:
        return latent_frames * self.frames

    def latent_frames(self, frames: int) -> int:
        return math.ceil(frames / self.frames)

    def stream_decoder(self, *, tiled: bool = False) -> PixelCodec:
        """The codec itself: pixels of one latent frame depend on that frame only (nothing to tile)."""
        return self

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
