"""Classifier-free guidance with a negative (or empty) prompt."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

__all__ = ["cfg", "is_unguided", "guided_velocity"]


def cfg(cond: torch.Tensor, uncond: torch.Tensor, guidance: float | torch.Tensor) -> torch.Tensor:
    """``uncond + w (cond - uncond)`` (Ho & Salimans 2022, Eq. (6) with w = 1 + their w).

    Works on any prediction that is affine in the network output with a shared input
    (velocity, x0, eps, TrigFlow F): guiding the velocity and converting equals converting
    both branches and guiding. ``guidance`` may be a tensor broadcastable to the outputs.
    """
    return uncond + guidance * (cond - uncond)


def is_unguided(guidance: float | torch.Tensor) -> bool:
    """True when ``guidance`` is the number 1: the unconditional branch is skipped (exactly the conditional)."""
    return isinstance(guidance, (int, float)) and guidance == 1


def guided_velocity(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    *,
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    kv_caches: Sequence[Any] | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """CFG velocity from two calls of ``model(x, t, context, **kw)``; one call when ``guidance == 1``.

    Args:
        x: (B, C, F, H, W) input; t: (B, F) network time (Wan units).
        context: (B, L, D) prompt embedding; neg_context: (B, L', D) negative or empty prompt,
            required when ``guidance != 1``.
        kv_caches: ``(cond_cache, uncond_cache)`` for causal sampling: each branch attends to
            its own history, computed with its own prompt. ``uncond_cache`` may be None when
            ``guidance == 1``.
        model_kwargs: passed to both calls (mask, actions, update_cache, ...).
    Returns:
        (B, C, F, H, W) guided velocity ``v_u + w (v_c - v_u)``.
    """
    cond_cache, uncond_cache = kv_caches if kv_caches is not None else (None, None)
    v_cond = model(x, t, context, **_with_cache(model_kwargs, cond_cache))
    if is_unguided(guidance):
        return v_cond
    if neg_context is None:
        raise ValueError(f"guidance {guidance} needs neg_context (a negative or empty prompt embedding)")
    if kv_caches is not None and uncond_cache is None:
        raise ValueError("guidance != 1 with a KV cache needs a second cache for the unconditional branch")
    v_uncond = model(x, t, neg_context, **_with_cache(model_kwargs, uncond_cache))
    return cfg(v_cond, v_uncond, guidance)


def _with_cache(model_kwargs: dict[str, Any], cache: Any) -> dict[str, Any]:
    return model_kwargs if cache is None else {**model_kwargs, "kv_cache": cache}
