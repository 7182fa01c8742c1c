"""Oracle of the shapes world: an analytic detector on pixels and the metrics built on it.

No learned judge. The detector

1. labels every pixel with its nearest palette entry (background included) and drops pixels
   farther than ``colour_threshold`` (RGB distance, 0-255 scale) from every entry, which
   makes it robust to the noise and blur of a generative model;
2. finds the 4-connected components of each colour in each frame; the largest component
   of at least ``min_area`` px is the shape of that colour (every scene has distinct
   colours), further components that large count as duplicates;
3. classifies the shape by the IoU of its pixels with the circle / square / triangle
   masks drawn in its bounding box (apex-up triangles, as the world draws them), and
   measures its centroid, area and bounding box.

Metrics, each in ``[0, 1]`` (1 = perfect) unless a unit is named, per video then averaged
(videos where a metric is undefined are left out of its mean):

* ``colour_adherence``: Jaccard index of the caption's colours and the colours detected in
  at least ``presence`` of the frames (extra colours count against it).
* ``shape_adherence``: fraction of caption objects whose colour is detected with the right
  shape (majority vote over frames).
* ``caption_adherence``: Jaccard index of (colour, shape) pairs: both right.
* ``direction_accuracy``: fraction of moving caption objects whose centroid, fitted by a
  line over the first ``min(F, direction_frames)`` frames, moves at least 0.5 px/frame along
  the caption's direction (and at most half as fast across it). The caption names the
  *initial* direction; the world guarantees no bounce within those frames.
* ``temporal_consistency``: mean over tracked objects (colours present in >= 1/4 of the
  frames; 0 if none) of ``count_stability * size_stability * smoothness``:
  ``count_stability`` = fraction of frames with exactly one such shape; ``size_stability`` =
  1 - mean relative deviation of the area from its median; ``smoothness`` = fraction of
  frame triples (present in all three) whose steps are at most ``max_speed + 1`` px and, for
  non-agent shapes, whose acceleration is at most 1 px unless the shape is within
  ``2 max_speed + 1`` px of a wall or another shape in the middle frame (a bounce). The
  three factors are reported too.
* ``action_error_px`` (px, lower is better) and ``action_score``: distance of the detected
  agent centroid to the simulator's agent centroid under the given actions (a frame
  without the agent counts ``size`` px); the score is ``mean(max(0, 1 - err / s_min))``
  with ``s_min`` the smallest shape size. With a ``Scene`` target the simulator starts from
  the scene; with a caption it starts from the agent detected in frame 0 and is blocked by
  the other shapes as detected (the world's agent rule).

Fidelity, from the renderer's own conventions (a shape is one flat palette colour with a
one-pixel edge on an exactly black background), lower is better for the first three:

* ``background_residual`` and ``background_residual_p90``: mean and 90th percentile brightness
  (brightest channel, 0-1) of the pixels off the shapes. Off-shape means farther than one pixel
  (8-neighbourhood) from every component the detector counts as a shape (any colour, at least
  ``min_area`` px, duplicates included), so a blurred edge belongs to ``edge_sharpness`` and
  speckle, faint ghosts and blobs too small to be a shape belong here. The mask comes from the
  detection, not from a ``Scene`` target: a generated video is free to place its shapes
  anywhere the caption allows, so only what is in the video can say where its shapes are. A
  render scores exactly 0.
* ``colour_error``: mean RGB distance (channels on a 0-1 scale) of the pixels inside each
  detected shape to its palette colour. "Inside" is the shape's component with its holes
  filled, eroded by one pixel: holes count, edges do not. 0 for a render.
* ``edge_sharpness`` (higher is better): mean step, across each detected shape's outline (holes
  filled), from a pixel of the shape to its outside 4-neighbour (not on another shape),
  measured along the shape's palette colour (``<p, c> / <c, c>``: 1 = the palette colour, 0 =
  black). A render steps from the colour to black in one pixel: 1; blur, faint shapes, halos
  and speckle at the edge lower it.

Colour error and sharpness are undefined (NaN) for a video in which no shape is detected.

``ShapesOracle.drift`` computes caption adherence and temporal consistency over windows of
a long video and reports the drop from the first to the last window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from causal_rcm.data.shapes import (
    AGENT_COLOUR,
    BACKGROUND,
    DIRECTIONS,
    KINDS,
    PALETTE,
    CaptionObject,
    Scene,
    ShapesConfig,
    centroids,
    parse_caption,
    shape_mask,
    simulate_agent,
)
from causal_rcm.errors import UserError

__all__ = ["Detection", "VideoEvaluation", "OracleReport", "DriftReport", "ShapesOracle", "as_frames"]

COLOURS: tuple[str, ...] = tuple(PALETTE)
_PALETTE_RGB = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)  # (K + 1, 3), background first


def as_frames(videos: Any) -> np.ndarray:
    """Videos as float32 ``[B, F, H, W, 3]`` on the 0-255 scale.

    Accepts uint8 ``[F, H, W, 3]`` / ``[B, F, H, W, 3]`` (pixels) or float ``[3, F, H, W]`` /
    ``[B, 3, F, H, W]`` in ``[-1, 1]`` (model side), as numpy arrays or torch tensors. Floats are
    rounded to whole levels as ``video.to_uint8`` does: the oracle scores the pixels a viewer is shown.
    """
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu()
        videos = videos.numpy() if videos.dtype == torch.uint8 else videos.float().numpy()
    x = np.asarray(videos)
    if x.dtype == np.uint8:
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != 3:
            raise UserError(f"uint8 videos must be [F, H, W, 3] or [B, F, H, W, 3], got shape {list(x.shape)}")
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"videos must be uint8 pixels or floats in [-1, 1], got dtype {x.dtype}")
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[1] != 3:
        raise UserError(f"float videos must be [3, F, H, W] or [B, 3, F, H, W], got shape {list(x.shape)}")
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).transpose(0, 2, 3, 4, 1).astype(np.float32)


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components within each ``[H, W]`` plane of bool ``mask`` ``[..., H, W]``.

    Returns int64 labels of the same shape: 0 off the mask, else 1 + the largest flat index
    of the component. Max-label propagation with pointer jumping (a label names a pixel of
    the same component whose label is at least as large), so it converges in few passes.
    """
    n = mask.size
    lab = np.where(mask, np.arange(1, n + 1, dtype=np.int64).reshape(mask.shape), 0)
    while True:
        new = lab.copy()
        np.maximum(new[..., 1:, :], lab[..., :-1, :], out=new[..., 1:, :])
        np.maximum(new[..., :-1, :], lab[..., 1:, :], out=new[..., :-1, :])
        np.maximum(new[..., :, 1:], lab[..., :, :-1], out=new[..., :, 1:])
        np.maximum(new[..., :, :-1], lab[..., :, 1:], out=new[..., :, :-1])
        new = np.where(mask, new, 0)
        new = np.where(mask, new.reshape(-1)[np.maximum(new, 1).reshape(-1) - 1].reshape(new.shape), 0)
        if np.array_equal(new, lab):
            return lab
        lab = new


