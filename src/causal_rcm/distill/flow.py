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

import torch

from causal_rcm.config import Config
from causal_rcm.distill.base import DenoisingRecipe, frame_mean
from causal_rcm.kernels import masks


def teacher_config() -> Config:
    config = Config(recipe="teacher")
    config.train.steps = 6000
    config.train.batch_size = 64
    config.train.eval_every = 1000
    # Measured on the CPU (150 s, batch 16): lr 1e-3 reaches colour 0.85 / caption 0.41-0.46 where 3e-4
    # stays at the floor; the first GPU attempt at 3e-4 (docs/results/shapes_teachers_attempt1.md) was slow too.
    config.optim.lr = 1e-3
    return config


def causal_teacher_config() -> Config:
    config = Config(recipe="causal-teacher")
    config.data.frames_per_chunk = 2
    config.train.steps = 3000
    config.train.batch_size = 64
    config.train.eval_every = 1000
    config.optim.lr = 1e-4
    return config


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
    """Teacher-forcing diffusion: noisy chunks denoised given the clean chunks before them (and, with
    ``data.given_frames_prob``, a given first frame beside the first chunk's)."""

    name = "causal-teacher"
    causal = True
    gives_frames = True

    def losses(self, batch, rnd, step):
        x0, given = self.given_first_frame(batch, rnd)  # (B, C, F, h, w), (B, F)
        B, _, F, _, _ = x0.shape
        fpc = self.config.data.frames_per_chunk
        chunks = self.num_chunks()
        s = self.sample_s(rnd, B, chunks, fpc).masked_fill(given, 0.0)  # (B, F): independent time per chunk; given at 0
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
        loss = frame_mean((v.float() - (eps - x0)).square(), ~given).mean()
        return {"student": (loss, {})}
