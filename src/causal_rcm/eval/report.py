"""The quickstart's report: ``report.md``, ``report.json``, plots (matplotlib) and sample grids (GIF + mp4).

Input is the list of stage results the quickstart collected (``quickstart.py``); nothing here
knows which stages exist: a stage with ``metrics`` gets a table row and a bar group, one with a
training ``log`` a loss curve, one with ``videos`` a column in the sample grids, one with ``image_cond``
(``eval.given``'s metrics) a row of the image-to-video table.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from causal_rcm.data.source import ShapesSource
from causal_rcm.data.video import grid, upscale, write_gif, write_mp4

__all__ = ["REPORT_FILES", "write_report"]

REPORT_FILES = ("report.md", "report.json", "plots", "samples")
METRICS = ("colour_adherence", "shape_adherence", "caption_adherence", "direction_accuracy", "temporal_consistency")
FIDELITY_METRICS = ("background_residual", "background_residual_p90", "colour_error", "edge_sharpness")
LONG_METRICS = (
    "long_first_caption_adherence", "long_last_caption_adherence",
    "long_first_temporal_consistency", "long_last_temporal_consistency",
)
STREAM_METRICS = ("stream_first_caption_adherence", "stream_caption_adherence", "stream_second_half_caption_adherence")
SCALE = 4  # nearest-neighbour upscaling of the 32 px samples
FPS = ShapesSource.fps  # the sample grids play at the world's frame rate


def write_report(out: Path, report: dict, *, started: float) -> dict[str, str]:
    """Write samples, plots, ``report.md`` and ``report.json`` under ``out``; returns {what: path}."""
    out = Path(out)
    stages = [r for r in report["stages"] if "skipped" not in r]
    files = {**_sample_grids(out, stages), **_plots(out, stages, report["budget"]["drift_factor"], report["budget"].get("stream_seconds"))}
    files["report_md"], files["report_json"] = "report.md", "report.json"
    report["files"] = files
    report["wall_seconds"] = time.perf_counter() - started  # this invocation, from the command's start
    _atomic_write(out / "report.md", _markdown(report))
    _atomic_write(out / "report.json", json.dumps(_finite(report), indent=2) + "\n")
    return files


# ------------------------------------------------------------------ samples
def _sample_grids(out: Path, stages: list[dict]) -> dict[str, str]:
    """Ground truth beside every model: rows are prompts, columns are stages (GIF and mp4)."""
    loaded = [(r["label"], np.load(out / r["videos"])) for r in stages if r.get("videos")]
    files = {}
    for kind, name in (("samples", "compare"), ("long", "long")):
        columns = [(label, v[kind]) for label, v in loaded if kind in v]
        if not columns:
            continue
        rows = min(len(v) for _, v in columns)
        pad = 2
        tiles = [videos[i] for i in range(rows) for _, videos in columns]  # row-major
        frames = upscale(grid(tiles, columns=len(columns), pad=pad), SCALE)
        W = columns[0][1].shape[2]
        frames = _header(frames, [label for label, _ in columns], [(pad + c * (W + pad)) * SCALE for c in range(len(columns))])
        for ext, writer in (("gif", write_gif), ("mp4", write_mp4)):
            path = out / "samples" / f"{name}.{ext}"
            writer(path, frames, fps=FPS)
            files[f"{name}_{ext}"] = str(path.relative_to(out))
    return files


def _header(frames: np.ndarray, labels: list[str], xs: list[int], height: int = 16) -> np.ndarray:
    """Put a strip with ``labels`` at x positions ``xs`` above uint8 frames (F, H, W, 3)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (frames.shape[2], height), (128, 128, 128))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for label, x in zip(labels, xs):
        draw.text((x + 2, 2), label, fill=(255, 255, 255), font=font)
    head = np.broadcast_to(np.asarray(strip), (frames.shape[0], height, frames.shape[2], 3))
    return np.concatenate([head, frames], axis=1)


