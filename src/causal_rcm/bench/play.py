"""``causal-rcm bench play``: frames per second of the play loop, JSON under ``benchmarks/results/``.

The loop is the model's side of ``causal-rcm play``: a stream continuing the emulator's first frames
(:class:`~causal_rcm.serve.play.Session`) under actions that change as a player's keys do, each frame decoded to uint8
on the CPU. The page's transfer and drawing are not in it, nor the emulator beside it. A stream makes a chunk at a
time, so the frames per second are those of whole chunks, and a chunk's latency is the time from its action to its
frames. torch and the package are imported when the command runs, so that ``causal-rcm --help`` stays fast.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from pathlib import Path

import click

RESULTS = Path("benchmarks/results")
PRESS_FRAMES = 4  # a simulated key is held this many frames (Atari's agents act at 15 Hz: a press of about 0.25 s)


def _steps(ctx, param, value: str) -> list[int]:
    try:
        steps = [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise click.BadParameter(f"comma-separated integers, got {value!r}") from None
    if not steps or min(steps) < 1:
        raise click.BadParameter(f"one or more step counts >= 1, got {value!r}")
    return steps


def measure_play(pipe, game, *, steps: int, frames: int, warmup: int, mode: str = "chunk", seed: int = 0) -> dict:
    """Time ``frames`` frames of one play stream after ``warmup`` frames: frames per second and chunk latencies, and
    the process's CPU seconds (on a shared CPU, ``frames / process_cpu_seconds`` with one thread is the rate the
    loop would reach on an idle core; the wall-clock rate is what the player sees)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    presses = {}  # frame index // PRESS_FRAMES -> the action held then

    def player(i: int) -> int:
        return presses.setdefault(i // PRESS_FRAMES, int(rng.integers(len(game.action_meanings))))

    stream = pipe.stream("", steps=steps, mode=mode, seed=seed, actions=player, guidance=1.0)  # as play: no CFG
    session = game.session(seed)
    try:
        session.start(stream)
        for _ in range(warmup):
            next(stream)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        started, cpu, chunks = time.perf_counter(), time.process_time(), {}
        for _ in range(frames):
            frame = next(stream)
            chunks[frame.chunk] = frame.chunk_seconds
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        session.close()
        stream.close()
    latency = np.array(list(chunks.values())) * 1000
    return {"steps": steps, "frames": frames, "wall_seconds": round(wall, 3), "frames_per_second": round(frames / wall, 2),
            "process_cpu_seconds": round(cpu, 3),
            "chunk_latency_ms": {"mean": round(float(latency.mean()), 2), "p50": round(float(np.median(latency)), 2),
                                 "p90": round(float(np.percentile(latency, 90)), 2)}}


@click.command("play")
@click.option("-c", "--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A causal world-model checkpoint folder.")
@click.option("--steps", default="1,2", show_default=True, callback=_steps, help="Comma-separated sampler steps per chunk.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--frames", type=click.IntRange(1), default=120, show_default=True, help="Frames timed per step count.")
@click.option("--warmup", type=click.IntRange(0), default=8, show_default=True, help="Frames made before timing.")
@click.option("--mode", type=click.Choice(["chunk", "frame"]), default="chunk", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON path (default: benchmarks/results/play_<device>_<checkpoint>_<date>.json).")
def play_command(checkpoint: Path, steps: list[int], device: str, frames: int, warmup: int, mode: str,
                 threads: int | None, out: Path | None) -> None:
    """Frames per second of the play loop (the model's side of `causal-rcm play`) at each step count."""
    import torch

    from causal_rcm.bench import environment
    from causal_rcm.devices import resolve_device
    from causal_rcm.models.adapters import checkpoint_name
    from causal_rcm.pipeline import StreamingPipeline
    from causal_rcm.serve import Play
    from causal_rcm.spec import PipelineSpec

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    game = Play.of(PipelineSpec.read(checkpoint), str(checkpoint))
    pipe = StreamingPipeline.from_pretrained(checkpoint, device=dev)
    cfg = pipe.config
    results = []
    for k in steps:
        row = measure_play(pipe, game, steps=k, frames=frames, warmup=warmup, mode=mode)
        results.append(row)
        click.echo(f"{k} step(s): {row['frames_per_second']:.1f} frames/s, chunk latency {row['chunk_latency_ms']['mean']:.1f} ms "
                   f"(p90 {row['chunk_latency_ms']['p90']:.1f})")
    header = environment("play", dev)
    report = {
        **header, "checkpoint": str(checkpoint), "recipe": cfg.recipe, "env": None if cfg.env is None else cfg.env.id,
        "resolution": cfg.resolution, "parameters_m": round(pipe.model.num_parameters() / 1e6, 3), "mode": mode,
        "frames_per_chunk": cfg.frames_per_chunk if mode == "chunk" else 1, "game_fps": cfg.fps, "results": results,
    }
    if dev.type == "cpu":
        report["load_average"] = [round(x, 2) for x in os.getloadavg()]  # others' work on a shared machine slows the loop
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", header["device"])
        out = RESULTS / f"play_{slug}_{checkpoint_name(checkpoint)}_{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"wrote {out}")
