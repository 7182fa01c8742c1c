"""Video conversions and files: float ``[3, F, H, W]`` in ``[-1, 1]`` <-> uint8 ``[F, H, W, 3]``,
mp4 (PyAV, H.264) and GIF (Pillow) writers, a clip reader for any video PyAV decodes (resampled in time,
centre-cropped and resized), nearest-neighbour upscaling and side-by-side grids; the reader of a given first frame
(:func:`read_image`, from a file or uploaded bytes) and :func:`fit_frames`, which brings frames of any size to a
model's.

The writers and readers import their library on first use and raise ``UserError`` with the install
command if it is missing, so the rest of the package does not depend on them. :func:`read_image` checks what it
is given before decoding it: its first bytes (its type), its byte size and the dimensions in its header
(``limits.MAX_IMAGE_BYTES``, ``MAX_IMAGE_SIDE``), so a non-image or a decompression bomb is one line, never a
decode.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from causal_rcm.errors import UserError
from causal_rcm.limits import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, MAX_VIDEO_BYTES

__all__ = ["VIDEO_SUFFIXES", "VideoTooShort", "to_uint8", "uint8_frames", "from_uint8", "upscale", "grid", "read_clip",
           "write_gif", "write_mp4", "IMAGE_TYPES", "image_type", "read_image", "fit_frames"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` or ``[B, 3, F, H, W]`` floats in ``[-1, 1]`` -> uint8 ``[F, H, W, 3]`` / ``[B, F, H, W, 3]``.

    Values are clipped to ``[-1, 1]`` and rounded: ``round((x + 1) * 127.5)``.
    """
    return uint8_frames(video).cpu().numpy()


def uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """:func:`to_uint8` on the video's device: a uint8 tensor ``[..., F, H, W, 3]`` (a stream's decode converts on its
    GPU and copies the bytes)."""
    if video.ndim not in (4, 5) or video.shape[-4] != 3:
        raise UserError(f"expected a video [3, F, H, W] or [B, 3, F, H, W], got shape {list(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1)  # (..., F, H, W, 3)


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


def read_clip(path: str | Path, *, fps: float, count: int | None, size: tuple[int, int]) -> np.ndarray:
    """The first ``count`` frames of the video at ``path`` resampled to ``fps``, uint8 ``[count, H, W, 3]`` for
    ``size = (H, W)``; ``count=None``: the whole video (at most ``MAX_VIDEO_BYTES`` of frames, else UserError;
    none for a video without a frame).

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
    most = count if count is not None else MAX_VIDEO_BYTES // (3 * H * W) + 1
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
            while shown is not None and len(frames) < most and len(frames) / fps < t:
                frames.append(image)  # the previous frame is on screen at time len(frames) / fps
            if len(frames) == most:
                break
            shown, seen = t, seen + 1
            image = fit_frame(frame.to_ndarray(format="rgb24"), H, W)
        end = None if shown is None else shown + 1 / rate  # the last frame stays one source frame long
        while end is not None and len(frames) < most and len(frames) / fps < end:
            frames.append(image)
    if count is None:
        if len(frames) == most:
            raise UserError(f"{path} holds more than {MAX_VIDEO_BYTES / 2**30:g} GiB of frames at {W}x{H} px; cut it shorter")
        return np.stack(frames) if frames else np.zeros((0, H, W, 3), dtype=np.uint8)
    if len(frames) < count:
        length = 0.0 if end is None else end
        raise VideoTooShort(f"too short: {length:.2f} s, and {count} frames at {fps:g} fps need more than {(count - 1) / fps:.2f} s")
    return np.stack(frames)


# The image files a first frame may come in, by the bytes they start with (what they are, whatever their name says).
IMAGE_TYPES: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "WebP": (b"RIFF",),  # and "WEBP" at byte 8
    "BMP": (b"BM",),
}


def image_type(data: bytes) -> str | None:
    """The type of an image file from its first bytes (one of :data:`IMAGE_TYPES`), or None."""
    for name, magics in IMAGE_TYPES.items():
        if any(data.startswith(m) for m in magics) and (name != "WebP" or data[8:12] == b"WEBP"):
            return name
    return None


def read_image(source: str | Path | bytes, what: str | None = None) -> np.ndarray:
    """An image file (a path, or its bytes as uploaded) -> uint8 ``[H, W, 3]`` RGB (alpha dropped, grey expanded).

    Checked before decoding (module docstring): at most ``MAX_IMAGE_BYTES``, a PNG, JPEG, GIF, WebP or BMP by its
    first bytes, at most ``MAX_IMAGE_SIDE`` px a side; an animated image gives its first frame. ``what`` names the
    input in errors (default: the path, or "the image"). UserError, one line, for each."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UserError("reading images needs Pillow: pip install pillow") from None
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), what or "the image"
    else:
        path, name = Path(source), what or str(source)
        if not path.is_file():
            raise UserError(f"{name}: no such file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise UserError(f"{name} is {path.stat().st_size / 2**20:.1f} MiB, over the {MAX_IMAGE_BYTES / 2**20:g} MiB limit of an image")
        data = path.read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise UserError(f"{name} is {len(data) / 2**20:.1f} MiB, over the {MAX_IMAGE_BYTES / 2**20:g} MiB limit of an image")
    if image_type(data) is None:
        kinds = list(IMAGE_TYPES)
        raise UserError(f"{name} is not an image: give a {', '.join(kinds[:-1])} or {kinds[-1]} file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            W, H = img.size  # from the header: nothing decoded yet
            if not (1 <= W <= MAX_IMAGE_SIDE and 1 <= H <= MAX_IMAGE_SIDE):
                raise UserError(f"{name} is {W}x{H} px; an image may be at most {MAX_IMAGE_SIDE} px a side")
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{name} cannot be read as an image: {exc}") from None
    return np.ascontiguousarray(rgb)


def fit_frames(frames: np.ndarray, height: int, width: int, *, warn=None) -> np.ndarray:
    """uint8 ``[F, h, w, 3]`` -> ``[F, height, width, 3]``, each frame by :func:`fit_frame` (the centre crop of the
    target's aspect ratio, resized); frames of that size already are returned as they are.

    ``warn(message)`` is called once when the crop cuts more than a pixel's rounding (another aspect ratio)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise UserError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    F, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    kept = (h, round(h * width / height)) if w * height > h * width else (round(w * height / width), w)  # fit_frame's crop
    if warn is not None and (abs(kept[1] - w) > 1 or abs(kept[0] - h) > 1):
        warn(f"the given frames are {w}x{h} px, another aspect ratio than the model's {width}x{height}: "
             f"centre-cropped to {kept[1]}x{kept[0]} px, then resized")
    return np.stack([fit_frame(frame, height, width) for frame in frames])
