"""TF-sCM: continuous-time consistency distillation (sCM, Lu & Song 2024; rCM) under teacher forcing.

In TrigFlow (sigma_d = 1), x_t = cos t x0 + sin t eps, the student F_theta is the TrigFlow
wrapper of the flow-matching network (:class:`~causal_rcm.models.precond.TrigFlowWrapper`) and
its consistency function is f = cos t x_t - sin t F_theta. The distillation loss
(sCM, Eq. (8) with the tangent of their Algorithm 1):

    dx_t/dt = F_teacher(x_t, t)                                 (teacher PF-ODE, with CFG)
    cos t sin t dF^-/dt = JVP of F_theta^- along (cos t sin t dx_t/dt, cos t sin t)
    g = -cos^2 t (F^- - dx_t/dt) - r (cos t sin t x_t + cos t sin t dF^-/dt)
    g <- g / (||g|| + c)                                         (tangent normalisation)
    L = || F_theta - sg(F_theta) - g ||^2                        (sg = stop-gradient)

The target's F^- is the stop-gradient of the very forward that carries the gradient, not the
JVP pass's output: the two are the same function at the same point, but under bf16 autocast they
differ by rounding, and that difference is not small next to a normalised g. On the CPU with
``train.precision=bf16`` (2026-12-02, the shipped causal teacher, batch 16), taking F^- from the
JVP pass made the loss 0.0009 at the first steps against 0.00015 in fp32: five parts in six of
the regression target were rounding noise. With sg(F_theta) the loss is ||g||^2 at any
precision and its gradient is exactly sCM's, -2 g . dF_theta/dtheta (:func:`scm_loss`).

with the tangent warm-up r going 0 -> 1 over ``scm.tangent_warmup`` steps and the
scaling of the JVP tangents by cos t sin t (rCM), which keeps them bounded near t = pi/2. The
JVP runs under ``no_grad`` through the whole network with ``objective.jvp_backend`` (our
fused masked Triton kernel on GPU, the math reference on CPU).

Teacher forcing: the sequence is [clean | noisy] with the clean half at t = 0 and held fixed
(zero tangent), each noisy chunk at its own t; the loss is on the noisy tokens. ``||g||`` is
taken per sample and chunk (a chunk is the unit that shares a time). Samples whose tangent
or teacher output is not finite are dropped from the loss and counted (``nonfinite_samples``).
Adaptive loss weighting (sCM's w(t) network) is not used: uniform weights.
"""

from __future__ import annotations

import torch

from causal_rcm.config import Config, ScmConfig
from causal_rcm.diffusion.conversions import expand_time, trigflow_to_flow_time, trigflow_to_flow_x, velocity_to_trigflow
from causal_rcm.models.precond import TrigFlowWrapper
from causal_rcm.distill.base import (
    DistillRecipe,
    attention_backend,
    chunk_norm,
    distill_config,
    finite_rows,
    frame_mean,
    log_normal_trigflow_time,
    masked_mean,
)


def scm_tangent(F_fn, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, cos t sin t dF/dt)`` in float32: the JVP of ``F_fn(x_t, t)`` along (cos t sin t dx_t/dt, cos t sin t).

    dF/dt is the total derivative of F(x_t, t) along the teacher's PF-ODE trajectory through
    (x_t, t), whose tangent is dx_t/dt; scaling both tangents by cos t sin t (rCM) gives
    cos t sin t dF/dt directly and keeps it bounded. Args: x_t (B, C, F, H, W); t (B, F); dxdt like x_t.
    Call under ``no_grad`` with an attention backend that has a JVP.
    """
    cs = torch.cos(t) * torch.sin(t)
    tangents = ((expand_time(cs, x_t) * dxdt).to(x_t.dtype), cs.to(t.dtype))
    F, cs_dFdt = torch.func.jvp(F_fn, (x_t, t), tangents)
    return F.float(), cs_dFdt.float()


def scm_direction(
    F_minus: torch.Tensor, cs_dFdt: torch.Tensor, dxdt: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
    *, r: float, c: float, frames_per_chunk: int, given: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sCM's normalised update direction g / (||g|| + c) and ||g|| (per sample and chunk), see the module docstring;
    ``given`` (B, F) bool: clean given frames (t = 0), whose g is 0 and left out of their chunk's norm."""
    t_ = expand_time(t, x_t)
    g = -torch.cos(t_).square() * (F_minus - dxdt) - r * (torch.cos(t_) * torch.sin(t_) * x_t + cs_dFdt)
    if given is not None:
        g = g.masked_fill(given[:, None, :, None, None], 0.0)
    norm = chunk_norm(g, frames_per_chunk)
    return g / (norm + c), norm


