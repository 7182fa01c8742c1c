"""Attention dispatch: one function, several interchangeable backends.

Layout everywhere is (B, H, S, D). Masks are :class:`~causal_rcm.kernels.masks.BlockSparseMask`
(or ``None`` for full attention). Backends:

* ``math``: pure torch, fp32 softmax, any mask; the numerical reference. Differentiable in
  both directions (reverse mode and ``torch.func.jvp``). Fully masked rows give zeros.
* ``sdpa``: ``F.scaled_dot_product_attention`` with a dense boolean mask (small sizes).
* ``flex``: FlexAttention with the block-sparse mask (compiled on CUDA; forward only on CPU).
* ``triton``: the block-sparse FlashAttention kernels of :mod:`causal_rcm.kernels.op`
  (forward, backward and JVP), imported on first use (it needs ``triton``).

The model calls :func:`attention` and never imports a kernel itself.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from causal_rcm.kernels.masks import BlockSparseMask

__all__ = ["attention", "math_attention", "register_backend", "available_backends"]

AttentionFn = Callable[..., torch.Tensor]
_BACKENDS: dict[str, AttentionFn] = {}
# Backends provided by optional modules, imported on first use (the module registers itself).
_LAZY_BACKENDS = {"triton": "causal_rcm.kernels.op"}


def register_backend(name: str, fn: AttentionFn) -> None:
    """Register ``fn(q, k, v, mask, scale) -> out`` under ``name``."""
    _BACKENDS[name] = fn


def available_backends() -> tuple[str, ...]:
    return tuple(sorted(set(_BACKENDS) | set(_LAZY_BACKENDS)))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask | None = None,
    *,
    backend: str = "math",
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v.

    Args:
        q: (B, H, Sq, D); k, v: (B, H, Sk, D).
        mask: frame-granular mask with ``seq_len_q == Sq`` and ``seq_len_k == Sk``, or None.
        backend: one of :func:`available_backends`.
        scale: defaults to D ** -0.5.
    Returns:
        (B, H, Sq, D) in q's dtype (the autocast dtype under autocast).
    """
    if mask is not None and (mask.seq_len_q != q.shape[-2] or mask.seq_len_k != k.shape[-2]):
        raise ValueError(
            f"mask covers {mask.seq_len_q}x{mask.seq_len_k} tokens but attention is {q.shape[-2]}x{k.shape[-2]}"
        )
    fn = _BACKENDS.get(backend)
    if fn is None and backend in _LAZY_BACKENDS:
        importlib.import_module(_LAZY_BACKENDS[backend])  # needs triton, an optional dependency
        fn = _BACKENDS.get(backend)
    if fn is None:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(available_backends())}")
    if mask is not None and mask.allowed.device != q.device:
        mask = mask.to(q.device)
    if torch.is_autocast_enabled(q.device.type):
        # Under autocast, RMSNorm's fp32 weight promotes q and k to fp32 while v stays in the
        # autocast dtype. SDPA casts its inputs under autocast; every backend does the same here
        # (as Wan casts q, k, v to bf16 before its attention).
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return fn(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale)


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockSparseMask | None = None, scale: float | None = None
) -> torch.Tensor:
    """Reference attention in fp32 (fp64 for fp64 inputs) with a dense mask; rows with no allowed key output 0."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale  # (B, H, Sq, Sk)
    if mask is not None and not mask.is_full:
        allowed = mask.dense().to(q.device)
        row_has_key = allowed.any(dim=-1, keepdim=True)  # (Sq, 1)
        # Masked rows get finite scores so that softmax (and its derivatives) stay finite.
        s = torch.where(allowed, s, torch.where(row_has_key, float("-inf"), 0.0))
        p = torch.softmax(s, dim=-1) * row_has_key
    else:
        p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v.to(acc)).to(q.dtype)


def _sdpa(q, k, v, mask, scale):
    attn_mask = None if mask is None or mask.is_full else mask.dense().to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


_compiled_flex = None


def _flex(q, k, v, mask, scale):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError(
            "the flex attention backend has no backward on CPU; train on CPU with the 'math' or 'sdpa' backend"
        )
    block_mask = None if mask is None else mask.to_flex()
    if q.device.type == "cuda":
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


register_backend("math", math_attention)
register_backend("sdpa", _sdpa)
register_backend("flex", _flex)