@dataclass
class Detection:
    """Per-colour tracks of one video; arrays are indexed ``[colour, frame]`` in ``COLOURS`` order.

    ``present`` bool ``[K, F]``; ``centroid`` float ``[K, F, 2]`` (x, y) px, NaN when absent;
    ``area`` int ``[K, F]``; ``bbox`` int ``[K, F, 4]`` (x0, y0, x1, y1), end-exclusive;
    ``kind`` int ``[K, F]`` index into ``KINDS`` or -1; ``extra`` int ``[K, F]`` further
    components of at least ``min_area`` px (duplicates). Pixel fidelity (module docstring):
    ``residual`` float ``[F, H, W]`` brightness off the shapes, NaN on and next to them;
    ``colour_error`` and ``edge`` float ``[K, F]``, NaN where the colour is absent.
    """

    present: np.ndarray
    centroid: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    kind: np.ndarray
    extra: np.ndarray
    frame_size: int
    residual: np.ndarray
    colour_error: np.ndarray
    edge: np.ndarray

    @property
    def num_frames(self) -> int:
        return self.present.shape[1]

    def window(self, start: int, stop: int) -> Detection:
        """The detection of frames ``[start, stop)``."""
        s = slice(start, stop)
        return Detection(
            self.present[:, s], self.centroid[:, s], self.area[:, s], self.bbox[:, s], self.kind[:, s],
            self.extra[:, s], self.frame_size, self.residual[s], self.colour_error[:, s], self.edge[:, s],
        )

    def fidelity(self) -> dict[str, float]:
        """The pixel-fidelity metrics of these frames (module docstring); NaN where undefined."""
        off = self.residual[~np.isnan(self.residual)]
        return {
            "background_residual": float(off.mean()) if off.size else float("nan"),
            "background_residual_p90": float(np.percentile(off, 90)) if off.size else float("nan"),
            "colour_error": _nanmean(self.colour_error),
            "edge_sharpness": _nanmean(self.edge),
        }


