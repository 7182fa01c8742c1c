"""``causal-rcm quickstart``: the recipe end to end on the embedded shapes world, stage by stage, and a report.

The stages (:data:`STAGES`, in order) share one :class:`Quickstart` (output folder, device,
budget, the results of earlier stages). A stage returns a JSON-able result that is written to
``OUT/<stage>/stage.json`` when it finishes, so a re-run skips finished stages and a training
stage killed half-way resumes from its checkpoint; ``restart=True`` redoes everything. Then
``eval.report`` writes ``report.md``, ``report.json``, plots and sample grids from the results.

The shapes-world teachers are trained on a GPU by ``scripts/train_shapes_teachers.sh`` and
shipped under :data:`SHIPPED_TEACHERS`; a CPU cannot train them in minutes (DESIGN section 7).
Without them (or with ``from_scratch``) the teachers are trained here within the budget and
labelled so. A later distillation stage is one more :class:`Stage` entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from causal_rcm.version import __version__
from causal_rcm.data.source import ShapesSource
from causal_rcm.data.video import to_uint8
from causal_rcm.devices import resolve_device
from causal_rcm.errors import UserError
from causal_rcm.eval.given import given_metrics
from causal_rcm.eval.report import REPORT_FILES, write_report
from causal_rcm.eval.score import drift_metrics, evaluate, load_for_eval
from causal_rcm.runs import load_config, train

__all__ = ["SHIPPED_TEACHERS", "TEACHERS", "Budget", "BUDGETS", "Stage", "STAGES", "Quickstart", "run_quickstart"]

SHIPPED_ENV = "CAUSAL_RCM_CHECKPOINTS"


def shipped_checkpoints() -> Path:
    """Where the shipped shapes-world models are: ``$CAUSAL_RCM_CHECKPOINTS`` if set, else the checkout this package
    runs from (an editable install), else ``checkpoints/shapes`` under the current folder (a regular install run from
    the repository's root). Each model is a ``causal-rcm train`` output folder (``model/`` = safetensors + config,
    the resolved ``config.json``, ``command.txt``, ``train_report.json``, ``metrics.jsonl``)."""
    if os.environ.get(SHIPPED_ENV):
        return Path(os.environ[SHIPPED_ENV]).resolve()
    checkout = Path(__file__).resolve().parents[3] / "checkpoints" / "shapes"
    return checkout if checkout.is_dir() else (Path.cwd() / "checkpoints" / "shapes").resolve()


SHIPPED_TEACHERS = shipped_checkpoints()
"""The shipped models' folder, as found at import (:func:`shipped_checkpoints`)."""
# The data settings that define the world a model was trained on (the rest, e.g. data.workers, are how it is fed)
SOURCE_KEYS = ("source", "resolution", "num_frames", "max_shapes", "agent", "codec_factor", "codec_frames",
              "codec_shift", "codec_scale", "text_len", "text_seed")
# A shipped student's KV-cache settings, for the one trained here
STREAM_KEYS = (("data", "stream_window"), ("data", "stream_sink"), ("dmd", "rollout_window"), ("dmd", "sink_frames"))

TEACHERS = ("teacher", "causal-teacher")
STUDENTS = ("tf-scm", "sf-dmd")  # shipped beside the teachers (scripts/train_shapes_students.sh; see checkpoints/shapes/README.md)
RESULT = "stage.json"
OPTIONS = "quickstart.json"
SAMPLE_ROWS = 4  # prompts shown in the sample grids


