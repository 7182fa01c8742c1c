"""``causal-rcm bench train``: time and peak memory of each recipe's training step at Wan2.1 scale.

Every step is the trainer's own (``Trainer.train_step``: the recipe's ``losses``, a backward per group, gradient
clipping, AdamW, the student's EMA, bf16 autocast over fp32 weights on CUDA), with the models the recipe's own
``build`` makes: random weights of the chosen size (each output head drawn N(0, 0.02): Wan's init zeroes it, which
would make every output 0), batch 1, Wan2.1's 480x832 video as 21 latent frames in chunks of 3. The steps:

* ``tf_diffusion``: teacher-forcing flow matching (:class:`~causal_rcm.distill.flow.CausalTeacherRecipe`) on
  [clean | noisy] = 2 x 21 frames, S = 65520 tokens;
* ``tf_scm``: TF-sCM (:class:`~causal_rcm.distill.tf_scm.TFSCMRecipe`): the teacher's two CFG forwards, the network
  JVP (Triton on CUDA, math on the CPU), the student's forward and backward;
* ``tf_meanflow``: TF-MeanFlow (:class:`~causal_rcm.distill.tf_meanflow.TFMeanFlowRecipe`): the same with MeanFlow's
  target;
* ``sf_dmd_generator``: an SF-DMD step that updates the generator (every ``dmd.critic_steps``-th step): the
  self-forcing rollout with gradient through each chunk's exit step, the bidirectional teacher's CFG score and the
  critic's score, the generator's update and, as on every SF-DMD step, the critic's update on the same rollout;
* ``sf_dmd_critic``: a critic-only SF-DMD step (the others): the rollout without gradient and the critic's update.

Each runs with ``train.activation_checkpointing`` on and off, in a trainer set up afresh (the model recomputes each
block of a whole-sequence forward in the backward; the rollout's KV-cache forwards are never recomputed). Times are
ms per step, the mean of ``--repeats`` steps after a warm-up; memory is the CUDA allocator's peak over them. A step
that runs out of GPU memory is recorded as ``oom`` with the memory it had, the memory is freed and the benchmark goes
on, with a line saying which sharding the step would need (:func:`sharding_hint`); a step that fails otherwise is
recorded as ``error`` with its traceback in the log, and the command exits with an error after the others ran. The
JSON is rewritten after every step, so a run stopped by a time limit keeps what it measured. ``bench scm-step`` is
this command for the first two steps with checkpointing on (its JSON named ``scm_step_...``).

``--size tiny --device cpu`` runs the same code at toy size on the CPU, which the tests use; its timings mean little,
and its memory is the process's peak resident set (a high-water mark of the whole run, not of one step).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

import click

LATENT_CHANNELS = 16
FRAMES = 21
FRAMES_PER_CHUNK = 3
SIZES = ("tiny", "wan2.1-1.3b", "wan2.1-14b")
# name -> (recipe, which of its trainer steps): None every step, True / False SF-DMD's generator / critic-only steps
STEPS: dict[str, tuple[str, bool | None]] = {
    "tf_diffusion": ("causal-teacher", None),
    "tf_scm": ("tf-scm", None),
    "tf_meanflow": ("tf-meanflow", None),
    "sf_dmd_generator": ("sf-dmd", True),
    "sf_dmd_critic": ("sf-dmd", False),
}
USABLE = 0.95  # of a GPU's memory that a step can have (CUDA context, fragmentation)


class _RandomWorld:
    """The bits of a data world the recipes read, and one fixed batch of random latents and text of a given size."""

    def __init__(self, text_dim: int, text_len: int, latent: tuple[int, int, int, int], device) -> None:
        import torch

        self.latent = latent
        self.text_dim = text_dim
        self._empty = torch.zeros(1, text_len, text_dim, device=device)
        self.batch = {
            "latents": torch.randn(1, *latent, device=device),
            "context": torch.randn(1, text_len, text_dim, device=device),
        }

    def latent_shape(self, num_frames=None):
        return self.latent

    def tokens_per_frame(self, patch):
        _, _, h, w = self.latent
        return (h // patch[1]) * (w // patch[2])

    def empty_context(self, batch: int):
        return self._empty.expand(batch, -1, -1)


def sharding_hint(state_gib: float, reached_gib: float, gpu_gib: float, checkpointing: bool) -> str:
    """What a step that ran out of memory on one GPU would need, in one line.

    FSDP2 shards the training state (``state_gib``: weights, gradients, AdamW moments, EMA, frozen teachers) over N
    GPUs; the activations of a batch of 1 stay whole on each. When the step failed it had asked for ``reached_gib``
    in all, of which at most ``state_gib`` was state, so its activations were at least the rest, and more were to
    come: N = ceil(state / (usable - activations)) is a lower bound.
    """
    activations = max(0.0, reached_gib - state_gib)
    usable = USABLE * gpu_gib
    if activations >= usable:
        fix = ("context (sequence) parallelism, or recomputing what is not recomputed yet" if checkpointing
               else "train.activation_checkpointing=true, or context (sequence) parallelism")
        return (f"its activations alone (>= {activations:.1f} GiB) exceed one {gpu_gib:.0f} GiB GPU, and FSDP2 does not "
                f"shard them: needs {fix}")
    n = max(2, math.ceil(state_gib / (usable - activations)))
    also = "" if checkpointing else ", or train.activation_checkpointing=true"
    return (f"FSDP2 over at least {n} GPUs ({state_gib:.1f} GiB of training state shards; the activations, >= "
            f"{activations:.1f} GiB when it failed, do not){also}")


def run_train_bench(
    size: str = "wan2.1-1.3b", height: int = 480, width: int = 832, frames: int = FRAMES,
    frames_per_chunk: int = FRAMES_PER_CHUNK, repeats: int = 3, device_name: str = "cuda",
    steps: tuple[str, ...] = tuple(STEPS), checkpointing: tuple[bool, ...] = (True, False),
    log: Callable[[str], None] = print, on_update: Callable[[dict], None] | None = None, benchmark: str = "train",
) -> dict:
    """Measure ``steps`` (names of :data:`STEPS`) with each ``checkpointing`` setting; returns the JSON record.

    ``on_update(record)`` is called after every measurement (the command rewrites its JSON there)."""
    import torch

    from causal_rcm.bench import environment
    from causal_rcm.models.wan import CausalWanConfig

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    overrides = {} if size != "tiny" else {"in_dim": LATENT_CHANNELS, "out_dim": LATENT_CHANNELS}
    model_config = CausalWanConfig.preset(size, **overrides)
    latent = (model_config.in_dim, frames, height // 8, width // 8)
    torch.manual_seed(0)
    world = _RandomWorld(model_config.text_dim, model_config.text_len, latent, device)
    tf_seq_len = 2 * frames * world.tokens_per_frame(model_config.patch_size)
    dmd = _config("sf-dmd", model_config, frames, frames_per_chunk, device, True)  # the settings the record names
    record = {
        **environment(benchmark, device),
        "setup": {
            "size": size, "height": height, "width": width, "frames": frames, "frames_per_chunk": frames_per_chunk,
            "batch": 1, "tf_seq_len": tf_seq_len, "repeats": repeats,
            "precision": "bf16 autocast, fp32 weights" if cuda else "fp32", "weights": "random",
            "attn_backend": dmd.attn_backend, "jvp_backend": dmd.objective.jvp_backend,
            "step": "Trainer.train_step: recipe losses, backward, gradient clipping, AdamW, EMA",
            "sf_dmd": {"critic_steps": dmd.dmd.critic_steps, "sample_steps": dmd.objective.sample_steps,
                       "teacher": "bidirectional", "rollout_window": dmd.dmd.rollout_window or frames},
            "memory": "CUDA max_memory_allocated over the timed steps" if cuda
                      else "process peak resident set (a high-water mark of the whole run)",
        },
        "results": {name: {} for name in steps},
        "scm_over_diffusion": {},
    }
    log(f"model {size}: {model_config.num_layers} blocks of dim {model_config.dim}; latents {latent}, "
        f"teacher forcing S = {tf_seq_len} tokens, device {device}")
    for recipe in dict.fromkeys(STEPS[name][0] for name in steps):
        for on in checkpointing:
            setting = f"checkpointing_{'on' if on else 'off'}"
            config = _config(recipe, model_config, frames, frames_per_chunk, device, on)
            state_gib = _state_bytes(config, world) / 2**30
            trainer = None
            for name in (n for n in steps if STEPS[n][0] == recipe):
                entry, trainer = _measure(name, config, world, trainer, repeats, device, log)
                entry["state_gib"] = state_gib
                if entry["status"] == "oom" and cuda:
                    entry["needs"] = sharding_hint(state_gib, entry["reached_gib"], entry["gpu_gib"], on)
                record["results"][name][setting] = entry
                log(_line(name, setting, entry))
                _ratio(record, setting, log)
                if on_update is not None:
                    on_update(record)
            del trainer
            _free(device)
    return record


def _measure(name: str, config, world, trainer, repeats: int, device, log) -> tuple[dict, object]:
    """Time step ``name`` in ``trainer`` (set up first if None); returns its entry and the trainer to go on with,
    None after a failure (its half-done step may hold memory: the next sets up afresh)."""
    import torch

    resident_gib = _reset_memory(device)
    oom = None
    try:
        if trainer is None:
            trainer = _trainer(config, world, device)
        return _time_steps(trainer, world.batch, _trainer_steps(config, STEPS[name][1]), repeats, device), trainer
    except torch.cuda.OutOfMemoryError as exc:  # recorded; the rest goes on
        oom = str(exc)
    except Exception as exc:  # recorded with its traceback; the rest goes on, the command fails at the end
        log(traceback.format_exc())
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}, None
    return _oom_entry(oom, device, resident_gib), None  # out of the handler: its traceback (and memory) let go


def _config(recipe: str, model_config, frames: int, frames_per_chunk: int, device, checkpointing: bool):
    """``recipe``'s defaults at this size, as its ``prepare`` would leave them (the student's architecture), on
    ``device`` with ``train.activation_checkpointing``; no teacher path: the recipe builds random models."""
    from causal_rcm.distill import RECIPES

    entry = RECIPES[recipe]
    cuda = device.type == "cuda"
    config = entry.defaults()
    config.model = dataclasses.replace(model_config, **getattr(entry.recipe, "student_overrides", {}))
    config.attn_backend = "triton" if cuda else "sdpa"  # a dense SDPA mask at S = 65520 would take 4 GiB
    config.data.num_frames, config.data.frames_per_chunk = frames, frames_per_chunk
    config.train.device = device.type
    config.train.activation_checkpointing = checkpointing
    config.objective.jvp_backend = "triton" if cuda else "math"
    return config


def _state_bytes(config, world) -> int:
    """Bytes of training state of ``config``'s recipe, from its models built on the meta device (no memory): fp32
    weights, gradients and AdamW's two moments of the trained models, the student's fp32 EMA, the frozen models'
    fp32 weights. FSDP2 shards all of it."""
    import torch

    from causal_rcm.distill import RECIPES

    recipe = RECIPES[config.recipe].recipe(config, world)
    with torch.device("meta"):
        recipe.build(torch.device("meta"))
    trained = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in recipe.trainable().values()]
    frozen = sum(m.num_parameters() for m in recipe.frozen().values())
    return 4 * (4 * sum(trained) + trained[0] + frozen)


def _trainer(config, world, device):
    """A :class:`~causal_rcm.train.trainer.Trainer` set up for ``config``'s recipe on one process, random heads."""
    import torch

    from causal_rcm.distill import RECIPES
    from causal_rcm.train.parallel import DistEnv
    from causal_rcm.train.trainer import Trainer

    recipe = RECIPES[config.recipe].recipe(config, world)
    trainer = Trainer(config, recipe, data=None, dist=DistEnv(0, 1, device))
    with torch.device(device):  # models made where they run: a 1.3B model initialises in ms on a GPU, s on the CPU
        trainer.setup()
    with torch.no_grad():
        for model in (*trainer.groups.values(), *recipe.frozen().values()):
            model.head.head.weight.normal_(0, 0.02)
    return trainer


def _trainer_steps(config, generator: bool | None) -> Iterator[int]:
    """Trainer step numbers of one kind: every step, or SF-DMD's generator steps (multiples of ``dmd.critic_steps``,
    which update the critic too) or its critic-only steps."""
    if generator is None:
        return itertools.count()
    every = config.dmd.critic_steps
    if every == 1 and not generator:
        raise ValueError("dmd.critic_steps = 1: every SF-DMD step updates the generator, none is critic-only")
    return (k for k in itertools.count() if (k % every == 0) == generator)


def _time_steps(trainer, batch: dict, numbers: Iterator[int], repeats: int, device) -> dict:
    """One warm-up step (kernel compilation, allocator, optimiser state), then ``repeats`` timed ones."""
    import torch

    cuda = device.type == "cuda"

    def step() -> dict:
        trainer.step = next(numbers)
        return {"step": trainer.step, **trainer.train_step([batch])}

    logged = [step()]
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    logged += [step() for _ in range(repeats)]
    if cuda:
        torch.cuda.synchronize(device)
    entry = {"status": "ok", "ms": (time.perf_counter() - start) * 1000 / repeats, "peak_gib": _peak_gib(device),
             "steps": [r["step"] for r in logged[1:]]}
    if any("student/exit_step" in r for r in logged):
        entry["exit_steps"] = [int(r["student/exit_step"]) for r in logged[1:] if "student/exit_step" in r]
    dropped = sorted({k for r in logged for k in r if k.startswith(("skipped/", "nonfinite/"))})
    if dropped:  # an update the trainer rejected did not run its backward or optimiser step: the time is not a step's
        entry["dropped_updates"] = dropped
    return entry


