"""Jobs that write latent shards (:mod:`causal_rcm.data.latents`) for ``data.source=latents``.

* :func:`synth` (``causal-rcm synth``): a bidirectional teacher's own samples, the paper's only training data
  (Zheng et al. 2026 distil Wan2.1 on teacher-generated videos alone). Each prompt of a file gets
  ``videos_per_prompt`` videos from the teacher's sampler (Euler over its shifted grid, CFG against the empty
  prompt, the head completion its checkpoint asks for); item ``i`` is video ``i mod V`` of prompt ``i // V``, its
  noise drawn from ``(seed, i)`` alone, so a shard is the same whichever rank makes it and however often the job
  is resumed. With ``ode_pairs`` K the teacher's grid is refined from the K-step grid (CausVid's ODE pairs, Yin et
  al. 2025, Sec. 3.3): its ``steps // K`` Euler steps per interval pass through the K-step student's times, and the
  states there are stored for ``ode-init``.
* :func:`prepare` (``causal-rcm data prepare``): a folder of videos of your own, each resampled to the model's frame
  rate, centre-cropped and resized to its frame size, encoded with its codec, its caption with its text encoder.

Both shard their items across the processes of ``torchrun`` and resume a killed run; :func:`shapes_prompts` gives
the shapes world's captions for a prompts file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from causal_rcm.data.components import absolute, make_codec, make_text_encoder, spec_dict
from causal_rcm.data.latents import DTYPES, LatentHeader, LatentManifest, LatentSample, Skipped, write_latent_shards
from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.data.video import VIDEO_SUFFIXES, VideoTooShort, from_uint8, read_clip
from causal_rcm.diffusion.guidance import is_unguided
from causal_rcm.diffusion.samplers import euler_sample, head_complement, time_grid
from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.distill.ode_init import ode_grid
from causal_rcm.errors import UserError
from causal_rcm.limits import MAX_SEED, MAX_STEPS
from causal_rcm.models.adapters import load_model
from causal_rcm.spec import PipelineSpec
from causal_rcm.train.parallel import DistEnv, barrier, init_dist, shutdown

__all__ = ["PrepareArgs", "SynthArgs", "prepare", "shapes_prompts", "synth"]


# ----------------------------------------------------------------------------- shared
@dataclass(frozen=True)
class Frames:
    """Overrides of a checkpoint's frame structure (None: its own; a Wan release's is 480 x 832, 21 latent frames)."""

    resolution: int | None = None
    width: int | None = None
    num_frames: int | None = None

    def overrides(self) -> dict | None:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None} or None


def _components(checkpoint: str, frames: Frames, dist: DistEnv, *, model: bool):
    """The checkpoint's spec, its text encoder, its codec and (``model``) the network, on ``dist``'s device."""
    spec = PipelineSpec.read(checkpoint, overrides=frames.overrides())
    cpu = dist.device.type == "cpu"
    dtype = torch.float32 if cpu else None  # as StreamingPipeline: the stored dtype on a GPU
    network = None
    if model:
        network = load_model(checkpoint, device=dist.device, dtype=dtype)
        spec.check_model(network.config, checkpoint)
    codec = make_codec(spec.codec, checkpoint, device=dist.device, dtype=dtype)
    text = make_text_encoder(spec.text, checkpoint, device=dist.device, dtype=dtype)
    return spec, text, codec, network


def _header(spec: PipelineSpec, root: str, text, codec, *, kind: str, items: int, per_shard: int, dtype: str, job: dict,
            ode_times: tuple[float, ...] = ()) -> LatentHeader:
    height, width = spec.resolution, spec.width or spec.resolution
    shape = codec.latent_shape(codec.video_frames(spec.num_frames), height, width)
    world_data = None
    if spec.source == "shapes" and kind == "synth":  # a shapes-world teacher's samples: evaluated as the shapes world
        data = spec.data_config()
        world_data = {k: getattr(data, k) for k in ("resolution", "codec_factor", "codec_frames", "codec_shift", "codec_scale",
                                                     "text_len", "text_seed")}
    return LatentHeader(
        kind=kind, world="shapes" if world_data else "latents", codec=spec_dict(absolute(spec.codec, root)),
        text=spec_dict(absolute(spec.text, root)), resolution=height, width=width, num_frames=spec.num_frames, fps=spec.fps,
        latent_shape=tuple(shape), text_len=text.text_len, text_dim=text.dim, dtype=dtype, items=items, per_shard=per_shard,
        job=job, ode_times=tuple(ode_times), world_data=world_data,
    )


def _contexts(text, prompts: list[str]) -> list[np.ndarray]:
    """Each prompt's context rows up to its last token, float32 ``[n, D]`` (the rest are zeros)."""
    with torch.inference_mode():
        context, mask = text(prompts)
    lengths = mask.sum(dim=1).tolist()
    return [context[b, : int(n)].float().cpu().numpy() for b, n in enumerate(lengths)]


