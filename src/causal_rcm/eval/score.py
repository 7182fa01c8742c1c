"""Sample a model on shapes-world prompts, decode, and score with the analytic oracle (caption adherence,
direction, drift on long rollouts, minute-long streams clip by clip). A source without an oracle (recorded
Atari episodes) is scored by pixels against its held-out windows instead (:func:`pixel_metrics`)."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from causal_rcm.data.shapes import DIRECTIONS
from causal_rcm.data.source import ShapesSource, VideoSource
from causal_rcm.data.video import grid, to_uint8, write_gif
from causal_rcm.devices import resolve_device
from causal_rcm.diffusion.samplers import SamplerSpec, check_window, sample
from causal_rcm.errors import UserError
from causal_rcm.eval.stream import score_clips
from causal_rcm.limits import check_video_bytes
from causal_rcm.models.adapters import load_model
from causal_rcm.spec import PipelineSpec

BATCH = 16  # videos sampled together


class NetworkCalls:
    """Counts a model's forward calls (network evaluations) with a hook; optionally a progress bar over them.

    ``with NetworkCalls(model, total, desc="teacher") as calls: ...``, then ``calls.count``.
    """

    def __init__(self, model: torch.nn.Module, total: int | None = None, desc: str | None = None) -> None:
        self.model, self.total, self.desc = model, total, desc
        self.count = 0
        self._bar = self._hook = None

    def __enter__(self) -> NetworkCalls:
        if self.desc is not None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="call", dynamic_ncols=True, leave=False)
        self._hook = self.model.register_forward_hook(self._called)
        return self

    def _called(self, module, args, output) -> None:
        self.count += 1
        if self._bar is not None:
            self._bar.update(1)

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        if self._bar is not None:
            self._bar.close()


@torch.no_grad()
def sample_videos(
    model, source: VideoSource, captions: list[str], spec: SamplerSpec, *, num_frames: int | None = None,
    seed: int = 0, actions: torch.Tensor | None = None, batch_size: int = BATCH,
    switches: list[tuple[int, list[str]]] = (),
) -> torch.Tensor:
    """Generate one video per caption -> pixels (B, 3, F, H, W) in [-1, 1] (float32, CPU). ``switches``: ``(chunk,
    one caption per video)`` prompt switches of a causal model (``diffusion.samplers.causal_sample_stream``)."""
    device = next(model.parameters()).device
    shape = source.latent_shape(num_frames)
    generator = torch.Generator(device).manual_seed(seed)
    videos = []
    for start in range(0, len(captions), batch_size):
        part = captions[start : start + batch_size]
        B = len(part)
        noise = torch.randn((B, *shape), generator=generator, device=device)
        context = source.encode_text(part).to(device)
        neg = source.empty_context(B).to(device)
        acts = None if actions is None else actions[start : start + B].to(device)
        changes = {chunk: source.encode_text(new[start : start + B]).to(device) for chunk, new in switches}
        latents = sample(model, noise, context, spec, neg_context=neg, generator=generator, actions=acts, switches=changes)
        videos.append(source.codec.decode(latents.float().cpu()).clamp(-1, 1))
    return torch.cat(videos)


@dataclass
class Evaluation:
    """Oracle metrics of one model, its samples and what sampling them cost."""

    metrics: dict[str, float]
    videos: torch.Tensor  # (n, 3, F, H, W) in [-1, 1]
    reference: dict = field(repr=False)  # the eval set: caption, scene, video (ground truth)
    long_videos: torch.Tensor | None = None  # (n, 3, k F, H, W) with drift_factor = k
    nfe_per_video: float = 0.0  # network evaluations per video (a causal model's each covers one chunk)
    seconds_per_video: float = 0.0  # sampling wall-clock per video (in batches of BATCH), oracle excluded


def evaluate(
    model, source: VideoSource, spec: SamplerSpec, *, n: int = 16, seed: int = 0, drift_factor: int = 0,
    stream_seconds: float = 0.0, progress: str | None = None,
) -> Evaluation:
    """Sample ``n`` held-out prompts (and, causal with ``drift_factor = k``, rollouts k times as long) and score them.

    ``progress`` names a progress bar over the network calls. Long rollouts add ``long_*`` metrics
    (see :func:`drift_metrics`); a causal model with ``stream_seconds`` also streams each prompt for
    about that much video, scored clip by clip (``stream_*`` metrics, see :func:`stream_metrics`). Both need the
    oracle: a source without one is scored by :func:`pixel_metrics` only.
    """
    if source.oracle is None:
        drift_factor, stream_seconds = 0, 0.0
    frames = source.data.num_frames
    ref = source.eval_set(n)
    long_frames = frames * drift_factor if drift_factor and spec.causal else 0
    streams = stream_factor(source, stream_seconds) if stream_seconds > 0 and spec.causal else 0
    stream_frames = frames * streams
    batches = math.ceil(n / BATCH)
    total = batches * sum(spec.calls_per_batch(f) for f in (frames, long_frames, stream_frames) if f)
    with NetworkCalls(model, total, progress) as calls:
        started = time.perf_counter()
        videos = sample_videos(model, source, ref["caption"], spec, seed=seed, actions=ref.get("actions"))
        seconds, nfe = time.perf_counter() - started, calls.count
        long_videos = long_ref = None
        if long_frames:
            long_ref = source.eval_set(n, num_frames=long_frames)
            long_videos = sample_videos(model, source, long_ref["caption"], spec, num_frames=long_frames, seed=seed + 1)
        stream = stream_metrics(model, source, spec, ref["caption"], factor=streams, seed=seed + 2) if streams else {}
    if source.oracle is None:
        metrics = pixel_metrics(videos, ref["video"])
    else:
        metrics = dict(source.oracle.evaluate(videos, ref["scene"], actions=ref.get("actions")).metrics)
    if long_videos is not None:
        metrics.update(drift_metrics(source, long_videos, long_ref["caption"]))
    metrics.update(stream)
    return Evaluation(metrics, videos, ref, long_videos, nfe_per_video=nfe / batches, seconds_per_video=seconds / n)


def pixel_metrics(videos: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Mean squared error and PSNR (on [0, 1] pixels, averaged over videos) of samples (B, 3, F, H, W) in [-1, 1]
    against the real windows whose actions they were sampled with.

    The samples start from noise, not from the real window's first frames, so this measures how much of a game's
    look (layout, colours, score digits) and of its action-driven motion a model has learned, not prediction; a
    world model's prediction from context frames is scored against the emulator by a separate evaluation."""
    mse = (videos.float() - real.float()).square().flatten(1).mean(dim=1) / 4  # (B,), pixels in [0, 1]
    return {"pixel_mse": float(mse.mean()), "psnr": float((-10 * torch.log10(mse.clamp(min=1e-10))).mean())}