def scm_loss(F_theta: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample sCM loss ``mean ||F_theta - sg(F_theta) - g||^2`` (B,): its value is ``mean g^2`` and its
    gradient ``-2 g / n`` per element of ``F_theta`` exactly, whatever the precision ``F_theta`` was computed in.
    ``keep`` (B, F) bool: the frames averaged over (default all; given frames carry no loss)."""
    F_theta = F_theta.float()
    sq = (F_theta - (F_theta.detach() + g.detach())).square()
    return sq.flatten(1).mean(dim=1) if keep is None else frame_mean(sq, keep)


def tf_scm_config() -> Config:
    config = distill_config("tf-scm", steps=2000, batch_size=32, eval_every=500, lr=2e-5)
    config.scm = ScmConfig()
    return config


class TFSCMRecipe(DistillRecipe):
    name = "tf-scm"
    gives_frames = True
    needs_jvp = True
    solver = "consistency"

    def losses(self, batch, rnd, step):
        warmup = self.config.scm.tangent_warmup
        r = min(1.0, step / warmup) if warmup > 0 else 1.0
        return {"student": self.scm_terms(batch, rnd, r, self.teacher)}

    def scm_terms(self, batch, rnd, r: float, teacher) -> tuple[torch.Tensor, dict]:
        """The TF-sCM loss of ``self.student`` on ``batch`` with ``teacher``'s tangents at warm-up ``r``, and its metrics.

        Uses only :class:`DistillRecipe`'s helpers, so SF-DMD calls it for rCM's regulariser."""
        obj, scm = self.config.objective, self.config.scm
        x0, given = self.given_first_frame(batch, rnd)  # (B, C, F, h, w), (B, F)
        B, _, F, _, _ = x0.shape
        context = batch["context"]
        t = self.per_chunk(log_normal_trigflow_time(rnd, B, self.num_chunks(), scm.p_mean, scm.p_std))  # (B, F)
        t = t.masked_fill(given, 0.0)  # given frames clean; their tangents (scaled by cos t sin t) vanish
        eps = rnd.randn_like(x0)
        t_ = expand_time(t, x0)
        x_t = torch.cos(t_) * x0 + torch.sin(t_) * eps

        # Teacher PF-ODE tangent dx_t/dt = F_teacher, from its CFG velocity at the flow-matching point.
        s = trigflow_to_flow_time(t)
        x_s = trigflow_to_flow_x(x_t, t).to(x0.dtype)
        dxdt = velocity_to_trigflow(self.teacher_velocity(x0, x_s, s, batch, teacher=teacher), x_t, t)

        student = TrigFlowWrapper(self.student)
        mask, actions = self.tf_mask(), self.tf_actions(batch)

        def F_noisy(x_noisy: torch.Tensor, t_noisy: torch.Tensor) -> torch.Tensor:
            X = self.tf_sequence(x0, x_noisy)
            T = self.tf_times(t_noisy)
            return student(X, T, context, mask=mask, **actions)[:, :, F:]

        with torch.no_grad(), attention_backend(self.student, obj.jvp_backend):
            F_minus, cs_dFdt = scm_tangent(F_noisy, x_t, t, dxdt)
        g, g_norm = scm_direction(F_minus, cs_dFdt, dxdt, x_t, t, r=r, c=scm.tangent_norm, frames_per_chunk=self.frames_per_chunk(),
                                  given=given)

        keep = finite_rows(g, dxdt, F_minus)
        g = torch.where(keep[:, None, None, None, None], g, torch.zeros_like(g))
        loss = masked_mean(scm_loss(F_noisy(x_t, t), g, ~given), keep)
        metrics = {
            "tangent_r": r,
            "g_norm": float(g_norm[keep].mean()) if keep.any() else float("nan"),
            "teacher_gap": float((F_minus - dxdt)[keep].square().mean()) if keep.any() else float("nan"),
            "nonfinite_samples": float((~keep).sum()),
        }
        return loss, metrics