@dataclass(frozen=True)
class Budget:
    """How much work the stages do: per-stage training step caps and time guards, evaluation size."""

    name: str
    label: str  # how the report names this mode
    batch_size: int
    steps: dict[str, int]  # training stage -> step cap
    seconds: dict[str, float]  # training stage -> time guard (train.max_seconds)
    eval_videos: int
    eval_steps: int  # Euler steps (with CFG) for every model
    drift_factor: int = 4  # causal models also roll out this many times their training length
    stream_seconds: float = 60.0  # students also stream each eval prompt this long, scored clip by clip
    overrides: tuple[str, ...] = ()  # for every training run
    recipe_overrides: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # recipe -> more overrides

    def scaled(self, minutes: float | None, training: list[str]) -> Budget:
        """The time guards rescaled so that the stages in ``training`` share ``minutes`` as by default."""
        if minutes is None or not training:
            return self
        factor = minutes * 60 / sum(self.seconds[name] for name in training)
        return dataclasses.replace(self, seconds={k: v * factor for k, v in self.seconds.items()})


BUDGETS = {
    # On a 2-core CPU, the distillation stages included: 7.2 minutes from the shipped models (2026-12-02), 8.0 with
    # --from-scratch (measured; see README).
    "cpu": Budget(
        "cpu", "default, CPU", batch_size=16,
        steps={"teacher": 6000, "causal-teacher": 3000, "causal-teacher-here": 3000, "tf-scm": 3000, "sf-dmd": 3000},
        seconds={"teacher": 150, "causal-teacher": 75, "causal-teacher-here": 120, "tf-scm": 75, "sf-dmd": 75},
        eval_videos=16, eval_steps=50, overrides=("train.log_every=10", "train.ckpt_every=100"),
        # Measured on this budget: the teacher at lr 1e-3 reaches colour ~0.85 and caption ~0.46 in 150 s,
        # at the recipe's 3e-4 it stays at the floor; the causal fine-tune's loss falls faster at 5e-4 than 1e-4.
        recipe_overrides={
            "teacher": ("optim.lr=1e-3",), "causal-teacher": ("optim.lr=5e-4", "optim.warmup_steps=20"),
            "tf-scm": ("optim.lr=1e-4", "scm.tangent_warmup=100"), "sf-dmd": ("optim.lr=2e-5", "dmd.critic_steps=3"),
        },
    ),
    # On one GPU: the shipped teachers' batch and compiled blocks (configs/shapes/teachers.json), minutes not a quarter-hour.
    "gpu": Budget(
        "gpu", "default, GPU", batch_size=256,
        steps={"teacher": 30000, "causal-teacher": 15000, "causal-teacher-here": 500, "tf-scm": 2000, "sf-dmd": 1000},
        seconds={"teacher": 290, "causal-teacher": 140, "causal-teacher-here": 60, "tf-scm": 300, "sf-dmd": 300},
        eval_videos=16, eval_steps=50, overrides=("train.log_every=100", "train.ckpt_every=500"),
        recipe_overrides={"teacher": ("train.compile=true",), "causal-teacher": ("train.compile=true",)},
    ),
    "fast": Budget(
        "fast", "fast (test mode: a few training steps, 4 videos, 4 sampler steps; its numbers measure nothing)",
        batch_size=4, steps={"teacher": 6, "causal-teacher": 4, "causal-teacher-here": 4, "tf-scm": 3, "sf-dmd": 3},
        seconds={"teacher": 60, "causal-teacher": 60, "causal-teacher-here": 60, "tf-scm": 60, "sf-dmd": 60},
        eval_videos=4, eval_steps=4, stream_seconds=4.0, overrides=("train.log_every=1", "train.ckpt_every=2", "optim.warmup_steps=2"),
    ),
}


@dataclass(frozen=True)
class Stage:
    """One step of the quickstart: ``run`` returns its result (metrics, training, files) as a dict."""

    name: str  # its folder under OUT and its key in report.json
    label: str  # a short name for plots and sample grids
    about: str  # what it is, one sentence for the report
    run: Callable[[Quickstart], dict]
    trains: Callable[[Quickstart], bool] = lambda q: False  # does it train in this run (budget split)


