"""Prompt switches in streams: how fast a new caption takes hold, and whether motion carries across the switch.

Each held-out prompt starts a stream that switches prompt at the times of a schedule (``causal-rcm eval -c CKPT
--switch 4s --switch 8s``), each time to a caption made from the one before (:data:`SWITCH_KINDS`): ``direction``
keeps the shapes and reverses every direction (the scene must go on and turn), ``scene`` takes the next held-out
prompt (other shapes). A switch acts from the first chunk that starts at or after its time, as a stream applies
it; the streams are sampled in batches with ``diffusion.samplers.sample(..., switches=)``, which makes a
:class:`~causal_rcm.pipeline.Stream`'s frames (the conditional KV cache rebuilt under the new prompt from the
clean chunks it covers). Scored by the shapes world's oracle, per switch at frame k:

* **hold**: the new caption holds at delay d when the window of :data:`HOLD_FRAMES` frames from k + d has caption
  adherence 1 and direction accuracy 1 against it (right shapes and colours, nothing else, each moving its
  way). ``switch_held`` is the fraction of switches that hold before the next switch (or the stream's end),
  ``switch_hold_within_1s`` the fraction whose first holding window ends within one second of video of the
  switch (d + HOLD_FRAMES <= fps), ``switch_frames_to_hold`` the mean d over those that hold.
* **continuity**: the oracle's temporal consistency (one shape per colour, stable size, smooth steps) of the
  training-length clip centred on the switch, against that of the clips of the same length just before and
  just after it: ``switch_consistency_across``, ``switch_consistency_within`` and their ratio, 1 when the switch
  leaves no trace in the motion; a cut (shapes jumping or popping up) lowers it. A direction reversal in
  mid-air is one unsmooth step by the oracle's rule, so ``direction`` switches cost some consistency even
  when done well.
"""

from __future__ import annotations

import math

import numpy as np

from causal_rcm.data.oracle import as_frames
from causal_rcm.data.source import ShapesSource
from causal_rcm.diffusion.samplers import SamplerSpec
from causal_rcm.errors import UserError
from causal_rcm.eval.score import BATCH, load_for_eval, sample_videos, stream_spec, swap_directions

__all__ = ["HOLD_FRAMES", "SWITCH_KINDS", "TAIL_CLIPS", "switch_captions", "switch_frames", "score_switches", "summarise",
           "switch_metrics", "evaluate_switches"]

HOLD_FRAMES = 4  # frames of the window a new caption must hold on (half a second of the shapes world's 8 fps)
SWITCH_KINDS = ("direction", "scene")
TAIL_CLIPS = 2  # the stream goes on this many training lengths after the last switch


def switch_captions(captions: list[str], switches: int, kind: str) -> list[list[str]]:
    """Per stream, its prompt then the prompt after each of ``switches`` switches (``kind``: module docstring)."""
    if kind not in SWITCH_KINDS:
        raise UserError(f"--switch-to must be one of {', '.join(SWITCH_KINDS)}, got {kind!r}")
    out = []
    for i, caption in enumerate(captions):
        seq = [caption]
        for j in range(1, switches + 1):
            if kind == "direction":
                seq.append(swap_directions(seq[-1]))
            else:
                others = [c for c in captions if c != seq[-1]] or [swap_directions(seq[-1])]
                seq.append(others[(i + j - 1) % len(others)])
        out.append(seq)
    return out


def switch_frames(times: list[float], fps: float, chunk_frames: int, clip: int) -> list[int]:
    """The frames where switches at ``times`` (seconds) act: the first chunk start at or after each. UserError
    unless each segment (from the start, between switches) is at least ``clip`` frames (a training length)."""
    frames, last = [], 0
    for t in sorted(times):
        frame = math.ceil(round(t * fps) / chunk_frames) * chunk_frames
        if frame - last < clip:
            raise UserError(f"--switch times must be at least one training length ({clip / fps:g} s) after the start "
                            f"and apart, so that each prompt has a clip of its own; got {', '.join(f'{x:g}s' for x in sorted(times))}")
        frames.append(frame)
        last = frame
    return frames


def _holds(oracle, frames: np.ndarray, caption: str) -> bool:
    """Does the clip (F, H, W, 3) hold ``caption``: caption adherence 1 and, where it says how shapes move,
    direction accuracy 1."""
    m = oracle.evaluate(frames[None], [caption]).metrics
    direction = m.get("direction_accuracy", 1.0)
    return m["caption_adherence"] >= 1.0 and (direction != direction or direction >= 1.0)  # NaN: no motion asked


def _consistency(oracle, frames: np.ndarray) -> float:
    return oracle.evaluate(frames[None], [""]).metrics["temporal_consistency"]


