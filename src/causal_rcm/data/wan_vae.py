"""Wan2.1's VAE as a :class:`~causal_rcm.data.codec.VideoCodec`: diffusers' ``AutoencoderKLWan``, latents normalised
per channel, decoded chunk by chunk with its causal feature cache.

**Normalisation.** Wan's model sees ``z = (mu - mean) / std`` per latent channel, ``mu`` the VAE posterior's mean and
``mean``, ``std`` the VAE config's ``latents_mean`` / ``latents_std`` (Wan2.1's 16-channel statistics, which are also
``AutoencoderKLWan``'s defaults); decoding inverts it, ``vae.decode(z * std + mean)``, as diffusers' ``WanPipeline``.
Frames: the first latent frame holds one frame, every later one four (``1 + 4 (F' - 1)`` frames).

**Loading.** :func:`load_wan_vae` reads a diffusers ``vae/`` folder or Wan's original ``Wan2.1_VAE.pth``, whose
architecture is read from its tensor shapes and whose names are renamed by :func:`wan_vae_to_diffusers` (a table
built from the architecture, inverted for the other direction, so round trips are exact). diffusers is imported
when a VAE is first loaded: it costs seconds, and the shapes world never needs it.

**Streaming.** Wan's VAE decodes latent frames one at a time through causal 3D convolutions that keep a cache
of their last input frames (``feat_cache``); ``AutoencoderKLWan.decode`` clears that cache, runs every frame, and
clears it again, so it can only decode a whole video. A stream instead keeps the cache between calls:
:meth:`StreamingWanDecoder.decode` takes the next latent frames and returns their pixels, exactly what a
whole-video decode would have produced for them (tested against ``AutoencoderKLWan.decode``). Each decoder keeps
its own cache, so streams sharing one VAE (the server's) do not disturb each other.

Memory format: :meth:`StreamingWanDecoder.use_channels_last` stores the 3D convolutions' weights
channels-last (NDHWC) and hands every convolution its input in that layout, the layout in which
cuDNN's tensor-core kernels take 3D convolutions without transposing; whether that is faster on
a given GPU is measured (``causal-rcm bench stream`` times both and keeps the faster).

Tiling (``StreamingWanDecoder(vae, tiled=True)``, the ``--low-memory`` preset): frames larger than the VAE's tile
(``vae.tile_sample_min_height`` / ``_width``, 256 px by default; ``vae.enable_tiling`` sets them) are decoded in
overlapping spatial tiles (stride ``tile_sample_stride_*``, 192 px), each with its own feature cache kept across
chunks, and blended linearly over the overlap, the upper and left neighbours already blended, as
``AutoencoderKLWan.tiled_decode`` does for a whole video (tested equal to it): the activations of one tile instead
of a whole frame.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from causal_rcm.errors import CheckpointError, UserError
from causal_rcm.models.adapters import read_component_config, read_tensors

__all__ = [
    "StreamingWanDecoder", "WanVAECodec", "WanVAESpec", "diffusers_vae_to_wan", "load_wan_vae", "read_vae_config",
    "wan_vae_to_diffusers",
]

WAN_LATENT_CHANNELS = 16  # Wan2.1's VAE; diffusers' AutoencoderKLWan defaults hold its latent statistics


@dataclass(frozen=True)
class WanVAESpec:
    """A checkpoint's Wan VAE: ``path``, a diffusers ``vae/`` folder or an original ``Wan2.1_VAE.pth``, relative to
    the checkpoint folder (or absolute)."""

    kind: ClassVar[str] = "wan-vae"
    path: str = field(default="vae", metadata={"component_path": True})


# --------------------------------------------------------------------------- Wan's names <-> diffusers'
# A Wan residual block is ``residual`` = (RMS norm, SiLU, conv, RMS norm, SiLU, dropout, conv) + ``shortcut``.
_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2", "shortcut": "conv_shortcut"}
_RESAMPLE = ("resample.1", "time_conv")  # the same names in both


def _vae_renames(levels: int, num_res_blocks: int) -> dict[str, str]:
    """Module paths, Wan's -> diffusers', of a Wan VAE with ``levels`` resolutions of ``num_res_blocks`` blocks.

    Wan's encoder and decoder keep their stages in one flat list (``downsamples``, ``upsamples``): per
    resolution its residual blocks (the decoder one more), then a resampler, except after the last resolution. diffusers keeps
    the encoder's list and groups the decoder's per resolution (``up_blocks.i.resnets.j``, ``up_blocks.i.upsamplers.0``).
    """
    table = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        table |= {f"{part}.conv1": f"{part}.conv_in", f"{part}.head.0": f"{part}.norm_out", f"{part}.head.2": f"{part}.conv_out"}
        for wan, ours in ((0, "resnets.0"), (2, "resnets.1")):
            table |= {f"{part}.middle.{wan}.{a}": f"{part}.mid_block.{ours}.{b}" for a, b in _RESIDUAL.items()}
        table |= {f"{part}.middle.1.{n}": f"{part}.mid_block.attentions.0.{n}" for n in ("norm", "to_qkv", "proj")}
    down = up = 0
    for level in range(levels):
        for _ in range(num_res_blocks):
            table |= {f"encoder.downsamples.{down}.{a}": f"encoder.down_blocks.{down}.{b}" for a, b in _RESIDUAL.items()}
            down += 1
        for j in range(num_res_blocks + 1):
            table |= {f"decoder.upsamples.{up}.{a}": f"decoder.up_blocks.{level}.resnets.{j}.{b}" for a, b in _RESIDUAL.items()}
            up += 1
        if level < levels - 1:
            table |= {f"encoder.downsamples.{down}.{n}": f"encoder.down_blocks.{down}.{n}" for n in _RESAMPLE}
            table |= {f"decoder.upsamples.{up}.{n}": f"decoder.up_blocks.{level}.upsamplers.0.{n}" for n in _RESAMPLE}
            down, up = down + 1, up + 1
    return table


def _rename(state: dict[str, torch.Tensor], table: dict[str, str], target: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module not in table:
            raise CheckpointError(f"VAE tensor {key!r} has no equivalent in {target}'s layout")
        out[f"{table[module]}.{leaf}"] = value
    return out


def wan_vae_to_diffusers(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Rename an original Wan VAE state dict to ``AutoencoderKLWan``'s names (``config``: its diffusers config)."""
    return _rename(state, _vae_renames(len(config["dim_mult"]), config["num_res_blocks"]), "diffusers")