@dataclass
class VideoEvaluation:
    """Oracle result for one video: ``metrics`` (NaN where undefined), what the target
    expects, what was detected (direction ``None`` if not measured or no clear motion),
    the raw ``detection`` and the per-frame agent error in px (if actions were given)."""

    metrics: dict[str, float]
    expected: list[CaptionObject]
    detected: list[CaptionObject]
    detection: Detection
    action_error: np.ndarray | None = None


@dataclass
class OracleReport:
    """Mean metrics over a batch (``metrics``) and one ``VideoEvaluation`` per video."""

    metrics: dict[str, float]
    videos: list[VideoEvaluation] = field(default_factory=list)


@dataclass
class DriftReport:
    """Oracle metrics over consecutive windows of a long video.

    ``starts`` int ``[N]`` first frame of each window; ``caption_adherence``,
    ``temporal_consistency`` and ``quality`` (their product) float ``[N]``;
    ``drift = max(0, quality[0] - quality[-1])`` in ``[0, 1]`` (0 = no degradation).
    """

    starts: np.ndarray
    caption_adherence: np.ndarray
    temporal_consistency: np.ndarray
    quality: np.ndarray
    drift: float
    adherence: list[dict[str, float]] = field(default_factory=list)  # each window's colour / shape / caption adherence
    consistency: list[dict[str, float]] = field(default_factory=list)  # each window's count / size stability, smoothness


def _nanmean(x: np.ndarray) -> float:
    """Mean of the entries that are not NaN; NaN (and no warning) when there are none."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[..., y, x] = x[..., y + dy, x + dx]`` over the last two axes, 0 (False) beyond the frame."""
    H, W = x.shape[-2:]
    out = np.zeros_like(x)
    out[..., max(0, -dy) : H - max(0, dy), max(0, -dx) : W - max(0, dx)] = x[
        ..., max(0, dy) : H - max(0, -dy), max(0, dx) : W - max(0, -dx)
    ]
    return out


_NEIGHBOURS_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_NEIGHBOURS_8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def _jaccard(a: set, b: set) -> float:
    return 1.0 if not a | b else len(a & b) / len(a | b)