def stream_factor(source: ShapesSource, seconds: float) -> int:
    """The whole training lengths closest to ``seconds`` of video (at least 2: a first clip and a second half)."""
    return max(2, round(seconds * source.fps / source.shapes.num_frames))


def stream_metrics(model, source: ShapesSource, spec: SamplerSpec, captions: list[str], *, factor: int, seed: int = 0) -> dict[str, float]:
    """Caption adherence along streams ``factor`` times the training length (a minute of video is 60 of the packed
    world's one-second videos), one per caption, over consecutive training-length clips: the first clip, every
    clip, the second half and the last minute of video (all of it for streams of a minute or less), averaged over
    the streams (``stream_*`` keys, and ``stream_seconds``); with the clips' temporal consistency, its count
    stability (a shape drawn twice, or gone for frames, lowers it) and the pixel fidelity.

    What a viewer of a long stream sees, which the 4x rollouts of :func:`drift_metrics` do not predict
    (``docs/results/stream_window_2026-12-03.md``). Streams are sampled and scored a batch at a time, so memory
    stays that of one batch of streams.
    """
    clip = source.shapes.num_frames
    scores, consistency, counts, fidelity = [], [], [], []
    for start in range(0, len(captions), BATCH):
        part = captions[start : start + BATCH]
        videos = sample_videos(model, source, part, spec, num_frames=source.data.num_frames * factor, seed=seed + start // BATCH)
        for i, c in enumerate(part):
            clips = score_clips(source.oracle, videos[i : i + 1], c, clip)
            scores.append(clips["caption_adherence"])
            consistency.append(float(np.nanmean(clips["temporal_consistency"])))
            counts.append(float(np.nanmean(clips["count_stability"])))
            fidelity.append(source.oracle.detect(videos[i : i + 1]).fidelity())
    s = np.array(scores, dtype=float)  # (streams, clips)
    minute = max(1, round(60 * source.fps / clip))  # clips in the last minute
    return dict(
        stream_first_caption_adherence=float(np.nanmean(s[:, 0])), stream_caption_adherence=float(np.nanmean(s)),
        stream_second_half_caption_adherence=float(np.nanmean(s[:, s.shape[1] // 2 :])),
        stream_last_minute_caption_adherence=float(np.nanmean(s[:, -minute:])),
        stream_temporal_consistency=float(np.nanmean(consistency)),
        stream_count_stability=float(np.nanmean(counts)),
        **{f"stream_{k}": _mean_of_measured([f[k] for f in fidelity]) for k in fidelity[0]},
        stream_seconds=factor * clip / source.fps,
    )


def _mean_of_measured(values: list[float]) -> float:
    """The mean of the values that are not NaN (nothing to measure, e.g. colour error without a shape); NaN if none."""
    measured = [v for v in values if not math.isnan(v)]
    return float(np.mean(measured)) if measured else float("nan")


def drift_metrics(source: ShapesSource, long_videos: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Caption adherence / temporal consistency over the first and the last training-length window (the world's
    rendered frames of one video, ``source.shapes.num_frames``) of long videos (B, 3, F, H, W), and the oracle's
    drift between them, averaged over videos (``long_*`` keys)."""
    window = source.shapes.num_frames
    first, last, drift = [], [], []
    for i in range(len(captions)):
        d = source.oracle.drift(long_videos[i : i + 1], captions[i], window=window)
        first.append((d.caption_adherence[0], d.temporal_consistency[0]))
        last.append((d.caption_adherence[-1], d.temporal_consistency[-1]))
        drift.append(d.drift)
    first_a, last_a = np.nanmean(np.array(first, dtype=float), axis=0), np.nanmean(np.array(last, dtype=float), axis=0)
    return dict(
        long_first_caption_adherence=float(first_a[0]), long_first_temporal_consistency=float(first_a[1]),
        long_last_caption_adherence=float(last_a[0]), long_last_temporal_consistency=float(last_a[1]),
        long_drift=float(np.nanmean(drift)),
    )


_OPPOSITE = {d: next(e for e, w in DIRECTIONS.items() if w == (-v[0], -v[1])) for d, v in DIRECTIONS.items()}
_DIRECTION_WORD = re.compile(r"\b(" + "|".join(DIRECTIONS) + r")\b")


def swap_directions(caption: str) -> str:
    """``caption`` with every direction word replaced by its opposite (``left`` <-> ``right``, ``up`` <-> ``down``)."""
    return _DIRECTION_WORD.sub(lambda m: _OPPOSITE[m.group(1)], caption)


@torch.no_grad()
def direction_word_gap(model, source: ShapesSource, *, n: int = 32, seed: int = 0, levels: tuple[float, ...] = (0.5, 0.8, 0.95)) -> float:
    """How much a bidirectional flow-matching model relies on the captions' direction words.

    The flow-matching loss on ``n`` held-out videos noised to each level ``s`` of ``levels``, with
    every direction word swapped for its opposite, minus the loss with the true captions, averaged
    over the levels. 0 for a model that ignores those words; it rises before sampled videos follow
    them (``docs/results/shapes_teachers_attempt2.md``).
    """
    ref = source.eval_set(n)
    keep = [i for i, c in enumerate(ref["caption"]) if swap_directions(c) != c]
    if not keep:
        return float("nan")
    device = next(model.parameters()).device
    x0 = source.codec.encode(ref["video"][keep]).to(device)  # (B, C, F, h, w)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    captions = [ref["caption"][i] for i in keep]
    contexts = (source.encode_text(captions), source.encode_text([swap_directions(c) for c in captions]))
    actions = ref["actions"][keep].to(device) if "actions" in ref else None
    gap = 0.0
    for s in levels:
        x_s = (1 - s) * x0 + s * eps
        t = torch.full(x0.shape[:1] + x0.shape[2:3], 1000 * s, device=device)  # (B, F)
        true, wrong = ((model(x_s, t, ctx, actions=actions).float() - (eps - x0)).square().mean().item() for ctx in contexts)
        gap += (wrong - true) / len(levels)
    return gap


def evaluate_model(
    model, source: VideoSource, spec: SamplerSpec, *, n: int = 16, seed: int = 0, out_dir: Path | None = None,
    tag: str = "samples", drift_factor: int = 0, stream_seconds: float = 0.0,
) -> dict[str, float]:
    """Oracle metrics of ``model`` on ``n`` held-out prompts; optional long-rollout drift (causal only).

    With ``drift_factor = k`` a causal model also generates videos k times its training length
    and reports caption adherence / temporal consistency over the first and the last training-length
    window (``long_*`` keys) and the oracle's drift; with ``stream_seconds``, streams of about that
    much video, scored clip by clip (``stream_*`` keys). With ``out_dir``, GIFs of ground truth beside samples.
    """
    result = evaluate(model, source, spec, n=n, seed=seed, drift_factor=drift_factor, stream_seconds=stream_seconds)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        ref, videos = result.reference, result.videos
        pairs = [v for i in range(min(n, 8)) for v in (to_uint8(ref["video"][i]), to_uint8(videos[i]))]
        write_gif(out_dir / f"{tag}.gif", grid(pairs, columns=4), fps=8, scale=4)
        if result.long_videos is not None:
            long = result.long_videos
            write_gif(out_dir / f"{tag}_long.gif", grid([to_uint8(long[i]) for i in range(min(n, 4))], columns=4), fps=8, scale=4)
    return result.metrics


def load_for_eval(path, *, steps: int | None = None, device: str = "auto") -> tuple[torch.nn.Module, ShapesSource, SamplerSpec]:
    """A checkpoint written by ``train`` -> (model in eval mode, its data source, its sampler from the pipeline spec)."""
    spec = PipelineSpec.read(path)
    if spec.source != "shapes":
        raise UserError(f"`causal-rcm eval` scores shapes-world checkpoints with the oracle; {path} was trained on "
                        f"{spec.source} data ({spec.env.id if spec.env else 'no env recorded'})")
    model = load_model(path, dtype=torch.float32)  # shipped weights may be stored in half precision
    spec.check_model(model.config)
    dev = resolve_device(device)
    source = ShapesSource(spec.data_config(), spec.text.dim, device=dev)
    return model.to(dev).eval(), source, spec.sampler_spec(steps=steps)


def stream_spec(model, spec: SamplerSpec, *, window_frames: int | None = None, sink_frames: int | None = None,
                recache_every: int | None = None, context: str | None = None, kv_int8: bool = False) -> SamplerSpec:
    """``spec`` with a causal checkpoint's KV cache changed where given: its window, sink frames, re-caching, how
    chunks are committed and stored (the CLI's ``--window``, ``--sink``, ``--recache-every``, ``--context``,
    ``--kv-int8``); UserError for a bidirectional checkpoint, or a window the model cannot hold."""
    given = {k: v for k, v in (("window_frames", window_frames), ("sink_frames", sink_frames), ("recache_every", recache_every),
                               ("context", context), ("kv_int8", kv_int8 or None)) if v is not None}
    if not given:
        return spec
    if not spec.causal:
        raise UserError("--window, --sink, --recache-every, --context and --kv-int8 need a causal checkpoint; a "
                        "bidirectional one does not stream")
    spec = replace(spec, **given)
    if spec.window_frames is not None:
        check_window(spec.window_frames, spec.frames_per_chunk, "--window", most=model.config.max_frames - spec.sink_frames)
    return spec


def evaluate_checkpoint(
    path, *, steps: int | None = None, n: int = 16, drift_factor: int = 0, device: str = "auto", seed: int = 0,
    out_dir: Path | None = None, window_frames: int | None = None, stream_seconds: float = 0.0,
    sink_frames: int | None = None, recache_every: int | None = None, context: str | None = None, kv_int8: bool = False,
) -> dict[str, float]:
    """Oracle metrics of a checkpoint written by ``train`` (its ``pipeline`` config says how to sample it); the
    numbers' ranges are the CLI's (``causal-rcm eval``), what depends on the checkpoint is checked here.

    ``window_frames``: a causal model's KV-cache window in latent frames, the current chunk included,
    ``sink_frames``, ``recache_every``, ``context`` and ``kv_int8`` (default: the checkpoint's, :func:`stream_spec`);
    the first three change only rollouts past the window, e.g. the drift rollouts and the streams of
    ``stream_seconds`` (see :func:`stream_metrics`).
    """
    model, source, spec = load_for_eval(path, steps=steps, device=device)
    if not spec.causal:
        for option, value in (("--drift", drift_factor), ("--stream-seconds", stream_seconds)):
            if value:
                raise UserError(f"{option} needs a causal checkpoint; a bidirectional one samples its training length only")
    spec = stream_spec(model, spec, window_frames=window_frames, sink_frames=sink_frames, recache_every=recache_every,
                       context=context, kv_int8=kv_int8)
    frames, (H, W) = source.shapes.num_frames, (source.data.resolution,) * 2
    streams = stream_factor(source, stream_seconds) if stream_seconds else 0
    held = (n * (2 + 2 * drift_factor) + min(n, BATCH) * streams) * frames  # ground truth and samples, float32
    check_video_bytes(held * 3 * H * W * 4, f"{n} videos with --drift {drift_factor} and --stream-seconds {stream_seconds:g}",
                      "lower --videos, --drift or --stream-seconds")
    return evaluate_model(model, source, spec, n=n, seed=seed, out_dir=out_dir, drift_factor=drift_factor,
                          stream_seconds=stream_seconds)