def _oom_entry(message: str, device, resident_gib: float) -> dict:
    """What an out-of-memory step had: ``reached_gib`` is its peak plus the allocation that failed."""
    import torch

    asked = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB|B)\b", message)
    asked_gib = float(asked[1]) / 1024 ** ("GiB", "MiB", "KiB", "B").index(asked[2]) if asked else 0.0
    peak = _peak_gib(device)
    entry = {"status": "oom", "peak_gib": peak, "requested_gib": asked_gib, "reached_gib": peak + asked_gib,
             "resident_gib": resident_gib, "error": message.splitlines()[0][:300] if message else ""}
    if device.type == "cuda":
        entry["gpu_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return entry


def _peak_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**30


def _reset_memory(device) -> float:
    """Start a measurement's peak from what is resident now; returns that (GiB, 0 on the CPU)."""
    import torch

    _free(device)
    if device.type != "cuda":
        return 0.0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _line(name: str, setting: str, entry: dict) -> str:
    label = f"{name:>16} ({setting.replace('_', ' ')})"
    if entry["status"] == "error":
        return f"{label}: FAILED, {entry['error']}"
    if entry["status"] == "oom":
        needs = f"; {entry['needs']}" if "needs" in entry else ""
        return f"{label}: out of memory at {entry['reached_gib']:.1f} GiB{needs}"
    extra = f"; DROPPED updates {', '.join(entry['dropped_updates'])}" if "dropped_updates" in entry else ""
    return f"{label}: {entry['ms']:9.1f} ms   peak {entry['peak_gib']:6.2f} GiB{extra}"


def _ratio(record: dict, setting: str, log) -> None:
    """TF-sCM step / TF diffusion step of one setting, once both ran (the issue's target: <= 3x)."""
    results = record["results"]
    pair = [results.get(name, {}).get(setting, {}) for name in ("tf_scm", "tf_diffusion")]
    if setting in record["scm_over_diffusion"] or not all(p.get("status") == "ok" for p in pair):
        return
    ratio = record["scm_over_diffusion"][setting] = pair[0]["ms"] / pair[1]["ms"]
    log(f"TF-sCM step / TF diffusion step ({setting.replace('_', ' ')}): {ratio:.2f}x")


def _options(command):
    """The options ``bench train`` and ``bench scm-step`` share."""
    for option in reversed([
        click.option("--size", type=click.Choice(SIZES), default="wan2.1-1.3b", show_default=True),
        click.option("--height", type=click.IntRange(min=1), default=480, show_default=True,
                     help="video height in pixels (latent = /8)"),
        click.option("--width", type=click.IntRange(min=1), default=832, show_default=True,
                     help="video width in pixels (latent = /8)"),
        click.option("--frames", type=click.IntRange(min=1), default=FRAMES, show_default=True,
                     help="latent frames of a video (teacher forcing trains on twice as many)"),
        click.option("--frames-per-chunk", type=click.IntRange(min=1), default=FRAMES_PER_CHUNK, show_default=True),
        click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
                     help="timed steps after one warm-up"),
        click.option("--device", "device_name", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
                     help="cpu for a toy-size check"),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"),
                     show_default=True, help="folder for the JSON result"),
    ]):
        command = option(command)
    return command