def _negative(text) -> Callable[[], np.ndarray]:
    def negative() -> np.ndarray:
        with torch.inference_mode():
            return text([""])[0][0].float().cpu().numpy()

    return negative


def _check_common(per_shard: int, batch_size: int, seed: int, dtype: str) -> None:
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must lie in 0..{MAX_SEED}, got {seed}")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _run(out: Path, dist: DistEnv, header: LatentHeader, text, make, *, progress: bool, say, desc: str, unit: str):
    return write_latent_shards(out, header, _negative(text), make, rank=dist.rank, world_size=dist.size,
                               barrier=lambda: barrier(dist), progress=progress, say=say, desc=desc, unit=unit)


# ----------------------------------------------------------------------------- synth
@dataclass(frozen=True)
class SynthArgs:
    """The arguments of ``causal-rcm synth`` (``steps`` / ``guidance`` None: the teacher's)."""

    teacher: str
    prompts: str
    steps: int | None = None
    guidance: float | None = None
    ode_pairs: int = 0
    videos_per_prompt: int = 1
    per_shard: int = 64
    batch_size: int = 8
    seed: int = 0
    dtype: str = "float16"
    frames: Frames = Frames()

    def check(self) -> None:
        _check_common(self.per_shard, self.batch_size, self.seed, self.dtype)
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps must lie in 1..{MAX_STEPS}, got {self.steps}")
        if self.guidance is not None and not 0 <= self.guidance <= 100:
            raise UserError(f"--guidance must lie in 0..100, got {self.guidance:g}")
        if self.ode_pairs < 0 or (self.ode_pairs and self.steps is not None and self.ode_pairs > self.steps):
            raise UserError(f"--ode-pairs must lie in 0..--steps ({self.steps}), got {self.ode_pairs}")
        if self.videos_per_prompt < 1:
            raise UserError(f"--videos-per-prompt must be at least 1, got {self.videos_per_prompt}")


