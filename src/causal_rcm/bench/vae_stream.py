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

Compilation: :meth:`StreamingWanDecoder.compile` runs the decoder's per-frame forward through
``torch.compile`` once the feature cache is in its steady state (from the third latent frame
on: the first two see an empty cache and Wan's ``"Rep"`` marker, and stay eager), so it
compiles once or twice in a decoder's lifetime, not per frame or per video. Dynamo traces the
whole per-frame forward, cache updates included, into one graph; Inductor fuses each RMS norm
with its SiLU and the cache concatenation with the causal padding, the memory-bound passes over
full-resolution activations between the convolutions.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["StreamingWanDecoder"]

# Latent frames after which the decoder's feature cache holds a tensor in every slot (Wan's
# temporal upsamplers mark their first frame "Rep" and fill their slot on the second): from then
# on every frame takes the same path, so a compiled forward is traced once, or twice where the first
# compiled frame's caches (written eagerly) have other strides than those of the compiled frames after it.
_STEADY_FRAMES = 2


class StreamingWanDecoder:
    """Decode a latent stream incrementally. ``reset()`` starts a new video."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self._first_kw = "first_chunk" in inspect.signature(vae.decoder.forward).parameters
        self._hooks: list = []
        self._compiled = None
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

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def compile(self, enabled: bool = True, **options) -> None:
        """Decode steady-state frames with ``torch.compile(decoder.forward, **options)`` (``enabled``) or eagerly; same outputs."""
        self._compiled = torch.compile(self.vae.decoder.forward, dynamic=False, **options) if enabled else None

    def reset(self) -> None:
        self.vae.clear_cache()
        self._frames = 0  # latent frames decoded since the last reset

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
            kwargs = {"first_chunk": True} if self._first_kw and self._frames == 0 else {}
            forward = self._compiled if self._compiled is not None and self._frames >= _STEADY_FRAMES else vae.decoder
            # contiguous: a slice's strides depend on how many frames this call got, and a compiled forward guards on them
            outs.append(forward(x[:, :, i : i + 1].contiguous(), feat_cache=vae._feat_map, feat_idx=vae._conv_idx, **kwargs))
            self._frames += 1
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0)


def _channels_last_input(module, args):
    """Forward pre-hook: a 3D convolution's input in channels-last layout (a no-op when it is already)."""
    return (args[0].contiguous(memory_format=torch.channels_last_3d), *args[1:])
