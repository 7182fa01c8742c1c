"""The ``causal-rcm`` command line. Subcommands only parse options and call the library."""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from causal_rcm.errors import InputWarning, TrainingStopped, UserError, shorten
from causal_rcm.limits import (
    MAX_DRIFT, MAX_EVAL_VIDEOS, MAX_SEED, MAX_STEPS, MAX_STREAM_SECONDS, MAX_VIDEO_BYTES, check_video_bytes,
)
from causal_rcm.version import __version__

MAX_MESSAGE_CHARS = 600  # an error line longer than this is cut in its middle (it quotes a long input)
_SHOW_WARNING = warnings.showwarning


class Number(click.FloatRange):
    """A float within a range, and finite: click's FloatRange lets nan through (no comparison with it is true)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class Numbers(click.ParamType):
    """Comma-separated finite numbers, at most ``most`` of them: ``"0.75,0.5"`` -> ``[0.75, 0.5]``."""

    name = "numbers"

    def __init__(self, most: int) -> None:
        self.most = most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[float]:
        if isinstance(value, list):
            return value
        parts = [p for p in str(value).split(",") if p.strip()]
        if len(parts) > self.most:
            self.fail(f"{len(parts)} numbers given; at most {self.most}", param, ctx)
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not comma-separated numbers", param, ctx)
        if not all(map(math.isfinite, numbers)):
            self.fail(f"{value!r} holds a number that is not finite", param, ctx)
        return numbers


SEED = click.IntRange(0, MAX_SEED)
CONTEXT_HELP = ("Causal checkpoints: commit each chunk to the KV cache 'clean' (re-run at t = 0) or 'noisy' (the last step's "
                "keys and values: one forward a chunk fewer); default: the checkpoint's.")
KV_INT8_HELP = "Causal checkpoints: keep the KV cache in int8 (per-token, per-head scales): about half a bf16 cache's bytes."
LOW_MEMORY_HELP = "Preset for small GPUs: an int8 KV cache and VAE decoding in spatial tiles (where the codec has tiles)."
SINK_HELP = ("Causal checkpoints: latent frames of the stream's start kept in the KV cache for ever, an attention sink "
             "(default: the checkpoint's; 0: none).")
STEPS = click.IntRange(1, MAX_STEPS)
POSITIVE = click.IntRange(min=1)


def device_option(default: str) -> Callable:
    """``--device``, checked to name a device this machine has when the command is parsed ('auto' resolved)."""
    return click.option("--device", default=default, show_default=True, callback=_check_device,
                        help="auto, cpu, cuda or cuda:N (one this machine has).")


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The device's name, 'auto' resolved (``cpu`` or ``cuda``), or UserError when this machine has no such device."""
    from causal_rcm.devices import resolve_device

    try:
        return str(resolve_device(value))
    except UserError as exc:
        raise UserError(f"--device: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="causal-rcm")
def cli() -> None:
    """Causal-rCM: turn a video diffusion model into a real-time streaming generator."""


@cli.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True,
              help="Folder for the stages and the report.")
@click.option("--from-scratch", is_flag=True, help="Train the teachers here instead of using the shipped ones.")
@click.option("--teachers", type=click.Path(path_type=Path), default=None,
              help="Folder with teacher/ and causal-teacher/ runs to use (default: the shipped checkpoints/shapes).")
@device_option("auto")
@click.option("--minutes", type=Number(0, 7 * 24 * 60, min_open=True), default=None,
              help="Training time of this run, shared by the stages that train (default on a CPU: 3.75 min when "
                   "the teachers are trained here, 2 min beside shipped ones).")
@click.option("--fast", is_flag=True, help="Test mode: seconds of training, 4 videos, 4 sampler steps; numbers measure nothing.")
@click.option("--restart", is_flag=True, help="Redo every stage (default: finished stages are skipped, training resumes).")
def quickstart(out: Path, from_scratch: bool, teachers: Path | None, device: str, minutes: float | None, fast: bool,
               restart: bool) -> None:
    """The whole recipe on the embedded shapes world, with a report (report.md, report.json, plots, videos).

    Starts from the shipped teachers (trained on a GPU by scripts/train_shapes_teachers.sh); without
    them, or with --from-scratch, trains them here within the budget. Every stage is evaluated with
    the shapes world's oracle beside the ground truth and an untrained model. Re-running continues.
    """
    import shlex
    import time

    started = time.perf_counter()
    _check_writable(out)
    from causal_rcm.runs.quickstart import run_quickstart

    args = ["--out", str(out), "--device", device]
    args += ["--from-scratch"] * from_scratch + ["--fast"] * fast + ["--restart"] * restart
    args += [] if teachers is None else ["--teachers", str(teachers)]
    args += [] if minutes is None else ["--minutes", f"{minutes:g}"]
    command = "causal-rcm quickstart " + " ".join(shlex.quote(a) for a in args)
    report = run_quickstart(out, device=device, from_scratch=from_scratch, teachers=teachers, minutes=minutes, fast=fast,
                            restart=restart, command=command, started=started, say=click.echo)
    _print_summary(report, out)