def read_prompts(path: str) -> list[str]:
    """The prompts of a text file, one a line (blank lines skipped); UserError for a missing or empty file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{path} holds no prompts: write one prompt a line")
    return prompts


def synth(out: Path, args: SynthArgs, *, device: str = "auto", progress: bool = True,
          say: Callable[[str], None] = print) -> tuple[LatentManifest, int]:
    """Sample the teacher ``args.teacher`` on every prompt into latent shards in ``out`` (see the module); resumes
    what ``out`` holds of the same job. Under ``torchrun`` every process calls this. Returns the manifest and the
    videos made by this run (on this process)."""
    args.check()
    prompts = read_prompts(args.prompts)
    dist = init_dist(device)
    try:
        spec, text, codec, model = _components(args.teacher, args.frames, dist, model=True)
        if spec.causal:
            raise UserError(f"{args.teacher} is a causal model: synth samples a bidirectional teacher (its whole videos at once)")
        if spec.num_actions:
            raise UserError(f"{args.teacher} is a world model: its data comes from `causal-rcm collect`, not from prompts")
        if spec.sampler.solver != "euler":
            raise UserError(f"{args.teacher} samples with the {spec.sampler.solver} solver: synth samples a many-step teacher (euler)")
        with torch.inference_mode():
            for start in range(0, len(prompts), 256):  # refuse a prompt the text encoder cannot take, before any work
                text(prompts[start : start + 256])
        steps = args.steps or spec.sampler.steps
        guidance = spec.sampler.guidance if args.guidance is None else args.guidance
        if args.ode_pairs > steps:
            raise UserError(f"--ode-pairs {args.ode_pairs} needs at least as many --steps, got {steps}")
        shift, K = spec.sampler.shift, args.ode_pairs
        substeps = steps // K if K else 1
        grid = ode_grid(flow_time_grid(K, shift), substeps) if K else time_grid(steps, shift)
        ode_times = tuple(float(s) for s in grid[:-1:substeps]) if K else ()
        V = args.videos_per_prompt
        job = {"teacher": str(Path(args.teacher).resolve()), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
               "steps": len(grid) - 1, "guidance": guidance, "shift": shift, "ode_pairs": K, "videos_per_prompt": V,
               "seed": args.seed, "complete_x0": spec.sampler.complete_x0}
        header = _header(spec, args.teacher, text, codec, kind="synth", items=len(prompts) * V, per_shard=args.per_shard,
                         dtype=args.dtype, job=job, ode_times=ode_times)
        shape = header.latent_shape
        complement = head_complement(model, spec.sampler.complete_x0)
        neg = None if is_unguided(guidance) else torch.from_numpy(_negative(text)()).to(dist.device)[None]  # (1, L, D)

        def make(indices: list[int], done: Callable[[int], None]) -> tuple[list[LatentSample], list[Skipped]]:
            samples = []
            for start in range(0, len(indices), args.batch_size):
                part = indices[start : start + args.batch_size]
                captions = [prompts[i // V] for i in part]
                noise = torch.cat([torch.randn((1, *shape), generator=_generator(args.seed, i, dist.device), device=dist.device)
                                   for i in part])  # (B, C, F, h, w)
                states: list[torch.Tensor] = []

                def keep(info: dict) -> None:
                    if K and info["i"] % substeps == 0:
                        states.append(info["x"].float().cpu())

                with torch.inference_mode():
                    context = text(captions)[0].to(dist.device)
                    x0 = euler_sample(model, noise, context, steps=grid, guidance=guidance,
                                      neg_context=None if neg is None else neg.expand(len(part), -1, -1), callback=keep,
                                      complement=complement)
                ode = torch.stack(states, dim=1).numpy() if K else None  # (B, K, C, F, h, w)
                for b, (i, row) in enumerate(zip(part, _contexts(text, captions))):
                    meta = {"caption": captions[b], "prompt": i // V, "video": i % V, "seed": args.seed}
                    samples.append(LatentSample(i, x0[b].float().cpu().numpy(), row, meta, None if ode is None else ode[b]))
                done(len(part))
            return samples, []

        return _run(out, dist, header, text, make, progress=progress, say=say, desc="synth", unit="video")
    finally:
        shutdown(dist)


def _generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of item ``index``'s noise: a function of ``(seed, index)`` alone."""
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1))


def shapes_prompts(checkpoint: str, n: int, seed: int = 0) -> list[str]:
    """Captions of the first ``n`` videos of the shapes world a checkpoint was trained on, drawn from ``seed``: the
    captions of the training stream ``data.seed=seed`` renders (a prompts file for ``synth``)."""
    spec = PipelineSpec.read(checkpoint)
    if spec.source != "shapes" or spec.num_actions:
        raise UserError(f"{checkpoint} is not a text-to-video model of the shapes world: its prompts come from elsewhere")
    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    data = spec.data_config()
    world = ShapesConfig(size=data.resolution, num_frames=data.codec_frames * data.num_frames, max_shapes=data.max_shapes)
    dataset = ShapesDataset(world, seed=seed)
    return [dataset.render_sample(dataset.global_index(i))["caption"] for i in range(n)]