def diffusers_vae_to_wan(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKLWan`` state dict to the original Wan VAE's names (``config``: its diffusers config)."""
    table = _vae_renames(len(config["dim_mult"]), config["num_res_blocks"])
    return _rename(state, {v: k for k, v in table.items()}, "Wan")


_DOWN_RESAMPLE = re.compile(r"encoder\.downsamples\.(\d+)\.resample\.1\.weight")


def _config_from_wan_state(state: dict[str, torch.Tensor], source: Path) -> dict:
    """The diffusers config of an original Wan VAE, from its tensor shapes."""
    try:
        base_dim = state["encoder.conv1.weight"].shape[0]
        z_dim = state["conv2.weight"].shape[0]
        resamplers = sorted(int(m.group(1)) for k in state if (m := _DOWN_RESAMPLE.fullmatch(k)))
        if not resamplers:
            raise CheckpointError(f"{source} is not a Wan2.1 VAE state dict (its encoder never downsamples)")
        num_res_blocks = resamplers[0]  # the first level's residual blocks come before its resampler
        stride = num_res_blocks + 1
        levels = len(resamplers) + 1
        last_blocks = [level * stride + num_res_blocks - 1 for level in range(levels)]  # each level's last residual block
        dim_mult = [state[f"encoder.downsamples.{k}.residual.6.weight"].shape[0] // base_dim for k in last_blocks]
        temporal = [f"encoder.downsamples.{k}.time_conv.weight" in state for k in resamplers]
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{source} is not a Wan2.1 VAE state dict (missing {exc})") from None
    if any(".to_qkv." in k and ".middle." not in k for k in state):
        raise CheckpointError(f"{source}: a Wan VAE with attention outside its middle blocks is not supported")
    if z_dim != WAN_LATENT_CHANNELS:
        raise CheckpointError(
            f"{source} makes {z_dim}-channel latents; an original Wan VAE file carries no latent statistics, and "
            f"only Wan2.1's ({WAN_LATENT_CHANNELS} channels) are known: use a diffusers vae/ folder with latents_mean/std"
        )
    return {"base_dim": base_dim, "z_dim": z_dim, "dim_mult": dim_mult, "num_res_blocks": num_res_blocks,
            "attn_scales": [], "temperal_downsample": temporal}


def read_vae_config(path: Path) -> dict:
    """The diffusers config of the Wan VAE at ``path`` (a ``vae/`` folder's config.json, or inferred from an original
    ``.pth``'s tensor shapes, read without loading them), without its weights; CheckpointError if there is none."""
    return read_component_config(path, field="_class_name", value="AutoencoderKLWan", what="Wan VAE",
                                 infer=_config_from_wan_state)


def load_wan_vae(path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Any:
    """diffusers' ``AutoencoderKLWan`` from a ``vae/`` folder or an original Wan VAE file, frozen, in eval mode, in
    ``dtype`` (None: as stored)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise UserError("Wan's VAE needs diffusers: pip install 'causal-rcm[wan]'") from None
    path = Path(path)
    config = read_vae_config(path)
    if path.is_dir():
        try:
            vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the Wan VAE in {path}: {str(exc).splitlines()[0]}") from None
    else:
        state = read_tensors(path)
        vae = AutoencoderKLWan(**config).to(dtype or next(iter(state.values())).dtype)  # as stored
        try:
            vae.load_state_dict(wan_vae_to_diffusers(state, config), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not match a Wan VAE of its shapes: {str(exc).splitlines()[0]}") from None
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


# Latent frames after which the decoder's feature cache holds a tensor in every slot (Wan's
# temporal upsamplers mark their first frame "Rep" and fill their slot on the second): from then
# on every frame takes the same path, so a compiled forward is traced once, or twice where the first
# compiled frame's caches (written eagerly) have other strides than those of the compiled frames after it.
_STEADY_FRAMES = 2


class StreamingWanDecoder:
    """Decode a latent stream of one video incrementally, in the VAE's own scale (see the module docstring);
    ``reset()`` starts a new video. ``tiled``: decode frames larger than the VAE's tile in spatial tiles."""

    def __init__(self, vae, *, tiled: bool = False) -> None:
        self.vae = vae
        self.tiled = tiled
        self._first_kw = "first_chunk" in inspect.signature(vae.decoder.forward).parameters
        # One cache slot per causal convolution (every one a Conv3d); any surplus slot stays unused.
        self._slots = sum(isinstance(m, torch.nn.Conv3d) for m in vae.decoder.modules())
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
        self._cache: list = [None] * self._slots  # this stream's feature cache (not the VAE's own)
        self._tile_caches: dict[tuple[int, int], list] = {}  # tiled: one feature cache per tile
        self._frames = 0  # latent frames decoded since the last reset

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, f, h, w) latents (the VAE's own scale) -> (B, 3, frames, H, W) pixels in [-1, 1]."""
        vae = self.vae
        if vae.config.patch_size is not None:
            raise NotImplementedError("patchified Wan VAEs (Wan2.2) are not supported by the streaming decoder")
        ratio = vae.spatial_compression_ratio
        H, W = latents.shape[3] * ratio, latents.shape[4] * ratio
        if self.tiled and (H > vae.tile_sample_min_height or W > vae.tile_sample_min_width):
            out = self._decode_tiles(latents)[:, :, :, :H, :W]
        else:
            out = self._run(latents, self._cache, compiled=True)
        self._frames += latents.shape[2]
        return out.clamp(-1.0, 1.0)

    def _run(self, latents: torch.Tensor, cache: list, compiled: bool = False) -> torch.Tensor:
        """The frames of ``latents`` decoded one latent frame at a time through ``cache`` (B, 3, frames, H', W')."""
        x = self.vae.post_quant_conv(latents)
        outs = []
        for i in range(x.shape[2]):
            n = self._frames + i
            kwargs = {"first_chunk": True} if self._first_kw and n == 0 else {}
            steady = compiled and self._compiled is not None and n >= _STEADY_FRAMES
            forward = self._compiled if steady else self.vae.decoder
            # contiguous: a slice's strides depend on how many frames this call got, and a compiled forward guards on them
            outs.append(forward(x[:, :, i : i + 1].contiguous(), feat_cache=cache, feat_idx=[0], **kwargs))
        return torch.cat(outs, dim=2)

    def _decode_tiles(self, latents: torch.Tensor) -> torch.Tensor:
        """Overlapping spatial tiles, each through its own cache, blended (module docstring); (B, 3, frames, >= H, >= W)."""
        vae, ratio = self.vae, self.vae.spatial_compression_ratio
        tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio  # latent pixels
        step_h, step_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
        keep_h, keep_w = vae.tile_sample_stride_height, vae.tile_sample_stride_width  # pixels each tile contributes
        blend_h, blend_w = vae.tile_sample_min_height - keep_h, vae.tile_sample_min_width - keep_w
        done: dict[tuple[int, int], torch.Tensor] = {}
        rows = []
        for a, i in enumerate(range(0, latents.shape[3], step_h)):
            row = []
            for b, j in enumerate(range(0, latents.shape[4], step_w)):
                cache = self._tile_caches.setdefault((a, b), [None] * self._slots)
                tile = self._run(latents[:, :, :, i : i + tile_h, j : j + tile_w], cache)  # (B, 3, frames, h', w')
                if a:
                    tile = _blend(done[a - 1, b], tile, blend_h, dim=3)
                if b:
                    tile = _blend(done[a, b - 1], tile, blend_w, dim=4)
                done[a, b] = tile
                row.append(tile[:, :, :, :keep_h, :keep_w])
            rows.append(torch.cat(row, dim=4))
        return torch.cat(rows, dim=3)


def _blend(before: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """``tile`` with its first ``extent`` rows (dim 3) or columns (dim 4) ramped linearly from the last ones of
    ``before``, its upper or left neighbour: weight ``k / extent`` on the tile at offset k."""
    extent = min(before.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return tile
    shape = [1] * tile.ndim
    shape[dim] = extent
    w = (torch.arange(extent, device=tile.device, dtype=torch.float32) / extent).view(shape).to(tile.dtype)
    out = tile.clone()
    out.narrow(dim, 0, extent).copy_(before.narrow(dim, before.shape[dim] - extent, extent) * (1 - w) + tile.narrow(dim, 0, extent) * w)
    return out


def _channels_last_input(module, args):
    """Forward pre-hook: a 3D convolution's input in channels-last layout (a no-op when it is already)."""
    return (args[0].contiguous(memory_format=torch.channels_last_3d), *args[1:])


class WanVAECodec:
    """Wan2.1's VAE as a codec: normalised latents (module docstring), encoded to the posterior's mean.

    Runs on the VAE's device and dtype; takes and returns tensors on any device, latents and videos in float32
    on the VAE's device.
    """

    def __init__(self, vae: Any) -> None:
        cfg = vae.config
        if cfg.patch_size is not None:
            raise UserError("patchified Wan VAEs (Wan2.2) are not supported: use Wan2.1's VAE")
        if list(cfg.temperal_downsample).count(True) != 2:
            raise UserError(f"a Wan VAE compresses time 4x; this one downsamples time {list(cfg.temperal_downsample)}")
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise UserError(f"the Wan VAE's latents_mean / latents_std do not have its {cfg.z_dim} channels")
        self.vae = vae.eval().requires_grad_(False)
        weight = next(vae.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)

    @classmethod
    def from_pretrained(cls, path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> WanVAECodec:
        """The codec of the VAE at ``path`` (:func:`load_wan_vae`)."""
        return cls(load_wan_vae(path, device=device, dtype=dtype))

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.vae.config.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 4

    def video_frames(self, latent_frames: int) -> int:
        return 1 + 4 * (latent_frames - 1) if latent_frames > 0 else 0

    def latent_frames(self, frames: int) -> int:
        return 1 + -(-(frames - 1) // 4) if frames > 0 else 0

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.spatial_factor
        if num_frames < 1 or (num_frames - 1) % 4:
            raise UserError(f"Wan's VAE encodes 1 + 4k frames (1, 5, 9, ...), not {num_frames}")
        if height % f or width % f:
            raise UserError(f"Wan's VAE encodes frames whose sides are multiples of {f}, not {height}x{width}")
        return self.latent_channels, self.latent_frames(num_frames), height // f, width // f

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 1 + 4k, H, W]`` in ``[-1, 1]`` -> ``(mu - mean) / std`` ``[B, C, 1 + k, H / 8, W / 8]``."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise UserError(f"Wan's VAE encodes videos [B, 3, F, H, W], got shape {list(video.shape)}")
        self.latent_shape(*video.shape[2:])
        mu = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()
        return (mu.float() - self.mean) / self.std

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> the VAE's own scale, on its device and in its dtype."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise UserError(f"Wan's VAE decodes latents [B, {self.latent_channels}, F, h, w], got shape {list(latents.shape)}")
        return (latents.to(self.device, torch.float32) * self.std + self.mean).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, n, h, w]`` -> video ``[B, 3, 1 + 4 (n - 1), 8 h, 8 w]`` in ``[-1, 1]``."""
        return self.vae.decode(self.denormalise(latents)).sample.float()

    def stream_decoder(self, *, tiled: bool = False) -> _WanStreamDecoder:
        """A fresh decoder for one stream; ``tiled``: in spatial tiles (module docstring)."""
        return _WanStreamDecoder(self, tiled=tiled)


class _WanStreamDecoder:
    """One stream's decoder of normalised latents: :class:`StreamingWanDecoder` with its own cache."""

    def __init__(self, codec: WanVAECodec, *, tiled: bool = False) -> None:
        self._codec = codec
        self._decoder = StreamingWanDecoder(codec.vae, tiled=tiled)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decoder.decode(self._codec.denormalise(latents)).float()
