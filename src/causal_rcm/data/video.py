"""Video conversions and files: float ``[3, F, H, W]`` in ``[-1, 1]`` <-> uint8 ``[F, H, W, 3]``,
mp4 (PyAV, H.264) and GIF (Pillow) writers, a clip reader for any video PyAV decodes (resampled in time,
centre-cropped and resized), nearest-neighbour upscaling and side-by-side grids.

The writers import their library on first use and raise ``UserError`` with the install
command if it is missing, so the rest of the package does not depend on them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from causal_rcm.errors import UserError

__all__ = ["VIDEO_SUFFIXES", "VideoTooShort", "to_uint8", "from_uint8", "upscale", "grid", "read_clip", "write_gif", "write_mp4"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` or ``[B, 3, F, H, W]`` floats in ``[-1, 1]`` -> uint8 ``[F, H, W, 3]`` / ``[B, F, H, W, 3]``.

    Values are clipped to ``[-1, 1]`` and rounded: ``round((x + 1) * 127.5)``.
    """
    if video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise UserError(f"expected a video [3, F, H, W] or [B, 3, F, H, W], got shape {list(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.movedim(-4, -1).numpy()  # (..., F, H, W, 3)


def from_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` or ``[B, F, H, W, 3]`` -> float32 ``[3, F, H, W]`` / ``[B, 3, F, H, W]`` in ``[-1, 1]``.

    Exact inverse of ``to_uint8`` on uint8 input. A tensor is converted on its own device.
    """
    x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))
    if x.dtype != torch.uint8 or x.ndim not in (4, 5) or x.shape[-1] != 3:
        raise UserError(f"expected uint8 frames [F, H, W, 3] or [B, F, H, W, 3], got {x.dtype} {list(x.shape)}")
    return x.movedim(-1, -4).float() / 127.5 - 1.0


def _frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    x = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"expected uint8 frames [F, H, W, 3], got {x.dtype} {list(x.shape)}: convert with to_uint8")
    return x


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 ``[F, H, W, 3]`` by an integer ``scale``."""
    frames = _frames(frames)
    if scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale}")
    return frames.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames


def grid(videos: Sequence[np.ndarray], columns: int | None = None, pad: int = 2, pad_value: int = 128) -> np.ndarray:
    """Tile uint8 videos ``[F_i, H, W, 3]`` side by side: ``[F, rows (H + pad) + pad, cols (W + pad) + pad, 3]``.

    ``F = max F_i``; shorter videos hold their last frame. ``columns`` defaults to all in one
    row. All videos must share ``H, W``.
    """
    videos = [_frames(v) for v in videos]
    if not videos:
        raise UserError("grid needs at least one video")
    H, W = videos[0].shape[1:3]
    if any(v.shape[1:3] != (H, W) for v in videos):
        raise UserError(f"grid needs videos of one size, got {sorted({v.shape[1:3] for v in videos})}")
    cols = columns or len(videos)
    rows = math.ceil(len(videos) / cols)
    F = max(len(v) for v in videos)
    out = np.full((F, rows * (H + pad) + pad, cols * (W + pad) + pad, 3), pad_value, dtype=np.uint8)
    for n, v in enumerate(videos):
        r, c = divmod(n, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[:, y : y + H, x : x + W] = np.concatenate([v, np.repeat(v[-1:], F - len(v), axis=0)])
    return out


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 8.0, scale: int = 1) -> Path:
    """Write uint8 ``[F, H, W, 3]`` as a looping GIF (lossless for up to 256 colours)."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("writing GIFs needs Pillow: pip install pillow") from None
    frames = upscale(frames, scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=False, disposal=1
    )
    return path


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 8.0, scale: int = 1, crf: int = 18) -> Path:
    """Write uint8 ``[F, H, W, 3]`` as H.264 mp4 (yuv420p; odd sizes are padded by one black pixel)."""
    try:
        import av
    except ImportError:
        raise UserError("writing mp4 needs PyAV: pip install av") from None
    frames = upscale(frames, scale)
    F, H, W, _ = frames.shape
    if H % 2 or W % 2:
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class VideoTooShort(ValueError):
    """A video that ends before the clip asked of it."""


def fit_frame(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> ``[height, width, 3]``: the largest centred crop of the target's aspect ratio, resized
    (Pillow's bicubic filter, which averages over the source pixels it shrinks)."""
    from PIL import Image

    h, w = image.shape[:2]
    if h * width > w * height:  # taller than the target: crop rows
        crop = round(w * height / width)
        top = (h - crop) // 2
        image = image[top : top + crop]
    else:
        crop = round(h * width / height)
        left = (w - crop) // 2
        image = image[:, left : left + crop]
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BICUBIC))


def read_clip(path: str | Path, *, fps: float, count: int, size: tuple[int, int]) -> np.ndarray:
    """The first ``count`` frames of the video at ``path`` resampled to ``fps``, uint8 ``[count, H, W, 3]`` for
    ``size = (H, W)``.

    Frame ``k`` is the source frame on screen at time ``k / fps`` from the first frame (each source frame shows
    from its timestamp until the next one), so any frame rate, constant or not, maps to ``fps``; frames are
    centre-cropped and resized (:func:`fit_frame`) as they are chosen, and decoding stops once the clip is
    complete. Raises :class:`VideoTooShort` for a video that ends first, ``ValueError`` / ``OSError`` (PyAV's
    errors) for one that cannot be decoded."""
    try:
        import av
    except ImportError:
        raise UserError("reading videos needs PyAV: pip install av") from None
    H, W = size
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or fps)
        start = shown = image = None
        seen = 0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else seen / rate
            start = t if start is None else start
            t -= start
            while shown is not None and len(frames) < count and len(frames) / fps < t:
                frames.append(image)  # the previous frame is on screen at time len(frames) / fps
            if len(frames) == count:
                break
            shown, seen = t, seen + 1
            image = fit_frame(frame.to_ndarray(format="rgb24"), H, W)
        end = None if shown is None else shown + 1 / rate  # the last frame stays one source frame long
        while end is not None and len(frames) < count and len(frames) / fps < end:
            frames.append(image)
    if len(frames) < count:
        length = 0.0 if end is None else end
        raise VideoTooShort(f"too short: {length:.2f} s, and {count} frames at {fps:g} fps need more than {(count - 1) / fps:.2f} s")
    return np.stack(frames)
