"""Long-stream measurement: memory over time and oracle caption adherence of the first and last minute.

``measure_stream`` runs one unbounded stream of a :class:`~causal_rcm.pipeline.StreamingPipeline`
for a number of minutes of video (at the checkpoint's fps, not wall-clock minutes) and reports:

* memory: process RSS and the stream's own state (KV cache + kept clean latents) sampled along
  the way; after warm-up (the first minute) both must stay flat for the memory to be bounded;
* speed: frames per second of wall-clock time, per-chunk latency percentiles;
* quality: the shapes-world oracle's caption adherence (and colour / shape adherence, temporal
  consistency) of the first and of the last minute against the prompt, each the mean over that
  minute's consecutive training-length clips (the length the oracle and the model know; a whole
  minute as one clip fails as soon as the shape is lost for a moment). Only meaningful for a
  trained checkpoint: an untrained one paints noise.

Only the first and last minute of frames are kept, so the measurement itself is bounded too.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque

import numpy as np

from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import ShapesConfig

__all__ = ["rss_bytes", "measure_stream", "score_clips"]

ORACLE_KEYS = ("caption_adherence", "colour_adherence", "shape_adherence", "temporal_consistency")
CONSISTENCY_KEYS = ("count_stability", "size_stability", "smoothness")


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def score_clips(oracle: ShapesOracle, video, caption: str, clip: int) -> dict[str, np.ndarray]:
    """The oracle's scores of each consecutive ``clip``-frame clip of one long video against ``caption``
    (:data:`ORACLE_KEYS` and the factors of temporal consistency, :data:`CONSISTENCY_KEYS` -> (clips,)): the one scorer of streams, for evaluation and for the long-stream benchmark.

    A whole stream as one clip fails as soon as a shape is lost for a moment; clips of the training length are
    what the oracle and the model know."""
    report = oracle.drift(video, caption, window=clip)
    scores = {key: np.array([a.get(key, float("nan")) for a in report.adherence], dtype=float) for key in ORACLE_KEYS}
    scores["temporal_consistency"] = np.asarray(report.temporal_consistency, dtype=float)
    for key in CONSISTENCY_KEYS:  # its factors: a shape drawn twice or flickering out shows in count_stability
        scores[key] = np.array([c[key] for c in report.consistency], dtype=float)
    return scores


def measure_stream(
    pipe, prompt: str, *, minutes: float = 10.0, steps: int | None = None, mode: str = "chunk", seed: int = 0,
    samples: int = 40, window_frames: int | None = None,
) -> dict:
    """Stream ``minutes`` of video from ``pipe`` and report memory, speed and oracle adherence (JSON-ready dict).

    ``window_frames``: the stream's KV-cache window (default: the checkpoint's; see ``StreamingPipeline.stream``).
    """
    cfg = pipe.config
    fps = float(cfg.fps)
    total = max(1, round(minutes * 60 * fps))
    minute = min(total, round(60 * fps))
    every = max(1, total // samples)
    first: list[np.ndarray] = []
    last: deque[np.ndarray] = deque(maxlen=minute)
    trace = []
    chunk_seconds = np.zeros(total, dtype=np.float32)  # preallocated: the measurement stays bounded too
    stream = pipe.stream(prompt, steps=steps, mode=mode, seed=seed, num_frames=total, window_frames=window_frames)
    started = time.perf_counter()
    for frame in stream:
        if len(first) < minute:
            first.append(frame.image)
        last.append(frame.image)
        chunk_seconds[frame.chunk] = frame.chunk_seconds
        if frame.index % every == 0 or frame.index == total - 1:
            state = stream.state_nbytes()
            trace.append({
                "frame": frame.index, "video_seconds": round(frame.index / fps, 3),
                "wall_seconds": round(time.perf_counter() - started, 3), "rss_mb": round(rss_bytes() / 2**20, 2),
                "kv_cache_bytes": state["kv_cache"], "history_bytes": state["history"],
            })
    wall = time.perf_counter() - started

    oracle = ShapesOracle(ShapesConfig(size=cfg.resolution))
    clip = min(pipe.video_frames, minute)
    quality = {}
    for name, frames in (("first_minute", np.stack(first)), ("last_minute", np.stack(last))):
        scores = score_clips(oracle, frames, prompt, clip)
        quality[name] = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in scores.items()}

    warm = [t for t in trace if t["frame"] >= minute] or trace[-1:]
    latencies = chunk_seconds[: frame.chunk + 1] * 1000.0
    half = next(t for t in trace if t["frame"] >= total // 2)
    return {
        "prompt": prompt, "steps": stream.steps, "mode": mode, "seed": seed, "fps": fps,
        "window_frames": stream.window_frames, "oracle_clip_frames": clip,
        "frames": total, "video_minutes": total / fps / 60, "wall_seconds": round(wall, 2),
        "frames_per_second": round(total / wall, 2),
        "chunk_latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 3),
                             "p95": round(float(np.percentile(latencies, 95)), 3),
                             "max": round(float(latencies.max()), 3)},
        "memory": {
            "rss_mb_start": trace[0]["rss_mb"], "rss_mb_after_first_minute": warm[0]["rss_mb"],
            "rss_mb_end": trace[-1]["rss_mb"], "rss_mb_max": max(t["rss_mb"] for t in trace),
            "rss_growth_after_first_minute_mb": round(trace[-1]["rss_mb"] - warm[0]["rss_mb"], 2),
            "rss_growth_second_half_mb": round(trace[-1]["rss_mb"] - half["rss_mb"], 2),
            "kv_cache_bytes_max": max(t["kv_cache_bytes"] for t in trace),
            "kv_cache_bytes_end": trace[-1]["kv_cache_bytes"],
            "history_bytes_max": max(t["history_bytes"] for t in trace),
            "state_constant_after_first_minute": len({(t["kv_cache_bytes"], t["history_bytes"]) for t in warm}) == 1,
        },
        "oracle": quality,
        "trace": trace,
    }
