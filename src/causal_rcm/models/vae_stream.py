"""Chunk-by-chunk decoding with diffusers' ``AutoencoderKLWan`` and its causal feature cache.

Wan's VAE decodes latent frames one at a time through causal 3D convolutions that keep a cache
of their last input frames (``_feat_map``); ``AutoencoderKLWan.decode`` clears that cache, runs
every frame, and clears it again, so it can only decode a whole video. A stream instead keeps
the cache between calls: :meth:`StreamingWanDecoder.decode` takes the next latent frames and
returns their pixels (4 per latent frame, 1 for the very first), exactly what a whole-video
decode would have produced for them (tested against ``AutoencoderKLWan.decode``).

Memory format: :meth:`StreamingWanDecoder.use_channels_last` stores the 3D convolutions' weights
channels-last (NDHWC) and hands every convolution its input in that layout, the layout in which
cuDNN's tensor-core kernels take 3D convolutions without transposing; whether that is faster on
a given GPU is measured (``causal-rcm bench stream`` times both and keeps the faster).
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
        self._hooks: list = []
        self.reset()

    @property
    def channels_last(self) -> bool:
        return bool(self._hooks)

    def use_channels_last(self, enabled: bool = True) -> None:
        """Run the VAE's 3D convolutions channels-last (``enabled``) or in the default contiguous layout; same outputs."""
        if enabled == self.channels_last:
            return
        fmt = torch.channels_last_3d if enabled else torch.contiguous_format
        convs = [m for m in self.vae.modules() if isinstance(m, torch.nn.Conv3d)]
        for conv in convs:
            conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)
        if enabled:
            self._hooks = [conv.register_forward_pre_hook(_channels_last_input) for conv in convs]
        else:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []

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


def _channels_last_input(module, args):
    """Forward pre-hook: a 3D convolution's input in channels-last layout (a no-op when it is already)."""
    return (args[0].contiguous(memory_format=torch.channels_last_3d), *args[1:])