class Quickstart:
    """What the stages share: options, budget, device, and the results of the stages before."""

    def __init__(self, out: Path, *, device: str, budget: Budget, teachers: Path | None, progress: bool = True,
                 say: Callable[[str], None] = print) -> None:
        self.out = out
        self.device = str(resolve_device(device))
        self.budget = budget
        self.teachers = teachers  # the folder teachers are taken from; None: train them here
        self.shipped = {name: _shipped_run(teachers, name) for name in (*TEACHERS, *STUDENTS)} if teachers else {}
        self.progress = progress
        self.say = say
        self.results: dict[str, dict] = {}

    def teacher_source(self) -> str:
        """How the report names a teacher taken from ``self.teachers``: the project's, or the user's (--teachers)."""
        return "shipped" if self.teachers is not None and Path(self.teachers).resolve() == SHIPPED_TEACHERS else "given"

    def dir(self, stage: str) -> Path:
        return self.out / stage

    def rel(self, path: Path) -> str:
        """``path`` relative to the output folder when inside it (the report is movable), else absolute."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.out.resolve()))
        except ValueError:
            return str(path)

    def teacher_config_file(self) -> Path | None:
        """The shipped teacher's resolved config (its world and architecture), or None for the recipe's defaults."""
        shipped = self.shipped.get("teacher")
        return None if shipped is None else shipped / "config.json"

    def world_overrides(self) -> tuple[str, ...]:
        """``data.*`` overrides that give a training run the shipped teacher's world (its codec, video length,
        text encoder), e.g. the packed codec of ``data.codec_frames=2``; none when the teachers are trained here."""
        config = self.teacher_config_file()
        if config is None:
            return ()
        data = json.loads(config.read_text()).get("data", {})
        return tuple(f"data.{key}={data[key]}" for key in SOURCE_KEYS if key in data)

    def stream_overrides(self, student: str) -> tuple[str, ...]:
        """The shipped ``student``'s KV cache (:data:`STREAM_KEYS`) where it differs from the defaults, so the student
        trained here streams, and is scored, as the shipped one beside it."""
        shipped = self.shipped.get(student)
        if shipped is None:
            return ()
        config = load_config(student, shipped / "config.json")  # an old checkpoint's sections read as today's
        overrides = []
        for section, key in STREAM_KEYS:
            part = getattr(config, section)
            if part is not None and getattr(part, key) != getattr(type(part)(), key):
                overrides.append(f"{section}.{key}={getattr(part, key)}")
        return tuple(overrides)

    def model(self, stage: str) -> Path:
        """The checkpoint an earlier stage produced or used."""
        return Path(self.results[stage]["model_path"])

    # ------------------------------------------------------------ training
    def train(self, stage: str, recipe: str, *, steps: int | None = None, init: Path | None = None,
              config_file: Path | None = None, overrides: tuple[str, ...] = ()) -> dict:
        """Run ``recipe`` (on ``config_file``, a resolved config, if given) into ``OUT/<stage>`` within the
        budget, resuming its checkpoint; a summary. ``overrides`` come last (e.g. ``train.teacher=...``)."""
        b = self.budget
        args = [
            f"train.out_dir={self.dir(stage).resolve()}", f"train.device={self.device}",
            f"train.batch_size={b.batch_size}", f"train.steps={b.steps[stage] if steps is None else steps}",
            "train.eval_videos=0", f"train.progress={str(self.progress and steps != 0).lower()}", *b.overrides,
            *b.recipe_overrides.get(recipe, ()),
        ]
        if steps is None:
            args.append(f"train.max_seconds={b.seconds[stage]:g}")
            self.say(f"  training {recipe} on {self.device} for up to {b.seconds[stage]:.0f} s or {b.steps[stage]} steps")
        if init is not None:
            args.append(f"train.init={init.resolve()}")
        args += overrides
        command = " ".join(["causal-rcm train", recipe, *(["--config", shlex.quote(str(config_file))] if config_file else []),
                            *(shlex.quote(a) for a in args)])
        summary = train(load_config(recipe, config_file, args))
        (self.dir(stage) / "command.txt").write_text(command + "\n")  # the folder has the shipped teachers' layout
        losses = _losses(self.dir(stage) / "metrics.jsonl")
        return {
            "recipe": recipe,
            "where": "here",
            "command": command,
            "steps": summary["steps"],
            "batch_size": b.batch_size,
            "device": summary["device"],
            "seconds": summary["train_seconds"],
            "time_guard": summary["time_guard"],
            "init": None if init is None else str(init),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "log": self.rel(self.dir(stage) / "metrics.jsonl"),
        }

    # ---------------------------------------------------------- evaluation
    def evaluate(self, stage: str, model_path: Path, *, drift: bool, steps: int | None = None, videos: bool = True,
                 stream: bool = False) -> dict:
        """Oracle metrics, sampling cost and sample videos of a checkpoint.

        Teachers sample with the budget's Euler steps and CFG; few-step students (``steps`` given)
        with their own solver and ``steps`` steps, without CFG (it is distilled into them).
        ``videos=False`` keeps no samples (a second evaluation of the same stage). ``stream``: a causal
        model also streams each prompt for the budget's ``stream_seconds`` (``stream_*`` metrics).
        """
        model, world, spec = load_for_eval(model_path, steps=steps or self.budget.eval_steps, device=self.device)
        streams = self.budget.stream_seconds if stream and spec.causal else 0.0
        rollouts = f", {self.budget.drift_factor}x-length rollouts" if drift and spec.causal else ""
        rollouts += f", {streams:g} s streams" if streams else ""
        sampler = "Euler" if spec.solver == "euler" else spec.solver
        self.say(f"  sampling {self.budget.eval_videos} videos ({spec.steps} {sampler} steps, CFG {spec.guidance:g}{rollouts})")
        result = evaluate(
            model, world, spec, n=self.budget.eval_videos, drift_factor=self.budget.drift_factor if drift else 0,
            stream_seconds=streams, progress=f"{stage}: sampling" if self.progress else None,
        )
        samples = {"samples": to_uint8(result.videos[:SAMPLE_ROWS])}
        if result.long_videos is not None:
            samples["long"] = to_uint8(result.long_videos[:SAMPLE_ROWS])
        return {
            "model_path": str(model_path),
            "sampler": {"solver": spec.solver, "steps": spec.steps, "shift": spec.shift, "guidance": spec.guidance,
                        "causal": spec.causal, "frames_per_chunk": spec.frames_per_chunk},
            "metrics": result.metrics,
            "cost": {"nfe_per_video": result.nfe_per_video, "seconds_per_video": result.seconds_per_video},
            "videos": self.save_videos(stage, samples) if videos else None,
        }

    def image_cond(self, stage: str, model_path: Path, *, steps: int) -> dict[str, float]:
        """``eval --image-cond`` of a causal checkpoint on the budget's prompts (``eval.given``): image-to-video
        beside a text-only stream, and a ground-truth clip extended beside a cut."""
        model, world, spec = load_for_eval(model_path, steps=steps, device=self.device)
        self.say(f"  image-to-video and extension: {self.budget.eval_videos} scenes ({spec.steps} {spec.solver} steps)")
        return given_metrics(model, world, spec, n=self.budget.eval_videos,
                             progress=f"{stage}: image-cond" if self.progress else None)

    def save_videos(self, stage: str, videos: dict[str, np.ndarray]) -> str:
        """uint8 videos (B, F, H, W, 3) by kind ('samples', 'long') -> ``OUT/<stage>/videos.npz`` (the grids' columns)."""
        path = self.dir(stage) / "videos.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **videos)
        return self.rel(path)


# ------------------------------------------------------------------ the stages
def _ground_truth(q: Quickstart) -> dict:
    """The eval set's ground-truth renders through the oracle: the ceiling of every metric."""
    config = load_config("teacher", q.teacher_config_file())
    world = ShapesSource(config.data, config.model.text_dim)
    n, frames = q.budget.eval_videos, config.data.num_frames
    ref = world.eval_set(n)
    long = world.eval_set(n, num_frames=frames * q.budget.drift_factor)
    metrics = dict(world.oracle.evaluate(ref["video"], ref["scene"]).metrics)
    metrics.update(drift_metrics(world, long["video"], long["caption"]))
    videos = {"samples": to_uint8(ref["video"][:SAMPLE_ROWS]), "long": to_uint8(long["video"][:SAMPLE_ROWS])}
    return {
        "source": "ground truth",
        "metrics": metrics,
        "captions": list(ref["caption"][:SAMPLE_ROWS]),
        "long_captions": list(long["caption"][:SAMPLE_ROWS]),
        "videos": q.save_videos("ground-truth", videos),
    }


def _untrained(q: Quickstart) -> dict:
    """The teacher's architecture at initialisation (0 training steps), sampled like the teacher: the floor."""
    q.train("untrained", "teacher", steps=0, config_file=q.teacher_config_file())
    return {"source": "untrained", **q.evaluate("untrained", q.dir("untrained") / "model", drift=False)}


def _teacher_stage(name: str, *, drift: bool, init: Callable[[Quickstart], Path | None]) -> Callable[[Quickstart], dict]:
    """A teacher: the shipped one if there is one (and not from scratch), else trained here."""

    def run(q: Quickstart) -> dict:
        shipped = q.shipped.get(name)
        if shipped is not None:
            q.say(f"  the {q.teacher_source()} {name}: {shipped}")
            training, source, model = _shipped_training(shipped), q.teacher_source(), shipped / "model"
        else:
            start = init(q)
            training, source, model = q.train(name, name, init=start), "trained here", q.dir(name) / "model"
        return {"source": source, "training": training, **q.evaluate(name, model, drift=drift)}

    return run


def _causal_teacher_here(q: Quickstart) -> dict:
    """With a shipped causal teacher, a short run of its recipe here (from the teacher), to see training work.

    Scored at the training length only: the drift baseline is the shipped causal teacher's, and a
    4x rollout at 50 steps with CFG would take a CPU run minutes more."""
    if q.shipped.get("causal-teacher") is None:
        return {"skipped": "the causal teacher itself was trained here in this run"}
    training = q.train("causal-teacher-here", "causal-teacher", init=q.model("teacher"), overrides=q.world_overrides())
    model = q.dir("causal-teacher-here") / "model"
    return {"source": "trained here", "training": training, **q.evaluate("causal-teacher-here", model, drift=False)}


def _student_stage(name: str, recipe: str, teacher: str, init: str | None) -> Callable[[Quickstart], dict]:
    """A distilled student: the shipped one (with a short run of its recipe here beside it), or trained here.

    ``teacher`` / ``init`` name the earlier stages whose checkpoints the recipe takes as
    ``train.teacher`` / ``train.init``. Students are scored at 2 steps (with 4x rollouts and the budget's
    streams, and given frames: ``image_cond``) and 1 step.
    """

    def run(q: Quickstart) -> dict:
        shipped = q.shipped.get(name)
        overrides = (*q.world_overrides(), *q.stream_overrides(name), f"train.teacher={q.model(teacher).resolve()}")
        init_path = None if init is None else q.model(init)
        training = q.train(name, recipe, init=init_path, overrides=overrides)
        here = q.dir(name) / "model"
        result = {"source": "trained here", "training": training, **q.evaluate(name, here, drift=True, steps=2, stream=True)}
        result["one_step"] = q.evaluate(name, here, drift=False, steps=1, videos=False)["metrics"]
        result["image_cond"] = q.image_cond(name, here, steps=2)
        if shipped is not None:
            shipped_eval = q.evaluate(name, shipped / "model", drift=True, steps=2, videos=False, stream=True)
            result["shipped"] = {"source": q.teacher_source(), "training": _shipped_training(shipped), **shipped_eval}
        return result

    return run


STAGES: list[Stage] = [
    Stage("ground-truth", "ground truth", "The eval prompts rendered by the simulator, scored by the oracle: the ceiling.", _ground_truth),
    Stage(
        "untrained", "untrained",
        "The teacher's architecture at initialisation (what every training run starts from; Wan's init zeroes the "
        "output layer, so its samples are its input noise), sampled like the teacher: the floor.",
        _untrained,
    ),
    Stage(
        "teacher", "teacher",
        "Bidirectional flow-matching teacher, sampled with Euler steps and CFG over the whole clip.",
        _teacher_stage("teacher", drift=False, init=lambda q: None),
        trains=lambda q: q.shipped.get("teacher") is None,
    ),
    Stage(
        "causal-teacher", "causal teacher",
        "Causal teacher (teacher-forcing diffusion, chunks of 2 frames, initialised from the teacher), sampled chunk "
        "by chunk with a KV cache (Euler steps and CFG per chunk), also on rollouts 4x its training length.",
        _teacher_stage("causal-teacher", drift=True, init=lambda q: q.model("teacher")),
        trains=lambda q: q.shipped.get("causal-teacher") is None,
    ),
    Stage(
        "causal-teacher-here", "causal (short run)",
        "The causal-teacher recipe run on this device for a short budget from the teacher, beside the shipped causal "
        "teacher (only when that one is shipped).",
        _causal_teacher_here,
        trains=lambda q: q.shipped.get("causal-teacher") is not None,
    ),
    Stage(
        "tf-scm", "TF-sCM 2-step",
        "Teacher-forcing sCM student distilled from the causal teacher (continuous-time consistency, JVP through the "
        "network), sampled in 2 steps per chunk without CFG; also 1 step, 4x rollouts and minute-long streams.",
        _student_stage("tf-scm", "tf-scm", teacher="causal-teacher", init=None),
        trains=lambda q: True,
    ),
    Stage(
        "sf-dmd", "SF-DMD 2-step",
        "Self-forcing DMD from the TF-sCM student: the student rolls out its own videos with its KV cache and matches "
        "the bidirectional teacher's distribution; 2 steps per chunk, also 1 step, 4x rollouts and minute-long streams.",
        _student_stage("sf-dmd", "sf-dmd", teacher="teacher", init="tf-scm"),
        trains=lambda q: True,
    ),
]


# ------------------------------------------------------------------- runner
def run_quickstart(
    out: str | Path = "runs/quickstart", *, device: str = "auto", from_scratch: bool = False, teachers: str | Path | None = None,
    minutes: float | None = None, fast: bool = False, restart: bool = False, progress: bool = True,
    command: str = "causal-rcm quickstart", started: float | None = None, say: Callable[[str], None] = print,
) -> dict:
    """Run every stage (skipping finished ones) and write the report; returns report.json's content."""
    started = time.perf_counter() if started is None else started
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if minutes is not None and minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes:g}")
    if from_scratch and teachers is not None:
        raise UserError("--from-scratch trains the teachers here; leave out --teachers")
    dev = resolve_device(device)
    teacher_dir = None if from_scratch else Path(teachers) if teachers is not None else SHIPPED_TEACHERS
    if teachers is not None and not any(_shipped_run(teacher_dir, name) for name in TEACHERS):
        raise UserError(f"--teachers {teachers} holds neither teacher/model nor causal-teacher/model (the layout "
                        "scripts/train_shapes_teachers.sh writes)")
    budget = BUDGETS["fast" if fast else "gpu" if dev.type == "cuda" else "cpu"]
    q = Quickstart(out, device=str(dev), budget=budget, teachers=teacher_dir, progress=progress, say=say)
    training = [s.name for s in STAGES if s.trains(q)]
    q.budget = budget.scaled(minutes, training)

    if restart:
        _clear(out)
    options = {
        "budget": budget.name, "minutes": minutes, "device": q.device,
        "teachers": {name: str(path) if path else None for name, path in q.shipped.items()},
    }
    _check_options(out, options)

    if from_scratch:
        say(f"--from-scratch: training the teachers here on {q.device}")
    elif missing := [name for name in TEACHERS if q.shipped.get(name) is None]:
        say(f"no shipped {' and '.join(missing)} in {teacher_dir} (they are made on a GPU by scripts/train_shapes_teachers.sh): "
            f"training {'them' if len(missing) > 1 else 'it'} here on {q.device}, labelled 'trained here' in the report")
    if budget.name == "fast":
        say("fast mode: a test of the plumbing; its numbers measure nothing")

    for i, stage in enumerate(STAGES, 1):
        path = q.dir(stage.name) / RESULT
        head = f"[{i}/{len(STAGES)}] {stage.name}"
        if path.exists():
            q.results[stage.name] = json.loads(path.read_text())
            say(f"{head}: done in an earlier run, skipped ({q.rel(path)})")
            continue
        say(head)
        t0 = time.perf_counter()
        result = {"name": stage.name, "label": stage.label, "about": stage.about, **stage.run(q)}
        result["seconds"] = time.perf_counter() - t0
        _write_json(path, result)
        q.results[stage.name] = result
        say(f"{head}: {_one_line(result)}")

    report = {
        "command": command,
        "mode": {"name": q.budget.name, "label": q.budget.label, "test_mode": q.budget.name == "fast"},
        "budget": dataclasses.asdict(q.budget),
        "device": q.device,
        "environment": _environment(),
        "teachers": options["teachers"],
        "shipped_teachers_folder": str(teacher_dir) if teacher_dir else None,
        "stages": [q.results[s.name] for s in STAGES],
        "stage_seconds": sum(r.get("seconds", 0.0) for r in q.results.values()),
    }
    write_report(out, report, started=started)
    return report


