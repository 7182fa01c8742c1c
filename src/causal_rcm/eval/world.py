"""World models against the emulator (``causal-rcm eval world``): predicting held-out Atari episodes from their first frames.

Every held-out episode long enough gives one test: its first ``context`` real frames (from frame ``start``, 0 by
default: the reset), encoded by the checkpoint's codec, are the model's context, and the model predicts the next ``horizon`` frames under the recorded actions (``actions[t]``
led to frame t, :mod:`causal_rcm.data.shards`). Prediction and the emulator's frames are compared as uint8 images at
each horizon step h = 1..H: PSNR and SSIM, averaged over the episodes.

Action sensitivity is Genie's Delta_t PSNR (Bruce et al. 2024, Sec. 3.1): the same rollout, with the same noise, under
uniformly random actions after the context; ``delta_psnr(h) = PSNR(recorded actions) - PSNR(random actions)``, both
against the real frames. A model that ignores its actions scores 0, so for the two baselines it is 0 by construction
and not sampled: *copy the last context frame* (every world model must beat it) and, when given, *the same model
trained without actions* (``data.actions=false``), rolled out as the others.

How a checkpoint continues real frames (:func:`~causal_rcm.diffusion.samplers.sample` with a prefix):

* causal (causal teacher, students): the context is committed to the KV cache a chunk at a time at t = 0, as its own
  chunks are (what teacher forcing trained it on); then it samples chunk by chunk through its stream window, as a
  stream does. ``context`` must be whole chunks.
* bidirectional (the teacher): it knows only windows of its training length with every frame at one noise level, so
  it samples windows of ``num_frames`` frames, the context plus ``num_frames - context`` new ones, with the context put
  back at every step at the current noise level (replacement); the next window takes the last ``context`` frames it
  made as context. Teacher forcing (clean context at t = 0 beside noisy frames) would show it inputs it never trained on.

Every Atari sample has the empty prompt and the actions reach both CFG branches, which are therefore equal: models are
sampled with guidance 1, the same frames for half the network calls.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from causal_rcm.data.shards import Manifest, ShardReader
from causal_rcm.data.video import from_uint8, to_uint8
from causal_rcm.devices import resolve_device
from causal_rcm.diffusion.samplers import SamplerSpec, sample
from causal_rcm.errors import UserError
from causal_rcm.eval.score import BATCH
from causal_rcm.models.adapters import checkpoint_name, write_whole
from causal_rcm.pipeline import StreamingPipeline
from causal_rcm.spec import PipelineSpec

__all__ = ["PSNR_MAX", "Candidate", "HeldOut", "psnr", "ssim", "heldout", "rollout", "evaluate_world", "write_world_eval"]

PSNR_MAX = 100.0  # dB, the PSNR of a perfect prediction (MSE 0): averages over episodes stay finite
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004, Sec. III-C
TABLE_HORIZONS = (1, 8)  # besides H, the horizons the markdown table shows
FILES = ("world_eval.json", "world_eval.md", "world_eval.png")


# ------------------------------------------------------------------ metrics
def psnr(pred: torch.Tensor | np.ndarray, real: torch.Tensor | np.ndarray) -> torch.Tensor:
    """PSNR in dB of uint8 frames (..., H, W, 3) against (..., H, W, 3), one per frame, at most :data:`PSNR_MAX`."""
    pred, real = torch.as_tensor(pred), torch.as_tensor(real)
    mse = ((pred.double() - real.double()) / 255).square().mean(dim=(-3, -2, -1))
    return (10 * torch.log10(1 / mse)).clamp(max=PSNR_MAX)


def ssim(pred: torch.Tensor | np.ndarray, real: torch.Tensor | np.ndarray) -> torch.Tensor:
    """SSIM (Wang et al. 2004, Eq. (13)) of uint8 frames (..., H, W, 3) against (..., H, W, 3), one per frame.

    Local statistics under an 11 x 11 Gaussian window of sigma 1.5 (population moments), K1 = 0.01, K2 = 0.03, on
    pixels in [0, 1], at every window position inside the frame (no padding), averaged over positions and channels:
    scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False, data_range=1,
    channel_axis=-1)``.
    """
    pred, real = torch.as_tensor(pred), torch.as_tensor(real)
    if pred.shape != real.shape or pred.shape[-1] != 3 or min(pred.shape[-3:-1]) < SSIM_WINDOW:
        raise ValueError(f"SSIM compares RGB frames of at least {SSIM_WINDOW} px of one shape, got {list(pred.shape)} "
                         f"and {list(real.shape)}")
    lead = pred.shape[:-3]
    x, y = ((t.reshape(-1, *t.shape[-3:]).movedim(-1, 1).double() / 255) for t in (pred, real))  # (N, 3, H, W)
    r = SSIM_WINDOW // 2
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64).square() / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, SSIM_WINDOW, SSIM_WINDOW)  # (3, 1, k, k), one per channel

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=3)  # (N, 3, H - k + 1, W - k + 1)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3)).reshape(lead)


# ----------------------------------------------------------------- episodes
@dataclass
class HeldOut:
    """The tests: ``frames`` uint8 (N, C + H, S, S, 3), the context then the frames to predict, and the recorded
    ``actions`` int64 (N, C + H), from frame ``start`` of the held-out episodes ``episodes`` (their indices in the
    collection)."""

    manifest: Manifest
    frames: np.ndarray
    actions: np.ndarray
    episodes: list[int]
    context: int
    start: int = 0

    @property
    def horizon(self) -> int:
        return self.frames.shape[1] - self.context


def heldout(shards: Path, *, context: int, horizon: int, episodes: int, start: int = 0) -> HeldOut:
    """``context + horizon`` frames from frame ``start`` of the first ``episodes`` held-out episodes of ``shards``
    long enough; one-line UserError when there are none (no held-out split, or episodes shorter than that)."""
    manifest = Manifest.read(shards)
    entries = manifest.split("heldout")
    if not entries:
        raise UserError(f"{shards} has no held-out episodes: collect with --holdout > 0 (held-out episodes go whole into "
                        "heldout-* shards)")
    need = start + context + horizon
    found = [ep for entry in entries for ep in ShardReader(Path(shards), entry, manifest).episodes]
    long_enough = [ep for ep in found if len(ep.frames) >= need][:episodes]
    if not long_enough:
        longest = max(len(ep.frames) for ep in found)
        at = f" from frame {start}" if start else ""
        raise UserError(f"--context {context} and --horizon {horizon}{at} need episodes of {need} frames, but the longest "
                        f"held-out episode of {shards} has {longest}: lower --horizon, or collect longer episodes (--max-steps)")
    window = slice(start, need)
    return HeldOut(
        manifest, np.stack([np.asarray(ep.frames[window]) for ep in long_enough]),
        np.stack([ep.actions[window] for ep in long_enough]), [int(ep.meta.get("episode", -1)) for ep in long_enough],
        context, start,
    )


# ------------------------------------------------------------------ rollout
@torch.no_grad()
def rollout(pipe: StreamingPipeline, frames: np.ndarray, actions: np.ndarray | None, horizon: int, *, steps: int,
            seed: int = 0) -> np.ndarray:
    """The model's prediction of ``horizon`` frames after the context ``frames`` uint8 (N, C, S, S, 3): uint8
    (N, H, S, S, 3), under ``actions`` (N, C + H) (None: a model without actions); see the module docstring.

    The noise depends only on ``seed`` and the batch, so two calls differing only in their actions share it."""
    cfg = pipe.config
    spec = dataclasses.replace(cfg.sampler_spec(steps=steps), guidance=1.0)  # equal CFG branches (module docstring)
    text = pipe.encode_prompt("")  # (1, L, D)
    out = []
    for start in range(0, len(frames), BATCH):
        part = torch.from_numpy(np.ascontiguousarray(frames[start : start + BATCH]))
        prefix = pipe.codec.encode(from_uint8(part)).to(pipe.device)  # (B, C, P, h, w)
        acts = None if actions is None else torch.from_numpy(actions[start : start + BATCH]).to(pipe.device)
        generator = torch.Generator(pipe.device).manual_seed(seed + start)
        latents = _continue(pipe.model, spec, prefix, text.expand(len(part), -1, -1), acts, horizon, generator, cfg.num_frames)
        out.append(to_uint8(pipe.codec.decode(latents.float().cpu())))
    return np.concatenate(out)


def _continue(model, spec: SamplerSpec, prefix: torch.Tensor, text: torch.Tensor, actions: torch.Tensor | None,
              horizon: int, generator: torch.Generator, window: int) -> torch.Tensor:
    """``horizon`` latent frames after the clean ``prefix`` (B, C, P, h, w): one causal rollout, or bidirectional
    windows of ``window`` frames, each continuing the last P frames before it."""
    B, C, P, h, w = prefix.shape
    if spec.causal:
        noise = torch.randn((B, C, horizon, h, w), generator=generator, device=prefix.device)
        return sample(model, noise, text, spec, generator=generator, actions=actions, prefix=prefix)
    made: list[torch.Tensor] = []
    known, done = prefix, 0
    while done < horizon:
        n = min(window - P, horizon - done)
        noise = torch.randn((B, C, n, h, w), generator=generator, device=prefix.device)
        acts = None if actions is None else actions[:, done : done + P + n]  # the window's frames, context included
        x = sample(model, noise, text, spec, generator=generator, actions=acts, prefix=known)  # (B, C, n, h, w)
        made.append(x)
        known, done = torch.cat([known, x], dim=2)[:, :, -P:], done + n
    return torch.cat(made, dim=2)


# --------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Candidate:
    """A checkpoint to evaluate and its sampler steps (None: the checkpoint's own)."""

    path: Path
    steps: tuple[int, ...] | None = None


def _check(spec: PipelineSpec, path: Path, manifest: Manifest, shards: Path, *, no_action: bool) -> None:
    """One-line UserError when the checkpoint cannot be compared with the episodes of ``manifest``."""
    env = manifest.env
    if spec.source != "atari" or spec.env is None:
        raise UserError(f"{path} was trained on {spec.source} data, not on recorded Atari episodes: `eval world` compares a "
                        f"world model with its emulator (score shapes-world checkpoints with `causal-rcm eval -c {path}`)")
    if spec.env.id != env.id or spec.env.action_meanings != env.action_meanings:
        raise UserError(f"{path} is a world model of {spec.env.id} but {shards} holds {env.id} episodes: evaluate it on "
                        f"held-out episodes of its own game")
    if spec.resolution != manifest.frame_size:
        S = manifest.frame_size
        raise UserError(f"{path} makes {spec.resolution}x{spec.resolution} frames but {shards} holds {S}x{S} ones: "
                        f"evaluate it on episodes collected with --size {spec.resolution}")
    if no_action and spec.num_actions:
        raise UserError(f"--no-action-model {path} takes actions: give the same model trained with data.actions=false")
    if not no_action and not spec.num_actions:
        raise UserError(f"{path} was trained without actions: it is a baseline, pass it as --no-action-model {path}")


def _context(specs: Sequence[tuple[Path, PipelineSpec]], context: int | None) -> int:
    """The context frames every checkpoint can take: ``context``, or by default one chunk of every causal model (the
    least common multiple of their chunks; 1 frame when all are bidirectional)."""
    if context is None:
        context = math.lcm(1, *(s.frames_per_chunk for _, s in specs if s.causal))
    if context < 1:
        raise UserError(f"--context must be at least 1 frame, got {context}")
    for path, s in specs:
        if s.causal and context % s.frames_per_chunk:
            raise UserError(f"--context {context} is not whole chunks of {path}'s {s.frames_per_chunk} frames: a causal "
                            "model commits its context a chunk at a time")
        if not s.causal and context >= s.num_frames:
            raise UserError(f"--context {context} leaves no new frame in the {s.num_frames}-frame windows of the "
                            f"bidirectional {path}: give fewer context frames")
    return context


def _row(label: str, kind: str, pred: np.ndarray, real: np.ndarray, **extra) -> dict:
    """Per-horizon means over episodes of PSNR and SSIM of ``pred`` against ``real``, uint8 (N, H, S, S, 3)."""
    return {"label": label, "kind": kind, "psnr": psnr(pred, real).mean(0).tolist(), "ssim": ssim(pred, real).mean(0).tolist(),
            **extra}


def evaluate_world(
    candidates: Sequence[Candidate], shards: Path, *, horizon: int = 32, episodes: int = 16, context: int | None = None,
    steps: Sequence[int] | None = None, no_action: Candidate | None = None, start: int = 0, seed: int = 0,
    device: str = "auto", say: Callable[[str], None] = print,
) -> dict:
    """Every candidate (at each of its steps, else ``steps``, else its own) beside copy-last-frame and, when given,
    the no-action model, on the held-out episodes of ``shards``: the result :func:`write_world_eval` writes.

    Each model row has ``psnr``, ``ssim`` and (models with actions) ``psnr_random_actions`` and ``delta_psnr``: lists
    over horizon steps 1..H, means over episodes; ``seconds_per_episode`` is the rollout's sampling time."""
    if horizon < 1 or episodes < 1 or start < 0:
        raise UserError(f"--horizon and --episodes must be at least 1 and --start at least 0, got {horizon}, {episodes} "
                        f"and {start}")
    shards = Path(shards)
    dev = resolve_device(device)
    everything = [*((c, False) for c in candidates), *(() if no_action is None else ((no_action, True),))]
    specs = [(c.path, PipelineSpec.read(c.path)) for c, _ in everything]
    manifest = Manifest.read(shards)
    for (c, baseline), (_, spec) in zip(everything, specs):
        _check(spec, c.path, manifest, shards, no_action=baseline)
    context = _context(specs, context)
    held = heldout(shards, context=context, horizon=horizon, episodes=episodes, start=start)
    frames, real = held.frames[:, :context], held.frames[:, context:]
    rng = np.random.default_rng(seed + 1)
    random_actions = held.actions.copy()
    random_actions[:, context:] = rng.integers(held.manifest.env.num_actions, size=random_actions[:, context:].shape)

    copy = np.repeat(frames[:, -1:], horizon, axis=1)
    zeros = [0.0] * horizon  # delta_psnr of what ignores the actions, by construction
    rows = [_row("copy last context frame", "copy-last", copy, real, delta_psnr=zeros)]
    say(f"{len(held.episodes)} held-out episode(s) of {shards}, {context} context frame(s) from frame {start}, horizon {horizon}")
    for (c, baseline), (path, spec) in zip(everything, specs):
        pipe = StreamingPipeline.from_pretrained(path, device=dev, dtype=torch.float32)
        for k in c.steps or tuple(steps or ()) or (spec.sampler.steps,):
            label = f"{checkpoint_name(path)} ({k} step{'s' * (k != 1)})" + (" without actions" if baseline else "")
            started = time.perf_counter()
            pred = rollout(pipe, frames, None if baseline else held.actions, horizon, steps=k, seed=seed)
            seconds = (time.perf_counter() - started) / len(frames)
            extra = {"checkpoint": str(path), "recipe": spec.recipe, "causal": spec.causal, "steps": k,
                     "seconds_per_episode": seconds}
            if baseline:
                rows.append(_row(label, "no-action", pred, real, delta_psnr=zeros, **extra))
            else:
                row = _row(label, "model", pred, real, **extra)
                shuffled = psnr(rollout(pipe, frames, random_actions, horizon, steps=k, seed=seed), real).mean(0)
                row["psnr_random_actions"] = shuffled.tolist()
                row["delta_psnr"] = (np.array(row["psnr"]) - shuffled.numpy()).tolist()
                rows.append(row)
            say(f"  {label}: PSNR h=1 {rows[-1]['psnr'][0]:.2f} dB, h={horizon} {rows[-1]['psnr'][-1]:.2f} dB "
                f"({seconds:.2f} s/episode)")
    return {
        "env": held.manifest.env.id, "shards": str(shards), "episodes": held.episodes, "start": start, "context": context,
        "horizon": horizon, "seed": seed, "device": str(dev),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
    }


# ------------------------------------------------------------------ outputs
def table_horizons(horizon: int) -> list[int]:
    """The horizons the table shows: 1, 8 and H, those that exist."""
    return sorted({h for h in (*TABLE_HORIZONS, horizon) if h <= horizon})


def markdown(result: dict, command: str = "") -> str:
    """The comparison as a markdown table, one row per model or baseline."""
    hs = table_horizons(result["horizon"])
    head = (["model", "recipe", "steps"] + [f"PSNR h={h}" for h in hs] + [f"SSIM h={h}" for h in hs]
            + ["ΔPSNR (mean h)", "s/episode"])
    lines = [
        f"# World model evaluation: {result['env']}", "",
        f"{len(result['episodes'])} held-out episode(s) of `{result['shards']}`: {result['context']} real context frame(s) "
        f"from frame {result.get('start', 0)}, "
        f"then {result['horizon']} predicted frames under the recorded actions, against the emulator's frames. PSNR in dB "
        "and SSIM (11x11 Gaussian window) of uint8 frames at horizon h, means over episodes; ΔPSNR (Genie's action "
        "sensitivity) = PSNR with the recorded actions - PSNR with uniformly random ones (same noise), mean over h = 1.."
        f"{result['horizon']}, 0 by construction for what ignores actions. Seed {result['seed']}, {result['device']}, "
        f"{result['date']}.", "",
    ]
    if command:
        lines += [f"`{command}`", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["label"], r.get("recipe") or r["kind"], str(r.get("steps", "-"))]
        cells += [f"{r['psnr'][h - 1]:.2f}" for h in hs] + [f"{r['ssim'][h - 1]:.3f}" for h in hs]
        cells += [f"{np.mean(r['delta_psnr']):+.2f}", f"{r['seconds_per_episode']:.2f}" if "seconds_per_episode" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """PSNR, SSIM and ΔPSNR against the horizon, one line per model or baseline (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.arange(1, result["horizon"] + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, ax, title in zip(("psnr", "ssim", "delta_psnr"), axes, ("PSNR (dB)", "SSIM", "ΔPSNR: recorded - random actions (dB)")):
        for i, r in enumerate(result["rows"]):
            style = "--" if r["kind"] != "model" else "-"
            ax.plot(h, r[key], style, label=r["label"], color=plt.get_cmap("tab10")(i % 10), marker="." if len(h) < 40 else None)
        ax.set(xlabel="horizon (frames after the context)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['env']}: {len(result['episodes'])} held-out episode(s), {result['context']} context frame(s) "
                 f"from frame {result.get('start', 0)}")
    fig.tight_layout()
    write_whole(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_world_eval(result: dict, out: Path, command: str = "") -> dict[str, Path]:
    """``out/world_eval.json`` (the result and the command), ``.md`` (the table) and ``.png`` (the plot), each whole."""
    out = Path(out)
    paths = {name.rsplit(".", 1)[1]: out / name for name in FILES}
    text = json.dumps({**result, "command": command}, indent=2) + "\n"
    write_whole(paths["json"], lambda tmp: tmp.write_text(text))
    table = markdown(result, command)
    write_whole(paths["md"], lambda tmp: tmp.write_text(table))
    plot(result, paths["png"])
    return paths