def _run(command: str, name: str, steps, checkpointing, size, height, width, frames, frames_per_chunk, repeats,
         device_name, out_dir) -> None:
    import torch

    from causal_rcm.bench import check_video_size
    from causal_rcm.bench.attention import write_result

    if device_name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError(f"bench {command} needs a CUDA GPU (or --device cpu --size tiny for a toy-size check)")
    check_video_size(height, width)
    if frames % frames_per_chunk:
        raise click.BadParameter("--frames must be a multiple of --frames-per-chunk")
    written = []

    def write(record: dict) -> None:
        written[:] = [write_result(record, out_dir, f"{name}_{size}")]

    record = run_train_bench(size, height, width, frames, frames_per_chunk, repeats, device_name, steps, checkpointing,
                             log=click.echo, on_update=write, benchmark=name)
    click.echo(f"wrote {written[0]}")
    failed = [f"{step} ({setting})" for step, settings in record["results"].items()
              for setting, entry in settings.items() if entry["status"] == "error"]
    if failed:
        raise click.ClickException(f"{len(failed)} step(s) failed (tracebacks above): {', '.join(failed)}")


def _csv(value: str, allowed, option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise click.BadParameter(f"choose one or more of {', '.join(allowed)} (comma-separated)", param_hint=option)
    return items


@click.command("train")
@_options
@click.option("--steps", "step_names", default=",".join(STEPS), show_default=True,
              help="comma-separated training steps to measure")
@click.option("--checkpointing", default="on,off", show_default=True,
              help="activation checkpointing settings to measure each step with (on, off or both)")
def train_command(step_names, checkpointing, **options) -> None:
    """Each recipe's training step (TF diffusion, TF-sCM, TF-MeanFlow, SF-DMD generator and critic): ms and peak memory."""
    steps = _csv(step_names, tuple(STEPS), "--steps")
    settings = tuple(s == "on" for s in _csv(checkpointing, ("on", "off"), "--checkpointing"))
    _run("train", "train", steps, settings, **options)


@click.command("scm-step")
@_options
def scm_step_command(**options) -> None:
    """A TF-sCM training step vs a TF diffusion step (bench train --steps tf_diffusion,tf_scm --checkpointing on)."""
    _run("scm-step", "scm_step", ("tf_diffusion", "tf_scm"), (True,), **options)