# ----------------------------------------------------------------------------- prepare
@dataclass(frozen=True)
class PrepareArgs:
    """The arguments of ``causal-rcm data prepare``: videos in ``videos``, captions in ``captions`` (JSON lines
    ``{"file": NAME, "caption": TEXT}``, NAME relative to ``videos``), encoded with ``checkpoint``'s codec and text
    encoder at its frame size, frame rate and length."""

    videos: str
    captions: str
    checkpoint: str
    per_shard: int = 64
    batch_size: int = 4
    seed: int = 0
    dtype: str = "float16"
    frames: Frames = Frames()

    def check(self) -> None:
        _check_common(self.per_shard, self.batch_size, self.seed, self.dtype)


def read_captions(path: str, videos: Path) -> dict[str, str]:
    """``{file: caption}`` from a JSON-lines file; UserError naming the line that is not ``{"file", "caption"}``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"captions file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the captions file {path}: {exc}") from None
    captions = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file, caption = record["file"], record["caption"]
            if not isinstance(file, str) or not isinstance(caption, str):
                raise TypeError("file and caption must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f'{path}:{n} is not a JSON object {{"file": ..., "caption": ...}} ({exc})') from None
        captions[str(Path(file))] = caption
    if not captions:
        raise UserError(f"{path} holds no captions: write one JSON object a line, {{\"file\": \"a.mp4\", \"caption\": \"...\"}}")
    return captions


def prepare(out: Path, args: PrepareArgs, *, device: str = "auto", progress: bool = True,
            say: Callable[[str], None] = print) -> tuple[LatentManifest, int]:
    """Encode the videos of ``args.videos`` into latent shards in ``out``; a video that cannot be read, is shorter
    than the model's length, or has no caption is skipped (the manifest lists each with its reason). Resumable and
    sharded across ``torchrun``'s processes as :func:`synth`."""
    args.check()
    root = Path(args.videos)
    if not root.is_dir():
        raise UserError(f"VIDEOS_DIR {root} is not a folder")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"{root} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    captions = read_captions(args.captions, root)
    dist = init_dist(device)
    try:
        spec, text, codec, _ = _components(args.checkpoint, args.frames, dist, model=False)
        count = codec.video_frames(spec.num_frames)
        size = (spec.resolution, spec.width or spec.resolution)
        listing = hashlib.sha256(json.dumps([[f, captions.get(f)] for f in files]).encode()).hexdigest()
        job = {"videos": str(root.resolve()), "files_and_captions_sha256": listing, "checkpoint": str(Path(args.checkpoint).resolve()),
               "seed": args.seed}
        header = _header(spec, args.checkpoint, text, codec, kind="videos", items=len(files), per_shard=args.per_shard,
                         dtype=args.dtype, job=job)

        def make(indices: list[int], done: Callable[[int], None]) -> tuple[list[LatentSample], list[Skipped]]:
            clips, skipped = [], []
            for i in indices:
                name = files[i]
                caption = captions.get(name)
                if caption is None:
                    skipped.append(Skipped(i, name, f"no caption in {args.captions}"))
                    continue
                try:
                    clips.append((i, read_clip(root / name, fps=spec.fps, count=count, size=size), caption))
                except VideoTooShort as exc:
                    skipped.append(Skipped(i, name, str(exc)))
                except (ValueError, OSError) as exc:  # PyAV's errors are OSError / ValueError subclasses
                    skipped.append(Skipped(i, name, f"unreadable ({getattr(exc, 'strerror', None) or exc})"))
            samples = []
            for start in range(0, len(clips), args.batch_size):
                part = clips[start : start + args.batch_size]
                video = from_uint8(np.stack([frames for _, frames, _ in part])).to(dist.device)  # (B, 3, F, H, W)
                with torch.inference_mode():
                    latents = codec.encode(video)  # (B, C, F', h, w)
                for b, ((i, _, caption), row) in enumerate(zip(part, _contexts(text, [c for _, _, c in part]))):
                    samples.append(LatentSample(i, latents[b].float().cpu().numpy(), row, {"caption": caption, "file": files[i]}))
            done(len(indices))
            return samples, skipped

        return _run(out, dist, header, text, make, progress=progress, say=say, desc="prepare", unit="video")
    finally:
        shutdown(dist)
