"""``causal-rcm experiment cm-convergence``: discrete- vs continuous-time consistency distillation.

TF-dCM, TF-sCM and TF-MeanFlow are trained from the same causal teacher with the same budget,
batch, learning rate and seeds; each run evaluates 1-, 2- and 4-step sampling with the oracle
along training (``train.eval_every``). The result is a plot of quality against training steps
and wall-clock, and a table of the steps (and seconds) each method needs to reach a quality
threshold: by default 0.9 of the teacher's own caption adherence (50-step Euler with CFG),
measured on the same prompts. Causal-rCM reports continuous-time CM converging ~10x faster
than dCM; the ratio printed here is whatever this run measured.

Every run is an ordinary ``causal-rcm train`` run in ``OUT/<method>``: an interrupted
experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from causal_rcm.eval.score import evaluate_checkpoint
from causal_rcm.runs import load_config, overrides_for, train
from causal_rcm.errors import UserError

METHODS = ("tf-dcm", "tf-scm", "tf-meanflow")
QUALITY = "caption_adherence"


def run_cm_convergence(
    teacher: str | Path,
    out: Path,
    *,
    methods: tuple[str, ...] = METHODS,
    steps: int = 2000,
    eval_every: int = 200,
    videos: int = 16,
    threshold: float | None = None,
    overrides: tuple[str, ...] = (),
    restart: bool = False,
    device: str = "auto",
) -> dict:
    """Train every method, collect its evaluation curve, write ``cm_convergence.{json,md,png}`` under ``out``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if steps < 1 or eval_every < 1:
        raise UserError("--steps and --eval-every must be >= 1")
    if not Path(teacher).exists():
        raise UserError(f"teacher checkpoint not found: {teacher}")
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    teacher_metrics = evaluate_checkpoint(teacher, n=videos, device=device)
    if threshold is None:
        threshold = 0.9 * teacher_metrics[QUALITY]
    common = [
        f"train.teacher={teacher}", f"train.steps={steps}", f"train.eval_every={eval_every}",
        f"train.eval_videos={videos}", "train.eval_drift=0", f"train.device={device}", "train.eval_at_start=true",
        "objective.student_steps=1,2,4",
    ]
    curves: dict[str, dict] = {}
    shared = overrides_for(tuple(methods), overrides)  # scm.* reaches tf-scm, meanflow.* tf-meanflow
    for method in methods:
        config = load_config(method, None, [*common, *shared[method], f"train.out_dir={out / method}"])
        summary = train(config, restart=restart)
        curves[method] = {
            "curve": read_curve(out / method / "metrics.jsonl"),
            "train_seconds": summary["train_seconds"],
            "batch_size": config.train.batch_size,
            "lr": config.optim.lr,
        }

    table = {
        method: {str(k): first_reaching(data["curve"], k, threshold) for k in (1, 2, 4)} for method, data in curves.items()
    }
    result = {
        "teacher": str(teacher),
        "teacher_metrics": teacher_metrics,
        "threshold": threshold,
        "quality": QUALITY,
        "steps": steps,
        "eval_every": eval_every,
        "videos": videos,
        "overrides": list(overrides),
        "methods": curves,
        "steps_to_threshold": table,
        "ratios": speedups(table, steps),
        "seconds": time.perf_counter() - started,
    }
    (out / "cm_convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cm_convergence.md").write_text(markdown(result))
    plot(result, out / "cm_convergence.png")
    return result


def read_curve(metrics_file: Path) -> list[dict]:
    """Evaluation points ``{step, seconds, 1: q1, 2: q2, 4: q4}`` from a run's metrics.jsonl.

    ``seconds`` is the training wall-clock at that step (the last logged training time at or
    before it; evaluation time is not counted).
    """
    times: dict[int, float] = {}
    evals: list[dict] = []
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "time" in record:
            times[record["step"]] = record["time"]
        if any(k.startswith("eval/") for k in record):
            evals.append(record)
    points = []
    for record in evals:
        before = [s for s in times if s <= record["step"]]
        point = {"step": record["step"], "seconds": times[max(before)] if before else 0.0}
        for k in (1, 2, 4):
            value = record.get(f"eval/{k}step/{QUALITY}")
            if value is not None:
                point[str(k)] = value
        points.append(point)
    return points


