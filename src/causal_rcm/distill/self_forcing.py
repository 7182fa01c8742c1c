"""Self-forcing rollout (Huang et al. 2025): the student generates its own training video.

The few-step student samples the whole video chunk by chunk from noise with its own KV cache,
exactly as at inference (fresh noise between steps, cache refreshed with each clean chunk at
t = 0), so training sees the student's own history instead of ground truth: the exposure bias
of teacher forcing goes away. To keep memory flat, one exit step k is drawn per iteration
(shared by every rank and chunk): steps before k run without gradient, step k runs with
gradient and its x0 estimate is the chunk's output, and the cache refresh runs without
gradient on the detached chunk. Memory therefore does not grow with the number of sampler
steps or with the steps before the exit.

Long rollouts (Self-Forcing++, Cui et al. 2025; LongLive, Yang et al. 2025): the student may roll out
many times its training length through the rolling KV cache and attention sink its streams use
(``window_frames``, ``sink_frames``; ``models/kv_cache.py``), and only the chunks from
``score_from_chunk`` on (the window DMD scores) are returned with gradient. Everything before runs
under ``no_grad`` and the cache keeps detached keys and values, so memory is bounded by the
window, not by the rollout's length. ``complement`` completes each x0 estimate where the head
cannot reach, as the samplers do (``diffusion.samplers``), so training sees the frames a stream makes.

Given first frames (image-to-video, ``data.given_frames_prob``): the samples of ``given_rows`` start from their
given latent frames, which open the first chunk clean at t = 0 beside its noisy frames at every step (as a stream
started from an image does, ``diffusion.samplers``) and are the chunk's output there, without gradient.

Noisy context (``context_mode="noisy"``, ``dmd.noisy_context``): instead of the refresh, the
forward whose x0 estimate is the chunk, the exit step's, commits its own keys and values (those
of its noisy input), as a noisy-context stream commits its last step's
(``diffusion.samplers``): with the exit at the last step the rollout is that stream, and the
student learns to continue from the context it will stream with, one forward per chunk cheaper.
The committed keys and values are detached (``models.kv_cache``), so no gradient flows between chunks.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from causal_rcm.diffusion.conversions import velocity_to_x0
from causal_rcm.diffusion.samplers import CONTEXTS, refresh_kv_caches
from causal_rcm.diffusion.schedules import to_net_time

__all__ = ["self_forcing_rollout"]


def self_forcing_rollout(
    model: Any,
    noise: torch.Tensor,
    context: torch.Tensor,
    *,
    grid: torch.Tensor,
    exit_step: int,
    frames_per_chunk: int,
    solver: str = "consistency",
    window_frames: int | None = None,
    sink_frames: int = 0,
    draw_noise: Callable[[torch.Size], torch.Tensor] | None = None,
    actions: torch.Tensor | None = None,
    score_from_chunk: int = 0,
    complement: Callable[[torch.Tensor], torch.Tensor] | None = None,
    given: torch.Tensor | None = None,
    given_rows: torch.Tensor | None = None,
    context_mode: str = "clean",
) -> torch.Tensor:
    """Roll the student out over the whole video; gradient only through each chunk's exit step.

    Args:
        model: the causal student ``model(x, t_net, context, *, kv_cache, update_cache, interval, actions)``.
        noise: (B, C, F, H, W) initial noise of every chunk (s = 1).
        context: (B, L, D) prompts (the student samples without guidance: CFG was distilled into it).
        grid: (N + 1,) flow-matching times from 1 to 0, the student's few-step schedule.
        exit_step: k in [0, N): the step whose x0 estimate, with gradient, is each chunk's output.
        solver: ``consistency`` (re-noise the x0 estimate with fresh noise) or ``meanflow``
            (the average-velocity jump, no fresh noise).
        draw_noise: shape -> standard normal tensor for the fresh noise between steps.
        window_frames, sink_frames: the KV cache's rolling window (the current chunk included; None:
            unbounded) and attention sink, as in the stream the student is exported for.
        actions: (B, F) per-frame actions for world models.
        score_from_chunk: the first chunk of the scored window: chunks before it run without gradient
            and are not returned (a rollout longer than the scored window keeps no graph and no frames
            outside it).
        complement: ``model.head_complement()`` to complete each x0 estimate (``diffusion.samplers``).
        given: (B, C, G, H, W) clean latent frames (G < frames_per_chunk) that open the first chunk of the samples
            ``given_rows`` (B,) bool marks (module docstring).
        context_mode: ``"clean"`` (refresh each chunk at t = 0) or ``"noisy"`` (the exit step's forward commits;
            module docstring).
    Returns:
        (B, C, F', H, W) the chunks from ``score_from_chunk`` on (F' = F - score_from_chunk *
        frames_per_chunk), each through its exit step's computation with gradient.
    """
    N = len(grid) - 1
    if not 0 <= exit_step < N:
        raise ValueError(f"exit_step must be in [0, {N}), got {exit_step}")
    if solver not in ("consistency", "meanflow"):
        raise ValueError(f"self forcing needs a few-step solver (consistency or meanflow), got {solver!r}")
    if context_mode not in CONTEXTS:
        raise ValueError(f"unknown context mode {context_mode!r}; choose one of {CONTEXTS}")
    cache = model.new_kv_cache(sink_frames=sink_frames, window_frames=window_frames)
    chunks = noise.split(frames_per_chunk, dim=2)
    if not 0 <= score_from_chunk < len(chunks):
        raise ValueError(f"score_from_chunk must be in [0, {len(chunks)}), got {score_from_chunk}")
    action_chunks = None if actions is None else actions.split(frames_per_chunk, dim=1)
    outputs = []
    for c, x in enumerate(chunks):
        kwargs = {} if action_chunks is None else {"actions": action_chunks[c]}
        B, _, Fc = x.shape[:3]
        held = torch.zeros(B, Fc, dtype=torch.bool, device=x.device)  # given frames of this chunk, clean at t = 0
        known = x
        if given is not None and c == 0:
            held[:, : given.shape[2]] = given_rows[:, None]
            known = torch.cat([given.to(x.dtype), x[:, :, given.shape[2] :]], dim=2)
        held_ = held[:, None, :, None, None]
        x = torch.where(held_, known, x)
        for i in range(exit_step + 1):
            s, s_next = float(grid[i]), float(grid[i + 1])
            t_net = to_net_time(torch.full((B, Fc), s, device=x.device).masked_fill(held, 0.0))
            step_kwargs = dict(kwargs)
            if solver == "meanflow":  # jump to s_next, or all the way to 0 at the exit step (its x0 estimate)
                r = 0.0 if i == exit_step else s_next
                step_kwargs["interval"] = to_net_time(torch.full((B, Fc), s - r, device=x.device).masked_fill(held, 0.0))
            if i == exit_step and context_mode == "noisy" and c + 1 < len(chunks):
                step_kwargs["update_cache"] = True  # the chunk's forward commits its own (noisy) keys and values
            with torch.set_grad_enabled(i == exit_step and c >= score_from_chunk and torch.is_grad_enabled()):
                v = model(x, t_net, context, kv_cache=cache, **step_kwargs)
                if complement is not None:  # x0 completed where the head cannot reach, as the samplers do
                    v = v + complement(x + (1 - s) * v) / s
                if i == exit_step:
                    x0 = velocity_to_x0(v.float(), x.float(), s)  # consistency function f = x - s v
                    x0 = torch.where(held_, known.float(), x0)
                    break
                if solver == "meanflow":
                    x = (x + (s_next - s) * v).to(x.dtype)
                else:
                    x0 = velocity_to_x0(v, x, s).to(x.dtype)
                    eps = draw_noise(x.shape) if draw_noise is not None else torch.randn_like(x)
                    x = (1 - s_next) * x0 + s_next * eps.to(x.dtype)
                x = torch.where(held_, known, x)
        if c >= score_from_chunk:
            outputs.append(x0)
        if c + 1 < len(chunks) and context_mode == "clean":
            refresh_kv_caches(model, x0.detach().to(noise.dtype), context, (cache,), **kwargs)
    return torch.cat(outputs, dim=2)