def _one_line(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    m = result.get("metrics", {})
    parts = [result["source"], f"caption adherence {m.get('caption_adherence', float('nan')):.3f}",
             f"direction {m.get('direction_accuracy', float('nan')):.3f}"]
    if "training" in result and result["training"].get("where") == "here":
        t = result["training"]
        parts.append(f"trained {t['steps']} steps in {t['seconds']:.0f} s")
    parts.append(f"{result['seconds']:.0f} s")
    return ", ".join(parts)


def _shipped_run(folder: Path | None, name: str) -> Path | None:
    """``folder/name`` if it holds a checkpoint (``model/model.safetensors``), else None."""
    if folder is None:
        return None
    run = Path(folder) / name
    return run.resolve() if (run / "model" / "model.safetensors").is_file() else None


def _shipped_training(run: Path) -> dict:
    """What a shipped teacher's folder records of its training (command, steps, device, time, loss log)."""
    report = _read_json(run / "train_report.json")
    config = _read_json(run / "config.json")
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else None
    losses = _losses(run / "metrics.jsonl")
    return {
        "recipe": config.get("recipe") or report.get("recipe"),
        "where": "elsewhere",
        "command": command,
        "steps": report.get("steps"),
        "batch_size": config.get("train", {}).get("batch_size"),
        "device": report.get("device"),
        "seconds": report.get("train_seconds"),
        "time_guard": report.get("time_guard"),
        "init": config.get("train", {}).get("init") or None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "log": str(run / "metrics.jsonl") if losses else None,
    }


def _losses(path: Path) -> list[float]:
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r["loss/student"] for r in records if "loss/student" in r]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    """Atomically (temp file + rename): a stage counts as done only once its result is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_options(out: Path, options: dict) -> None:
    """Refuse to mix stages made with other options in one folder; record the options of a new one."""
    path = out / OPTIONS
    if path.exists():
        saved = _read_json(path)
        if saved != options:
            changed = ", ".join(sorted(k for k in options if saved.get(k) != options[k])) or "the options file"
            raise UserError(f"{out} holds a quickstart run with other options ({changed} differ); use another --out or --restart")
        return
    _write_json(path, options)


def _clear(out: Path) -> None:
    """Remove what the quickstart wrote under ``out`` (its stage folders and report), nothing else."""
    for stage in STAGES:
        shutil.rmtree(out / stage.name, ignore_errors=True)
    for name in (OPTIONS, *REPORT_FILES):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _environment() -> dict:
    import platform

    import torch

    return {
        "causal_rcm": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }

