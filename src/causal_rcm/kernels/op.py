"""The public masked-attention op over the Triton kernels, for every kind of differentiation.

Two layers:

* four ``torch.library`` custom ops, ``causal_rcm::flash_attention`` (-> O, LSE),
  ``causal_rcm::flash_attention_backward``, ``causal_rcm::flash_attention_jvp`` (fused: -> O,
  LSE, tO, tLSE) and ``causal_rcm::flash_attention_jvp_tangents`` (-> tO, tLSE from the saved
  O, LSE). They take the mask as plain values (frame matrix, tokens per frame), have fake
  (meta) kernels, and the forward op has a registered backward, so ``torch.compile`` captures
  them without a graph break and trains through them;
* :class:`FlashAttention`, an ``autograd.Function`` (forward, setup_context, backward, jvp)
  over the same ops, used in eager mode: ordinary backward, ``torch.autograd.forward_ad``
  and ``torch.func.jvp`` all work through it. Dynamo cannot trace an ``autograd.Function``
  with a custom ``jvp`` (it graph-breaks), so under ``torch.compile`` :func:`attention`
  calls the custom op directly (reverse mode only, which is what compiled training needs).

The mask never enters autograd: the Function receives the ``BlockSparseMask`` object as a
non-tensor argument, and the ops receive its bool frame matrix, which no tangent or
gradient is ever asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from causal_rcm.kernels import flash
from causal_rcm.kernels.dispatch import register_backend
from causal_rcm.kernels.masks import BlockSparseMask

__all__ = ["attention", "attention_with_lse", "attention_jvp", "FlashAttention"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------------ custom ops
@torch.library.custom_op("causal_rcm::flash_attention", mutates_args=())
def _flash_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, tokens_per_frame: int, scale: float
) -> tuple[Tensor, Tensor]:
    return flash.forward(q, k, v, allowed, tokens_per_frame, scale)


@_flash_attention.register_fake
def _(q, k, v, allowed, tokens_per_frame, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("causal_rcm::flash_attention_backward", mutates_args=())
def _flash_attention_backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, dlse: Tensor | None,
    allowed: Tensor | None, tokens_per_frame: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return flash.backward(q, k, v, o, lse, do, dlse, allowed, tokens_per_frame, scale)


@_flash_attention_backward.register_fake
def _(q, k, v, o, lse, do, dlse, allowed, tokens_per_frame, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("causal_rcm::flash_attention_jvp", mutates_args=())
def _flash_attention_jvp(
    q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
    allowed: Tensor | None, tokens_per_frame: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return flash.forward(q, k, v, allowed, tokens_per_frame, scale, tangents=(tq, tk, tv))


@_flash_attention_jvp.register_fake
def _(q, k, v, tq, tk, tv, allowed, tokens_per_frame, scale):
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return q.new_empty(q.shape), lse, q.new_empty(q.shape), torch.empty_like(lse)


@torch.library.custom_op("causal_rcm::flash_attention_jvp_tangents", mutates_args=())
def _flash_attention_jvp_tangents(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
    allowed: Tensor | None, tokens_per_frame: int, scale: float,
) -> tuple[Tensor, Tensor]:
    return flash.jvp_tangents(q, k, v, o, lse, (tq, tk, tv), allowed, tokens_per_frame, scale)


@_flash_attention_jvp_tangents.register_fake
def _(q, k, v, o, lse, tq, tk, tv, allowed, tokens_per_frame, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _backward_from_grads(q, k, v, o, lse, do, dlse, allowed, tokens_per_frame, scale):
    if do is None:
        do = torch.zeros_like(o)
    return _flash_attention_backward(q, k, v, o, lse, do, dlse, allowed, tokens_per_frame, scale)


def _op_setup_context(ctx, inputs, output):
    q, k, v, allowed, tokens_per_frame, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.mask_args = (allowed, tokens_per_frame, scale)


def _op_backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _backward_from_grads(q, k, v, o, lse, do, dlse, *ctx.mask_args)
    return dq, dk, dv, None, None, None


_flash_attention.register_autograd(_op_backward, setup_context=_op_setup_context)


# --------------------------------------------------------------------- autograd.Function
def _mask_args(mask: BlockSparseMask | None) -> tuple[Tensor | None, int]:
    # A full mask is passed on as it is (its tiles are all FULL): testing ``is_full`` here would
    # be a data-dependent branch that torch.compile cannot trace.
    if mask is None:
        return None, 1
    return mask.allowed, mask.tokens_per_frame


class FlashAttention(torch.autograd.Function):
    """(O, LSE) = attention(q, k, v; mask) with backward and forward-mode (jvp) rules.

    Inputs: q (B, H, Sq, D), k, v (B, H, Sk, D), ``mask`` a BlockSparseMask or None (not a
    differentiable input), ``scale`` a float. Outputs O (B, H, Sq, D), LSE (B, H, Sq) fp32;
    both are differentiable (tLSE = rowsum(P * tS); dLSE enters the backward as
    Delta = rowsum(dO * O) - dLSE).

    Under ``torch.func.jvp`` (and ``forward_ad``) the forward runs first, then ``jvp`` runs
    the tangents-only kernel on the saved O and LSE (P = exp(S - LSE), no second online
    softmax). :func:`attention_jvp` instead computes O and tO in one fused pass.
    """

    @staticmethod
    def forward(q, k, v, mask, scale):
        return _flash_attention(q, k, v, *_mask_args(mask), scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, mask, scale = inputs
        o, lse = output
        ctx.mask_args = (*_mask_args(mask), scale)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.save_for_forward(q, k, v, o, lse)

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward_from_grads(q, k, v, o, lse, do, dlse, *ctx.mask_args)
        return dq, dk, dv, None, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tmask, _tscale):
        q, k, v, o, lse = ctx.saved_tensors
        tq, tk, tv = (torch.zeros_like(x) if t is None else t for x, t in ((q, tq), (k, tk), (v, tv)))
        return _flash_attention_jvp_tangents(q, k, v, o, lse, tq, tk, tv, *ctx.mask_args)


# -------------------------------------------------------------------------- public API
def _validate(q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be (B, H, S, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must share one dtype of fp32/bf16/fp16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None and (mask.seq_len_q != q.shape[2] or mask.seq_len_k != k.shape[2]):
        raise ValueError(
            f"mask covers {mask.seq_len_q}x{mask.seq_len_k} tokens but attention is {q.shape[2]}x{k.shape[2]}"
        )


def _scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """(O, LSE): softmax(q k^T * scale + mask) v and the row log-sum-exp of the masked scores.

    Args:
        q: (B, H, Sq, D); k, v: (B, H, Sk, D); fp32, bf16 or fp16; CUDA (or CPU under
            ``TRITON_INTERPRET=1``).
        mask: BlockSparseMask with seq_len_q == Sq, seq_len_k == Sk, or None for full attention.
        scale: defaults to D ** -0.5.
    Returns:
        O (B, H, Sq, D) in q's dtype (0 on rows with no allowed key), LSE (B, H, Sq) fp32
        (-inf there).
    """
    _validate(q, k, v, mask)
    scale = _scale(q, scale)
    if torch.compiler.is_compiling():
        return _flash_attention(q, k, v, *_mask_args(mask), scale)
    return FlashAttention.apply(q, k, v, mask, scale)


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask | None = None, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale + mask) v, (B, H, Sq, D); see :func:`attention_with_lse`.

    Differentiable by ``backward``, ``torch.autograd.forward_ad`` and ``torch.func.jvp``;
    capturable by ``torch.compile`` (reverse mode).
    """
    return attention_with_lse(q, k, v, mask, scale)[0]


def attention_jvp(
    q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
    mask: BlockSparseMask | None = None, scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(O, tO) of attention and its JVP along (tq, tk, tv), in one fused kernel pass.

    tS = (tQ K^T + Q tK^T) * scale, tO = P (tS - rowsum(P * tS)) V + P tV (DESIGN section 5).
    Not differentiable itself (first-order forward mode only).
    """
    _validate(q, k, v, mask)
    for x, t in ((q, tq), (k, tk), (v, tv)):
        if t.shape != x.shape:
            raise ValueError(f"tangent of shape {tuple(t.shape)} for a primal of shape {tuple(x.shape)}")
    o, _, to, _ = _flash_attention_jvp(q, k, v, tq, tk, tv, *_mask_args(mask), _scale(q, scale))
    return o, to


def _backend(q: Tensor, k: Tensor, v: Tensor, mask: BlockSparseMask | None, scale: float) -> Tensor:
    return attention(q, k, v, mask, scale)


register_backend("triton", _backend)  # the dispatch imports this module when the backend is first asked for
