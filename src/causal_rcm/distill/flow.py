"""Flow-matching diffusion recipes: the bidirectional teacher and the teacher-forcing causal teacher.

Flow matching (Lipman et al. 2023; Wan): x_s = (1 - s) x0 + s eps, target v = eps - x0, loss
|| v_theta(x_s, 1000 s, c) - v ||^2, with s drawn logit-normal (Esser et al. 2024, Eq. 19) and
shifted, and the caption dropped to the empty prompt with probability p for classifier-free
guidance (Ho & Salimans 2022).

``causal-teacher`` trains under the teacher-forcing mask on ``[clean chunks | noisy chunks]``:
clean context at t = 0, each noisy chunk at its own time, the loss on the noisy tokens only.
It is the many-step causal baseline (and a distillation initialisation).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config, check_window, register_recipe
from ..diffusion.schedules import shift_time
from ..errors import UserError
from ..eval.shapes import SamplerSpec, direction_word_gap, evaluate_model
from ..models import masks
from ..models.wan import CausalWanModel
from ..train.parallel import StepRandom
from ..train.trainer import Recipe


@register_recipe("teacher")
def teacher_config() -> Config:
    config = Config(recipe="teacher")
    config.train.steps = 6000
    config.train.batch_size = 64
    config.train.eval_every = 1000
    # Measured on the CPU (150 s, batch 16): lr 1e-3 reaches colour 0.85 / caption 0.41-0.46 where 3e-4
    # stays at the floor; the first GPU attempt at 3e-4 (docs/results/shapes_teachers_attempt1.md) was slow too.
    config.optim.lr = 1e-3
    return config


@register_recipe("causal-teacher")
def causal_teacher_config() -> Config:
    config = Config(recipe="causal-teacher")
    config.data.frames_per_chunk = 2
    config.train.steps = 3000
    config.train.batch_size = 64
    config.train.eval_every = 1000
    config.optim.lr = 1e-4
    return config


class DenoisingRecipe(Recipe):
    """Shared by the recipes here and the distillation recipes: world, student, sampling and export."""

    causal = False

    def __init__(self, config: Config, world) -> None:
        super().__init__(config)
        self.world = world
        data = config.data
        check_window(data.stream_window, data.frames_per_chunk, "data.stream_window", zero="the training length")
        if config.train.eval_stream_seconds < 0:
            raise UserError(f"train.eval_stream_seconds must be >= 0 (0: off), got {config.train.eval_stream_seconds:g}")

    def build(self, device: torch.device) -> None:
        self.device = device
        self.student = self.load_model(self.config.train.init).to(device).train()

    def load_model(self, path: str) -> CausalWanModel:
        """``path`` (any checkpoint layout, fp32) or a fresh model of ``config.model``; checks it fits the world."""
        cfg = self.config
        channels = self.world.latent_shape()[0]
        if not path:
            if (cfg.model.in_dim, cfg.model.out_dim) != (channels, channels):
                raise UserError(
                    f"model.in_dim={cfg.model.in_dim} and model.out_dim={cfg.model.out_dim}, but this world's codec gives "
                    f"{channels}-channel latents: set model.in_dim={channels} model.out_dim={channels}"
                )
            return CausalWanModel(cfg.model, attn_backend=cfg.attn_backend)
        model = CausalWanModel.from_pretrained(path, attn_backend=cfg.attn_backend, dtype=torch.float32)
        if model.config.in_dim != channels or model.config.text_dim != self.world.text.dim:
            raise UserError(
                f"{path} takes {model.config.in_dim}-channel latents and {model.config.text_dim}-dim text, "
                f"but this world gives {channels} and {self.world.text.dim}"
            )
        return model

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    # ----------------------------------------------------------- helpers
    def tokens_per_frame(self) -> int:
        return self.world.tokens_per_frame(self.config.model.patch_size)

    def num_chunks(self) -> int:
        fpc = self.config.data.frames_per_chunk
        if self.config.data.num_frames % fpc:
            raise UserError(f"data.num_frames={self.config.data.num_frames} is not a multiple of data.frames_per_chunk={fpc}")
        return self.config.data.num_frames // fpc

    def drop_captions(self, context: torch.Tensor, rnd: StepRandom) -> torch.Tensor:
        """Replace each caption by the empty prompt with probability ``objective.caption_dropout``."""
        drop = rnd.rand(context.shape[0]) < self.config.objective.caption_dropout  # (B,)
        return torch.where(drop[:, None, None], self.world.empty_context(context.shape[0]), context)

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

    def sampler_spec(self, steps: int | None = None) -> SamplerSpec:
        obj, data = self.config.objective, self.config.data
        return SamplerSpec(
            causal=self.causal, steps=steps or self.config.train.eval_steps, solver="euler", shift=obj.shift,
            guidance=obj.guidance, frames_per_chunk=data.frames_per_chunk, window_frames=data.cache_window() if self.causal else None,
        )

    def evaluate(self, student: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        metrics = evaluate_model(
            student, self.world, self.sampler_spec(), n=self.config.train.eval_videos, out_dir=out_dir / "samples",
            tag=f"step{step:06d}", drift_factor=self.config.train.eval_drift if self.causal else 0,
            stream_seconds=self.config.train.eval_stream_seconds if self.causal else 0.0,
        )
        if not self.causal:  # the loss gap of swapped direction words: motion learned from text shows here first
            metrics["direction_word_gap"] = direction_word_gap(student, self.world, n=max(self.config.train.eval_videos, 32))
        return metrics

    def export(self, student_state: dict[str, torch.Tensor], path: Path) -> None:
        from ..models.adapters import save_checkpoint

        spec = self.sampler_spec()
        pipeline = {
            **self.world.pipeline_section(),
            "causal": self.causal,
            "sampler": spec.to_dict(),
            "stream": {"sink_frames": spec.sink_frames, "window_frames": self.config.data.cache_window()},
            "num_actions": self.config.model.num_actions,
            "recipe": self.config.recipe,
        }
        save_checkpoint(self.config.model, student_state, path, "causal-rcm", pipeline=pipeline)


class TeacherRecipe(DenoisingRecipe):
    """Bidirectional flow matching with caption dropout."""

    name = "teacher"

    def losses(self, batch, rnd, step):
        x0 = batch["latents"]  # (B, C, F, h, w)
        B, _, F, _, _ = x0.shape
        s = self.sample_s(rnd, B, 1, F)  # (B, F): one time per video
        eps = rnd.randn_like(x0)
        s_ = s[:, None, :, None, None]
        x_s = (1 - s_) * x0 + s_ * eps
        v = self.student(x_s, 1000 * s, self.drop_captions(batch["context"], rnd), actions=batch.get("actions"))
        loss = (v.float() - (eps - x0)).square().mean()
        return {"student": (loss, {})}


class CausalTeacherRecipe(DenoisingRecipe):
    """Teacher-forcing diffusion: noisy chunks denoised given the clean chunks before them."""

    name = "causal-teacher"
    causal = True

    def losses(self, batch, rnd, step):
        x0 = batch["latents"]  # (B, C, F, h, w)
        B, _, F, _, _ = x0.shape
        fpc = self.config.data.frames_per_chunk
        chunks = self.num_chunks()
        s = self.sample_s(rnd, B, chunks, fpc)  # (B, F): independent time per chunk
        eps = rnd.randn_like(x0)
        s_ = s[:, None, :, None, None]
        x_s = (1 - s_) * x0 + s_ * eps
        x = torch.cat([x0, x_s], dim=2)  # (B, C, 2F, h, w): [clean | noisy]
        t = torch.cat([torch.zeros_like(s), 1000 * s], dim=1)
        mask = masks.teacher_forcing(chunks, fpc, self.tokens_per_frame())
        actions = batch.get("actions")
        if actions is not None:
            actions = torch.cat([actions, actions], dim=1)
        out = self.student(x, t, self.drop_captions(batch["context"], rnd), mask=mask, actions=actions)
        v = out[:, :, F:]  # noisy half only
        loss = (v.float() - (eps - x0)).square().mean()
        return {"student": (loss, {})}
