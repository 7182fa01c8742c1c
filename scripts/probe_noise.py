"""Where the shapes models' speckle comes from: pixel fidelity and caption adherence under sampler variants, on the CPU.

    python scripts/probe_noise.py N MODEL [MODEL...] [--only LABEL...] [--png DIR] [--device cpu]

Samples the oracle's first N held-out prompts (seed 0) with each checkpoint's own sampler and with one change at a
time, each a suspect of docs/results/fidelity_2026-12-07.md: the time shift (8 <-> 3), the number of steps, an
extra last step from s = 0.01 (the final jump to s = 0 made from almost clean data), the weights rounded to bf16
(four times coarser than the fp16 export) and ``complete_x0`` (the x0 estimate completed where the network's head
cannot reach, ``diffusion.samplers``), alone and with the step count or the shift changed. The baseline samples
without ``complete_x0``: the sampler the checkpoints shipped with. ``--only`` keeps the variants whose label starts
with one of the given words (and the baseline). Prints one markdown row per (model, variant) with the oracle's background residual (mean, p90),
colour error, edge sharpness, caption adherence and direction accuracy, and, for the baseline, the head test: the
share of every token's values the head cannot reach, and how much of the initial noise there survives in the
samples (its correlation with the samples' component there; 1 = all of it). A last row per model scores the ground
truth with its component out of the head's reach removed: the best the model can paint with ``complete_x0``.
``--png DIR`` writes, per model and variant, the first and the sixth frame of the first 8 videos (6x
nearest-neighbour) beside the ground truth.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from causal_rcm.data.video import grid, to_uint8, upscale
from causal_rcm.diffusion.samplers import SamplerSpec, causal_sample, consistency_sample, euler_sample, head_complement, time_grid
from causal_rcm.eval.score import BATCH, load_for_eval

KEYS = ("background_residual", "background_residual_p90", "colour_error", "edge_sharpness", "caption_adherence",
        "direction_accuracy")


def variants(spec: SamplerSpec) -> dict[str, dict]:
    """The variants of a checkpoint's sampler, each as changes to the baseline (``grid``: an explicit time grid)."""
    base = dataclasses.replace(spec, complete_x0=False)
    other_shift = 3.0 if base.shift != 3.0 else 8.0
    steps = [base.steps * 2] if base.steps > 4 else sorted({1, 4} - {base.steps})
    last = time_grid(base.steps, base.shift)
    out = {f"shipped ({base.steps} {base.solver}, shift {base.shift:g})": {"spec": base},
           f"shift {other_shift:g}": {"spec": dataclasses.replace(base, shift=other_shift)}}
    out.update({f"{n} steps": {"spec": dataclasses.replace(base, steps=n)} for n in steps})
    out["extra last step from s = 0.01"] = {"spec": base, "grid": torch.cat([last[:-1], last.new_tensor([0.01, 0.0])])}
    out["weights rounded to bf16"] = {"spec": base, "bf16": True}
    done = dataclasses.replace(base, complete_x0=True)
    out["complete_x0"] = {"spec": done}
    if base.steps <= 4:  # a few-step student: every step count, completed
        out.update({f"complete_x0, {n} steps": {"spec": dataclasses.replace(done, steps=n)} for n in steps})
    else:  # a many-step teacher: is what remains the schedule's?
        out[f"complete_x0, shift {other_shift:g}"] = {"spec": dataclasses.replace(done, shift=other_shift)}
    return out


