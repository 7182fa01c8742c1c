"""Run configuration: nested dataclasses, ``key=value`` overrides, JSON files, the resolved config.

Each recipe declares its defaults once (its ``defaults`` in :mod:`causal_rcm.distill`, or the staged run's in
:mod:`causal_rcm.runs`); :func:`causal_rcm.runs.load_config` starts from them, applies a ``--config`` file
(:func:`apply_file`: the shipped settings in ``configs/``, or any run's resolved ``config.json``) and then
``section.key=value`` overrides (:func:`apply_overrides`). Every run writes its resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from causal_rcm.data.source import SOURCES
from causal_rcm.errors import UserError, shorten
from causal_rcm.kernels.dispatch import available_backends
from causal_rcm.limits import (
    MAX_DRIFT, MAX_EVAL_VIDEOS, MAX_SEED, MAX_STEPS, MAX_STREAM_SECONDS, field_problems, ranged, show,
)
from causal_rcm.models.wan import CausalWanConfig

__all__ = [
    "Config",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "ObjectiveConfig",
    "ScmConfig",
    "DcmConfig",
    "MeanFlowConfig",
    "DmdConfig",
    "OdeConfig",
    "StagesConfig",
    "apply_file",
    "apply_overrides",
    "config_to_dict",
    "save_config",
    "validate",
]

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "bf16", "fp32")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class DataConfig:
    """Where training videos come from and their frame structure."""

    # where training videos come from: shapes (the embedded world) | atari (recorded episodes) | latents (stored by
    # `causal-rcm synth` or `causal-rcm data prepare`)
    source: str = ranged("shapes", choices=tuple(SOURCES))
    shards: str = ""  # data.source=atari | latents: the folder of shards (written by `collect`, `synth` or `data prepare`)
    # data.source=atari: condition on the recorded actions; false trains the same model without them, the
    # baseline `causal-rcm eval world --no-action-model` compares a world model with
    actions: bool = True
    resolution: int = ranged(32, 16, 4096)  # frame height in pixels (the shapes world draws square frames of 16 px and more)
    width: int = ranged(0, 0, 4096)  # frame width in pixels (0: square); data.source=latents: the shards' (Wan: 832 x 480)
    num_frames: int = ranged(8, 1, 1024)  # latent frames per training video
    frames_per_chunk: int = ranged(1, 1, 1024)  # causal structure: 1 = frame-wise
    max_shapes: int = ranged(3, 1, 64)
    agent: bool = False  # shapes world with one action-driven shape
    codec_factor: int = ranged(4, 1, 64)  # pixel-unshuffle factor: 32 px -> 48 x 8 x 8 latents
    codec_frames: int = ranged(1, 1, 64)  # rendered frames packed into one latent frame (its channels); num_frames counts latent frames
    # Latents are normalised to zero mean, unit std: (pixel - shift) * scale, measured over
    # shapes-world videos with PixelCodec.fit (mean -0.81, std 0.52).
    codec_shift: float = ranged(-0.81, -1e6, 1e6)
    codec_scale: float = ranged(1.92, 0, 1e6, above=True)
    # Latent frames a causal model's KV cache attends, the current chunk included, in the exported checkpoint's
    # streams and in evaluation rollouts (0: num_frames, the training length). Self-forcing rollouts take
    # dmd.rollout_window (which an SF-DMD checkpoint's streams keep when this is 0): SF-DMD trained at 4 streams
    # minutes far better at 8, but trained at 8 it held them worse (docs/results/stream_window_2026-12-03.md).
    stream_window: int = ranged(0, 0, 65536)
    # Attention-sink frames of the exported checkpoint's streams and of evaluation rollouts: the first latent frames
    # kept in the KV cache for ever (-1: as trained, dmd.sink_frames for SF-DMD, none otherwise). A sink holds
    # minute-long streams of an SF-DMD student trained without one (docs/results/stream_ablation_2026-12-07.md).
    stream_sink: int = ranged(-1, -1, 65536)
    # Image-to-video (and continuing given frames): with this probability a training video's first latent frame is
    # given, as a stream gets an image (its first frame repeated over one latent frame's frames), clean at t = 0
    # and without loss; teacher forcing learns the rest of the first chunk beside it, self forcing rolls out from
    # it (distill/base.py). Causal recipes only.
    given_frames_prob: float = ranged(0.0, 0, 1)
    text_len: int = ranged(24, 1, 4096)  # text tokens (padded): the longest 3-shape caption has 19
    text_seed: int = ranged(0, 0, MAX_SEED)  # the toy text encoder is rebuilt from this seed
    workers: int = ranged(-1, -1, 256)  # processes rendering batches ahead; -1 = auto (none on CPU, up to 12 beside a GPU)
    seed: int = ranged(0, 0, MAX_SEED)

    def has_actions(self) -> bool:
        """Whether every video comes with one action per frame (the shapes agent mode, recorded episodes)."""
        return self.agent or (self.source == "atari" and self.actions)

    def cache_window(self) -> int:
        """The causal KV-cache window in latent frames (``stream_window``, or the training length)."""
        return self.stream_window or self.num_frames

    def cache_sink(self, trained: int = 0) -> int:
        """The causal KV cache's sink in latent frames (``stream_sink``, or ``trained``: what the rollouts kept)."""
        return trained if self.stream_sink < 0 else self.stream_sink


@dataclass
class OptimConfig:
    lr: float = ranged(3e-4, 0, 1, above=True)
    beta1: float = ranged(0.9, 0, 1)
    beta2: float = ranged(0.999, 0, 1)
    weight_decay: float = ranged(0.0, 0, 1)
    grad_clip: float = ranged(1.0, 0, above=True)
    warmup_steps: int = ranged(100, 0)
    # After warm-up: constant, or cosine down to lr * final_lr_ratio over the run's budget, which is
    # train.steps or the time guard train.max_seconds, whichever is used up first (a GPU run stopped
    # by its guard still ends annealed).
    schedule: str = ranged("constant", choices=SCHEDULES)
    final_lr_ratio: float = ranged(0.1, 0, 1)
    ema_decay: float = ranged(0.999, 0, 1)
    max_bad_steps: int = ranged(20, 1)  # consecutive non-finite steps before the run stops


@dataclass
class TrainConfig:
    steps: int = ranged(1000, 0)  # 0: export the starting model (an untrained baseline, or train.init's weights)
    max_seconds: float = ranged(0.0, 0)  # time guard: stop (checkpoint, evaluate, export) once training took this long; 0 = none
    batch_size: int = ranged(32, 1, 65536)  # global batch (split across processes and accumulated micro-batches)
    # micro-batches per optimiser step: each process computes batch_size / (processes * grad_accum) samples at a
    # time, and their gradients add up to the global batch's (memory for time; the same step as grad_accum=1)
    grad_accum: int = ranged(1, 1, 65536)
    # Data echoing (Choi et al. 2019): each batch serves this many consecutive steps, each with its
    # own noise and times, for when rendering data costs more than a step (small models on a GPU).
    data_echo: int = ranged(1, 1)
    seed: int = ranged(0, 0, MAX_SEED)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = ranged("auto", choices=PRECISIONS)  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    activation_checkpointing: bool = False  # recompute each block of the trained models in backward (memory for time)
    compile: bool = False  # torch.compile each block of the trained models (one graph serves every block)
    log_every: int = ranged(10, 1)
    ckpt_every: int = ranged(200, 1)
    eval_every: int = ranged(0, 0)  # 0 = only at the end
    eval_videos: int = ranged(16, 0, MAX_EVAL_VIDEOS)  # 0 = no evaluation
    eval_at_start: bool = False  # also evaluate the initial model (step 0) of a fresh run
    eval_steps: int = ranged(50, 1, MAX_STEPS)  # sampler steps for evaluation
    eval_drift: int = ranged(4, 0, MAX_DRIFT)  # causal models: also roll out this many times the training length (0 = off)
    # causal models: also stream each eval prompt for about this many seconds of video and score it clip by clip
    # (stream_* metrics: what a minute-long stream looks like, which 4x rollouts do not tell; 0 = off)
    eval_stream_seconds: float = ranged(0.0, 0, MAX_STREAM_SECONDS)
    out_dir: str = ""  # default: runs/<recipe>
    init: str = ""  # checkpoint to initialise the trainable model from
    teacher: str = ""  # checkpoint of the frozen teacher, for distillation recipes
    dmd_teacher: str = ""  # causal-rcm: the teacher SF-DMD matches (default: train.teacher)
    cm_teacher: str = ""  # sf-dmd with dmd.scm_weight > 0: the causal teacher of the TF-sCM regulariser
    progress: bool = True
    export_dtype: str = ranged("float32", choices=EXPORT_DTYPES)  # weights of the exported model: float32 | float16 | bfloat16 (training state stays fp32)


@dataclass
class ObjectiveConfig:
    """Settings every recipe reads: the flow-matching time, caption dropout and guidance, the student's sampler."""

    shift: float = ranged(3.0, 0, 1000, above=True)  # flow-matching time shift k
    time_sampling: str = ranged("logit_normal", choices=("uniform", "logit_normal"))  # uniform | logit_normal
    caption_dropout: float = ranged(0.1, 0, 1)  # probability of the empty prompt, for CFG
    guidance: float = ranged(3.0, 0, 100)  # CFG scale when sampling / distilling from a teacher
    sample_steps: int = ranged(2, 1, MAX_STEPS)  # few-step sampler steps of a distilled student (its export default)
    student_steps: tuple[int, ...] = ranged((1, 2, 4), 1, MAX_STEPS)  # few-step samplers evaluated for students
    jvp_backend: str = ranged("auto", choices=("auto", *available_backends()))  # attention backend for network JVPs: auto (triton on CUDA, math on CPU) | math | triton


@dataclass
class ScmConfig:
    """TF-sCM (and SF-DMD's sCM regulariser): the continuous-time consistency loss."""

    # sCM log-normal time proposal log tan t ~ N(p_mean, p_std^2). sCM's ImageNet values (-1.0, 1.4)
    # put 3% of samples above t = 1.37; few-step samplers start at t = pi/2, so we shift it up
    # (as rCM does for video with its noise multiplier): 16% above 1.37, median t = pi/4.
    p_mean: float = ranged(0.0, -10, 10)
    p_std: float = ranged(1.6, 0, 10, above=True)
    tangent_warmup: int = ranged(500, 0)  # tangent warm-up: r goes 0 -> 1 over these steps
    tangent_norm: float = ranged(0.1, 0)  # tangent normalisation g / (||g|| + c)


@dataclass
class DcmConfig:
    """TF-dCM: discrete consistency distillation."""

    intervals: int = ranged(48, 1, MAX_STEPS)  # teacher Euler steps on the shifted grid (du = 1/N)


@dataclass
class MeanFlowConfig:
    """TF-MeanFlow."""

    ratio: float = ranged(0.25, 0, 1)  # fraction of samples with r != t


@dataclass
class DmdConfig:
    """SF-DMD: self-forcing rollouts scored by distribution matching."""

    critic_steps: int = ranged(5, 1, 1000)  # critic updates per generator update (DMD's two-time-scale rule)
    min_s: float = ranged(0.02, 0, 1)  # DMD noise levels drawn uniformly in [min_s, max_s], then shifted
    max_s: float = ranged(0.98, 0, 1)
    critic_max_loss: float = ranged(50.0, 0, above=True)  # a critic loss above this (or non-finite) counts as diverged: not trained on
    # N: self-forcing rollouts up to N times data.num_frames through the KV cache of rollout_window and sink_frames;
    # DMD scores a random data.num_frames window (the teacher's length) of it, so training meets the rolling cache
    # that long streams run on (1: the training video itself). Memory does not grow with N: only the scored window
    # keeps a graph (Self-Forcing++ trains at 20x and more).
    rollout_factor: int = ranged(1, 1, 64)
    # The KV-cache window of self-forcing rollouts in latent frames, the current chunk included (0: data.num_frames,
    # the training length); the exported checkpoint's stream window too, unless data.stream_window says otherwise
    # (train at one window, ship streams at another).
    rollout_window: int = ranged(0, 0, 65536)
    # Attention-sink frames of the rollouts: the first latent frames of a rollout stay in the KV cache for ever
    # (StreamingLLM, Xiao et al. 2023; LongLive); the exported checkpoint's streams keep as many.
    sink_frames: int = ranged(0, 0, 1024)
    # rCM's regulariser: add this times the TF-sCM loss on data batches (train.cm_teacher's tangents, the scm
    # section's time proposal) to the generator's DMD loss (0: pure DMD)
    scm_weight: float = ranged(0.0, 0)
    # Noisy context: rollouts commit each chunk's exit-step keys and values instead of re-running it at t = 0, and the
    # exported checkpoint streams that way (pipeline.stream.context "noisy": one forward a chunk fewer)
    noisy_context: bool = False


@dataclass
class OdeConfig:
    """ODE-init: regression on teacher trajectories."""

    steps: int = ranged(40, 1, MAX_STEPS)  # teacher Euler steps of each regression pair


@dataclass
class StagesConfig:
    """The staged causal-rcm run: a consistency stage, then SF-DMD from its student."""

    cm_method: str = ranged("tf-scm", choices=("tf-scm", "tf-meanflow", "tf-dcm"))
    cm_steps: int = ranged(2000, 1)
    dmd_steps: int = ranged(1000, 1)
    dmd_lr: float = ranged(1e-5, 0, 1, above=True)


# Where the keys of the single ``objective`` section of configs written before 2026-12-07 live now.
LEGACY_OBJECTIVE_KEYS = {
    "p_mean": "scm.p_mean", "p_std": "scm.p_std", "tangent_warmup": "scm.tangent_warmup",
    "tangent_norm": "scm.tangent_norm", "dcm_intervals": "dcm.intervals", "meanflow_ratio": "meanflow.ratio",
    "critic_steps": "dmd.critic_steps", "dmd_min_s": "dmd.min_s", "dmd_max_s": "dmd.max_s",
    "critic_max_loss": "dmd.critic_max_loss", "rollout_factor": "dmd.rollout_factor",
    "rollout_window": "dmd.rollout_window", "scm_weight": "dmd.scm_weight", "ode_steps": "ode.steps",
    "cm_method": "stages.cm_method", "cm_steps": "stages.cm_steps", "dmd_steps": "stages.dmd_steps",
    "dmd_lr": "stages.dmd_lr",
}


@dataclass
class Config:
    recipe: str
    model: CausalWanConfig = field(default_factory=lambda: CausalWanConfig.preset("shapes"))
    attn_backend: str = ranged("sdpa", choices=available_backends())
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # A recipe's own sections: its defaults (in :mod:`causal_rcm.distill`) create those it reads; the others stay
    # None, are left out of the resolved config, and setting a key of one is refused.
    scm: ScmConfig | None = None
    dcm: DcmConfig | None = None
    meanflow: MeanFlowConfig | None = None
    dmd: DmdConfig | None = None
    ode: OdeConfig | None = None
    stages: StagesConfig | None = None

    def out_dir(self) -> Path:
        return Path(self.train.out_dir or f"runs/{self.recipe}")


SECTIONS = ("scm", "dcm", "meanflow", "dmd", "ode", "stages")  # the recipes' own sections (None where not used)


# ------------------------------------------------------------------ (de)serialisation
def config_to_dict(obj: Any) -> Any:
    """Plain JSON data of a config; a :class:`Config`'s sections its recipe does not have (None) are left out."""
    if isinstance(obj, Config):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None}
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str, *, from_string: bool) -> Any:
    """An override's string parsed as ``annotation`` (UserError if it cannot be), or a JSON value as it is but for
    lists, which become tuples: :func:`validate` then checks every value's type and range."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (from_string and value.lower() in ("none", "null")):
            return None
        return _coerce(value, next(a for a in typing.get_args(annotation) if a is not type(None)), key, from_string=from_string)
    if origin is tuple:
        if from_string:
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        elif not isinstance(value, list):
            return value
        inner = typing.get_args(annotation)
        return tuple(_coerce(v, inner[0] if inner else str, key, from_string=from_string) for v in value)
    if not from_string:
        return value
    text = value.strip()
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation is int:
            try:
                return int(text)
            except ValueError:  # 1e3, 200.0: a whole number written as a float
                number = float(text)
                if not number.is_integer():
                    raise
                return int(number)
        if annotation is float:
            return float(text)
    except (OverflowError, ValueError):
        raise UserError(f"{key}: cannot read {shorten(text)} as {annotation.__name__}") from None
    return value


def _set(obj: Any, dotted: str, value: Any, *, from_string: bool) -> None:
    parts = dotted.split(".")
    target = obj
    if parts[0] == "objective" and len(parts) == 2 and parts[1] in LEGACY_OBJECTIVE_KEYS:
        raise UserError(f"{dotted} is now {LEGACY_OBJECTIVE_KEYS[parts[1]]} (each recipe has its own section)")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            where = ".".join(parts[:i]) or "config"
            raise UserError(f"unknown config key {shorten(dotted)}: {where} has {', '.join(names)}")
        if i == len(parts) - 1:
            annotation = _field_types(type(target))[part]
            if dataclasses.is_dataclass(getattr(target, part)) or (isinstance(target, Config) and part in SECTIONS):
                if value == {}:  # a file's empty section
                    return
                raise UserError(f"{dotted} is a section; set one of its keys, e.g. {dotted}.<key>=...")
            setattr(target, part, _coerce(value, annotation, dotted, from_string=from_string))
        else:
            section = getattr(target, part)
            if section is None and isinstance(target, Config):
                have = [f.name for f in dataclasses.fields(Config) if f.name in SECTIONS and getattr(target, f.name) is not None]
                raise UserError(f"recipe {target.recipe} has no {part} section (its own: {', '.join(have) or 'none'}): "
                                f"{dotted} does not apply to it")
            target = section
            if not dataclasses.is_dataclass(target):
                raise UserError(f"{'.'.join(parts[: i + 1])} is a value, not a section")


def _flatten(data: dict) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (without recursion: a file may nest deeper than Python recurses)."""
    flat, todo = {}, [("", data)]
    while todo:
        prefix, section = todo.pop(0)
        for key, value in section.items():
            if isinstance(value, dict) and value:
                todo.append((f"{prefix}{key}.", value))
            else:
                flat[f"{prefix}{key}"] = value
    return flat


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings in place; UserError names a key that does not exist or a value that does
    not parse as its field's type (:func:`validate` checks the values)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {shorten(item)} is not of the form section.key=value")
        if key.strip() == "recipe":
            raise UserError("recipe is the command's RECIPE argument, not an override")
        _set(config, key.strip(), value.strip(), from_string=True)
    return config


