"""Chunk-by-chunk decoding with diffusers' ``AutoencoderKLWan`` and its causal feature cache.

Wan's VAE decodes latent frames one at a time through causal 3D convolutions that keep a cache
of their last input frames (``_feat_map``); ``AutoencoderKLWan.decode`` clears that cache, runs
every frame, and clears it again, so it can only decode a whole video. A stream instead keeps
the cache between calls: :meth:`StreamingWanDecoder.decode` takes the next latent frames and
returns their pixels (4 per latent frame, 1 for the very first), exactly what a whole-video
decode would have produced for them (tested against ``AutoencoderKLWan.decode``).
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["StreamingWanDecoder"]


class StreamingWanDecoder:
    """Decode a latent stream incrementally. ``reset()`` starts a new video."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self._first_kw = "first_chunk" in inspect.signature(vae.decoder.forward).parameters
        self.reset()

    def reset(self) -> None:
        self.vae.clear_cache()
        self._started = False

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, f, h, w) latents (the VAE's own scale) -> (B, 3, frames, H, W) pixels in [-1, 1]."""
        vae = self.vae
        if vae.config.patch_size is not None:
            raise NotImplementedError("patchified Wan VAEs (Wan2.2) are not supported by the streaming decoder")
        x = vae.post_quant_conv(latents)
        outs = []
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            kwargs = {"first_chunk": True} if self._first_kw and not self._started else {}
            outs.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs))
            self._started = True
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0)