def _print_summary(report: dict, out: Path) -> None:
    rows = [("stage", "source", "caption", "direction", "temporal", "NFE", "s/video", "training")]
    for r in report["stages"]:
        if "skipped" in r:
            rows.append((r["name"], "skipped", "", "", "", "", "", ""))
            continue
        m, cost, t = r.get("metrics", {}), r.get("cost"), r.get("training")
        rows.append((
            r["name"], r["source"], *(f"{m[k]:.3f}" if isinstance(m.get(k), float) else "-" for k in
                                      ("caption_adherence", "direction_accuracy", "temporal_consistency")),
            f"{cost['nfe_per_video']:.0f}" if cost else "-", f"{cost['seconds_per_video']:.2f}" if cost else "-",
            f"{t['steps']} steps, {t['seconds']:.0f} s on {t['device']}" if t and t.get("seconds") is not None else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo("")
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    mode = " (test mode)" if report["mode"]["test_mode"] else ""
    click.echo(f"\nreport: {out / 'report.md'}{mode}; wall-clock {report['wall_seconds']:.0f} s ({report['wall_seconds'] / 60:.1f} min)")


@cli.command()
@click.option("--env", "env_id", required=True, help="An Atari game of ale-py, e.g. ALE/Breakout-v5 or ALE/Pong-v5.")
@click.option("--policy", type=click.Choice(["random", "sticky", "agent"]), default="random", show_default=True,
              help="random: uniform; sticky: repeats its last action (--sticky-p); agent: a scripted player (Breakout, Pong).")
@click.option("--episodes", type=int, required=True, help="Episodes to record, held-out ones included.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the shards and manifest.json.")
@click.option("--size", type=int, default=64, show_default=True, help="Frames are resized to SIZE x SIZE RGB.")
@click.option("--episodes-per-shard", type=int, default=10, show_default=True, help="Episodes in one tar shard.")
@click.option("--max-steps", type=int, default=None, help="End an episode after this many steps (default: at game over).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Episode i depends only on (seed, i).")
@click.option("--holdout", type=float, default=0.1, show_default=True,
              help="Fraction of the episodes held out, whole, in heldout-* shards (at least one when > 0).")
@click.option("--sticky-p", type=float, default=0.8, show_default=True, help="--policy sticky: probability of repeating.")
@click.option("--repeat-action-probability", type=float, default=None,
              help="The emulator's own sticky actions (default: the game's, 0.25 for -v5).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def collect(env_id: str, policy: str, episodes: int, out: Path, size: int, episodes_per_shard: int, max_steps: int | None,
            seed: int, holdout: float, sticky_p: float, repeat_action_probability: float | None, no_progress: bool) -> None:
    """Record Atari episodes from the emulator into webdataset shards, for training world models.

    Resumable: rerun the same command and the shards its manifest lists are kept, the others (re)written.
    Train on them with `causal-rcm train teacher data.source=atari data.shards=OUT data.resolution=SIZE`.
    """
    from causal_rcm.data.atari import CollectArgs
    from causal_rcm.data.atari import collect as run

    args = CollectArgs(env=env_id, policy=policy, episodes=episodes, size=size, episodes_per_shard=episodes_per_shard,
                       max_steps=max_steps, seed=seed, holdout=holdout, sticky_p=sticky_p,
                       repeat_action_probability=repeat_action_probability)
    args.check()
    _check_writable(out)
    summary = run(out, args, progress=not no_progress, say=lambda line: click.echo(line, err=True))
    shards = summary.manifest.shards
    rate = f", {summary.frames / summary.seconds:.0f} frames/s" if summary.seconds > 0 and summary.frames else ""
    mean = f"; mean return {sum(summary.returns) / len(summary.returns):.1f}" if summary.returns else ""
    click.echo(f"{out}: recorded {summary.episodes} episodes ({summary.frames} frames{rate}{mean}), "
               f"{summary.skipped_shards} shards already whole; {len([s for s in shards if s.split == 'train'])} train "
               f"and {len([s for s in shards if s.split == 'heldout'])} held-out shards, {sum(s.frames for s in shards)} frames")


def frame_options(command: Callable) -> Callable:
    """``--resolution``, ``--width`` and ``--num-frames``: another frame structure than the checkpoint's."""
    for option in reversed([
        click.option("--resolution", type=click.IntRange(16, 4096), default=None, help="Frame height (default: the checkpoint's; a Wan release: 480)."),
        click.option("--width", type=click.IntRange(16, 4096), default=None, help="Frame width (default: the checkpoint's; a Wan release: 832)."),
        click.option("--num-frames", type=click.IntRange(1, 1024), default=None,
                     help="Latent frames per video (default: the checkpoint's; a Wan release: 21, 81 frames)."),
    ]):
        command = option(command)
    return command


def shard_options(command: Callable) -> Callable:
    """Options every job writing latent shards takes."""
    for option in reversed([
        click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the shards and manifest.json."),
        click.option("--per-shard", type=POSITIVE, default=64, show_default=True, help="Videos in one tar shard."),
        click.option("--batch-size", type=POSITIVE, default=8, show_default=True, help="Videos processed together."),
        click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
                     help="How latents and contexts are stored."),
        device_option("auto"),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
    ]):
        command = option(command)
    return command


def _make_shards(make, out: Path, args, device: str, no_progress: bool) -> None:
    """Run a shard writer (``runs.latents.synth`` or ``prepare``) into ``out`` and report what the shards hold."""
    import time

    started = time.perf_counter()
    manifest, made = make(out, args, device=device, progress=not no_progress, say=lambda line: click.echo(line, err=True))
    _report_shards(out, manifest, made, time.perf_counter() - started)


def _report_shards(out: Path, manifest, made: int, seconds: float) -> None:
    if int(os.environ.get("RANK", "0")):
        return
    samples = sum(len(r.samples) for r in manifest.shards)
    rate = f" ({made / seconds:.2f} videos/s)" if made and seconds > 0 else ""
    click.echo(f"{out}: {samples} samples in {len(manifest.shards)} shards; this run made {made} items in {seconds:.0f} s{rate}")
    if manifest.skipped:
        click.echo(f"skipped {len(manifest.skipped)} (not fatal):")
        for item in manifest.skipped:
            click.echo(f"  {item.name}: {item.reason}")


@cli.command()
@click.option("--teacher", "-t", required=True, type=click.Path(path_type=Path),
              help="A bidirectional teacher: a checkpoint folder of ours or a Wan2.1 release folder.")
@click.option("--prompts", "-p", required=True, type=click.Path(path_type=Path), help="A text file, one prompt a line.")
@click.option("--steps", type=STEPS, default=None, help="Teacher sampler steps (default: the teacher's, 50 for Wan).")
@click.option("--guidance", type=Number(0, 100), default=None, help="CFG scale (default: the teacher's, 5 for Wan).")
@click.option("--ode-pairs", type=click.IntRange(0, MAX_STEPS), default=0, show_default=True,
              help="Also store each video's ODE states at the K times of a K-step student (for ode-init); 0: none.")
@click.option("--videos-per-prompt", type=POSITIVE, default=1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Video i's noise depends only on (seed, i).")
@frame_options
@shard_options
def synth(teacher: Path, prompts: Path, steps: int | None, guidance: float | None, ode_pairs: int, videos_per_prompt: int,
          seed: int, resolution: int | None, width: int | None, num_frames: int | None, out: Path, per_shard: int,
          batch_size: int, dtype: str, device: str, no_progress: bool) -> None:
    """Sample a teacher's videos for every prompt into latent shards (latents + text context, + ODE pairs).

    The teacher's own sampler (Euler, CFG against the empty prompt). Resumable: rerun the same command and
    finished shards are kept. Under torchrun each process makes every N-th shard. Train on the shards with
    `causal-rcm train RECIPE data.source=latents data.shards=OUT`.
    """
    from causal_rcm.runs.latents import Frames, SynthArgs
    from causal_rcm.runs.latents import synth as run

    _check_writable(out)
    args = SynthArgs(teacher=str(teacher), prompts=str(prompts), steps=steps, guidance=guidance, ode_pairs=ode_pairs,
                     videos_per_prompt=videos_per_prompt, per_shard=per_shard, batch_size=batch_size, seed=seed, dtype=dtype,
                     frames=Frames(resolution, width, num_frames))
    _make_shards(run, out, args, device, no_progress)


@cli.group("data")
def data_group() -> None:
    """Make training data: prompts files and latent shards of your own videos."""


@data_group.command("prompts")
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A shapes-world text-to-video checkpoint.")
@click.option("-n", "count", type=click.IntRange(1, 10_000_000), required=True, help="Prompts to write.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The shapes world's stream of scenes (data.seed).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Text file, one prompt a line.")
def data_prompts(checkpoint: Path, count: int, seed: int, out: Path) -> None:
    """Write the captions of the first N scenes of a checkpoint's shapes world: a prompts file for `synth`."""
    from causal_rcm.runs.latents import shapes_prompts

    _check_writable(out)
    prompts = shapes_prompts(str(checkpoint), count, seed)
    try:
        out.write_text("".join(p + "\n" for p in prompts))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"{out}: {len(prompts)} prompts ({len(set(prompts))} distinct)")


@data_group.command("prepare")
@click.argument("videos", metavar="VIDEOS_DIR", type=click.Path(path_type=Path))
@click.option("--captions", required=True, type=click.Path(path_type=Path),
              help='JSON lines {"file": "NAME", "caption": "TEXT"}, NAME relative to VIDEOS_DIR.')
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path),
              help="The model the shards are for (ours or a Wan2.1 release): its codec, text encoder, frame size, fps, length.")