# -------------------------------------------------------------------- plots
def _plots(out: Path, stages: list[dict], drift_factor: int, stream_seconds: float | None = None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    (out / "plots").mkdir(parents=True, exist_ok=True)
    files = {}

    curves = []
    for r in stages:
        log = (r.get("training") or {}).get("log")
        if log and (out / log).is_file():
            records = [json.loads(line) for line in (out / log).read_text().splitlines() if line.strip()]
            points = [(rec["step"], rec["loss/student"]) for rec in records if "loss/student" in rec]
            if points:
                curves.append((f"{r['label']}: {r['source']}, {r['training'].get('device') or '?'}", points))
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, points in curves:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=label)
        ax.set(xlabel="step", ylabel="training loss (mean over each log window)", yscale="log", title="Training loss per stage")
        plain = matplotlib.ticker.FormatStrFormatter("%.2g")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "plots" / "loss.png", dpi=110)
        plt.close(fig)
        files["loss_png"] = "plots/loss.png"

    scored = [r for r in stages if r.get("metrics")]
    has_long = [r for r in scored if "long_first_caption_adherence" in r["metrics"]]
    panels = [("Oracle metrics (training length)", METRICS, scored)]
    fidelity = [r for r in scored if "background_residual" in r["metrics"]]
    if fidelity:
        panels.append(("Pixel fidelity (training length): residual and colour error 0 = perfect, sharpness 1 = perfect",
                       FIDELITY_METRICS, fidelity))
    if has_long:
        panels.append((f"Rollouts {drift_factor}x the training length: first vs last window", LONG_METRICS, has_long))
    streamed = [row for r in scored for row in (r, {**(r.get("shipped") or {}), "name": f"{r['name']} (shipped)",
                                                     "label": f"{r['label']} (shipped)"})
                if "stream_caption_adherence" in (row.get("metrics") or {})]
    if streamed:
        length = f"{stream_seconds:g} s" if stream_seconds else "minutes"
        panels.append((f"Streams of {length}, scored clip by clip: caption adherence", STREAM_METRICS, streamed))
    names = list(dict.fromkeys(r["name"] for r in scored + streamed))
    colours = {name: plt.get_cmap("tab20" if len(names) > 10 else "tab10")(i) for i, name in enumerate(names)}  # one per model
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.8 * len(panels)), squeeze=False)
    for ax, (title, keys, rows) in zip(axes[:, 0], panels):
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            values = [_num(r["metrics"].get(k)) for k in keys]
            ax.bar(np.arange(len(keys)) + (i - (len(rows) - 1) / 2) * width, values, width, label=r["label"],
                   color=colours[r["name"]])
        ax.set_xticks(np.arange(len(keys)), [k.replace("long_", "").replace("stream_", "").replace("_", " ") for k in keys], fontsize=8)
        ylabel = "value" if keys is FIDELITY_METRICS else "score (1 = perfect)"
        ax.set(ylim=(0, 1.3), yticks=np.linspace(0, 1, 6), ylabel=ylabel, title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncol=min(len(rows), 6), loc="upper center")
    fig.tight_layout()
    fig.savefig(out / "plots" / "oracle.png", dpi=110)
    plt.close(fig)
    files["oracle_png"] = "plots/oracle.png"
    return files


