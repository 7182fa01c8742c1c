"""UMT5 as a :class:`~causal_rcm.data.text.TextEncoder`: Wan2.1's text encoder (transformers' ``UMT5EncoderModel`` and
its tokenizer).

**Context.** As Wan (``T5EncoderModel.__call__`` with the model's zero padding to ``text_len``) and diffusers'
``WanPipeline._get_t5_prompt_embeds``: each prompt is cleaned (ftfy's ``fix_text`` when ftfy is installed, HTML
entities unescaped twice, runs of white space made one space), tokenized with ``</s>`` appended, padded (or cut) to
``text_len`` tokens (Wan: 512), encoded with the attention mask, and the states past each prompt's tokens are
set to zero. A prompt longer than ``text_len`` tokens is cut, as Wan does.

**Loading.** :func:`load_umt5` reads a transformers ``text_encoder/`` folder or Wan's original
``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own T5 module names; the config is read from the tensor shapes and
the names renamed by :func:`wan_t5_to_transformers`, a table inverted for the other direction). The tokenizer is a
folder (diffusers: ``tokenizer/``; Wan: ``google/umt5-xxl/``). transformers is imported when an encoder is first
loaded: it costs seconds, and the shapes world never needs it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from causal_rcm.errors import CheckpointError, UserError
from causal_rcm.limits import ranged
from causal_rcm.models.adapters import read_component_config, read_tensors

try:
    import ftfy
except ImportError:  # optional, as in Wan and diffusers: it repairs mis-decoded text
    ftfy = None

__all__ = ["UMT5Spec", "UMT5TextEncoder", "clean_prompt", "load_tokenizer", "load_umt5", "read_umt5_config",
           "transformers_to_wan_t5", "wan_t5_to_transformers"]


@dataclass(frozen=True)
class UMT5Spec:
    """A checkpoint's UMT5 text encoder: ``path`` (a transformers folder or Wan's original .pth) and ``tokenizer``
    (a folder), relative to the checkpoint folder (or absolute); contexts of ``text_len`` tokens."""

    kind: ClassVar[str] = "umt5"
    path: str = field(default="text_encoder", metadata={"component_path": True})
    tokenizer: str = field(default="tokenizer", metadata={"component_path": True})
    text_len: int = ranged(512, 1, 4096)  # Wan: 512


def clean_prompt(text: str) -> str:
    """A prompt as Wan's tokenizer wrapper and diffusers' ``WanPipeline`` clean it (module docstring)."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------- Wan's names <-> transformers'
