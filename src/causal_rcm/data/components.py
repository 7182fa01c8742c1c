"""The one factory of codecs and text encoders: what a checkpoint's pipeline section names, by kind.

A pipeline section's ``codec`` and ``text`` are JSON objects ``{"kind": ..., **params}``; each kind's params are
the fields of its spec dataclass, which lives beside its implementation:

======== ============== ===================================================================
codec    ``pixel``      :class:`~causal_rcm.data.codec.PixelCodecSpec` (factor, frames, shift, scale)
codec    ``wan-vae``    :class:`~causal_rcm.data.wan_vae.WanVAESpec` (path)
text     ``toy``        :class:`~causal_rcm.data.text.ToyTextSpec` (dim, text_len, seed)
text     ``umt5``       :class:`~causal_rcm.data.umt5.UMT5Spec` (path, tokenizer, text_len)
======== ============== ===================================================================

A section without a kind names the shapes world's (``pixel``, ``toy``), as checkpoints did before there were others.
Params are checked by their fields' ranges (``limits.ranged``) where a pipeline section is read. Component paths
(fields marked ``component_path``) are relative to the checkpoint folder, or absolute.
The pipeline, the trainer's data sources, evaluation and the server build their codec and text encoder here
and see them only through the :class:`~causal_rcm.data.codec.VideoCodec` and
:class:`~causal_rcm.data.text.TextEncoder` interfaces.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from causal_rcm.data.codec import PixelCodec, PixelCodecSpec, VideoCodec
from causal_rcm.data.text import TextEncoder, ToyTextEncoder, ToyTextSpec
from causal_rcm.data.umt5 import UMT5Spec, UMT5TextEncoder, read_umt5_config
from causal_rcm.data.wan_vae import WanVAECodec, WanVAESpec, read_vae_config
from causal_rcm.errors import UserError
from causal_rcm.limits import show

__all__ = ["CODECS", "TEXT_ENCODERS", "CodecSpec", "TextSpec", "absolute", "codec_spec", "component_path", "latent_channels",
           "make_codec", "make_text_encoder", "relocated", "spec_dict", "text_dim", "text_spec"]

CodecSpec = PixelCodecSpec | WanVAESpec
TextSpec = ToyTextSpec | UMT5Spec
CODECS: dict[str, type] = {spec.kind: spec for spec in (PixelCodecSpec, WanVAESpec)}
TEXT_ENCODERS: dict[str, type] = {spec.kind: spec for spec in (ToyTextSpec, UMT5Spec)}


def _parse(kinds: dict[str, type], data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"the {what} must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind", next(iter(kinds)))
    if not isinstance(kind, str) or kind not in kinds:
        raise UserError(f"{what} kind {show(kind)} is not supported (only {', '.join(kinds)})")
    cls = kinds[kind]
    names = {f.name for f in dataclasses.fields(cls)}  # unknown keys are dropped: newer checkpoints stay readable
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise UserError(f"unreadable {what} {kind!r}: {exc}") from None


def codec_spec(data: Any) -> CodecSpec:
    """The codec spec of a pipeline section's ``codec`` object; UserError for an unknown kind or bad params."""
    return _parse(CODECS, data, "codec")


def text_spec(data: Any) -> TextSpec:
    """The text encoder spec of a pipeline section's ``text`` object; UserError for an unknown kind or bad params."""
    return _parse(TEXT_ENCODERS, data, "text encoder")


def spec_dict(spec: CodecSpec | TextSpec) -> dict:
    """The JSON object of a codec or text encoder spec (what :func:`codec_spec` / :func:`text_spec` read back)."""
    return {"kind": spec.kind, **dataclasses.asdict(spec)}


def component_path(root: str | Path | None, path: str) -> Path:
    """Where a component path of a checkpoint at ``root`` points (absolute paths stay as they are)."""
    where = Path(path).expanduser()
    return where if where.is_absolute() or root is None else Path(root) / where


def relocated(spec: Any, src: str | Path | None, dst: str | Path) -> Any:
    """``spec`` (of a checkpoint at ``src``) with its component paths valid for a checkpoint at ``dst``: relative
    where the component lies inside ``dst``, else absolute."""
    changes = {}
    for f in dataclasses.fields(spec):
        if f.metadata.get("component_path"):
            where = component_path(src, getattr(spec, f.name)).resolve()
            try:
                changes[f.name] = str(where.relative_to(Path(dst).resolve()))
            except ValueError:
                changes[f.name] = str(where)
    return dataclasses.replace(spec, **changes) if changes else spec


def absolute(spec: Any, root: str | Path | None) -> Any:
    """``spec`` (of a checkpoint at ``root``) with its component paths absolute: for a record kept elsewhere (the
    header of data shards made with the checkpoint's codec and text encoder)."""
    changes = {f.name: str(component_path(root, getattr(spec, f.name)).resolve())
               for f in dataclasses.fields(spec) if f.metadata.get("component_path")}
    return dataclasses.replace(spec, **changes) if changes else spec


def latent_channels(spec: CodecSpec, root: str | Path | None = None) -> int:
    """Channels of the latents the codec ``spec`` makes, from its config alone (nothing large is loaded)."""
    if isinstance(spec, PixelCodecSpec):
        return 3 * spec.frames * spec.factor**2
    return read_vae_config(component_path(root, spec.path))["z_dim"]


def text_dim(spec: TextSpec, root: str | Path | None = None) -> int:
    """Width of the context the text encoder ``spec`` makes, from its config alone (nothing large is loaded)."""
    if isinstance(spec, ToyTextSpec):
        return spec.dim
    return read_umt5_config(component_path(root, spec.path))["d_model"]


def make_codec(spec: CodecSpec, root: str | Path | None = None, *, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> VideoCodec:
    """The codec ``spec`` names, its files under ``root`` (the checkpoint folder); ``dtype`` None: as stored."""
    if isinstance(spec, PixelCodecSpec):
        return PixelCodec(spec.factor, shift=spec.shift, scale=spec.scale, frames=spec.frames)
    if isinstance(spec, WanVAESpec):
        return WanVAECodec.from_pretrained(component_path(root, spec.path), device=device, dtype=dtype)
    raise UserError(f"no codec for {spec!r}")


def make_text_encoder(spec: TextSpec, root: str | Path | None = None, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> TextEncoder:
    """The text encoder ``spec`` names, its files under ``root``; ``dtype`` None: as stored (the toy one: float32)."""
    if isinstance(spec, ToyTextSpec):
        return ToyTextEncoder(dim=spec.dim, text_len=spec.text_len, seed=spec.seed).to(device)
    if isinstance(spec, UMT5Spec):
        return UMT5TextEncoder.from_pretrained(
            component_path(root, spec.path), component_path(root, spec.tokenizer), text_len=spec.text_len,
            device=device, dtype=dtype,
        )
    raise UserError(f"no text encoder for {spec!r}")