# ----------------------------------------------------------------- markdown
def _markdown(report: dict) -> str:
    mode, env = report["mode"], report["environment"]
    stages = report["stages"]
    files = report["files"]
    lines = ["# causal-rcm quickstart report", ""]
    if mode["test_mode"]:
        lines += ["**This is a test mode (`--fast`)**: the plumbing runs end to end, but the models are barely trained "
                  "and scored on a handful of videos; its numbers measure nothing.", ""]
    lines += [
        f"* command: `{report['command']}`",
        f"* mode: {mode['label']}; device: {report['device']}"
        + (f" ({env['gpu']})" if env.get("gpu") else f" ({env['cpu_count']} CPU cores, {env['torch_threads']} torch threads)"),
        f"* wall-clock of this run: {report['wall_seconds']:.0f} s ({report['wall_seconds'] / 60:.1f} min); "
        f"the stages took {report['stage_seconds']:.0f} s in all (stages done by an earlier run count their own time)",
        f"* causal-rcm {env['causal_rcm']}, torch {env['torch']}, python {env['python']}",
        "",
        "## Teachers",
        "",
    ]
    by_name = {r["name"]: r for r in stages}
    for name in ("teacher", "causal-teacher"):
        r = by_name.get(name)
        if r is None:
            continue
        t = r.get("training") or {}
        if r["source"] != "trained here":
            whose = "the project's, trained on a GPU" if r["source"] == "shipped" else "`--teachers`"
            lines.append(f"* **{r['label']}: {r['source']}** ({whose}): `{r['model_path']}`; {_training_text(t)}; "
                         f"command: `{t.get('command') or 'not recorded'}`")
        else:
            why = (f"none found in `{report['shipped_teachers_folder']}`" if report["shipped_teachers_folder"]
                   else "`--from-scratch`")
            lines.append(f"* **{r['label']}: trained here, not the shipped teacher** ({_training_text(t)}; {why}). "
                         "The shipped teachers are trained on a GPU by `scripts/train_shapes_teachers.sh`.")
    lines += ["", "## Results", "",
              f"Oracle metrics on {report['budget']['eval_videos']} held-out prompts (1 = perfect; analytic detector, no learned judge). "
              f"Teachers are sampled with {report['budget']['eval_steps']} Euler steps and CFG, distilled students with their "
              "few-step sampler (2 steps per chunk; the 1-step caption column) and no CFG (it is distilled into them); causal models chunk by chunk with a KV cache, "
              f"also on rollouts {report['budget']['drift_factor']}x their training length (first and last training-length window, "
              "and the oracle's drift = drop in quality between them). Students also stream each prompt for "
              f"{report['budget'].get('stream_seconds', 0):g} s of video, scored clip by clip (caption adherence of the first "
              "clip and of the second half: what a viewer of a long stream sees). Pixel fidelity, measured against the "
              "renderer's flat colours on black: background residual = brightness (brightest channel, 0-1) of the pixels "
              "off the detected shapes, mean / 90th percentile (0 = black, as rendered); colour error = RGB distance "
              "(0-1 scale) of the pixels inside the shapes to their palette colour (0 = exact); sharpness = the step "
              "across a shape's edge (1 = a one-pixel step, as rendered). NFE: network evaluations per video (a causal "
              "model's each covers one chunk); seconds per video of sampling on this device.", ""]
    header = ["stage", "source", "sampler", "caption", "1-step caption", "colour", "shape", "direction", "temporal",
              "background mean / p90", "colour error", "sharpness", "long caption first → last", "drift",
              "stream caption first → 2nd half", "NFE / video", "s / video", "training"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for r in stages:
        if "skipped" in r:
            continue
        rows.append(r)
        if r.get("shipped"):  # the same recipe's shipped checkpoint (GPU budget) beside this run's
            rows.append({**r["shipped"], "name": f"{r['name']} (shipped)", "one_step": None})
    for r in rows:
        m, cost = r.get("metrics", {}), r.get("cost")
        sampler = r.get("sampler")
        sampler_text = "—" if not sampler else f"{sampler['steps']} {sampler['solver']}" + (
            f", CFG {sampler['guidance']:g}" if sampler.get("guidance", 1) != 1 else "")
        long = "—"
        if "long_first_caption_adherence" in m:
            long = f"{_fmt(m['long_first_caption_adherence'])} → {_fmt(m['long_last_caption_adherence'])}"
        stream = "—"
        if "stream_caption_adherence" in m:
            stream = f"{_fmt(m['stream_first_caption_adherence'])} → {_fmt(m['stream_second_half_caption_adherence'])}"
        lines.append("| " + " | ".join([
            r["name"], r["source"], sampler_text, _fmt(m.get("caption_adherence")),
            _fmt((r.get("one_step") or {}).get("caption_adherence")) if r.get("one_step") else "—",
            *(_fmt(m.get(k)) for k in ("colour_adherence", "shape_adherence", "direction_accuracy", "temporal_consistency")),
            f"{_fmt(m.get('background_residual'))} / {_fmt(m.get('background_residual_p90'))}",
            _fmt(m.get("colour_error")), _fmt(m.get("edge_sharpness")), long, _fmt(m.get("long_drift")), stream,
            f"{cost['nfe_per_video']:.0f}" if cost else "—", f"{cost['seconds_per_video']:.2f}" if cost else "—",
            _training_text(r["training"]) if r.get("training") else "—",
        ]) + " |")
    lines += _image_cond_table(rows)
    lines += ["", "## Stages", ""]
    for r in stages:
        lines.append(f"* **{r['name']}**: {r['about']}" + (f" Skipped: {r['skipped']}." if "skipped" in r else
                                                             f" ({r.get('seconds', 0):.0f} s)"))
        t = r.get("training")
        if t:
            loss = "" if t.get("first_loss") is None else f" loss {t['first_loss']:.3g} → {t['last_loss']:.3g};"
            lines.append(f"  Training {_training_text(t)};{loss} command: `{t.get('command') or 'not recorded'}`")
    lines += ["", "## Plots", ""]
    if "loss_png" in files:
        lines += ["Training loss of every stage that has a training log:", "", f"![training loss]({files['loss_png']})", ""]
    lines += ["Oracle metrics per model:", "", f"![oracle metrics]({files['oracle_png']})", "", "## Samples", ""]
    gt = by_name.get("ground-truth", {})
    if "compare_gif" in files:
        labels = [r["label"] for r in stages if r.get("videos") and "skipped" not in r]
        lines += [f"Columns, left to right: {', '.join(labels)}. Rows: the first held-out prompts:", ""]
        lines += [f"{i + 1}. {c}" for i, c in enumerate(gt.get("captions", []))]
        lines += ["", f"![samples]({files['compare_gif']}) ([mp4]({files['compare_mp4']}))", ""]
    if "long_gif" in files:
        lines += [f"Rollouts {report['budget']['drift_factor']}x the training length, ground truth beside the causal models"]
        if gt.get("long_captions") == gt.get("captions"):
            lines[-1] += " (same prompts and rows)."
        else:
            lines[-1] += "; prompts:"
            lines += [""] + [f"{i + 1}. {c}" for i, c in enumerate(gt.get("long_captions", []))]
        lines += ["", f"![long rollouts]({files['long_gif']}) ([mp4]({files['long_mp4']}))", ""]
    lines += ["## Files", "", "* `report.json`: everything in this report, as data", "* per stage: `<stage>/stage.json` (its result), "
              "`<stage>/videos.npz` (sample frames); for a stage trained here also `<stage>/model/` (the checkpoint: "
              "`causal-rcm eval -c`, `generate -c`, `serve -c`), `metrics.jsonl`, `config.json`, `tb/`", ""]
    return "\n".join(lines)


def _image_cond_table(rows: list[dict]) -> list[str]:
    """The image-to-video and extension table (``eval --image-cond``) of the rows that have ``image_cond``."""
    rows = [r for r in rows if r.get("image_cond")]
    if not rows:
        return []
    lines = ["", "## Image-to-video and extension", "",
             "`causal-rcm eval --image-cond` on the same number of held-out scenes. Image: the scene's first frame is "
             "given as a stream gets an image (its first latent frame), the model continues it under the scene's "
             "caption; the continuation is scored against the scene as it is then, beside the same frames of a "
             "text-only stream of the same prompt (image / text). Position error: distance (px) of each shape from "
             "where the simulator has it (lower is better). Extension: a ground-truth clip of the training length "
             "is given and continued; direction over the frames before the truth's first bounce; seam: the oracle's "
             "temporal consistency of the window across the seam, for the continuation and for a text-only stream "
             "pasted after the clip (a cut).", ""]
    header = ["stage", "caption image / text", "direction image / text", "position error px image / text",
              "extension direction", "extension position error px", "seam: extension / cut"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        g = r["image_cond"]
        pair = lambda a, b: f"{_fmt(g.get(a))} / {_fmt(g.get(b))}"  # noqa: E731
        lines.append("| " + " | ".join([
            r["name"], pair("image_cond/caption_adherence", "text_only/caption_adherence"),
            pair("image_cond/direction_accuracy", "text_only/direction_accuracy"),
            f"{_num(g.get('image_cond/position_error_px')):.1f} / {_num(g.get('text_only/position_error_px')):.1f}",
            _fmt(g.get("extend/direction_accuracy")), f"{_num(g.get('extend/position_error_px')):.1f}",
            pair("extend/seam_consistency", "cut/seam_consistency"),
        ]) + " |")
    return lines


def _training_text(t: dict) -> str:
    if not t:
        return "—"
    steps = "?" if t.get("steps") is None else str(t["steps"])
    batch = f" × {t['batch_size']}" if t.get("batch_size") else ""
    seconds = "?" if t.get("seconds") is None else f"{t['seconds']:.0f} s"
    guard = ", stopped by its time guard" if t.get("time_guard") else ""
    return f"{steps} steps{batch} in {seconds} on {t.get('device') or '?'}{guard}"


def _fmt(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _num(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _finite(data):
    """NaN/inf (an oracle metric undefined on every video) -> None: report.json stays strict JSON."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
