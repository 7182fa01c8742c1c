"""TF-dCM: discrete-time consistency distillation (Song et al. 2023, CD) under teacher forcing.

On the shifted flow-matching grid s_n = shift(n / N), n = 0..N (``dcm.intervals``):
draw n in 1..N per chunk, noise x_{s_n} = (1 - s_n) x0 + s_n eps, take one Euler step of the
teacher's CFG ODE to x_{s_{n-1}} = x_{s_n} + (s_{n-1} - s_n) v_teacher, and regress the
student's consistency function f(x, s) = x - s v_theta (its x0 estimate) at (x_{s_n}, s_n)
onto its own no-grad output at (x_{s_{n-1}}, s_{n-1}) (f = x at s = 0, the boundary condition):

    L = lambda_n || f_theta(x_{s_n}, s_n) - sg f_theta(x_{s_{n-1}}, s_{n-1}) ||^2,
    lambda_n = 1 / (s_n - s_{n-1})                               (iCT's weighting, Song & Dhariwal 2023)

Teacher forcing as in every TF recipe: [clean | noisy] sequences, loss on the noisy chunks.
No JVP is needed, so any attention backend with a backward works. This is the baseline that
the continuous-time recipes are compared against (``causal-rcm experiment cm-convergence``).
"""

from __future__ import annotations

import torch

from causal_rcm.config import Config, DcmConfig
from causal_rcm.diffusion.conversions import expand_time, velocity_to_x0
from causal_rcm.diffusion.schedules import shift_time
from causal_rcm.distill.base import DistillRecipe, distill_config, frame_mean


def tf_dcm_config() -> Config:
    config = distill_config("tf-dcm", steps=2000, batch_size=32, eval_every=500, lr=2e-5)
    config.dcm = DcmConfig()
    return config


class TFDCMRecipe(DistillRecipe):
    name = "tf-dcm"
    solver = "consistency"
    gives_frames = True

    def student_x0(self, x0: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor, batch: dict) -> torch.Tensor:
        """f_theta(x_s, s) = x_s - s v_theta on the noisy half of [x0 | x_s] (B, C, F, H, W), float32."""
        F = x0.shape[2]
        v = self.student(
            self.tf_sequence(x0, x_s), 1000 * self.tf_times(s), batch["context"], mask=self.tf_mask(), **self.tf_actions(batch)
        )[:, :, F:]
        return velocity_to_x0(v.float(), x_s.float(), s)

    def losses(self, batch, rnd, step):
        obj = self.config.objective
        x0, given = self.given_first_frame(batch, rnd)
        B = x0.shape[0]
        n = rnd.randint(self.config.dcm.intervals, B, self.num_chunks()) + 1  # (B, chunks) in 1..N
        s = self.per_chunk(shift_time(n.float() / self.config.dcm.intervals, obj.shift)).masked_fill(given, 0.0)
        s_prev = self.per_chunk(shift_time((n - 1).float() / self.config.dcm.intervals, obj.shift)).masked_fill(given, 0.0)
        eps = rnd.randn_like(x0)
        x_s = (1 - expand_time(s, x0)) * x0 + expand_time(s, x0) * eps

        v_teacher = self.teacher_velocity(x0, x_s, s, batch)
        x_prev = (x_s + expand_time(s_prev - s, x0) * v_teacher).to(x0.dtype)
        with torch.no_grad():
            target = self.student_x0(x0, x_prev, s_prev, batch)  # equals x_prev where s_prev = 0
        f = self.student_x0(x0, x_s, s, batch)
        weight = expand_time(1.0 / (s - s_prev).masked_fill(given, 1.0), x0)  # given frames: no loss (frame_mean)
        loss = frame_mean(weight * (f - target).square(), ~given).mean()
        return {"student": (loss, {"mean_interval": float((s - s_prev)[~given].mean())})}
