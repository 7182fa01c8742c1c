"""CPU benchmarks of long streams: ``causal-rcm bench long-stream`` (bounded memory, first/last-minute oracle
adherence of one long stream) and ``causal-rcm bench stream-window`` (caption adherence along a stream against the
KV-cache window). Both write JSON under ``benchmarks/results/`` with the machine, versions and date.

torch and the package are imported when a command runs, so that ``causal-rcm --help`` stays fast."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import click

from causal_rcm.limits import MAX_SEED

RESULTS = Path("benchmarks/results")

# The shapes world at 32 px (pixel codec factor 4 -> 48 x 8 x 8 latents): what `causal-rcm train` writes for
# a 1-4 step causal student, with the codec normalisation of the shapes world.
UNTRAINED_PIPELINE = {
    "source": "shapes", "resolution": 32, "num_frames": 8, "frames_per_chunk": 2, "causal": True,
    "codec": {"kind": "pixel", "factor": 4, "shift": -0.81, "scale": 1.92},
    "text": {"kind": "toy", "dim": 64, "text_len": 16, "seed": 0},
    "sampler": {"solver": "consistency", "steps": 2, "shift": 3.0, "guidance": 1.0},
    "stream": {"sink_frames": 1, "window_frames": 8}, "fps": 8, "num_actions": 0,
}
PROMPTS = (
    "a red circle moves right", "a blue square moves left", "a green triangle moves up", "a yellow circle moves down",
    "a red square moves left", "a blue circle moves up", "a green square moves right", "a yellow triangle moves left",
)


def untrained_shapes_checkpoint(folder: Path) -> Path:
    """A randomly initialised `shapes`-preset CausalWanModel (head re-randomised so frames are not flat)."""
    import torch

    from causal_rcm.models.adapters import save_model
    from causal_rcm.models.wan import CausalWanModel

    torch.manual_seed(0)
    model = CausalWanModel.from_preset("shapes")
    with torch.no_grad():
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
    return save_model(model, folder / "untrained-shapes", pipeline=UNTRAINED_PIPELINE)


def _header(benchmark: str) -> dict:
    import torch

    return {"benchmark": benchmark, "device": "cpu", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def _write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"wrote {out}")


@click.command("long-stream")
@click.option("-c", "--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A causal checkpoint folder.")
@click.option("--untrained-shapes", is_flag=True, help="An untrained shapes-preset model (memory and speed only).")
@click.option("--minutes", type=click.FloatRange(0.01, 600), default=10.0, show_default=True,
              help="Minutes of video (at the checkpoint's fps).")
@click.option("--prompt", default="a red circle moves right", show_default=True)
@click.option("--steps", type=click.IntRange(1, 64), default=None, help="Sampler steps (default: the checkpoint's).")
@click.option("--mode", type=click.Choice(["chunk", "frame"]), default="chunk", show_default=True)
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True)
@click.option("--window", type=click.IntRange(1), default=None, help="KV-cache window in latent frames (default: the checkpoint's).")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON path (default: benchmarks/results/stream_cpu_<name>_<mode>.json).")
def long_stream_command(checkpoint, untrained_shapes, minutes, prompt, steps, mode, seed, window, threads, out) -> None:
    """One long CPU stream: memory that stays flat, speed, and oracle adherence of its first and last minute."""
    import torch

    from causal_rcm.eval.stream import measure_stream
    from causal_rcm.models.adapters import checkpoint_name
    from causal_rcm.pipeline import StreamingPipeline

    if (checkpoint is None) == (not untrained_shapes):
        raise click.UsageError("give exactly one of --checkpoint and --untrained-shapes")
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = untrained_shapes_checkpoint(Path(tmp)) if untrained_shapes else checkpoint
        pipe = StreamingPipeline.from_pretrained(folder)
        measured = measure_stream(pipe, prompt, minutes=minutes, steps=steps, mode=mode, seed=seed, window_frames=window)
    name = "untrained-shapes" if untrained_shapes else checkpoint_name(checkpoint)
    if window is not None:
        name += f"_window{window}"
    report = {
        **_header("long_stream"),
        "checkpoint": "untrained shapes preset (random weights)" if untrained_shapes else str(checkpoint),
        "parameters_m": round(pipe.model.num_parameters() / 1e6, 3), **measured,
    }
    summary = {k: report[k] for k in ("frames", "wall_seconds", "frames_per_second", "chunk_latency_ms", "memory", "oracle")}
    click.echo(json.dumps(summary, indent=2))
    _write(report, out or RESULTS / f"stream_cpu_{name}_{mode}.json")


def window_scan(pipe, windows: list[int], prompts, *, seconds: float, seed: int) -> list[dict]:
    """One row per window of a :class:`~causal_rcm.pipeline.StreamingPipeline`: caption adherence by stretch of
    the stream, averaged over the prompts."""
    import numpy as np

    from causal_rcm.data.oracle import ShapesOracle
    from causal_rcm.data.shapes import ShapesConfig

    oracle = ShapesOracle(ShapesConfig(size=pipe.config.resolution))
    clip = pipe.video_frames
    frames = max(4 * clip, round(seconds * pipe.config.fps) // clip * clip)
    rows = []
    for window in windows:
        started = time.perf_counter()
        per_prompt = []
        for prompt in prompts:
            video = np.stack([f.image for f in pipe.stream(prompt, seed=seed, num_frames=frames, window_frames=window)])
            clips = video.reshape(-1, clip, *video.shape[1:])
            per_prompt.append([v.metrics["caption_adherence"] for v in oracle.evaluate(clips, [prompt] * len(clips)).videos])
        scores = np.array(per_prompt)  # (prompts, clips)
        half = scores.shape[1] // 2
        rows.append({
            "window_frames": window,
            "caption_first_clip": float(scores[:, 0].mean()), "caption_clips_1_3": float(scores[:, 1:4].mean()),
            "caption_rest_of_first_half": float(scores[:, 4:half].mean()) if half > 4 else float("nan"),
            "caption_second_half": float(scores[:, half:].mean()),
            "per_prompt_second_half": [round(float(s), 3) for s in scores[:, half:].mean(1)],
            "seconds": round(time.perf_counter() - started, 1),
        })
    return rows


def _windows(ctx, param, value: str) -> list[int]:
    try:
        windows = [int(w) for w in value.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"comma-separated integers, got {value!r}") from None
    if not windows or min(windows) < 1:
        raise click.BadParameter(f"one or more windows >= 1, got {value!r}")
    return windows


@click.command("stream-window")
@click.option("-c", "--checkpoint", "checkpoints", type=click.Path(exists=True, file_okay=False, path_type=Path),
              multiple=True, required=True, help="Causal checkpoint folders (repeat the option for several).")
@click.option("--windows", default="4,6,8,12,16", show_default=True, callback=_windows,
              help="Comma-separated KV-cache windows in latent frames (the current chunk included).")
@click.option("--seconds", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds of video a stream (at the checkpoint's fps).")
@click.option("--prompts", type=click.IntRange(1, len(PROMPTS)), default=len(PROMPTS), show_default=True,
              help="How many of the eight single-shape prompts.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "stream_window_scan.json",
              show_default=True)
def stream_window_command(checkpoints, windows, seconds, prompts, seed, out) -> None:
    """Caption adherence along CPU streams (first clip, clips 1-3, rest of the first half, second half) per window."""
    from causal_rcm.pipeline import StreamingPipeline

    results = []
    for checkpoint in checkpoints:
        pipe = StreamingPipeline.from_pretrained(checkpoint)
        rows = window_scan(pipe, windows, PROMPTS[:prompts], seconds=seconds, seed=seed)
        results.append({"checkpoint": str(checkpoint), "checkpoint_window_frames": pipe.config.stream.window_frames,
                        "clip_frames": pipe.video_frames, "rows": rows})
        for row in rows:
            click.echo(f"{checkpoint}  window {row['window_frames']:>3}: caption first clip {row['caption_first_clip']:.2f}, "
                       f"clips 1-3 {row['caption_clips_1_3']:.2f}, rest of first half {row['caption_rest_of_first_half']:.2f}, "
                       f"second half {row['caption_second_half']:.2f} ({row['seconds']} s)")
    _write({**_header("stream_window_scan"), "seconds": seconds, "seed": seed, "prompts": list(PROMPTS[:prompts]),
            "results": results}, out)
