"""Given frames on the shapes world, scored by the oracle: image-to-video and clip extension
(``causal-rcm eval --image-cond``).

**Image-conditioned.** For ``n`` held-out scenes the first rendered frame is given as a stream gets an image (one
latent frame, ``VideoSource.image_latents``, the same encoding ``StreamingPipeline.given_frames`` makes) and the
model makes the rest of the training length under the scene's caption. The continuation, the frames after the
given latent frame, is scored against the scene as it is at its first frame (``shapes.scene_at``): the oracle's
caption adherence, direction accuracy and temporal consistency, and the **position error**, the mean distance (px)
of each shape's detected centroid from the simulator's over the continuation (a frame without the shape counts
the frame size, as the oracle's action error does): whether the model kept *these* shapes where they are and moving
as they move, which adherence to the caption alone does not say. Direction accuracy is measured over the frames before
the first bounce of any shape in the ground truth (:func:`straight_frames`; the caption names the direction of those
frames, and a bounce inside the oracle's window would make the truth itself fail); a video whose truth bounces
within 3 frames is left out of it. The same frames of a text-only stream of the same
prompt and seed (``text_only/``) are the baseline: a model that ignores the image scores alike there. The ground
truth's own frames (``truth/``) are the ceiling of each metric.

**Extension.** Scenes are rendered twice the training length L; the first L frames (a ground-truth clip) are given
and the model makes the next L, prompted with the caption of the scene at the seam (a shape may have bounced
within the clip: the prompt says how the clip moves where it ends, so text and clip agree). Scored: direction
accuracy of the continuation against the scene at the seam, its position error, and the **cut** at the seam: the
oracle's temporal consistency of the training-length window centred on the seam (half given, half made) beside
that of the windows within the clip and within the continuation (no cut: the seam scores as they do). The
text-only stream of the same prompt pasted after the clip (``cut/``) shows what a cut scores, the ground truth's
second half (``extend_truth/``) the ceiling (a shape may bounce in it too).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from causal_rcm.data.oracle import COLOURS, ShapesOracle
from causal_rcm.data.shapes import Scene, centroids, scene_at, trajectories
from causal_rcm.data.source import ShapesSource
from causal_rcm.diffusion.samplers import SamplerSpec, check_window, sample
from causal_rcm.errors import UserError
from causal_rcm.eval.score import BATCH, NetworkCalls, load_for_eval, sample_videos

__all__ = ["GIVEN_KEYS", "continue_videos", "position_error", "straight_frames", "given_metrics", "evaluate_given"]

GIVEN_KEYS = ("caption_adherence", "direction_accuracy", "temporal_consistency", "position_error_px")


@torch.no_grad()
def continue_videos(model, source: ShapesSource, captions: list[str], spec: SamplerSpec, given: torch.Tensor, *,
                    num_frames: int, seed: int = 0) -> torch.Tensor:
    """Continue given latent frames (n, C, P, h, w) by ``num_frames`` latent frames, one video per caption ->
    the new frames' pixels (n, 3, frames, H, W) in [-1, 1] (float32, CPU)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    shape = source.latent_shape(num_frames)
    videos = []
    for start in range(0, len(captions), BATCH):
        part = captions[start : start + BATCH]
        noise = torch.randn((len(part), *shape), generator=generator, device=device)
        latents = sample(model, noise, source.encode_text(part).to(device), spec, neg_context=source.empty_context(len(part)).to(device),
                         generator=generator, prefix=given[start : start + len(part)].to(device))
        videos.append(source.codec.decode(latents.float().cpu()).clamp(-1, 1))
    return torch.cat(videos)


def position_error(oracle: ShapesOracle, videos, scenes: list[Scene]) -> float:
    """Mean distance (px) of each scene shape's detected centroid from the simulator's, over the frames of
    ``videos`` (n, 3, F, H, W) in [-1, 1], each rendered (or made) from its scene's frame 0; a frame without the
    shape counts the frame size."""
    errors = []
    for i, scene in enumerate(scenes):
        det = oracle.detect(videos[i])
        truth = centroids(scene, det.num_frames)  # (F, K, 2)
        for k, shape in enumerate(scene.shapes):
            err = np.linalg.norm(det.centroid[COLOURS.index(shape.colour)] - truth[:, k], axis=-1)  # NaN where absent
            errors.append(np.where(np.isnan(err), float(scene.size), err).mean())
    return float(np.mean(errors))


def straight_frames(scene: Scene, num_frames: int) -> int:
    """Frames from the scene's frame 0 (at most ``num_frames``) in which no shape changes velocity (no bounce)."""
    steps = np.diff(trajectories(scene, num_frames), axis=0)  # (F - 1, K, 2)
    turned = np.nonzero((steps != steps[:1]).any(axis=(1, 2)))[0]
    return num_frames if not len(turned) else int(turned[0]) + 1


