"""The recipes' two bases and their shared helpers.

:class:`DenoisingRecipe` is what every recipe shares: the data source, the student, the sampler it is
evaluated with, evaluation and export (with the checkpoint's pipeline spec). :class:`DistillRecipe` adds
a frozen teacher and few-step evaluation, for the recipes that distil one (tf-dcm, tf-scm, tf-meanflow,
ode-init, sf-dmd).

Given first frames (``data.given_frames_prob`` p, image-to-video): with probability p a sample's first latent
frame is replaced by its first image's (``source.image_latents``, exactly what a stream encodes from an image), and
in the noisy half too it sits clean at t = 0 and carries no loss (:meth:`DenoisingRecipe.given_first_frame`,
:func:`frame_mean`). Teacher forcing already conditions every chunk after the first on clean chunks, so what
this adds is the first chunk's other frames learnt beside a clean given one, the case of a stream started from an
image; self forcing (sf-dmd) rolls out from the given frame instead of from noise. With frame-wise chunks the given
frame is a whole chunk. The bidirectional teacher and ode-init refuse it.

The teacher-forcing recipes (tf-dcm, tf-scm, tf-meanflow) train on the sequence ``[clean chunks | noisy chunks]`` under the
``teacher_forcing`` mask (noisy chunk i attends to the clean chunks before it and to itself,
with the clean chunk's RoPE positions): the clean context sits at t = 0, each noisy chunk at its
own time, and the loss is on the noisy tokens only. The frozen teacher is a causal teacher
(``causal-rcm train causal-teacher``) evaluated on the same sequence with classifier-free
guidance, so its CFG is distilled into the student, which then samples with guidance 1. The
student starts from the teacher's weights unless ``train.init`` names another checkpoint.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from causal_rcm.config import Config
from causal_rcm.devices import resolve_device
from causal_rcm.diffusion.guidance import guided_velocity
from causal_rcm.diffusion.samplers import SamplerSpec, check_window
from causal_rcm.diffusion.schedules import shift_time
from causal_rcm.errors import UserError
from causal_rcm.eval.score import direction_word_gap, evaluate_model
from causal_rcm.kernels import masks
from causal_rcm.models.adapters import load_checkpoint, load_model, save_checkpoint
from causal_rcm.models.wan import CausalWanModel
from causal_rcm.spec import PipelineSpec, SamplerDefaults, StreamDefaults
from causal_rcm.train.parallel import StepRandom
from causal_rcm.train.trainer import Recipe

JVP_BACKENDS = ("math", "triton")


class DenoisingRecipe(Recipe):
    """Shared by the recipes here and the distillation recipes: world, student, sampling and export."""

    causal = False
    gives_frames = False  # trains with given first frames (data.given_frames_prob, module docstring)

    def __init__(self, config: Config, source) -> None:
        super().__init__(config)
        self.source = source
        data = config.data
        check_window(data.stream_window, data.frames_per_chunk, "data.stream_window", zero="the training length")
        if data.given_frames_prob > 0 and not self.gives_frames:
            raise UserError(f"data.given_frames_prob trains a causal model to continue given frames; {config.recipe} does "
                            "not take it (the causal teacher, tf-dcm, tf-scm, tf-meanflow and sf-dmd do)")

    def build(self, device: torch.device) -> None:
        self.device = device
        self.student = self.model_at(self.config.train.init).to(device).train()

    def model_at(self, path: str) -> CausalWanModel:
        """``path`` (any checkpoint layout, fp32) or a fresh model of ``config.model``; checks it fits the world."""
        cfg = self.config
        channels = self.source.latent_shape()[0]
        if not path:
            if (cfg.model.in_dim, cfg.model.out_dim) != (channels, channels):
                raise UserError(
                    f"model.in_dim={cfg.model.in_dim} and model.out_dim={cfg.model.out_dim}, but this world's codec gives "
                    f"{channels}-channel latents: set model.in_dim={channels} model.out_dim={channels}"
                )
            return CausalWanModel(cfg.model, attn_backend=cfg.attn_backend)
        model = load_model(path, attn_backend=cfg.attn_backend, dtype=torch.float32)
        if model.config.in_dim != channels or model.config.text_dim != self.source.text_dim:
            raise UserError(
                f"{path} takes {model.config.in_dim}-channel latents and {model.config.text_dim}-dim text, "
                f"but this world gives {channels} and {self.source.text_dim}"
            )
        return model

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    # ----------------------------------------------------------- helpers
    def tokens_per_frame(self) -> int:
        return self.source.tokens_per_frame(self.config.model.patch_size)

    def num_chunks(self) -> int:
        fpc = self.config.data.frames_per_chunk
        if self.config.data.num_frames % fpc:
            raise UserError(f"data.num_frames={self.config.data.num_frames} is not a multiple of data.frames_per_chunk={fpc}")
        return self.config.data.num_frames // fpc

    def given_first_frame(self, batch: dict, rnd: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, given)``: the batch's latents (B, C, F, h, w) with, for each sample drawn with probability
        ``data.given_frames_prob``, its first latent frame replaced by its first image's (``image_latents``), and
        ``given`` (B, F) bool marking those frames (module docstring). No draw at p = 0: runs without given frames
        keep their randomness."""
        x0 = batch["latents"]
        given = torch.zeros(x0.shape[0], x0.shape[2], dtype=torch.bool, device=x0.device)
        p = self.config.data.given_frames_prob
        if p == 0:
            return x0, given
        given[:, 0] = rnd.rand(x0.shape[0]).to(x0.device) < p
        first = torch.where(given[:, None, :1, None, None], batch["image_latents"].to(x0.dtype), x0[:, :, :1])
        return torch.cat([first, x0[:, :, 1:]], dim=2), given

    def drop_captions(self, context: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        """Replace each caption by the empty prompt with probability ``objective.caption_dropout``."""
        drop = rnd.rand(context.shape[0]) < self.config.objective.caption_dropout  # (B,)
        return torch.where(drop[:, None, None], self.source.empty_context(context.shape[0]), context)

    def sample_s(self, rnd: StepRandom, batch: int, groups: int, frames_per_group: int) -> torch.Tensor:
        """Flow-matching times (B, groups * frames_per_group), one per group of frames, shifted."""
        obj = self.config.objective
        if obj.time_sampling == "uniform":
            u = rnd.rand(batch, groups)
        elif obj.time_sampling == "logit_normal":
            u = torch.sigmoid(rnd.randn(batch, groups))
        else:
            raise UserError(f"objective.time_sampling must be uniform or logit_normal, got {obj.time_sampling!r}")
        s = shift_time(u, obj.shift).clamp(1e-4, 1.0)
        return s.repeat_interleave(frames_per_group, dim=1)

    def stream_defaults(self) -> StreamDefaults:
        """A causal model's KV cache in evaluation and in the exported checkpoint's streams: the sink
        ``data.stream_sink`` (default none), the window ``data.stream_window`` (default the training length).
        SF-DMD's follow its rollouts."""
        data = self.config.data
        return StreamDefaults(sink_frames=data.cache_sink(), window_frames=data.cache_window())

    def sampler_spec(self, steps: int | None = None) -> SamplerSpec:
        obj, data = self.config.objective, self.config.data
        stream = self.stream_defaults()
        return SamplerSpec(
            causal=self.causal, steps=steps or self.config.train.eval_steps, solver="euler", shift=obj.shift,
            guidance=obj.guidance, frames_per_chunk=data.frames_per_chunk,
            sink_frames=stream.sink_frames if self.causal else 0, window_frames=stream.window_frames if self.causal else None,
            context=stream.context,
        )

    def evaluate(self, student: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        metrics = evaluate_model(
            student, self.source, self.sampler_spec(), n=self.config.train.eval_videos, out_dir=out_dir / "samples",
            tag=f"step{step:06d}", drift_factor=self.config.train.eval_drift if self.causal else 0,
            stream_seconds=self.config.train.eval_stream_seconds if self.causal else 0.0,
        )
        # The loss gap of swapped direction words (in captioned worlds): motion learned from text shows here first
        if not self.causal and self.source.oracle is not None:
            metrics["direction_word_gap"] = direction_word_gap(student, self.source, n=max(self.config.train.eval_videos, 32))
        return metrics

    def export(self, student_state: dict[str, torch.Tensor], path: Path) -> None:
        spec = self.sampler_spec()
        pipeline = PipelineSpec.of_source(
            self.source, causal=self.causal, recipe=self.config.recipe, num_actions=self.config.model.num_actions,
            sampler=SamplerDefaults(solver=spec.solver, steps=spec.steps, shift=spec.shift, guidance=spec.guidance,
                                    complete_x0=spec.complete_x0),
            stream=self.stream_defaults(),
        )
        save_checkpoint(self.config.model, student_state, path, "causal-rcm", pipeline=pipeline.to_dict())


def distill_config(recipe: str, *, steps: int, batch_size: int, eval_every: int, lr: float) -> Config:
    """Defaults shared by the distillation recipes: chunks of 2 frames, no warm-up (the student
    starts from a trained model), a fast EMA."""
    config = Config(recipe=recipe)
    config.data.frames_per_chunk = 2
    config.train.steps = steps
    config.train.batch_size = batch_size
    config.train.eval_every = eval_every
    config.optim.lr = lr
    config.optim.warmup_steps = 0
    config.optim.ema_decay = 0.99
    return config


def check_chunks(config: Config) -> None:
    """Causal recipes split each video into whole chunks: ``data.num_frames`` must be a multiple of ``frames_per_chunk``."""
    if config.data.num_frames % config.data.frames_per_chunk:
        raise UserError(
            f"data.num_frames={config.data.num_frames} is not a multiple of data.frames_per_chunk={config.data.frames_per_chunk}"
        )


def resolve_jvp_backend(config: Config) -> str:
    """The attention backend for network JVPs: ``objective.jvp_backend`` checked against the device.

    Only ``math`` (pure torch) and ``triton`` (our fused masked JVP kernel) have forward-mode
    rules: SDPA and FlexAttention fail under ``torch.func.jvp``.
    """
    name = config.objective.jvp_backend
    device = resolve_device(config.train.device)
    if name == "auto":
        return "triton" if device.type == "cuda" else "math"
    if name not in JVP_BACKENDS:
        raise UserError(
            f"{config.recipe} needs a JVP through attention, which objective.jvp_backend={name!r} cannot do; "
            f"use one of {', '.join(JVP_BACKENDS)} (or auto: triton on CUDA, math on CPU)"
        )
    if name == "triton" and device.type != "cuda":
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError(
                "objective.jvp_backend=triton needs a CUDA device (or TRITON_INTERPRET=1 for a slow CPU check); "
                "use objective.jvp_backend=math on the CPU"
            )
    return name


@contextmanager
def attention_backend(model: nn.Module, name: str) -> Iterator[None]:
    """Run ``model`` (a CausalWanModel, possibly FSDP-wrapped) with another attention backend."""
    previous = model.attn_backend
    model.attn_backend = name
    try:
        yield
    finally:
        model.attn_backend = previous


def chunk_norm(x: torch.Tensor, frames_per_chunk: int) -> torch.Tensor:
    """L2 norm of each chunk of each sample: (B, C, F, H, W) -> (B, 1, F, 1, 1), repeated over the chunk's frames."""
    B, C, F, H, W = x.shape
    norms = x.float().reshape(B, C, F // frames_per_chunk, frames_per_chunk, H, W).square().sum(dim=(1, 3, 4, 5)).sqrt()
    return norms.repeat_interleave(frames_per_chunk, dim=1)[:, None, :, None, None]


def is_causal_checkpoint(path: str) -> bool:
    """Whether the checkpoint at ``path`` is a causal model (a foreign layout, e.g. a Wan release, is bidirectional)."""
    spec = PipelineSpec.read_if_any(path)
    return spec is not None and spec.causal


def require_teacher(config: Config, what: str) -> None:
    """UserError unless ``train.teacher`` names an existing checkpoint; ``what`` says which teacher the recipe needs."""
    if not config.train.teacher:
        raise UserError(f"{config.recipe} needs train.teacher=PATH: {what}")
    if not Path(config.train.teacher).exists():
        raise UserError(f"train.teacher not found: {config.train.teacher}")


def check_causal_teacher(config: Config, setting: str, path: str, why: str, who: str = "the teacher") -> None:
    """The checkpoint ``path`` (of ``setting``, e.g. ``train.teacher``), if it exists, is causal with the run's frames
    per chunk (its teacher-forcing mask is the run's); ``why`` ends the error for a bidirectional one."""
    spec = PipelineSpec.read_if_any(path)
    if spec is not None and not spec.causal:
        raise UserError(f"{setting}={path} is a bidirectional model; {why}")
    if spec is not None and spec.frames_per_chunk != config.data.frames_per_chunk:
        raise UserError(
            f"{who} was trained with {spec.frames_per_chunk} frames per chunk, "
            f"data.frames_per_chunk={config.data.frames_per_chunk}; set them equal"
        )


def finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """(B,) bool: samples whose every value in every tensor is finite."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t).flatten(1).all(dim=1)
    return ok


def frame_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``x`` (B, C, F, H, W) over the frames ``keep`` (B, F) marks: (B,) (0 where none is)."""
    w = keep.to(x.dtype)[:, None, :, None, None]
    count = keep.sum(dim=1).to(x.dtype) * (x[:, :, :1].numel() // x.shape[0])  # kept frames x values per frame
    return (x * w).flatten(1).sum(dim=1) / count.clamp(min=1)


def masked_mean(per_sample: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_sample`` (B,) over ``keep``; 0 with a graph when nothing is kept."""
    per_sample = torch.where(keep, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / keep.sum().clamp(min=1)


class DistillRecipe(DenoisingRecipe):
    """Base of the teacher-forcing distillation recipes: teacher, student, TF sequences, few-step evaluation."""

    causal = True
    needs_jvp = False
    solver = "consistency"  # the student's few-step sampler
    student_overrides: dict = {}  # model-config changes from the teacher to the student

    @classmethod
    def prepare(cls, config: Config) -> None:
        require_teacher(config, "the causal teacher it distils (the model folder written by `causal-rcm train causal-teacher`)")
        check_causal_teacher(
            config, "train.teacher", config.train.teacher, "teacher-forcing distillation needs a causal teacher "
            "(`causal-rcm train causal-teacher`, initialised from the bidirectional one)",
        )
        if not config.train.init:
            config.model = load_checkpoint(config.train.teacher)[0]  # the student takes the teacher's architecture
        config.model = dataclasses.replace(config.model, **cls.student_overrides)
        check_chunks(config)
        for k in (*config.objective.student_steps, config.objective.sample_steps):
            if k < 1:
                raise UserError(f"student sampling steps must be >= 1, got {k}")
        if cls.needs_jvp:
            config.objective.jvp_backend = resolve_jvp_backend(config)

    def build(self, device: torch.device) -> None:
        self.device = device
        self.teacher = self.model_at(self.config.train.teacher).to(device).eval().requires_grad_(False)
        source = self.model_at(self.config.train.init) if self.config.train.init else self.teacher
        self.student = self.student_from(source).to(device).train()

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def student_from(self, source: CausalWanModel) -> CausalWanModel:
        """The student architecture (``config.model``) with ``source``'s weights; parts it lacks keep their init."""
        student = CausalWanModel(self.config.model, attn_backend=self.config.attn_backend)
        missing, unexpected = student.load_state_dict(source.state_dict(), strict=False)
        new = {name for name, _ in student.named_parameters() if any(name.startswith(p) for p in self.new_parameters())}
        if unexpected or set(missing) - new:
            raise UserError(
                f"the student ({self.config.recipe}) does not fit the weights it starts from: "
                f"missing {sorted(set(missing) - new)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        return student

    def new_parameters(self) -> tuple[str, ...]:
        """Name prefixes of student parameters the teacher does not have."""
        return ()

    # ------------------------------------------------------------ sequences
    def frames_per_chunk(self) -> int:
        return self.config.data.frames_per_chunk

    def tf_mask(self) -> masks.BlockSparseMask:
        return masks.teacher_forcing(self.num_chunks(), self.frames_per_chunk(), self.tokens_per_frame())

    def per_chunk(self, values: torch.Tensor) -> torch.Tensor:
        """(B, chunks) -> (B, F): each chunk's value on each of its frames."""
        return values.repeat_interleave(self.frames_per_chunk(), dim=1)

    @staticmethod
    def tf_sequence(x0: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """``[clean | noisy]`` along frames: (B, C, 2F, H, W)."""
        return torch.cat([x0, noisy], dim=2)

    @staticmethod
    def tf_times(t_noisy: torch.Tensor) -> torch.Tensor:
        """``[0 | t]``: (B, 2F), the clean half at t = 0."""
        return torch.cat([torch.zeros_like(t_noisy), t_noisy], dim=1)

    def teacher_velocity(self, x0: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor, batch: dict, teacher=None) -> torch.Tensor:
        """The (causal) teacher's CFG velocity on the noisy half of ``[x0 | x_s]`` at flow times s (B, F); no gradient.
        ``teacher``: another causal teacher than ``self.teacher``."""
        F = x0.shape[2]
        context = batch["context"]
        with torch.no_grad():
            v = guided_velocity(
                self.teacher if teacher is None else teacher, self.tf_sequence(x0, x_s), 1000 * self.tf_times(s), context,
                guidance=self.config.objective.guidance, neg_context=self.source.empty_context(context.shape[0]),
                mask=self.tf_mask(), **self.tf_actions(batch),
            )
        return v[:, :, F:].float()

    @staticmethod
    def tf_actions(batch: dict) -> dict:
        actions = batch.get("actions")
        return {} if actions is None else {"actions": torch.cat([actions, actions], dim=1)}

    # ---------------------------------------------------------- evaluation
    def sampler_spec(self, steps: int | None = None) -> SamplerSpec:
        obj, data, stream = self.config.objective, self.config.data, self.stream_defaults()
        return SamplerSpec(
            causal=True, steps=steps or obj.sample_steps, solver=self.solver, shift=obj.shift, guidance=1.0,
            frames_per_chunk=data.frames_per_chunk, sink_frames=stream.sink_frames, window_frames=stream.window_frames,
            context=stream.context,
        )

    def evaluate(self, student: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Oracle metrics of 1-, 2- and 4-step sampling (``objective.student_steps``), keys ``{k}step/...``.

        The export default (``objective.sample_steps``) also reports drift on rollouts
        ``train.eval_drift`` times the training length and streams of ``train.eval_stream_seconds``
        (when set), and is repeated without prefix.
        """
        obj = self.config.objective
        metrics: dict[str, float] = {}
        for k in sorted(set(obj.student_steps) | {obj.sample_steps}):
            main = k == obj.sample_steps
            result = evaluate_model(
                student, self.source, self.sampler_spec(k), n=self.config.train.eval_videos,
                out_dir=out_dir / "samples" if main else None, tag=f"step{step:06d}_{k}step",
                drift_factor=self.config.train.eval_drift if main else 0,
                stream_seconds=self.config.train.eval_stream_seconds if main else 0.0,
            )
            if k in obj.student_steps:
                metrics.update({f"{k}step/{key}": value for key, value in result.items()})
            if main:
                metrics.update(result)
        return metrics


def log_normal_trigflow_time(rnd: StepRandom, batch: int, chunks: int, p_mean: float, p_std: float) -> torch.Tensor:
    """sCM's proposal (Lu & Song 2024): ``t = arctan(exp(tau))``, tau ~ N(p_mean, p_std^2), per chunk (B, chunks).

    Clamped to [1e-3, pi/2 - 1e-4] so that the conversions stay finite.
    """
    tau = p_mean + p_std * rnd.randn(batch, chunks)
    return torch.atan(torch.exp(tau)).clamp(1e-3, torch.pi / 2 - 1e-4)