def _upgrade_legacy(data: dict) -> None:
    """Move the keys of an old single ``objective`` section (a shipped checkpoint's recorded config) to their
    sections, in place. Keys of a section the recipe has no use for were the old bag's defaults: dropped later."""
    objective = data.get("objective")
    if not isinstance(objective, dict):
        return
    for old, new in LEGACY_OBJECTIVE_KEYS.items():
        if old in objective:
            section, key = new.split(".")
            data.setdefault(section, {}).setdefault(key, objective.pop(old))
            data["_legacy"] = True


def apply_file(config: Config, config_file: str | Path) -> Config:
    """Update ``config`` in place from a JSON file of sections (a resolved ``config.json`` works); UserError names
    a missing file, bad JSON, a file for another recipe, an ``extends`` loop, or a key that does not exist
    (:func:`validate` checks the values).

    A file may name a base file, ``"extends": "base.json"`` (relative to it), applied first: the shipped settings in
    ``configs/`` share what their runs have in common that way, so each value has one home. ``about`` is a note."""
    sections = _read_sections(Path(config_file), config.recipe, ())
    if sections.pop("_legacy", False):  # an old bag's keys for sections this recipe does not have: its unused defaults
        for name in SECTIONS:
            if getattr(config, name) is None:
                sections.pop(name, None)
    for key, value in _flatten(sections).items():
        _set(config, key, value, from_string=False)
    return config


def _read_sections(path: Path, recipe: str, seen: tuple[Path, ...]) -> dict:
    """The sections of ``path`` over those of the file it extends (recursively), without ``recipe``/``about``."""
    if path.resolve() in seen:
        raise UserError(f"config file {path} extends itself through {' -> '.join(str(p) for p in seen)}")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"config file {path} is not readable JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"config file {path} nests [] or {{}} too deeply: it holds sections of keys") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a JSON object of sections, not a {type(data).__name__}")
    if data.get("recipe", recipe) != recipe:
        raise UserError(f"config file {path} is for recipe {show(data['recipe'])}, not {recipe!r}")
    data.pop("recipe", None)
    data.pop("about", None)
    _upgrade_legacy(data)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"config file {path}: extends must name a file, got {show(base)}")
    merged = _read_sections(path.parent / base, recipe, (*seen, path.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def validate(config: Config) -> None:
    """UserError naming every key whose value is of the wrong type, not finite or outside the range declared beside
    its field (:func:`causal_rcm.limits.ranged`), then the model's own checks across its fields (e.g. heads that do
    not divide ``model.dim``). :func:`causal_rcm.runs.load_config` runs it once, on the config a run gets."""
    problems = field_problems(config)
    if problems:
        raise UserError("; ".join(problems))
    try:
        config.model = CausalWanConfig(**dataclasses.asdict(config.model))
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def save_config(config: Config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
