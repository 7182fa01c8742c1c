"""``causal-rcm experiment stream-ablation``: what holds a stream for a minute?

One knob at a time, from a causal checkpoint's own stream defaults: the KV-cache window, the attention-sink frames
and the cache's re-caching policy (``recache_every``: rebuild the cache from the clean frames it covers every K
chunks, ``diffusion.samplers``), each on streams of held-out prompts about ``seconds`` of video long, scored clip by
clip by the shapes world's oracle (``eval.score.stream_metrics``: the first clip, the second half, the whole
stream). Further checkpoints (``trained``: label -> path), e.g. SF-DMD students trained with other rollout lengths
N (``dmd.rollout_factor``, ``configs/shapes/sf-dmd-n*.json``), are rows at their own defaults. The result is one
table, ``stream_ablation.md``, with ``stream_ablation.json``; each row is written as soon as it is measured and a
rerun with the same settings skips the rows it has.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from causal_rcm.errors import UserError
from causal_rcm.eval.score import evaluate_checkpoint
from causal_rcm.spec import PipelineSpec

__all__ = ["COLUMNS", "ablation_rows", "run_stream_ablation", "markdown"]

COLUMNS = (
    ("stream_first_caption_adherence", "first clip"),
    ("stream_second_half_caption_adherence", "second half"),
    ("stream_caption_adherence", "whole stream"),
)
KNOBS = (("window", "window_frames"), ("sink", "sink_frames"), ("recache", "recache_every"))


def ablation_rows(checkpoint: Path, *, windows=(), sinks=(), recaches=(), trained: dict[str, Path] | None = None) -> list[dict]:
    """The rows: the checkpoint at its defaults, then each knob value that differs from its default alone, then
    each trained checkpoint at its defaults. A row: ``name``, ``checkpoint``, and the cache (``window``, ``sink``,
    ``recache``: the values it runs with)."""
    def defaults(path: Path) -> dict:
        spec = PipelineSpec.read(path)
        if not spec.causal:
            raise UserError(f"{path} is a bidirectional checkpoint: a stream ablation needs a causal one")
        return {"window": spec.stream.window_frames, "sink": spec.stream.sink_frames, "recache": spec.stream.recache_every}

    base = defaults(checkpoint)
    rows = [{"name": "defaults", "checkpoint": str(checkpoint), **base}]
    for knob, values in (("window", windows), ("sink", sinks), ("recache", recaches)):
        for value in values:
            if value != base[knob]:
                rows.append({"name": f"{knob} {value}", "checkpoint": str(checkpoint), **base, knob: value})
    for label, path in (trained or {}).items():
        rows.append({"name": label, "checkpoint": str(path), **defaults(path)})
    return rows


def run_stream_ablation(
    checkpoint: Path, out: Path, *, windows=(), sinks=(), recaches=(), trained: dict[str, Path] | None = None,
    seconds: float = 60.0, videos: int = 16, steps: int | None = None, seed: int = 0, device: str = "auto",
    command: str = "", say: Callable[[str], None] = print,
) -> dict:
    """Measure every row of :func:`ablation_rows` and write ``stream_ablation.{json,md}`` under ``out``."""
    rows = ablation_rows(checkpoint, windows=windows, sinks=sinks, recaches=recaches, trained=trained)
    settings = {"seconds": seconds, "videos": videos, "steps": steps, "seed": seed}
    path = out / "stream_ablation.json"
    done = {}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            done = {json.dumps(r["row"], sort_keys=True): r for r in old["rows"]}
    result = {"command": command, "checkpoint": str(checkpoint), "settings": settings, "rows": []}
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key in done:
            result["rows"].append(done[key])
            continue
        say(f"stream ablation: {row['name']} ({row['checkpoint']}: window {row['window']}, sink {row['sink']}, "
            f"re-cache {row['recache']})")
        started = time.perf_counter()
        metrics = evaluate_checkpoint(
            row["checkpoint"], steps=steps, n=videos, device=device, seed=seed, stream_seconds=seconds,
            window_frames=row["window"], sink_frames=row["sink"], recache_every=row["recache"],
        )
        result["rows"].append({"row": row, "metrics": metrics, "seconds": round(time.perf_counter() - started, 1)})
        _write(out, result)
    _write(out, result)
    return result


def _write(out: Path, result: dict) -> None:
    for name, text in (("stream_ablation.json", json.dumps(result, indent=2) + "\n"), ("stream_ablation.md", markdown(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def markdown(result: dict) -> str:
    """The table: one row per setting, the stream's caption adherence in its first clip, second half and whole."""
    s = result["settings"]
    lines = [
        f"Streams of about {s['seconds']:g} s of video from {s['videos']} held-out prompts, steps "
        f"{s['steps'] or 'the checkpoint default'}, seed {s['seed']}; caption adherence clip by clip (training-length clips).",
        "",
        "| row | checkpoint | window | sink | re-cache every | " + " | ".join(label for _, label in COLUMNS) + " | seconds |",
        "|---|---|---|---|---|" + "---|" * len(COLUMNS) + "---|",
    ]
    for r in result["rows"]:
        row, m = r["row"], r["metrics"]
        recache = row["recache"] or "never"
        cells = " | ".join(f"{m[key]:.3f}" if key in m else "-" for key, _ in COLUMNS)
        lines.append(f"| {row['name']} | `{row['checkpoint']}` | {row['window']} | {row['sink']} | {recache} | {cells} | {r['seconds']:.0f} |")
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"