_T5_BLOCK = {  # inside Wan's "blocks.<i>." and transformers' "encoder.block.<i>."
    "norm1.weight": "layer.0.layer_norm.weight",
    **{f"attn.{n}.weight": f"layer.0.SelfAttention.{n}.weight" for n in "qkvo"},
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # Wan: fc1(x) * gelu(gate(x)); HF: gelu(wi_0 x) * wi_1 x
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_T5_GLOBAL = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_TIED = "encoder.embed_tokens.weight"  # transformers' encoder embedding is `shared`, listed twice in its state dict


def _rename(state: dict[str, torch.Tensor], block: dict[str, str], glob: dict[str, str], prefixes: tuple[str, str],
            target: str) -> dict[str, torch.Tensor]:
    pattern = re.compile(re.escape(prefixes[0]) + r"(\d+)\.(.+)")
    out = {}
    for key, value in state.items():
        match = pattern.fullmatch(key)
        if match and match.group(2) in block:
            out[f"{prefixes[1]}{match.group(1)}.{block[match.group(2)]}"] = value
        elif key in glob:
            out[glob[key]] = value
        else:
            raise CheckpointError(f"text encoder tensor {key!r} has no equivalent in {target}'s layout")
    return out


def wan_t5_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's T5 encoder state dict to ``UMT5EncoderModel``'s names (the tied embedding under both its names)."""
    out = _rename(state, _T5_BLOCK, _T5_GLOBAL, ("blocks.", "encoder.block."), "transformers")
    if "shared.weight" in out:
        out[_TIED] = out["shared.weight"]
    return out


def transformers_to_wan_t5(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``UMT5EncoderModel`` state dict to Wan's T5 encoder names."""
    state = {k: v for k, v in state.items() if k != _TIED}
    invert = lambda table: {v: k for k, v in table.items()}  # noqa: E731
    return _rename(state, invert(_T5_BLOCK), invert(_T5_GLOBAL), ("encoder.block.", "blocks."), "Wan")


def _config_from_wan_state(state: dict[str, torch.Tensor], source: Path) -> dict:
    """The transformers ``UMT5Config`` fields of Wan's T5 encoder, from its tensor shapes (Wan: relative positions
    bucketed up to 128, gated tanh-GELU, as UMT5)."""
    if "pos_embedding.embedding.weight" in state:
        raise CheckpointError(f"{source}: a T5 with one shared position embedding is not UMT5 (each layer has its own)")
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        fields = {
            "vocab_size": vocab, "d_model": d_model, "d_kv": state["blocks.0.attn.q.weight"].shape[0] // heads,
            "d_ff": state["blocks.0.ffn.fc1.weight"].shape[0], "num_heads": heads, "relative_attention_num_buckets": buckets,
            "num_layers": 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")),
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source} is not a Wan UMT5 encoder state dict (missing {exc})") from None
    return {"model_type": "umt5", "feed_forward_proj": "gated-gelu", "relative_attention_max_distance": 128,
            "layer_norm_epsilon": 1e-6, **fields}


def read_umt5_config(path: Path) -> dict:
    """The config of the UMT5 encoder at ``path`` (a transformers folder's config.json, or inferred from Wan's
    original .pth, read without loading its tensors); CheckpointError if there is none."""
    return read_component_config(path, field="model_type", value="umt5", what="UMT5 text encoder",
                                 infer=_config_from_wan_state)


def load_umt5(path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Any:
    """transformers' ``UMT5EncoderModel`` from a folder or Wan's original file, frozen, in eval mode, in ``dtype``
    (None: as stored)."""
    try:
        from transformers import UMT5Config, UMT5EncoderModel
    except ImportError:
        raise UserError("the UMT5 text encoder needs transformers: pip install 'causal-rcm[wan]'") from None
    path = Path(path)
    config = read_umt5_config(path)
    if path.is_dir():
        try:
            model = UMT5EncoderModel.from_pretrained(path, dtype=dtype or "auto", local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load the UMT5 encoder in {path}: {str(exc).splitlines()[0]}") from None
    else:
        state = read_tensors(path)
        model = UMT5EncoderModel(UMT5Config(**config)).to(dtype or next(iter(state.values())).dtype)  # as stored: Wan's is bf16
        try:
            model.load_state_dict(wan_t5_to_transformers(state), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not match a UMT5 encoder of its shapes: {str(exc).splitlines()[0]}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_tokenizer(path: Path) -> Any:
    """The tokenizer in the folder ``path`` (never the hub)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("the UMT5 text encoder needs transformers: pip install 'causal-rcm[wan]'") from None
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"tokenizer folder not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot load the tokenizer in {path}: {str(exc).splitlines()[0]}") from None


class UMT5TextEncoder(nn.Module):
    """Frozen UMT5: ``prompts -> (context float32 [B, text_len, d_model], mask bool [B, text_len])`` (module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, text_len: int = 512) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._text_len = int(text_len)

    @classmethod
    def from_pretrained(cls, path: Path, tokenizer: Path, *, text_len: int = 512, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> UMT5TextEncoder:
        return cls(load_umt5(path, device=device, dtype=dtype), load_tokenizer(tokenizer), text_len)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def text_len(self) -> int:
        return self._text_len

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (B strings) -> ``context`` ``[B, text_len, d_model]``, ``mask`` ``[B, text_len]``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        device = self.model.get_input_embeddings().weight.device
        ids, attention = tokens.input_ids.to(device), tokens.attention_mask.to(device)  # (B, L)
        states = self.model(ids, attention).last_hidden_state  # (B, L, D)
        lengths = attention.gt(0).sum(dim=1)  # (B,): tokens of each prompt, </s> included
        mask = torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]  # (B, L)
        return states.float() * mask[..., None], mask