@frame_options
@shard_options
def data_prepare(videos: Path, captions: Path, checkpoint: Path, resolution: int | None, width: int | None,
                 num_frames: int | None, out: Path, per_shard: int, batch_size: int, dtype: str, device: str,
                 no_progress: bool) -> None:
    """Encode a folder of videos (any length and frame rate) into latent shards for `data.source=latents`.

    Each video's first clip of the model's length is resampled to its fps, centre-cropped and resized to its
    frame size; its caption is encoded with its text encoder. Unreadable videos, videos shorter than the clip and
    videos without a caption are skipped and listed at the end. Resumable and sharded under torchrun as `synth`.
    """
    from causal_rcm.runs.latents import Frames, PrepareArgs, prepare

    _check_writable(out)
    args = PrepareArgs(videos=str(videos), captions=str(captions), checkpoint=str(checkpoint), per_shard=per_shard,
                       batch_size=batch_size, dtype=dtype, frames=Frames(resolution, width, num_frames))
    _make_shards(prepare, out, args, device, no_progress)


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="JSON config (e.g. a run's resolved config.json).")
@click.option("--restart", is_flag=True, help="Ignore a checkpoint in the output folder and start over.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def train(recipe: str, overrides: tuple[str, ...], config_file: Path | None, restart: bool, print_config: bool) -> None:
    """Train RECIPE (teacher, causal-teacher, ...); resumes from the output folder's checkpoint.

    Overrides are dotted keys, e.g. `train.steps=200 train.batch_size=16 optim.lr=1e-4`.
    Under torchrun every process runs the same command (FSDP2 over the processes).
    """
    import json

    from causal_rcm.config import config_to_dict
    from causal_rcm.runs import load_config
    from causal_rcm.runs import train as run

    config = load_config(recipe, config_file, list(overrides))
    if print_config:
        click.echo(json.dumps(config_to_dict(config), indent=2))
        return
    _check_writable(config.out_dir())
    summary = run(config, restart=restart)
    if int(os.environ.get("RANK", "0")) == 0:
        model = config.out_dir() / "model"
        if summary["steps"]:
            click.echo(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s -> {model}")
        else:  # train.steps=0 exports the model it starts from, e.g. the quickstart's untrained baseline
            start = f"train.init's weights ({config.train.init})" if config.train.init else "a randomly initialised model"
            click.echo(f"not trained (train.steps=0): exported {start} -> {model}")
        _print_metrics(summary.get("eval", {}))


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names none of its commands, goes to its ``default`` command, so that
    ``causal-rcm eval -c CKPT`` stays ``causal-rcm eval shapes -c CKPT`` (options before a command name are not the
    group's: ``ignore_unknown_options`` passes them on)."""

    def __init__(self, *args, default: str, **kwargs) -> None:
        super().__init__(*args, context_settings={"ignore_unknown_options": True}, **kwargs)
        self.default = default

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            return self.default, self.commands[self.default], args
        return super().resolve_command(ctx, args)


@cli.group("eval", cls=_DefaultGroup, default="shapes")
def eval_group() -> None:
    """Score checkpoints: `eval shapes` (the default: `eval -c CKPT`) with the shapes world's oracle, `eval world`
    against the Atari emulator's frames."""


@eval_group.command("shapes")
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A checkpoint folder written by `train`.")
@click.option("--steps", type=STEPS, default=None, help="Sampler steps (default: the checkpoint's).")
@click.option("--videos", "-n", type=click.IntRange(1, MAX_EVAL_VIDEOS), default=16, show_default=True,
              help="Held-out prompts to sample.")
@click.option("--drift", type=click.IntRange(0, MAX_DRIFT), default=0,
              help="Causal models: also roll out this many times their training length (0: no rollouts).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the metrics as JSON here.")
@device_option("auto")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--window", type=POSITIVE, default=None,
              help="Causal models: KV-cache window in latent frames, the chunk included (default: the checkpoint's).")
@click.option("--stream-seconds", type=Number(0, MAX_STREAM_SECONDS), default=0.0,
              help="Causal models: also stream each prompt for about this much video, scored clip by clip (stream_* metrics).")
@click.option("--sink", type=click.IntRange(0, 1024), default=None, help=SINK_HELP)
@click.option("--recache-every", type=click.IntRange(0, 65536), default=None,
              help="Causal models: rebuild the KV cache from its clean frames every this many chunks (0: never; default: the checkpoint's).")
@click.option("--switch", "switches", multiple=True, metavar="TIME",
              help="Causal models: also stream each prompt with prompt switches at these times ('4s', repeatable) and "
                   "score each switch (switch_* metrics).")
@click.option("--switch-to", type=click.Choice(["direction", "scene"]), default="direction", show_default=True,
              help="The caption after a switch: the same shapes with every direction reversed, or the next held-out prompt.")
@click.option("--image-cond", is_flag=True,
              help="Causal models: score image-to-video (a scene's first frame given) against a text-only stream of the "
                   "same prompt, and extending a ground-truth clip (direction kept, no cut at the seam).")
@click.option("--context", type=click.Choice(["clean", "noisy"]), default=None, help=CONTEXT_HELP)
@click.option("--kv-int8", is_flag=True, help=KV_INT8_HELP)
def eval_(checkpoint: Path, steps: int | None, videos: int, drift: int, json_out: Path | None, device: str, seed: int,
          window: int | None, stream_seconds: float, sink: int | None, recache_every: int | None,
          switches: tuple[str, ...], switch_to: str, image_cond: bool, context: str | None, kv_int8: bool) -> None:
    """Score a shapes-world checkpoint with the analytic oracle: a table, and JSON with --json."""
    import json

    if json_out is not None:
        if json_out.is_dir():
            raise UserError(f"--json {json_out} is a folder; give a file name")
        _check_writable(json_out)
    if image_cond:
        from causal_rcm.eval.given import evaluate_given

        if drift or stream_seconds or switches or sink is not None or recache_every is not None or context or kv_int8:
            raise UserError("--image-cond scores given frames alone; run --drift, --stream-seconds, --switch, --sink, "
                            "--recache-every, --context and --kv-int8 without it")
        metrics = evaluate_given(checkpoint, steps=steps, n=videos, device=device, seed=seed, window_frames=window)
    else:
        from causal_rcm.eval.score import evaluate_checkpoint
        from causal_rcm.eval.switch import evaluate_switches

        times = [_seconds(when, "--switch") for when in switches]
        cache = dict(window_frames=window, sink_frames=sink, recache_every=recache_every, context=context, kv_int8=kv_int8)
        metrics = evaluate_checkpoint(checkpoint, steps=steps, n=videos, drift_factor=drift, device=device, seed=seed,
                                      stream_seconds=stream_seconds, **cache)
        if times:
            metrics.update(evaluate_switches(checkpoint, times=times, kind=switch_to, steps=steps, n=videos,
                                             device=device, seed=seed, **cache))
    _print_metrics(metrics)
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {json_out}: {exc.strerror or exc}") from None


def _candidate(value: str, option: str):
    """``PATH`` or ``PATH@K[,K...]`` (its sampler steps) -> a :class:`~causal_rcm.eval.world.Candidate`."""
    from causal_rcm.eval.world import Candidate

    path, at, steps = value.rpartition("@")
    if not at or Path(value).exists():
        return Candidate(Path(value))
    return Candidate(Path(path), _steps_list(steps, f"{option} {value}"))


def _steps_list(text: str, option: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(k) for k in text.split(","))
    except ValueError:
        steps = ()
    if not steps or not all(1 <= k <= MAX_STEPS for k in steps):
        raise UserError(f"{option}: steps are integers in 1..{MAX_STEPS} separated by commas (e.g. 1,2), got {shorten(text)}")
    return steps


@eval_group.command("world")
@click.option("--checkpoint", "-c", "checkpoints", required=True, multiple=True, metavar="CKPT[@K,...]",
              help="An Atari world-model checkpoint (repeat for several: teacher, causal teacher, students); "
                   "CKPT@1,2 samples it with 1 and 2 steps.")
@click.option("--shards", required=True, type=click.Path(path_type=Path), help="A folder written by `causal-rcm collect` (its held-out episodes).")
@click.option("--horizon", type=POSITIVE, default=32, show_default=True, help="Frames predicted after the context.")
@click.option("--episodes", type=click.IntRange(1, MAX_EVAL_VIDEOS), default=16, show_default=True,
              help="Held-out episodes to use (the first long enough).")
@click.option("--steps", default=None, metavar="K[,K...]", help="Sampler steps of every checkpoint without its own @K (default: each one's).")
@click.option("--context", type=POSITIVE, default=None, help="Real frames given as context (default: one chunk of the causal models).")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="Frame of each episode where the context begins (0: the reset; later frames test later game states).")
@click.option("--no-action-model", "no_action", default=None, metavar="CKPT[@K]",
              help="The same model trained without actions (data.actions=false): the baseline the actions must beat.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/eval-world"), show_default=True,
              help="Folder for world_eval.json, world_eval.md and world_eval.png.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option("auto")
def eval_world(checkpoints: tuple[str, ...], shards: Path, horizon: int, episodes: int, steps: str | None,
               context: int | None, start: int, no_action: str | None, out: Path, seed: int, device: str) -> None:
    """Predict held-out Atari episodes from their first frames under the recorded actions and compare with the
    emulator's frames: PSNR and SSIM per horizon step, action sensitivity (ΔPSNR against random actions), beside
    copy-last-frame and the no-action model; a table, JSON and a plot."""
    import shlex

    from causal_rcm.eval.world import evaluate_world, write_world_eval

    _check_writable(out)
    candidates = [_candidate(c, "-c") for c in checkpoints]
    baseline = None if no_action is None else _candidate(no_action, "--no-action-model")
    result = evaluate_world(candidates, shards, horizon=horizon, episodes=episodes, context=context,
                            steps=None if steps is None else _steps_list(steps, "--steps"), no_action=baseline,
                            start=start, seed=seed, device=device, say=lambda line: click.echo(line, err=True))
    args = [a for c in checkpoints for a in ("-c", c)] + ["--shards", str(shards), "--horizon", str(horizon),
                                                            "--episodes", str(episodes), "--start", str(start),
                                                            "--seed", str(seed)]
    args += [] if steps is None else ["--steps", steps]
    args += [] if context is None else ["--context", str(context)]
    args += [] if no_action is None else ["--no-action-model", no_action]
    paths = write_world_eval(result, out, command="causal-rcm eval world " + " ".join(shlex.quote(a) for a in args))
    click.echo(paths["md"].read_text())
    click.echo(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")


def _print_metrics(metrics: dict) -> None:
    if not metrics:
        return
    width = max(len(k) for k in metrics)
    click.echo(f"{'metric':<{width}}  value")
    for key, value in metrics.items():
        click.echo(f"{key:<{width}}  {value:.4f}")


@cli.group()
def bench() -> None:
    """Benchmarks (JSON under benchmarks/results/): attention kernels, whole-model JVP, training steps, streaming (GPU);
    long streams and the KV-cache window (CPU); the play loop of a world model (CPU or GPU)."""


def _register_benchmarks() -> None:
    from causal_rcm.bench.attention import attention_command
    from causal_rcm.bench.jvp import jvp_command
    from causal_rcm.bench.long_stream import long_stream_command, stream_window_command
    from causal_rcm.bench.play import play_command
    from causal_rcm.bench.stream import stream_command
    from causal_rcm.bench.train import scm_step_command, train_command

    bench.add_command(attention_command)
    bench.add_command(jvp_command)
    bench.add_command(train_command)
    bench.add_command(scm_step_command)
    bench.add_command(stream_command)
    bench.add_command(long_stream_command)
    bench.add_command(stream_window_command)
    bench.add_command(play_command)


_register_benchmarks()


@cli.group()
def experiment() -> None:
    """Experiments comparing recipes end to end (JSON, a markdown table and a PNG plot)."""


@experiment.command("cm-convergence")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--teacher", "-t", required=True, type=click.Path(path_type=Path), help="Causal teacher checkpoint (`train causal-teacher`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/cm-convergence"), show_default=True)
@click.option("--steps", type=POSITIVE, default=2000, show_default=True, help="Training steps of every method.")
@click.option("--eval-every", type=POSITIVE, default=200, show_default=True, help="Oracle evaluation (1/2/4-step) cadence.")
@click.option("--videos", "-n", type=click.IntRange(1, MAX_EVAL_VIDEOS), default=16, show_default=True,
              help="Prompts per evaluation.")
@click.option("--threshold", type=Number(0, 1, min_open=True), default=None,
              help="Caption adherence to reach, in (0, 1] (default: 0.9 x the teacher's).")
@click.option("--methods", default=",".join(("tf-dcm", "tf-scm", "tf-meanflow")), show_default=True)
@device_option("auto")
@click.option("--restart", is_flag=True, help="Retrain every method from scratch.")
def cm_convergence(overrides, teacher, out, steps, eval_every, videos, threshold, methods, device, restart) -> None:
    """TF-dCM vs TF-sCM vs TF-MeanFlow from the same teacher, same budget and seeds.

    KEY=VALUE overrides apply to every method (e.g. `train.batch_size=16 optim.lr=1e-5`).
    """
    from causal_rcm.runs.cm_convergence import run_cm_convergence

    _check_writable(out)
    result = run_cm_convergence(
        teacher, out, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), steps=steps,
        eval_every=eval_every, videos=videos, threshold=threshold, overrides=overrides, restart=restart, device=device,
    )
    click.echo((out / "cm_convergence.md").read_text())
    click.echo(f"wrote {out / 'cm_convergence.json'} and {out / 'cm_convergence.png'} in {result['seconds']:.0f} s")


@experiment.command("init-ablation")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--teacher", "-t", required=True, type=click.Path(path_type=Path), help="Causal teacher (`train causal-teacher`).")
@click.option("--dmd-teacher", required=True, type=click.Path(path_type=Path), help="Teacher SF-DMD matches (`train teacher`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/init-ablation"), show_default=True)
@click.option("--cm-steps", type=POSITIVE, default=1000, show_default=True, help="Training steps of every initialisation.")
@click.option("--dmd-steps", type=POSITIVE, default=500, show_default=True, help="SF-DMD steps of every arm.")
@click.option("--dmd-lr", type=Number(0, 1, min_open=True), default=None,
              help="Learning rate of the SF-DMD arms, in (0, 1] (default: the sf-dmd recipe's).")
@click.option("--videos", "-n", type=click.IntRange(1, MAX_EVAL_VIDEOS), default=16, show_default=True,
              help="Prompts per evaluation.")
@device_option("auto")
@click.option("--restart", is_flag=True, help="Retrain every run from scratch.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Runs trained at once, each in its own process (small models share a GPU well).")
def init_ablation(overrides, teacher, dmd_teacher, out, cm_steps, dmd_steps, dmd_lr, videos, device, restart, jobs) -> None:
    """SF-DMD from TF-sCM, TF-MeanFlow, TF-dCM, ODE init, the causal teacher and no init; plus TF-sCM alone.

    KEY=VALUE overrides apply to every run (e.g. `train.batch_size=16`); --dmd-lr, after them, to the SF-DMD arms.
    """
    from causal_rcm.runs.init_ablation import run_init_ablation

    _check_writable(out)
    result = run_init_ablation(
        teacher, dmd_teacher, out, cm_steps=cm_steps, dmd_steps=dmd_steps, videos=videos, overrides=overrides,
        dmd_overrides=() if dmd_lr is None else (f"optim.lr={dmd_lr:g}",), restart=restart, device=device, jobs=jobs,
    )
    click.echo((out / "init_ablation.md").read_text())
    click.echo(f"wrote {out / 'init_ablation.json'} and {out / 'init_ablation.png'} in {result['seconds']:.0f} s")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = (-1,)
    if any(v < 0 for v in values):
        raise UserError(f"{option}: non-negative integers separated by commas (e.g. 8,16), got {shorten(text)}")
    return values


@experiment.command("stream-ablation")
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A causal shapes-world checkpoint.")
@click.option("--windows", default="", metavar="W[,W...]", help="KV-cache windows to try, latent frames with the chunk.")
@click.option("--sinks", default="", metavar="S[,S...]", help="Attention-sink frames to try (0, 1, a chunk).")
@click.option("--recache", default="", metavar="K[,K...]", help="Re-cache policies to try: rebuild the cache every K chunks (0: never).")
@click.option("--trained", multiple=True, metavar="LABEL=CKPT",
              help="Another checkpoint as a row at its own defaults, e.g. a student trained with another rollout length (repeatable).")
@click.option("--seconds", type=Number(0, MAX_STREAM_SECONDS, min_open=True), default=60.0, show_default=True,
              help="Video per stream.")
@click.option("--videos", "-n", type=click.IntRange(1, MAX_EVAL_VIDEOS), default=16, show_default=True, help="Held-out prompts.")
@click.option("--steps", type=STEPS, default=None, help="Sampler steps (default: each checkpoint's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("runs/stream-ablation"), show_default=True)
@device_option("auto")
def stream_ablation(checkpoint, windows, sinks, recache, trained, seconds, videos, steps, seed, out, device) -> None:
    """What holds a minute-long stream: window, sink frames and re-caching, each alone, plus trained checkpoints.

    One table (stream_ablation.md, .json); rows already measured with the same settings are kept on a rerun.
    """
    import shlex

    from causal_rcm.runs.stream_ablation import run_stream_ablation

    _check_writable(out)
    rows = {}
    for item in trained:
        label, sep, path = item.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise UserError(f"--trained takes LABEL=CKPT, got {shorten(item)}")
        rows[label.strip()] = Path(path.strip())
    args = ["-c", str(checkpoint), "--seconds", f"{seconds:g}", "-n", str(videos), "--seed", str(seed), "-o", str(out)]
    for option, value in (("--windows", windows), ("--sinks", sinks), ("--recache", recache), ("--steps", steps)):
        args += [] if not value else [option, str(value)]
    args += [a for item in trained for a in ("--trained", item)]
    result = run_stream_ablation(
        checkpoint, out, windows=_ints(windows, "--windows"), sinks=_ints(sinks, "--sinks"), recaches=_ints(recache, "--recache"),
        trained=rows, seconds=seconds, videos=videos, steps=steps, seed=seed, device=device,
        command="causal-rcm experiment stream-ablation " + " ".join(shlex.quote(a) for a in args),
        say=lambda line: click.echo(line, err=True),
    )
    click.echo((out / "stream_ablation.md").read_text())
    click.echo(f"wrote {out / 'stream_ablation.json'} and {out / 'stream_ablation.md'} ({len(result['rows'])} rows)")


@cli.command()
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--to", "layout", type=click.Choice(["causal-rcm", "wan", "diffusers"]), required=True,
              help="Layout to write. 'wan' with OUT ending in .safetensors or .pth writes one file.")
@click.option("--window", type=POSITIVE, default=None,
              help="Our layout, causal checkpoints: the latent frames its streams attend, the chunk included (default: IN's).")
def convert(src: Path, dst: Path, layout: str, window: int | None) -> None:
    """Convert a checkpoint between layouts (ours, original Wan2.1, diffusers); IN's layout is detected.

    IN may be a Wan2.1 release (a diffusers Wan folder or the original folder): to our layout, its pipeline section
    names the release's VAE and text encoder where they are (absolute paths). Our layout to ours keeps the pipeline
    section (codec, text encoder, sampler and stream defaults); the Wan and diffusers layouts have no place for it."""
    import dataclasses

    from causal_rcm.diffusion.samplers import check_window
    from causal_rcm.models.adapters import load_checkpoint, save_checkpoint
    from causal_rcm.models.release import find_release
    from causal_rcm.spec import PipelineSpec

    config, state, src_layout = load_checkpoint(src)
    release = find_release(src)
    spec = PipelineSpec.read(src) if release is not None and layout == "causal-rcm" else PipelineSpec.read_if_any(src)
    if release is not None and spec is not None:
        spec.check_model(config, src)  # a component that does not fit the transformer, named before anything is written
    if window is not None:
        if layout != "causal-rcm":
            raise UserError("--window sets the stream window of our layout's pipeline section; use --to causal-rcm")
        if spec is None or not spec.causal:
            raise UserError(f"--window needs a causal checkpoint of our layout with a pipeline section; {src} is not one")
        check_window(window, spec.frames_per_chunk, "--window", most=config.max_frames - spec.stream.sink_frames)
        spec = dataclasses.replace(spec, stream=dataclasses.replace(spec.stream, window_frames=window))
    _check_writable(dst)
    pipeline = spec.relocated(src, dst).to_dict() if spec is not None and layout == "causal-rcm" else None
    save_checkpoint(config, state, dst, layout, pipeline=pipeline)
    n_params = sum(v.numel() for v in state.values())
    what = f"a Wan release, {release.layout} layout" if release is not None and spec is not None else src_layout
    click.echo(f"{src} ({what}) -> {dst} ({layout}): {len(state)} tensors, {n_params / 1e6:.2f} M parameters")
    if spec is not None and layout != "causal-rcm":
        click.echo(f"note: the {layout} layout does not hold IN's pipeline section (codec, text encoder, sampler); "
                   "`generate`, `serve` and `eval` need our layout")
    elif pipeline is not None and release is not None:
        click.echo(f"the pipeline section names the release's VAE {pipeline['codec']['path']} and text encoder "
                   f"{pipeline['text']['path']}: keep them there")
    elif window is not None:
        click.echo(f"streams attend {window} latent frames")


@cli.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A checkpoint folder (ours, with a pipeline config) or a Wan2.1 release folder.")
@click.option("--prompt", "-p", required=True, help="Text prompt (the shapes world's vocabulary for toy checkpoints).")
@click.option("--switch", "switches", nargs=2, multiple=True, metavar="TIME PROMPT",
              help="Causal checkpoints: switch to PROMPT at TIME ('4s', '2.5s' or '12f' frames); repeatable.")
@click.option("--seconds", type=Number(0, min_open=True), default=None,
              help="Video length (default: the checkpoint's training length).")
@click.option("--steps", type=STEPS, default=None, help="Sampler steps per chunk (default: the checkpoint's).")
@click.option("--times", type=Numbers(MAX_STEPS - 1), default=None, metavar="T1,T2,...",
              help="Causal few-step students: intermediate flow-matching times, e.g. 0.75 for 2 steps 1 -> 0.75 -> 0.")
@click.option("--mode", type=click.Choice(["chunk", "frame"]), default="chunk", show_default=True,
              help="Causal checkpoints: denoise the checkpoint's frames_per_chunk at a time, or one frame.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--window", type=POSITIVE, default=None,
              help="Causal checkpoints: latent frames the stream attends, the chunk included (default: the checkpoint's).")
@click.option("--sink", type=click.IntRange(0, 1024), default=None, help=SINK_HELP)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output video, .mp4 or .gif.")
@click.option("--scale", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Nearest-neighbour upscaling of the written video.")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="Causal checkpoints: start from this image (PNG, JPEG, GIF, WebP or BMP, any size: centre-cropped "
                   "to the model's aspect ratio and resized), the video's first frame.")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="Causal checkpoints: continue this clip (with --extend), resampled to the checkpoint's frame rate and "
                   "fitted like --image; the output is the clip, then the continuation.")
@click.option("--extend", default=None, metavar="TIME", help="With --video: how much to add, '10s' or '80f' frames.")
@device_option("cpu")
@click.option("--compile", "compile_blocks", is_flag=True,
              help="torch.compile each block's tensor math (the first chunks compile; worth it for long videos on a GPU).")
@click.option("--context", type=click.Choice(["clean", "noisy"]), default=None, help=CONTEXT_HELP)
@click.option("--kv-int8", is_flag=True, help=KV_INT8_HELP)
@click.option("--low-memory", is_flag=True, help=LOW_MEMORY_HELP)
@click.option("--overlap/--no-overlap", default=None,
              help="Causal checkpoints on a GPU: decode each chunk on a second CUDA stream while the next is denoised "
                   "(default: on a GPU).")
def generate(checkpoint: Path, prompt: str, switches: tuple[tuple[str, str], ...], seconds: float | None,
             steps: int | None, times: list[float] | None, mode: str, seed: int, window: int | None, sink: int | None,
             out: Path, scale: int,
             image: Path | None, video: Path | None, extend: str | None, device: str, compile_blocks: bool,
             context: str | None, kv_int8: bool, low_memory: bool, overlap: bool | None) -> None:
    """Generate a video: bidirectional checkpoints over their training length, causal ones of any length, from a
    prompt alone, from a first image (--image) or continuing a clip (--video CLIP --extend TIME)."""
    import time

    from causal_rcm.data.video import read_image, write_gif, write_mp4
    from causal_rcm.pipeline import StreamingPipeline

    if out.suffix.lower() not in (".mp4", ".gif"):
        raise UserError(f"--out must end with .mp4 or .gif, got {out}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending with .mp4 or .gif")
    if image is not None and video is not None:
        raise UserError("--image starts a video from an image, --video continues a clip: give one of them")
    if (video is None) != (extend is None):
        raise UserError("--video CLIP and --extend TIME go together: the clip, and how much to add to it")
    if video is not None and seconds is not None:
        raise UserError("--video continues a clip by --extend TIME; --seconds is for a video made from scratch or --image")
    _check_writable(out)
    given = None if image is None else read_image(image)  # a bad file fails before the checkpoint loads
    pipe = StreamingPipeline.from_pretrained(checkpoint, device=device, compile=compile_blocks, low_memory=low_memory,
                                             context=context, sink_frames=sink)
    if not pipe.config.causal and (image is not None or video is not None):
        raise UserError(f"--{'image' if image is not None else 'video/--extend'} continues given frames, which needs a causal "
                        f"checkpoint (a causal teacher or a distilled student); {checkpoint} is bidirectional")
    if not pipe.config.causal and (context or kv_int8):
        raise UserError(f"{'--context' if context else '--kv-int8'} is for causal checkpoints; this one is bidirectional")
    if not pipe.config.causal and mode != "chunk":
        raise UserError("--mode frame streams a causal checkpoint frame by frame; this one is bidirectional")
    if window is not None and pipe.config.causal:
        pipe.check_window(window, 1 if mode == "frame" else None, name="--window")
    fps, (H, W) = pipe.config.fps, pipe.frame_size
    clip = None
    if video is not None:
        clip = _read_video(video, fps, (H, W))
        new = _frames_of(extend, fps, "--extend")
        num_frames = len(clip) + new
    else:
        num_frames = pipe.video_frames if seconds is None else max(1, round(seconds * fps))
        head = 0 if given is None else pipe.codec.video_frames(1)
        if given is not None and num_frames <= head:
            raise UserError(f"--seconds {seconds:g} leaves no frame after the image ({head} frame(s)): ask for more")
        new = num_frames - head
    frame_bytes = 3 * H * W * (2 + scale**2)  # held at once: the frame as made, in the stacked video, upscaled
    check_video_bytes(num_frames * frame_bytes, f"{num_frames} frames of {W * scale}x{H * scale} px",
                      f"at most {MAX_VIDEO_BYTES // frame_bytes / fps:g} s (--seconds) fit at --scale {scale}")
    schedule = [(_frame_at(when, fps, num_frames), text) for when, text in switches]
    started = time.perf_counter()
    stream_options = dict(kv_int8=kv_int8 or None, overlap=overlap) if pipe.config.causal else {}
    frames = pipe.generate(prompt, num_frames=None if seconds is None and clip is None and given is None else new,
                           steps=steps, mode=mode, seed=seed, switches=schedule, times=times, window_frames=window,
                           image=given, video=clip, **stream_options)
    elapsed = time.perf_counter() - started
    try:
        (write_gif if out.suffix.lower() == ".gif" else write_mp4)(out, frames, fps=fps, scale=scale)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    F, H, W, _ = frames.shape
    click.echo(f"{out}: {F} frames ({F / fps:g} s at {fps:g} fps), {W * scale}x{H * scale} px; "
               f"generated in {elapsed:.1f} s ({F / elapsed:.1f} frames/s)")


def _seconds(when: str, option: str) -> float:
    """'4s' / '2.5s' / '4' -> seconds of video (UserError otherwise)."""
    text = when.strip().lower().removesuffix("s")
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{option} time {shorten(when)} is not like '4s' (seconds)") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_STREAM_SECONDS:
        raise UserError(f"{option} time {shorten(when)} must be in (0, {MAX_STREAM_SECONDS}] seconds")
    return value


def _read_video(path: Path, fps: float, size: tuple[int, int]):
    """A clip to continue: every frame of ``path`` at ``fps``, fitted to ``size`` (``data.video.read_clip``); UserError,
    one line, for a missing, undecodable or empty file."""
    from causal_rcm.data.video import read_clip

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        clip = read_clip(path, fps=fps, count=None, size=size)
    except (ValueError, OSError) as exc:  # PyAV's errors
        if str(exc) == "no video stream":
            raise UserError(f"{path} has no frames (no video stream)") from None
        raise UserError(f"{path} cannot be read as a video: {getattr(exc, 'strerror', None) or exc}") from None
    if not len(clip):
        raise UserError(f"{path} has no frames")
    return clip


def _frames_of(when: str, fps: float, option: str) -> int:
    """'10s' / '2.5s' / '10' (seconds) or '80f' (frames) -> a positive number of frames."""
    text = when.strip().lower()
    try:
        value = float(text[:-1] if text[-1:] in ("s", "f") else text)
    except ValueError:
        raise UserError(f"{option} {shorten(when)} is not like '10s' (seconds) or '80f' (frames)") from None
    frames = value if text.endswith("f") else value * fps
    if not math.isfinite(frames) or frames < 1 or (text.endswith("f") and not value.is_integer()):
        raise UserError(f"{option} {shorten(when)} must be at least one frame (a positive time or a whole frame count)")
    return round(frames)


def _frame_at(when: str, fps: float, num_frames: int) -> int:
    """'4s' / '2.5s' / '4' (seconds) or '12f' (frames) -> a frame index within a video of ``num_frames``."""
    text = when.strip().lower()
    try:
        value = float(text[:-1] if text[-1:] in ("s", "f") else text)
    except ValueError:
        raise UserError(f"--switch time {shorten(when)} is not like '4s' (seconds) or '12f' (frames)") from None
    if not math.isfinite(value) or value < 0 or (text.endswith("f") and not value.is_integer()):
        raise UserError(f"--switch time {shorten(when)} must be a non-negative time or a whole frame count")
    frame = value if text.endswith("f") else value * fps
    if frame >= num_frames:
        raise UserError(f"--switch time {shorten(when)} is at or past the end of the video ({num_frames} frames, "
                        f"{num_frames / fps:g} s): it would never switch")
    return round(frame)


@cli.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A causal checkpoint folder.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; other than localhost exposes the server.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free port).")
@click.option("--max-streams", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Streams run at once; more get a 'busy' reply.")
@click.option("--max-steps", type=STEPS, default=4, show_default=True, help="Largest number of steps a client may ask for.")
@click.option("--realtime/--no-realtime", default=True, show_default=True, help="Send frames no faster than the checkpoint's fps.")
@click.option("--window", type=POSITIVE, default=None,
              help="Latent frames each stream attends, the chunk included (default: the checkpoint's).")
@click.option("--sink", type=click.IntRange(0, 1024), default=None, help=SINK_HELP)
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name or address clients use to reach the server (besides localhost and --host); "
                   "requests naming others are refused. Repeatable.")