def score_switches(oracle, frames: np.ndarray, prompts: list[str], at: list[int], fps: float, clip: int) -> list[dict]:
    """Score the switches of one stream (module docstring): ``frames`` uint8 (F, H, W, 3), ``prompts`` its first
    prompt and the one after each switch, ``at`` the frames where the switches act, ``clip`` the training length in
    frames. One dict per switch: ``delay`` (frames until the new caption holds, None if it never does before the
    next switch), ``within_1s``, ``across`` and ``within`` (temporal consistency; ``within`` NaN without a
    neighbouring clip)."""
    bounds, half, out = [0, *at, len(frames)], clip // 2, []
    for j, k in enumerate(at):
        lo, end = bounds[j], bounds[j + 2]
        delay = next((d for d in range(end - k - HOLD_FRAMES + 1) if _holds(oracle, frames[k + d : k + d + HOLD_FRAMES], prompts[j + 1])), None)
        near = [(a, a + clip) for a in (k - half - clip, k + clip - half) if a >= lo and a + clip <= end]
        out.append({
            "delay": delay, "within_1s": delay is not None and delay + HOLD_FRAMES <= fps,
            "across": _consistency(oracle, frames[max(lo, k - half) : k - half + clip]),
            "within": float(np.mean([_consistency(oracle, frames[a:e]) for a, e in near])) if near else float("nan"),
        })
    return out


def summarise(switches: list[dict]) -> dict[str, float]:
    """The ``switch_*`` metrics of scored switches (:func:`score_switches`), averaged over them."""
    held = [s["delay"] for s in switches if s["delay"] is not None]
    across = float(np.mean([s["across"] for s in switches]))
    within = float(np.nanmean([s["within"] for s in switches])) if any(s["within"] == s["within"] for s in switches) else float("nan")
    return {
        "switch_count": float(len(switches)),
        "switch_held": len(held) / len(switches),
        "switch_hold_within_1s": float(np.mean([s["within_1s"] for s in switches])),
        "switch_frames_to_hold": float(np.mean(held)) if held else float("nan"),
        "switch_consistency_across": across,
        "switch_consistency_within": within,
        "switch_consistency_ratio": across / within if within > 0 else float("nan"),
    }


def switch_metrics(
    model, source: ShapesSource, spec: SamplerSpec, captions: list[str], times: list[float], *, kind: str = "direction",
    seed: int = 0,
) -> dict[str, float]:
    """Stream each of ``captions`` with prompt switches at ``times`` (seconds) and score every switch (module
    docstring); ``switch_*`` metrics averaged over switches."""
    if not spec.causal:
        raise UserError("--switch needs a causal checkpoint: a bidirectional one does not stream")
    fps, codec_frames, clip = float(source.fps), source.data.codec_frames, source.shapes.num_frames
    chunk_frames = spec.frames_per_chunk * codec_frames
    at = switch_frames(times, fps, chunk_frames, clip)
    total = at[-1] + TAIL_CLIPS * clip
    latent_frames = math.ceil(total / codec_frames / spec.frames_per_chunk) * spec.frames_per_chunk
    prompts = switch_captions(captions, len(at), kind)
    chunks = [frame // chunk_frames for frame in at]
    scored = []
    for start in range(0, len(captions), BATCH):
        part = prompts[start : start + BATCH]
        videos = sample_videos(model, source, [p[0] for p in part], spec, num_frames=latent_frames, seed=seed + start // BATCH,
                               switches=[(c, [p[j + 1] for p in part]) for j, c in enumerate(chunks)])
        frames = as_frames(videos)[:, :total].astype(np.uint8)  # (B, total, H, W, 3), whole levels already
        for b, seq in enumerate(part):
            scored += score_switches(source.oracle, frames[b], seq, at, fps, clip)
    return summarise(scored)


def evaluate_switches(
    path, *, times: list[float], kind: str = "direction", steps: int | None = None, n: int = 16, device: str = "auto",
    seed: int = 0, window_frames: int | None = None, sink_frames: int | None = None, recache_every: int | None = None,
    context: str | None = None, kv_int8: bool = False,
) -> dict[str, float]:
    """:func:`switch_metrics` of a shapes-world checkpoint on ``n`` held-out prompts, with its stream defaults unless
    ``window_frames``, ``sink_frames``, ``recache_every``, ``context`` or ``kv_int8`` say otherwise (checked as
    ``causal-rcm eval`` checks them)."""
    model, source, spec = load_for_eval(path, steps=steps, device=device)
    spec = stream_spec(model, spec, window_frames=window_frames, sink_frames=sink_frames, recache_every=recache_every,
                       context=context, kv_int8=kv_int8)
    return switch_metrics(model, source, spec, source.eval_set(n)["caption"], times, kind=kind, seed=seed)