class ShapesOracle:
    """Analytic detector and metrics for shapes-world videos of one ``ShapesConfig``.

    ``colour_threshold``: RGB distance (0-255 scale) beyond which a pixel belongs to no
    palette entry. ``min_area``: smallest component counted as a shape (default a quarter
    of the smallest shape's box). ``presence``: fraction of frames a colour must be seen in
    to count as present in the video.
    """

    def __init__(
        self,
        config: ShapesConfig | None = None,
        colour_threshold: float = 100.0,
        min_area: int | None = None,
        presence: float = 0.5,
    ):
        self.config = config if config is not None else ShapesConfig()
        self.colour_threshold = float(colour_threshold)
        self.min_area = int(min_area) if min_area is not None else max(4, self.config.shape_size[0] ** 2 // 4)
        self.presence = float(presence)

    # ---------------------------------------------------------------- detection

    def detect(self, video: Any) -> Detection:
        """Detect the shapes of one video (uint8 ``[F, H, W, 3]`` or float ``[3, F, H, W]``)."""
        frames = as_frames(video)
        if frames.shape[0] != 1:
            raise UserError(f"detect takes one video, got a batch of {frames.shape[0]}")
        return self._detect(frames[0])

    def _detect(self, frames: np.ndarray) -> Detection:
        F, H, W, _ = frames.shape
        if H != self.config.size or W != self.config.size:
            raise UserError(f"video is {H}x{W} px but the oracle is configured for {self.config.size} px frames")
        K = len(COLOURS)
        d2 = ((frames[..., None, :] - _PALETTE_RGB) ** 2).sum(-1)  # (F, H, W, K + 1)
        nearest = np.where(d2.min(-1) <= self.colour_threshold**2, d2.argmin(-1), 0)  # (F, H, W)
        masks = nearest[None] == np.arange(1, K + 1).reshape(K, 1, 1, 1)  # (K, F, H, W)
        lab = _components(masks)

        areas = np.bincount(lab.reshape(-1), minlength=lab.size + 1)
        areas[0] = 0
        ids = np.nonzero(areas)[0]
        cf = (ids - 1) // (H * W)  # flat (colour, frame) of each component
        a = areas[ids]
        order = np.lexsort((a, cf))
        ids, cf, a = ids[order], cf[order], a[order]
        last = np.r_[cf[1:] != cf[:-1], True] if len(cf) else np.zeros(0, dtype=bool)
        best_label = np.full(K * F, -1, dtype=np.int64)
        best_area = np.zeros(K * F, dtype=np.int64)
        best_label[cf[last]], best_area[cf[last]] = ids[last], a[last]
        present = best_area >= self.min_area
        extra = np.where(present, np.bincount(cf[a >= self.min_area], minlength=K * F) - 1, 0)
        best_label[~present] = -1

        member = lab == best_label.reshape(K, F, 1, 1)  # (K, F, H, W)
        area = member.sum((2, 3))
        rows, cols = member.sum(3), member.sum(2)  # (K, F, H), (K, F, W)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (cols * (np.arange(W) + 0.5)).sum(-1) / area
            cy = (rows * (np.arange(H) + 0.5)).sum(-1) / area
        rows, cols = rows > 0, cols > 0
        bbox = np.stack(
            [cols.argmax(-1), rows.argmax(-1), W - cols[..., ::-1].argmax(-1), H - rows[..., ::-1].argmax(-1)], -1
        )
        kind = np.full((K, F), -1, dtype=np.int64)
        present = present.reshape(K, F)
        for k, f in zip(*np.nonzero(present)):
            x0, y0, x1, y1 = bbox[k, f]
            crop = member[k, f, y0:y1, x0:x1]
            ious = [(crop & shape_mask(n, y1 - y0, x1 - x0)).sum() / (crop | shape_mask(n, y1 - y0, x1 - x0)).sum() for n in KINDS]
            kind[k, f] = int(np.argmax(ious))
        centroid = np.where(present[..., None], np.stack([cx, cy], -1), np.nan)
        residual, colour_error, edge = self._pixels(frames, lab, areas, member, present)
        return Detection(present, centroid, area, bbox, kind, extra.reshape(K, F), W, residual, colour_error, edge)

    def _pixels(
        self, frames: np.ndarray, lab: np.ndarray, areas: np.ndarray, member: np.ndarray, present: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Background residual ``[F, H, W]``, colour error and edge sharpness ``[K, F]`` (module docstring).

        ``frames`` ``[F, H, W, 3]`` (0-255), ``lab`` ``[K, F, H, W]`` component labels and ``areas``
        their sizes by label, ``member`` ``[K, F, H, W]`` the shape of each colour, ``present`` ``[K, F]``.
        """
        on_shape = (areas[lab] >= self.min_area).any(0)  # (F, H, W): every shape-sized component, duplicates too
        near = on_shape | np.logical_or.reduce([_shifted(on_shape, dy, dx) for dy, dx in _NEIGHBOURS_8])
        residual = np.where(near, np.nan, frames.max(-1) / 255.0).astype(np.float32)  # (F, H, W)

        # A shape with its holes filled (pixels the noise pushed off its colour), so that a hole is
        # neither an edge nor left out of the colour error: what is not reachable from the frame's border.
        outside = _components(~member[present])  # (P, H, W), the present shapes only
        border = np.concatenate([outside[..., 0, :], outside[..., -1, :], outside[..., :, 0], outside[..., :, -1]], -1)
        filled = member.copy()
        filled[present] |= ~np.isin(outside, border[border > 0])

        colours = _PALETTE_RGB[1:]  # (K, 3)
        core = filled & np.logical_and.reduce([_shifted(filled, dy, dx) for dy, dx in _NEIGHBOURS_4])
        core |= filled & ~core.any((2, 3), keepdims=True)  # a shape too thin to erode keeps its pixels
        distance = np.linalg.norm(frames[None] - colours[:, None, None, None], axis=-1) / 255.0  # (K, F, H, W)
        count = core.sum((2, 3))
        level = np.moveaxis(frames @ colours.T / (colours**2).sum(-1), -1, 0)  # (K, F, H, W): 1 = the colour, 0 = black
        steps = np.zeros(present.shape, dtype=np.float64)
        pairs = np.zeros(present.shape, dtype=np.int64)
        for dy, dx in _NEIGHBOURS_4:
            ok = filled & _shifted(~filled & ~on_shape[None], dy, dx)  # a shape pixel whose neighbour is off every shape
            steps += np.where(ok, level - _shifted(level, dy, dx), 0.0).sum((2, 3))
            pairs += ok.sum((2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            colour_error = np.where(present, np.where(core, distance, 0.0).sum((2, 3)) / count, np.nan)
            edge = np.where(present & (pairs > 0), steps / pairs, np.nan)
        return residual, colour_error, edge

    # ---------------------------------------------------------------- metrics

    def _targets(self, targets: Any, n: int) -> list[tuple[list[CaptionObject], Scene | None]]:
        if isinstance(targets, (str, Scene)):
            targets = [targets]
        targets = list(targets)
        if len(targets) != n:
            raise UserError(f"got {len(targets)} captions/scenes for {n} videos: give one per video")
        return [(t.objects, t) if isinstance(t, Scene) else (parse_caption(t), None) for t in targets]

    def _adherence(self, det: Detection, objects: list[CaptionObject]) -> tuple[dict[str, float], dict[str, str]]:
        frac = det.present.mean(1)
        found = {COLOURS[k] for k in np.nonzero(frac >= self.presence)[0]}
        kinds = {}
        for c in found:
            k = COLOURS.index(c)
            kinds[c] = KINDS[Counter(det.kind[k, det.present[k]].tolist()).most_common(1)[0][0]]
        expected = {o.colour for o in objects}
        right = {(o.colour, o.kind) for o in objects if kinds.get(o.colour) == o.kind}
        metrics = {
            "colour_adherence": _jaccard(expected, found),
            "shape_adherence": len(right) / len(objects) if objects else float("nan"),
            "caption_adherence": len(right) / len(expected | found) if expected | found else 1.0,
        }
        return metrics, kinds

    def _direction(self, det: Detection, colour: str) -> str | None:
        k = COLOURS.index(colour)
        n = min(det.num_frames, self.config.direction_frames)
        t = np.nonzero(det.present[k, :n])[0]
        if len(t) < 2:
            return None
        c = det.centroid[k, t]  # (T, 2)
        tc = t - t.mean()
        slope = (tc[:, None] * (c - c.mean(0))).sum(0) / (tc**2).sum()  # (2,) px/frame
        axis = int(np.argmax(np.abs(slope)))
        main, across = abs(slope[axis]), abs(slope[1 - axis])
        if main < 0.5 or across > 0.5 * main:
            return None
        step = [0, 0]
        step[axis] = int(np.sign(slope[axis]))
        return next(d for d, v in DIRECTIONS.items() if list(v) == step)

    def _consistency(self, det: Detection, agents: set[str]) -> dict[str, float]:
        F, S = det.num_frames, det.frame_size
        vmax = self.config.max_speed
        near = 2 * vmax + 1
        tracked = np.nonzero(det.present.mean(1) >= 0.25)[0]
        if len(tracked) == 0:
            return dict.fromkeys(("count_stability", "size_stability", "smoothness", "temporal_consistency"), 0.0)
        p_all, s_all, m_all, c_all = [], [], [], []
        for k in tracked:
            pres = det.present[k]
            p = float((pres & (det.extra[k] == 0)).mean())
            a = det.area[k, pres].astype(np.float64)
            s = 1.0 - float(np.minimum(1.0, np.abs(a / np.median(a) - 1.0)).mean())
            if F < 3:
                m = 1.0
            else:
                ok = 0
                for t in range(1, F - 1):
                    if not pres[t - 1 : t + 2].all():
                        continue
                    c = det.centroid[k, t - 1 : t + 2]
                    d1, d2 = c[1] - c[0], c[2] - c[1]
                    if max(np.abs(d1).max(), np.abs(d2).max()) > vmax + 1:
                        continue
                    if COLOURS[k] not in agents and np.abs(d2 - d1).max() > 1.0:
                        x0, y0, x1, y1 = det.bbox[k, t]
                        by_wall = min(x0, y0, S - x1, S - y1) <= near
                        others = det.bbox[det.present[:, t] & (np.arange(len(COLOURS)) != k), t]
                        gaps = np.maximum(
                            np.maximum(others[:, 0] - x1, x0 - others[:, 2]), np.maximum(others[:, 1] - y1, y0 - others[:, 3])
                        )
                        if not (by_wall or (gaps <= near).any()):
                            continue
                    ok += 1
                m = ok / (F - 2)
            p_all.append(p), s_all.append(s), m_all.append(m), c_all.append(p * s * m)
        return {
            "count_stability": float(np.mean(p_all)),
            "size_stability": float(np.mean(s_all)),
            "smoothness": float(np.mean(m_all)),
            "temporal_consistency": float(np.mean(c_all)),
        }

    def _action_error(self, det: Detection, scene: Scene | None, actions: np.ndarray) -> np.ndarray:
        F, S = det.num_frames, det.frame_size
        if len(actions) != F:
            raise UserError(f"got {len(actions)} actions for a {F}-frame video: give one action per frame")
        k = COLOURS.index(AGENT_COLOUR)
        if scene is not None:
            if scene.agent_index is None:
                raise UserError("actions were given for a scene without an agent")
            truth = centroids(scene, F, actions)[:, scene.agent_index]
        elif not det.present[k, 0]:
            return np.full(F, float(S))
        else:
            x0, y0, x1, y1 = det.bbox[k, 0]
            others = det.present & (np.arange(len(COLOURS)) != k)[:, None]  # (K, F)
            obstacles = [det.bbox[others[:, t], t] for t in range(F)]
            pos = simulate_agent(x0, y0, max(x1 - x0, y1 - y0), actions, self.config.agent_speed, S, obstacles)
            truth = pos + (det.centroid[k, 0] - np.array([x0, y0]))
        err = np.linalg.norm(det.centroid[k] - truth, axis=-1)
        return np.where(det.present[k], err, float(S))

    def _evaluate_one(
        self, det: Detection, objects: list[CaptionObject], scene: Scene | None, actions: np.ndarray | None
    ) -> VideoEvaluation:
        metrics, kinds = self._adherence(det, objects)
        moving = [o for o in objects if o.direction is not None]
        directions = {o.colour: self._direction(det, o.colour) for o in moving}
        metrics["direction_accuracy"] = (
            float(np.mean([directions[o.colour] == o.direction for o in moving])) if moving else float("nan")
        )
        agents = {o.colour for o in objects if o.agent}
        metrics.update(self._consistency(det, agents))
        metrics.update(det.fidelity())
        error = None
        if actions is not None:
            error = self._action_error(det, scene, actions)
            metrics["action_error_px"] = float(error.mean())
            tol = self.config.shape_size[0]
            metrics["action_score"] = float(np.clip(1.0 - error / tol, 0.0, 1.0).mean())
        detected = [
            CaptionObject(c, kinds[c], directions.get(c) if c not in agents else None, c in agents) for c in kinds
        ]
        return VideoEvaluation(metrics, objects, detected, det, error)

    def evaluate(self, videos: Any, targets: Any, actions: Any = None) -> OracleReport:
        """Score videos against their captions or scenes.

        ``videos``: uint8 ``[B, F, H, W, 3]`` or float ``[B, 3, F, H, W]`` in ``[-1, 1]`` (a
        single video without ``B`` too). ``targets``: one caption (str) or ``Scene`` per
        video. ``actions``: int ``[B, F]`` for agent videos, or ``None``.
        """
        frames = as_frames(videos)
        B = frames.shape[0]
        pairs = self._targets(targets, B)
        if actions is not None:
            acts = np.asarray(actions.cpu() if isinstance(actions, torch.Tensor) else actions, dtype=np.int64)
            acts = acts.reshape(B, -1) if acts.size == B * frames.shape[1] else acts
            if acts.shape != (B, frames.shape[1]):
                raise UserError(f"actions must be [B, F] = [{B}, {frames.shape[1]}], got shape {list(acts.shape)}")
        videos_out = [
            self._evaluate_one(self._detect(frames[i]), objs, scene, None if actions is None else acts[i])
            for i, (objs, scene) in enumerate(pairs)
        ]
        keys = list(videos_out[0].metrics)
        metrics = {}
        for key in keys:
            values = np.array([v.metrics[key] for v in videos_out], dtype=np.float64)
            if not np.isnan(values).all():
                metrics[key] = float(np.nanmean(values))
        return OracleReport(metrics, videos_out)

    def drift(self, video: Any, target: str | Scene, window: int = 8) -> DriftReport:
        """Caption adherence and temporal consistency over consecutive ``window``-frame windows
        of one long video (a trailing partial window is dropped)."""
        frames = as_frames(video)
        if frames.shape[0] != 1:
            raise UserError(f"drift takes one video, got a batch of {frames.shape[0]}")
        F = frames.shape[1]
        if window < 3 or F < window:
            raise UserError(f"drift needs window >= 3 and a video of at least one window, got window {window}, {F} frames")
        (objects, _), = self._targets([target], 1)
        det = self._detect(frames[0])
        agents = {o.colour for o in objects if o.agent}
        starts = np.arange(0, F - window + 1, window)
        adherence, parts = [], []
        for s in starts:
            w = det.window(int(s), int(s) + window)
            adherence.append(self._adherence(w, objects)[0])
            parts.append(self._consistency(w, agents))
        cap = np.array([a["caption_adherence"] for a in adherence])
        con = np.array([p["temporal_consistency"] for p in parts])
        quality = cap * con
        return DriftReport(starts, cap, con, quality, float(max(0.0, quality[0] - quality[-1])), adherence, parts)