@device_option("cpu")
@click.option("--context", type=click.Choice(["clean", "noisy"]), default=None, help=CONTEXT_HELP)
@click.option("--low-memory", is_flag=True, help=LOW_MEMORY_HELP)
def serve(checkpoint: Path, host: str, port: int, max_streams: int, max_steps: int, realtime: bool, window: int | None,
          sink: int | None, allowed_hosts: tuple[str, ...], device: str, context: str | None, low_memory: bool) -> None:
    """Serve a web page that streams the checkpoint live (prompt, steps, mode, seed, prompt switching)."""
    from causal_rcm.pipeline import StreamingPipeline
    from causal_rcm.serve import run

    pipe = StreamingPipeline.from_pretrained(checkpoint, device=device, low_memory=low_memory, context=context, sink_frames=sink)

    run(pipe, host=host, port=port, max_streams=max_streams, max_steps=max_steps, realtime=realtime,
        on_ready=_announce(host, f"serving {checkpoint}"),
        window_frames=window, allowed_hosts=allowed_hosts)


@cli.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(path_type=Path), help="A causal world-model checkpoint folder.")
@click.option("--env", "env_id", default=None,
              help="The emulator giving the first frames (default: the checkpoint's game, e.g. ALE/Breakout-v5).")
@click.option("--side-by-side", is_flag=True, help="Run the real emulator with the same actions beside the model's frames.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; other than localhost exposes the server.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free port).")
@click.option("--max-streams", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Games played at once; more get a 'busy' reply.")
@click.option("--max-steps", type=STEPS, default=4, show_default=True, help="Largest number of steps a client may ask for.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name or address clients use to reach the server (besides localhost and --host). Repeatable.")
@device_option("cpu")
def play(checkpoint: Path, env_id: str | None, side_by_side: bool, host: str, port: int, max_streams: int, max_steps: int,
         allowed_hosts: tuple[str, ...], device: str) -> None:
    """Play a world model in the browser: the arrow keys and space choose the action of the next frames, which the
    model streams from the emulator's first frames (the page shows the game's actions, FPS and latency)."""
    from causal_rcm.pipeline import StreamingPipeline
    from causal_rcm.serve import Play, run
    from causal_rcm.spec import PipelineSpec

    game = Play.of(PipelineSpec.read(checkpoint), str(checkpoint), env_id=env_id, side_by_side=side_by_side)
    pipe = StreamingPipeline.from_pretrained(checkpoint, device=device)

    # Frames are paced at the game's rate, and a key acts on the frames made after it: a short queue keeps the
    # frames made ahead of the screen, hence a key's latency, to about one chunk.
    run(pipe, host=host, port=port, max_streams=max_streams, max_steps=max_steps, realtime=True,
        on_ready=_announce(host, f"serving {checkpoint} in play mode"), allowed_hosts=allowed_hosts, play=game, queue_frames=pipe.config.frames_per_chunk)


def _announce(host: str, what: str) -> Callable[[str], None]:
    """The server's on-ready callback: once it listens, say where (a start that fails says only why), with a warning
    when ``host`` exposes it beyond this machine."""

    def ready(url: str) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(f"warning: binding to {host}: anyone who can reach this address can use the server", err=True)
        click.echo(f"{what} on {url} (Ctrl+C to stop)")

    return ready


def _check_writable(path: Path) -> None:
    """Fail early with one line if ``path`` cannot be created or written."""
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write to {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {path}: {parent} is not writable")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors, click's usage errors among them, become one line on stderr and exit code 2."""
    code = _run(argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_process_group_worker(code)
    if code:
        sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Input warnings (``errors.InputWarning``) as one line on stderr; other warnings as Python shows them."""
    if issubclass(category, InputWarning):
        _say(f"warning: {message}")
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


def _run(argv: list[str] | None) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", InputWarning)
            warnings.showwarning = _show_warning
            cli.main(args=argv, prog_name="causal-rcm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(exc, click.UsageError) and ctx is not None else ""
        _say(f"error: {exc.format_message()}{hint}")
        return exc.exit_code
    except UserError as exc:
        _say(f"error: {exc}")
        return 2
    except TrainingStopped as exc:
        _say(f"training stopped: {exc}")
        return 3
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


def _say(message: str) -> None:
    """``message`` as one line on stderr, cut in its middle if it quotes a long input at length."""
    line = " ".join(message.splitlines())
    if len(line) > MAX_MESSAGE_CHARS:
        head, tail = MAX_MESSAGE_CHARS * 2 // 3, MAX_MESSAGE_CHARS // 4
        line = f"{line[:head]} [... {len(line) - head - tail} characters ...] {line[-tail:]}"
    click.echo(line, err=True)


def _leave_process_group_worker(code: int) -> None:
    """End a torchrun worker without interpreter finalisation, once its command is done.

    The command has already left the process group (``train.parallel.shutdown``), but gloo's worker
    threads outlive it while FSDP's device mesh still holds the group. A finished barrier there can
    drop the last reference to an earlier all-gather's Python tensors after the main thread has begun
    finalising; taking the GIL then ends the thread with a forced unwind and libstdc++ aborts
    ("terminate called without an active exception", SIGABRT, about one run in 30 on 2 CPU cores;
    seen in gdb on torch 2.13, the race pytorch/pytorch#179291 describes). Exit handlers still run
    here, with the interpreter whole; only finalisation is skipped.
    """
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