def _direction(oracle: ShapesOracle, videos: torch.Tensor, scenes: list[Scene]) -> tuple[float, int]:
    """Direction accuracy over each video's frames before its truth's first bounce (module docstring), and the
    number of videos scored (those with at least 3 such frames)."""
    scores = []
    for i, scene in enumerate(scenes):
        k = straight_frames(scene, videos.shape[2])
        if k >= 3:
            scores.append(oracle.evaluate(videos[i : i + 1, :, :k], [scene]).metrics.get("direction_accuracy", float("nan")))
    return (float(np.nanmean(scores)) if scores else float("nan")), len(scores)


def _scores(oracle: ShapesOracle, videos: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """:data:`GIVEN_KEYS` of videos that start at their scenes' frame 0."""
    metrics = oracle.evaluate(videos, scenes).metrics
    out = {k: metrics.get(k, float("nan")) for k in GIVEN_KEYS[:3]}
    out["direction_accuracy"] = _direction(oracle, videos, scenes)[0]
    out["position_error_px"] = position_error(oracle, videos, scenes)
    return out


def _consistency(oracle: ShapesOracle, videos: torch.Tensor, scenes: list[Scene]) -> float:
    return float(oracle.evaluate(videos, scenes).metrics["temporal_consistency"])


def given_metrics(model, source: ShapesSource, spec: SamplerSpec, *, n: int = 16, seed: int = 0,
                  progress: str | None = None) -> dict[str, float]:
    """Image-conditioned and extension metrics of a causal model (module docstring): keys ``image_cond/``,
    ``text_only/``, ``truth/`` (each of :data:`GIVEN_KEYS`), ``extend/``, ``cut/`` and ``extend_truth/`` (direction
    accuracy, position error, seam consistency), ``extend/clip_consistency``, ``extend/continuation_consistency``
    and ``extend/direction_videos`` (the scenes direction accuracy is measured on)."""
    if not spec.causal:
        raise UserError("--image-cond scores continuing given frames, which needs a causal checkpoint")
    if source.data.agent:
        raise UserError("--image-cond scores captioned scenes; this is an agent-mode (world-model) checkpoint")
    oracle, L = source.oracle, source.data.num_frames
    T = source.codec.video_frames(1)  # rendered frames of the given (image) latent frame
    frames = source.shapes.num_frames  # rendered frames of the training length
    batches = math.ceil(n / BATCH)
    total = batches * (spec.calls_per_batch(L) * 2 + spec.calls_per_batch(L - 1) + spec.calls_per_batch(L) + 2 * L)
    out: dict[str, float] = {}
    with NetworkCalls(model, total, progress):
        # image-conditioned: the first frame given, the rest of the training length made
        ref = source.eval_set(n)
        scenes = [scene_at(s, T) for s in ref["scene"]]
        image = source.image_latents(ref["video"])  # (n, C, 1, h, w)
        made = continue_videos(model, source, ref["caption"], spec, image, num_frames=L - 1, seed=seed)
        text = sample_videos(model, source, ref["caption"], spec, seed=seed)[:, :, T:]
        for name, videos in (("image_cond", made), ("text_only", text), ("truth", ref["video"][:, :, T:])):
            out.update({f"{name}/{k}": v for k, v in _scores(oracle, videos, scenes).items()})

        # extension: a ground-truth clip of the training length given, the next training length made
        long = source.eval_set(n, num_frames=2 * L)
        clip = long["video"][:, :, :frames]
        seam = [scene_at(s, frames) for s in long["scene"]]
        prompts = [s.caption for s in seam]
        made = continue_videos(model, source, prompts, spec, source.codec.encode(clip), num_frames=L, seed=seed + 1)
        cut = sample_videos(model, source, prompts, spec, seed=seed + 1)
    half = frames // 2
    centred = [scene_at(s, frames - half) for s in long["scene"]]
    for name, videos in (("extend", made), ("cut", cut), ("extend_truth", long["video"][:, :, frames:])):
        scores = _scores(oracle, videos, seam)
        out[f"{name}/direction_accuracy"] = scores["direction_accuracy"]
        out[f"{name}/position_error_px"] = scores["position_error_px"]
        out[f"{name}/seam_consistency"] = _consistency(oracle, torch.cat([clip[:, :, frames - half :], videos[:, :, :half]], dim=2), centred)
    out["extend/direction_videos"] = float(_direction(oracle, made, seam)[1])
    out["extend/clip_consistency"] = _consistency(oracle, clip, long["scene"])
    out["extend/continuation_consistency"] = _consistency(oracle, made, seam)
    return out


def evaluate_given(path, *, steps: int | None = None, n: int = 16, device: str = "auto", seed: int = 0,
                   window_frames: int | None = None) -> dict[str, float]:
    """:func:`given_metrics` of a checkpoint written by ``train`` (``causal-rcm eval --image-cond``)."""
    model, source, spec = load_for_eval(path, steps=steps, device=device)
    if window_frames is not None and spec.causal:
        check_window(window_frames, spec.frames_per_chunk, "--window", most=model.config.max_frames - spec.sink_frames)
        spec = replace(spec, window_frames=window_frames)
    return given_metrics(model, source, spec, n=n, seed=seed, progress="image-cond")
