"""``causal-rcm experiment init-ablation``: which initialisation serves SF-DMD best?

SF-DMD is run with the same budget, batch, learning rate and seeds from six starting points:
the TF-sCM, TF-MeanFlow, TF-dCM and ODE-init students (each trained ``cm_steps`` from the same
teachers), the causal teacher itself (teacher-forcing diffusion, no few-step training) and
"no init" (the DMD teacher's own bidirectional weights, used causally); TF-sCM without SF-DMD
is the seventh row. Every arm reports the oracle at 1 and 2 sampling steps and, at 2 steps,
the drift on rollouts 4x the training length (caption adherence of the first and the last
training-length window, and the oracle's drift score). Causal-rCM's claim is that TF-CM is the
best initialisation; the table says what this run measured.

Every training run is an ordinary resumable ``causal-rcm train`` run under ``OUT``. With ``jobs`` > 1
the runs go to that many ``causal-rcm train`` processes at once (each arm starts when its init is
trained): on a GPU these small models are launch-bound, so several share one device at little cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from causal_rcm.runs import load_config, overrides_for, train
from causal_rcm.errors import UserError

INITS = ("tf-scm", "tf-meanflow", "tf-dcm", "ode-init")
ARMS = ("tf-scm", "tf-meanflow", "tf-dcm", "ode-init", "causal-teacher", "no-init")
COLUMNS = (
    ("1step/caption_adherence", "1-step caption"),
    ("2step/caption_adherence", "2-step caption"),
    ("2step/direction_accuracy", "2-step direction"),
    ("long_first_caption_adherence", "4x: first window"),
    ("long_last_caption_adherence", "4x: last window"),
    ("long_drift", "4x drift"),
)


def run_init_ablation(
    teacher: str | Path,
    dmd_teacher: str | Path,
    out: Path,
    *,
    cm_steps: int = 1000,
    dmd_steps: int = 500,
    videos: int = 16,
    overrides: tuple[str, ...] = (),
    dmd_overrides: tuple[str, ...] = (),
    restart: bool = False,
    device: str = "auto",
    jobs: int = 1,
) -> dict:
    """Train the inits and the SF-DMD arms; write ``init_ablation.{json,md,png}`` under ``out``.

    ``overrides`` apply to every run; ``dmd_overrides`` after them, to the SF-DMD arms only. ``jobs`` > 1 trains
    that many runs at once, each in its own ``causal-rcm train`` process (its log in the run folder's ``log.txt``).
    """
    for path in (teacher, dmd_teacher):
        if not Path(path).exists():
            raise UserError(f"teacher checkpoint not found: {path}")
    if cm_steps < 1 or dmd_steps < 1:
        raise UserError("--cm-steps and --dmd-steps must be >= 1")
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = [
        f"train.eval_videos={videos}", "train.eval_every=0", "train.eval_drift=4", f"train.device={device}",
        "objective.student_steps=1,2", "objective.sample_steps=2",
    ]

    # an override of one recipe's section (ode.steps, dmd.critic_steps) reaches the runs of that recipe only
    shared = overrides_for(("sf-dmd", *INITS), overrides)

    def overrides_of(name: str, recipe: str, steps: int, extra: list[str]) -> list[str]:
        return [*common, *shared[recipe], f"train.steps={steps}", f"train.out_dir={out / name}", *extra]

    # (key, recipe, steps, its overrides, the init run it starts from): inits first, so that with a first-in
    # first-out pool every run an arm waits for has started before the arm does
    runs: list[tuple[str, str, int, list[str], str | None]] = []
    for method in INITS:
        teacher_for = dmd_teacher if method == "ode-init" else teacher
        runs.append((method, method, cm_steps, overrides_of(f"init-{method}", method, cm_steps, [f"train.teacher={teacher_for}"]), None))
    for arm in sorted(ARMS, key=lambda a: a in INITS):  # the arms that need no trained init first
        extra = [f"train.teacher={dmd_teacher}", *dmd_overrides]
        if arm in INITS:
            extra.append(f"train.init={out / f'init-{arm}' / 'model'}")
        elif arm == "causal-teacher":
            extra.append(f"train.init={teacher}")
        runs.append((f"{arm} + sf-dmd", "sf-dmd", dmd_steps, overrides_of(f"dmd-{arm}", "sf-dmd", dmd_steps, extra),
                     arm if arm in INITS else None))

    # every run's config resolved before any trains: a bad override is reported at once, not by a worker process
    configs = {key: load_config(recipe, None, run_overrides) for key, recipe, _, run_overrides, _ in runs}
    results: dict[str, dict] = {}
    if jobs == 1:
        for key, recipe, steps, _, _ in runs:
            results[key] = _summary(recipe, steps, train(configs[key], restart=restart))
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        futures: dict[str, Future] = {}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for key, recipe, _, run_overrides, after in runs:
                futures[key] = pool.submit(_train_process, recipe, configs[key].out_dir(), run_overrides, restart, threads,
                                           futures.get(after))
            for key, recipe, steps, _, _ in runs:
                results[key] = _summary(recipe, steps, futures[key].result())
    inits = {method: results[method] for method in INITS}
    arms = {f"{arm} + sf-dmd": results[f"{arm} + sf-dmd"] for arm in ARMS}
    arms["tf-scm (no sf-dmd)"] = inits["tf-scm"]

    result = {
        "teacher": str(teacher),
        "dmd_teacher": str(dmd_teacher),
        "cm_steps": cm_steps,
        "dmd_steps": dmd_steps,
        "videos": videos,
        "overrides": list(overrides),
        "dmd_overrides": list(dmd_overrides),
        "inits": inits,
        "arms": arms,
        "seconds": time.perf_counter() - started,
    }
    (out / "init_ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "init_ablation.md").write_text(markdown(result))
    plot(result, out / "init_ablation.png")
    return result


def _summary(recipe: str, steps: int, report: dict) -> dict:
    return {"recipe": recipe, "steps": steps, "train_seconds": report["train_seconds"], "eval": report.get("eval", {})}


def _train_process(recipe: str, run_dir: Path, overrides: list[str], restart: bool, threads: int,
                   after: Future | None) -> dict:
    """One ``causal-rcm train`` run in a process of its own (after ``after``, its init, has finished)."""
    if after is not None:
        after.result()  # re-raises the init's failure: its arm is not trained
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "causal_rcm.cli", "train", recipe, *overrides, "train.progress=false"]
    command += ["--restart"] * restart
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    with open(run_dir / "log.txt", "a") as log:  # a resumed run appends
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise UserError(f"`causal-rcm train {recipe}` for {run_dir} exited with {code}: see {run_dir / 'log.txt'}")
    return json.loads((run_dir / "train_report.json").read_text())


def markdown(result: dict) -> str:
    lines = [
        "# SF-DMD initialisation ablation",
        "",
        f"Causal teacher `{result['teacher']}`, DMD teacher `{result['dmd_teacher']}`. Inits trained "
        f"{result['cm_steps']} steps, SF-DMD {result['dmd_steps']} steps, oracle on {result['videos']} prompts. "
        f"Overrides: `{' '.join(result['overrides']) or 'none'}`; SF-DMD arms also "
        f"`{' '.join(result.get('dmd_overrides', [])) or 'none'}`.",
        "",
        "| arm | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for arm, data in result["arms"].items():
        cells = [_fmt(data["eval"].get(key)) for key, _ in COLUMNS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Caption adherence is the oracle's colour-and-shape match (1 = perfect); '4x' columns roll the 2-step "
        "student out to 4x its training length and score the first and the last training-length window; "
        "drift is the oracle's drift score (lower is better).",
        "",
        "![initialisation ablation](init_ablation.png)",
        "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = list(result["arms"])
    keys = [("1step/caption_adherence", "1-step caption"), ("2step/caption_adherence", "2-step caption"),
            ("long_last_caption_adherence", "2-step, last window of 4x"), ("long_drift", "4x drift")]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(keys)
    x = np.arange(len(arms))
    for i, (key, label) in enumerate(keys):
        values = [result["arms"][a]["eval"].get(key, float("nan")) for a in arms]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(arms, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("oracle score")
    ax.set_title("SF-DMD from different initialisations (same budget and seeds)")
    ax.set_ylim(0, 1.15)  # scores are at most 1: the legend row sits above them
    ax.legend(fontsize=8, ncol=len(keys), loc="upper center")  # one row above the bars, clear of them
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