def first_reaching(curve: list[dict], k: int, threshold: float) -> dict:
    """The first evaluation where k-step quality >= threshold: ``{step, seconds}``, or None values."""
    for point in curve:
        if point.get(str(k), -math.inf) >= threshold:
            return {"step": point["step"], "seconds": point["seconds"]}
    return {"step": None, "seconds": None}


def speedups(table: dict, budget: int) -> dict:
    """dCM's steps (and seconds) to threshold over each continuous-time method's, per k.

    Where dCM never reached the threshold, the budget stands in for its steps and the ratio is
    a lower bound (``lower_bound``); where the continuous-time method did not, the entry is None.
    """
    ratios: dict[str, dict] = {}
    base = table.get("tf-dcm")
    if base is None:
        return ratios
    for method in ("tf-scm", "tf-meanflow"):
        if method not in table:
            continue
        ratios[method] = {}
        for k, reached in table[method].items():
            ref = base[k]
            if reached["step"] is None:
                ratios[method][k] = None
            elif reached["step"] == 0 or ref["step"] == 0:  # already there at initialisation: no ratio
                ratios[method][k] = {"steps": None, "seconds": None, "lower_bound": False, "at_start": True}
            elif ref["step"]:
                ratios[method][k] = {
                    "steps": ref["step"] / reached["step"],
                    "seconds": ref["seconds"] / max(reached["seconds"], 1e-9),
                    "lower_bound": False,
                }
            else:
                ratios[method][k] = {"steps": budget / reached["step"], "seconds": None, "lower_bound": True}
    return ratios


def markdown(result: dict) -> str:
    lines = [
        "# CM convergence: TF-dCM vs TF-sCM vs TF-MeanFlow",
        "",
        f"Teacher `{result['teacher']}`: {QUALITY} {result['teacher_metrics'][QUALITY]:.3f} (50-step Euler, CFG). "
        f"Threshold: {result['threshold']:.3f}. Budget {result['steps']} steps, evaluated every {result['eval_every']} "
        f"on {result['videos']} prompts. Overrides: `{' '.join(result['overrides']) or 'none'}`.",
        "",
        "Steps (training seconds) to reach the threshold:",
        "",
        "| method | 1 step | 2 steps | 4 steps | final 1 / 2 / 4-step quality |",
        "|---|---|---|---|---|",
    ]
    for method, data in result["methods"].items():
        cells = []
        for k in ("1", "2", "4"):
            hit = result["steps_to_threshold"][method][k]
            cells.append("not reached" if hit["step"] is None else f"{hit['step']} ({hit['seconds']:.0f} s)")
        last = data["curve"][-1] if data["curve"] else {}
        final = " / ".join(f"{last.get(k, float('nan')):.3f}" for k in ("1", "2", "4"))
        lines.append(f"| {method} | {' | '.join(cells)} | {final} |")
    lines += ["", "dCM steps to threshold / continuous-time steps to threshold (measured):", ""]
    for method, per_k in result["ratios"].items():
        for k, ratio in per_k.items():
            if ratio is None:
                text = "not measurable (the continuous-time run did not reach the threshold)"
            elif ratio.get("at_start"):
                text = "not measurable (a run met the threshold at initialisation; raise --threshold)"
            elif ratio["lower_bound"]:
                text = f">= {ratio['steps']:.2f}x in steps (dCM did not reach the threshold within {result['steps']} steps)"
            else:
                text = f"{ratio['steps']:.2f}x in steps, {ratio['seconds']:.2f}x in wall-clock"
            lines.append(f"- {method}, {k}-step: {text}")
    lines += ["", "![quality against steps and wall-clock](cm_convergence.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey=True)
    for col, k in enumerate(("1", "2", "4")):
        for row, x_key in enumerate(("step", "seconds")):
            ax = axes[row][col]
            for method, data in result["methods"].items():
                points = [p for p in data["curve"] if k in p]
                ax.plot([p[x_key] for p in points], [p[k] for p in points], marker="o", label=method)
            ax.axhline(result["teacher_metrics"][QUALITY], color="black", linestyle=":", label="teacher (50 steps)")
            ax.axhline(result["threshold"], color="grey", linestyle="--", label="threshold")
            ax.set_xlabel("training steps" if x_key == "step" else "training seconds")
            if col == 0:
                ax.set_ylabel(QUALITY.replace("_", " "))
            ax.set_title(f"{k}-step sampling")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Teacher-forcing consistency distillation: quality along training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