@torch.no_grad()
def generate(model, source, captions: list[str], spec: SamplerSpec, grid_: torch.Tensor | None, seed: int = 0):
    """Latents (B, C, F, h, w) of one video per caption and the noise they started from, on the CPU:
    ``eval.score.sample_videos`` with an explicit time grid allowed."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    steps, shift = (spec.steps, spec.shift) if grid_ is None else (grid_, 1.0)
    complement = head_complement(model, spec.complete_x0)
    latents, noises = [], []
    for start in range(0, len(captions), BATCH):
        part = captions[start : start + BATCH]
        noise = torch.randn((len(part), *source.latent_shape(None)), generator=generator, device=device)
        common = dict(steps=steps, shift=shift, guidance=spec.guidance, neg_context=source.empty_context(len(part)).to(device),
                      complement=complement)
        context = source.encode_text(part).to(device)
        if spec.causal:
            x = causal_sample(model, noise, context, frames_per_chunk=spec.frames_per_chunk, solver=spec.solver,
                              sink_frames=spec.sink_frames, window_frames=spec.window_frames, generator=generator, **common)
        elif spec.solver == "consistency":
            x = consistency_sample(model, noise, context, generator=generator, **common)
        else:
            x = euler_sample(model, noise, context, **common)
        latents.append(x.float().cpu())
        noises.append(noise.cpu())
    return torch.cat(latents), torch.cat(noises)


def head_test(model, latents: torch.Tensor, noise: torch.Tensor) -> str:
    """The share of a token's values out of the head's reach, and the correlation there of samples with their noise."""
    complement = model.head_complement()
    if complement is None:
        return "head of full rank: nothing out of its reach"
    c_x, c_n = complement(latents), complement(noise)
    share = float(c_n.square().sum() / noise.square().sum())
    corr = float((c_x * c_n).sum() / (c_x.square().sum() * c_n.square().sum()).sqrt())
    rms = float(c_x.square().mean().sqrt() / c_n.square().mean().sqrt())
    return (f"{share:.2f} of the noise's energy lies where the head cannot reach; there the samples have "
            f"{rms:.2f}x the noise's RMS and correlate with it at {corr:.4f}")


def report_row(name: str, label: str, videos: torch.Tensor, source, ref, png: Path | None) -> dict:
    """Score videos (B, 3, F, H, W) in [-1, 1], print their markdown row and, with ``png``, write their frames."""
    m = source.oracle.evaluate(videos, ref["scene"]).metrics
    print(f"| {name} | {label} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k in KEYS) + " |", flush=True)
    if png is not None:
        png.mkdir(parents=True, exist_ok=True)
        slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
        write_png(png / f"{name}_{slug}.png", ref["video"], videos)
    return {"model": name, "variant": label, **{k: m.get(k) for k in KEYS}}


def write_png(path: Path, ground_truth: torch.Tensor, videos: torch.Tensor) -> None:
    from PIL import Image

    k = min(8, len(videos))
    tiles = [to_uint8(v) for v in (*ground_truth[:k], *videos[:k])]
    frames = upscale(grid(tiles, columns=k), 6)
    Image.fromarray(np.concatenate([frames[0], frames[min(5, len(frames) - 1)]], axis=0)).save(path)


def main(n: int, paths: list[str], png: Path | None = None, device: str = "cpu", only: list[str] | None = None) -> list[dict]:
    rows = []
    print("| model | variant | background residual | p90 | colour error | edge sharpness | caption | direction |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        model, source, spec = load_for_eval(path, device=device)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        ref = source.eval_set(n)
        name = Path(path).parent.name if Path(path).name == "model" else Path(path).name
        for label, variant in variants(spec).items():
            if only and not label.startswith("shipped") and not any(label.startswith(word) for word in only):
                continue
            model.load_state_dict({k: v.bfloat16().float() if variant.get("bf16") else v for k, v in weights.items()})
            latents, noise = generate(model, source, ref["caption"], variant["spec"], variant.get("grid"))
            rows.append(report_row(name, label, source.codec.decode(latents).clamp(-1, 1), source, ref, png))
            if label.startswith("shipped"):
                print(f"<!-- {name}: {head_test(model, latents, noise)} -->", flush=True)
        model.load_state_dict(weights)
        complement = model.head_complement()
        if complement is not None:
            x0 = source.codec.encode(ref["video"]).to(device)
            truth = source.codec.decode((x0 - complement(x0)).cpu()).clamp(-1, 1)
            rows.append(report_row(name, "ground truth within the head's reach", truth, source, ref, png))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL")
    args = parser.parse_args()
    main(args.n, args.models, args.png, args.device, args.only)
