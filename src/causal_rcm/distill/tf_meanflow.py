"""TF-MeanFlow: MeanFlow distillation (Geng et al. 2025) under teacher forcing.

The student predicts the average velocity u(z_s, r, s) = 1 / (s - r) int_r^s v(z_tau, tau) dtau
over [r, s] (flow-matching times, s = 1 is noise), conditioned on s and on the interval s - r
through a zero-initialised embedding (``interval_embedding``; at r = s, u is the velocity, so
the student starts as the teacher). The MeanFlow identity (their Eq. (6)),

    u(z_s, r, s) = v(z_s, s) - (s - r) d/ds u(z_s, r, s),   d/ds u = JVP of u along (v, 0, 1) in (z, r, s),

gives the regression target u_tgt = sg(v - (s - r) du/ds) (their Eq. (10)), with v the
teacher's CFG velocity (distillation) and the JVP taken through the whole network under
``no_grad``. (s, r): two logit-normal shifted times, s the larger; with probability
1 - ``meanflow.ratio`` r = s (the flow-matching loss on the teacher's velocity).
Sampling is the jump z_r = z_s - (s - r) u(z_s, r, s) (solver ``meanflow``).

Teacher forcing: [clean | noisy] sequences, the clean half at t = 0 with interval 0 and zero
tangents; each noisy chunk has its own (r, s); the loss is on the noisy tokens. Samples with a
non-finite target are dropped and counted. Adaptive loss weighting is not used.
"""

from __future__ import annotations

import torch

from causal_rcm.config import Config, MeanFlowConfig
from causal_rcm.diffusion.conversions import expand_time
from causal_rcm.diffusion.schedules import shift_time
from causal_rcm.distill.base import DistillRecipe, attention_backend, distill_config, finite_rows, frame_mean, masked_mean


def meanflow_target(u_fn, z: torch.Tensor, s: torch.Tensor, r: torch.Tensor, v: torch.Tensor,
                    fixed: torch.Tensor | None = None) -> torch.Tensor:
    """MeanFlow's target v - (s - r) du/ds (float32), du/ds = JVP of ``u_fn(z, s)`` (r fixed inside) along (v, 1).

    Args: z (B, C, F, H, W); s, r (B, F) flow-matching times; v like z, the instantaneous
    velocity at (z, s). ``fixed`` (B, F) bool: frames held still along the trajectory (given clean frames at
    s = 0), zero tangents. For the true average velocity the target equals u itself.
    Call under ``no_grad`` with an attention backend that has a JVP.
    """
    moving = torch.ones_like(s) if fixed is None else (~fixed).to(s.dtype)
    _, dudt = torch.func.jvp(u_fn, (z, s), ((v * expand_time(moving, v)).to(z.dtype), moving))
    return v.float() - expand_time(s - r, z) * dudt.float()


def tf_meanflow_config() -> Config:
    config = distill_config("tf-meanflow", steps=2000, batch_size=32, eval_every=500, lr=2e-5)
    config.meanflow = MeanFlowConfig()
    return config


class TFMeanFlowRecipe(DistillRecipe):
    name = "tf-meanflow"
    gives_frames = True
    needs_jvp = True
    solver = "meanflow"
    student_overrides = {"interval_embedding": True}

    def new_parameters(self) -> tuple[str, ...]:
        return ("interval_embedding.",)

    def sample_times(self, rnd, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, s) per chunk (B, chunks): two shifted logit-normal times sorted, r = s for a 1 - ratio share."""
        obj = self.config.objective
        chunks = self.num_chunks()
        a = shift_time(torch.sigmoid(rnd.randn(batch, chunks)), obj.shift)
        b = shift_time(torch.sigmoid(rnd.randn(batch, chunks)), obj.shift)
        s, r = torch.maximum(a, b).clamp(1e-4, 1.0), torch.minimum(a, b)
        equal = rnd.rand(batch, chunks) >= self.config.meanflow.ratio
        return torch.where(equal, s, r), s

    def losses(self, batch, rnd, step):
        obj = self.config.objective
        x0, given = self.given_first_frame(batch, rnd)
        B, _, F, _, _ = x0.shape
        context = batch["context"]
        r, s = (self.per_chunk(v).masked_fill(given, 0.0) for v in self.sample_times(rnd, B))  # (B, F); given at 0
        eps = rnd.randn_like(x0)
        z = (1 - expand_time(s, x0)) * x0 + expand_time(s, x0) * eps
        v = self.teacher_velocity(x0, z, s, batch)  # (B, C, F, h, w), float32

        mask, actions = self.tf_mask(), self.tf_actions(batch)

        def u_noisy(z_noisy: torch.Tensor, s_noisy: torch.Tensor) -> torch.Tensor:
            out = self.student(
                self.tf_sequence(x0, z_noisy), 1000 * self.tf_times(s_noisy), context, mask=mask,
                interval=1000 * self.tf_times(s_noisy - r), **actions,
            )
            return out[:, :, F:]

        with torch.no_grad(), attention_backend(self.student, obj.jvp_backend):
            target = meanflow_target(u_noisy, z, s, r, v, fixed=given)
        keep = finite_rows(target)
        target = torch.where(keep[:, None, None, None, None], target, torch.zeros_like(target)).detach()
        u = u_noisy(z, s).float()
        per_sample = frame_mean((u - target).square(), ~given)
        loss = masked_mean(per_sample, keep)
        metrics = {
            "mean_interval": float((s - r).mean()),
            "teacher_gap": float((u.detach() - v)[keep].square().mean()) if keep.any() else float("nan"),
            "nonfinite_samples": float((~keep).sum()),
        }
        return {"student": (loss, metrics)}
