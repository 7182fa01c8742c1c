"""Text encoders: the :class:`TextEncoder` interface, and a toy tokenizer and frozen encoder over the shapes world's
caption vocabulary.

A text encoder maps prompts to the context a model cross-attends to. Implementations: :class:`ToyTextEncoder`
and ``data.umt5.UMT5TextEncoder`` (Wan2.1's); ``data.components.make_text_encoder`` builds the one a checkpoint's
pipeline section names.

The toy encoder has the UMT5 encoder's interface: ``encoder(prompts)`` returns
``context [B, L, D]`` and ``attention_mask [B, L]`` (bool), with ``L = text_len`` and the
positions past each prompt filled with zeros, as Wan pads UMT5 outputs to ``text_len``.

Tokenisation: lower-case, words split at white space, ``","`` is a token of its own, a
final ``"."`` is dropped, and every prompt ends with ``</s>`` (as T5 appends EOS). So the
empty prompt ``""`` (the unconditional prompt of classifier-free guidance) is one ``</s>``
token and has a non-empty mask. Words outside the vocabulary raise ``UserError``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import torch
from torch import nn

from causal_rcm.data.shapes import DIRECTIONS, KINDS, PALETTE
from causal_rcm.errors import UserError, shorten
from causal_rcm.limits import MAX_SEED, ranged

__all__ = ["VOCABULARY", "TextEncoder", "ToyTextSpec", "ToyTokenizer", "ToyTextEncoder"]


class TextEncoder(Protocol):
    """Prompts -> ``context`` float32 ``[B, text_len, dim]`` and ``mask`` bool ``[B, text_len]``, zeros where the mask
    is False (past each prompt's tokens, as Wan pads UMT5's states)."""

    @property
    def dim(self) -> int: ...

    @property
    def text_len(self) -> int: ...

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class ToyTextSpec:
    """A checkpoint's toy text encoder: the shapes world's vocabulary, embedded by a table rebuilt from ``seed``."""

    kind: ClassVar[str] = "toy"
    dim: int = ranged(64, 2, 4096)  # its fixed convolution holds 5 dim^2 weights
    text_len: int = ranged(24, 1, 4096)
    seed: int = ranged(0, 0, MAX_SEED)


PAD, EOS = "<pad>", "</s>"
VOCABULARY: tuple[str, ...] = (
    PAD, EOS, ",", "a", "and", *PALETTE, *KINDS, "moves", *DIRECTIONS, "follows", "the", "actions",
)


class ToyTokenizer:
    """Word-level tokenizer over ``VOCABULARY``: id 0 is ``<pad>``, id 1 is ``</s>``."""

    pad_id, eos_id = 0, 1

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY):
        self.vocabulary = tuple(vocabulary)
        self._ids = {w: i for i, w in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @staticmethod
    def words(prompt: str) -> list[str]:
        """``"A red circle moves left, a ..."`` -> ``["a", "red", "circle", "moves", "left", ",", "a", ...]``."""
        return re.findall(r"[^\s,]+|,", prompt.lower().strip().rstrip("."))

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, ending with ``</s>``."""
        words = self.words(prompt)
        unknown = list(dict.fromkeys(w for w in words if w not in self._ids or w in (PAD, EOS)))
        if unknown:
            known = ", ".join(repr(w) for w in self.vocabulary if w not in (PAD, EOS))
            raise UserError(
                "prompt contains words outside the shapes-world vocabulary: "
                f"{', '.join(shorten(w, 40) for w in unknown[:5])}{', ...' if len(unknown) > 5 else ''} (known: {known})"
            )
        return [self._ids[w] for w in words] + [self.eos_id]

    def __call__(self, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad a batch: ids int64 ``[B, max_length]`` and mask bool ``[B, max_length]``."""
        ids = torch.full((len(prompts), max_length), self.pad_id, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            tokens = self.encode(prompt)
            if len(tokens) > max_length:
                raise UserError(
                    f"prompt {shorten(prompt)} has {len(tokens)} tokens (with </s>), more than the text length "
                    f"{max_length}: shorten it or raise text_len"
                )
            ids[b, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != self.pad_id


class ToyTextEncoder(nn.Module):
    """Deterministic, frozen toy text encoder: ``prompts -> (context [B, L, D], mask [B, L])``.

    ``h = E[ids] + P``; ``context = rms_norm(h + tanh(conv5(h)))`` on valid tokens, zeros on
    padding. ``E`` ``[V, D]`` are fixed Gaussian word embeddings, ``P`` ``[L, D]`` sinusoidal
    positions (so word order matters), ``conv5`` a fixed random 1-D convolution over the
    sequence with kernel 5 (so a word's vector depends on its neighbours: the colour is
    bound to its shape, the shape to its direction). All weights are buffers drawn from
    ``seed``: nothing trains, nothing needs saving, outputs are identical on every machine.
    Each valid token vector has unit RMS.
    """

    def __init__(self, dim: int = 64, text_len: int = 32, seed: int = 0, tokenizer: ToyTokenizer | None = None):
        super().__init__()
        if dim < 2 or text_len < 1:
            raise UserError(f"toy text encoder needs dim >= 2 and text_len >= 1, got dim {dim}, text_len {text_len}")
        self.tokenizer = tokenizer if tokenizer is not None else ToyTokenizer()
        self.dim, self.text_len, self.seed = dim, text_len, seed
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("embedding", torch.randn(self.tokenizer.vocab_size, dim, generator=g), persistent=False)
        self.register_buffer("conv_weight", torch.randn(dim, dim, 5, generator=g) / math.sqrt(5 * dim), persistent=False)
        pos = torch.arange(text_len, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        table = torch.zeros(text_len, dim)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
        self.register_buffer("position", table, persistent=False)

    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (B strings) -> ``context`` float32 ``[B, text_len, dim]``, ``mask`` bool ``[B, text_len]``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenizer(prompts, self.text_len)
        ids, mask = ids.to(self.embedding.device), mask.to(self.embedding.device)
        valid = mask[..., None].float()  # (B, L, 1)
        h = (self.embedding[ids] + self.position) * valid  # (B, L, D)
        mixed = nn.functional.conv1d(h.transpose(1, 2), self.conv_weight, padding=2).transpose(1, 2)  # (B, L, D)
        out = h + torch.tanh(mixed)
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6)
        return out * valid, mask
