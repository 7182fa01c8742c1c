"""Self-forcing DMD (``sf-dmd``): distribution matching distillation on the student's own rollouts.

DMD (Yin et al. 2024, DMD; DMD2, Yin et al. 2024b): the generator's sample x is noised to
x_s = (1 - s) x + s eps and scored twice: by the frozen teacher with CFG (the "real" score,
x0_real) and by a critic trained on generator samples (the "fake" score, x0_fake). The
generator follows the difference of the two, normalised per sample (DMD, Eq. (7) and its
normaliser):

    grad = (x0_fake - x0_real) / mean |x - x0_real|,    L_gen = 0.5 || x - sg(x - grad) ||^2,

whose gradient with respect to x is ``grad``. The critic (initialised from the teacher) learns
flow matching on detached generator samples, ``critic_steps`` updates per generator update
(DMD2's two time-scale rule), both with Adam beta1 = 0; the trainer keeps the generator's EMA.

The samples come from :func:`~.self_forcing.self_forcing_rollout` (Self Forcing, Huang et al.
2025): the whole video, generated chunk by chunk with the student's KV cache, gradient only
through each chunk's exit step. The teacher is usually the bidirectional one (the best score
of whole videos); a causal teacher is evaluated with the block-causal mask.

With ``dmd.scm_weight`` w > 0 the generator's loss is DMD's plus w times the TF-sCM loss on the
data batch, with the tangents of the causal teacher ``train.cm_teacher`` (the combination of rCM, Zheng
et al. 2025, where the sCM loss keeps the diversity that DMD's mode seeking loses).

Safety: samples whose DMD gradient is not finite are dropped and counted; if none is left, or
the critic's loss is not finite or above ``dmd.critic_max_loss``, that update is
rejected (``skipped/<group>`` in the logs), and ``optim.max_bad_steps`` such steps in a row
stop the run with the last checkpoint kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

from causal_rcm.config import Config, DmdConfig, ScmConfig
from causal_rcm.diffusion.samplers import check_window, head_complement
from causal_rcm.diffusion.conversions import expand_time, velocity_to_x0
from causal_rcm.diffusion.guidance import guided_velocity
from causal_rcm.diffusion.schedules import flow_time_grid, shift_time
from causal_rcm.errors import UserError
from causal_rcm.kernels import masks
from causal_rcm.models.adapters import load_checkpoint
from causal_rcm.spec import PipelineSpec, StreamDefaults
from causal_rcm.train.parallel import global_mean, global_sum
from causal_rcm.distill.self_forcing import self_forcing_rollout
from causal_rcm.distill.base import (
    DistillRecipe,
    check_causal_teacher,
    check_chunks,
    distill_config,
    finite_rows,
    is_causal_checkpoint,
    masked_mean,
    require_teacher,
    resolve_jvp_backend,
)
from causal_rcm.distill.tf_scm import TFSCMRecipe


def sf_dmd_config() -> Config:
    config = distill_config("sf-dmd", steps=1000, batch_size=16, eval_every=250, lr=1e-5)
    config.dmd, config.scm = DmdConfig(), ScmConfig()  # scm: the regulariser's time proposal (dmd.scm_weight > 0)
    return config


def dmd_generator_loss(
    x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DMD's surrogate loss, per-sample kept mask and the normalised gradient.

    Args: x (B, ...) generator output with gradient; x0_real, x0_fake: the teacher's and the
    critic's x0 estimates at the noised x (no gradient). Returns ``(loss, keep, grad)``; samples
    with a non-finite gradient are left out of the loss (a zero loss when none is kept).
    """
    with torch.no_grad():
        dims = tuple(range(1, x.ndim))
        normaliser = (x.detach().float() - x0_real.float()).abs().mean(dim=dims, keepdim=True)
        grad = (x0_fake.float() - x0_real.float()) / normaliser
        keep = finite_rows(grad)
        grad = torch.where(keep.view(-1, *[1] * (x.ndim - 1)), grad, torch.zeros_like(grad))
    per_sample = 0.5 * (x.float() - (x.detach().float() - grad)).square().flatten(1).mean(dim=1)
    return masked_mean(per_sample, keep), keep, grad


class SFDMDRecipe(DistillRecipe):
    """Self-forcing DMD of a causal few-step student; groups ``student`` (generator) and ``critic``."""

    name = "sf-dmd"
    gives_frames = True

    @classmethod
    def prepare(cls, config: Config) -> None:
        require_teacher(config, "the teacher whose distribution is matched "
                                "(the bidirectional `causal-rcm train teacher` model; a causal teacher works too)")
        if config.train.init:
            init = PipelineSpec.read_if_any(config.train.init)
            if init is not None and not init.causal:
                raise UserError(f"train.init={config.train.init} is a bidirectional model; self forcing needs a causal student")
        else:  # "no init": the student starts from the teacher's weights
            config.model = load_checkpoint(config.train.teacher)[0]
        dmd = config.dmd
        check_chunks(config)
        if dmd.min_s >= dmd.max_s:  # each in [0, 1] by its range
            raise UserError(f"need 0 <= dmd.min_s < dmd.max_s <= 1, got {dmd.min_s}, {dmd.max_s}")
        most = config.model.max_frames - dmd.sink_frames
        check_window(dmd.rollout_window, config.data.frames_per_chunk, "dmd.rollout_window", zero="the training length", most=most)
        if dmd.sink_frames + config.data.num_frames > config.model.max_frames:
            raise UserError(f"dmd.sink_frames={dmd.sink_frames} and data.num_frames={config.data.num_frames} need more than the "
                            f"model's max_frames={config.model.max_frames} RoPE positions")
        if dmd.rollout_factor > 1 and config.data.has_actions():
            raise UserError("dmd.rollout_factor > 1 needs actions for the frames past the training video: not for action-conditioned data yet")
        if dmd.scm_weight > 0:
            cls.check_scm_regulariser(config)

    @staticmethod
    def check_scm_regulariser(config: Config) -> None:
        """rCM's TF-sCM regulariser needs a causal teacher for its tangents, a consistency student and a JVP backend."""
        path = config.train.cm_teacher
        if not path:
            raise UserError(
                "dmd.scm_weight > 0 needs train.cm_teacher=PATH: the causal teacher whose tangents the TF-sCM "
                "regulariser uses (`causal-rcm train causal-teacher`)"
            )
        if not Path(path).exists():
            raise UserError(f"train.cm_teacher not found: {path}")
        check_causal_teacher(config, "train.cm_teacher", path, "the TF-sCM regulariser needs a causal teacher", who="train.cm_teacher")
        if config.model.interval_embedding:
            raise UserError("dmd.scm_weight > 0 regularises a consistency student; this one is a MeanFlow student")
        config.objective.jvp_backend = resolve_jvp_backend(config)

    def __init__(self, config: Config, source) -> None:
        super().__init__(config, source)
        self.solver = "meanflow" if config.model.interval_embedding else "consistency"

    def build(self, device: torch.device) -> None:
        self.device = device
        cfg = self.config
        self.teacher = self.model_at(cfg.train.teacher).to(device).eval().requires_grad_(False)
        self.teacher_causal = is_causal_checkpoint(cfg.train.teacher)
        self.student = (self.model_at(cfg.train.init) if cfg.train.init else self.student_from(self.teacher)).to(device).train()
        self.critic = self.model_at(cfg.train.teacher).to(device).train()
        self.cm_teacher = None
        if cfg.dmd.scm_weight > 0:
            self.cm_teacher = self.model_at(cfg.train.cm_teacher).to(device).eval().requires_grad_(False)

    def trainable(self):
        return {"student": self.student, "critic": self.critic}

    def frozen(self):
        return {"teacher": self.teacher, **({} if self.cm_teacher is None else {"cm_teacher": self.cm_teacher})}

    def optimizer_options(self, group: str) -> dict:
        return {"betas": (0.0, self.config.optim.beta2)}  # DMD2: Adam with beta1 = 0 for both

    def score_mask(self) -> masks.BlockSparseMask | None:
        if not self.teacher_causal:
            return None
        return masks.block_causal(self.num_chunks(), self.frames_per_chunk(), self.tokens_per_frame())

    def stream_defaults(self) -> StreamDefaults:
        """The KV cache of the rollouts, which the exported checkpoint's streams keep: the sink
        ``data.stream_sink``, else ``dmd.sink_frames``; the window ``data.stream_window``, else
        ``dmd.rollout_window``, else the training length; and the context the rollouts commit (``dmd.noisy_context``)."""
        data, dmd = self.config.data, self.config.dmd
        return StreamDefaults(sink_frames=data.cache_sink(dmd.sink_frames), window_frames=data.stream_window or dmd.rollout_window or data.num_frames,
                              context="noisy" if dmd.noisy_context else "clean")

    def rollout(self, batch: dict, rnd, *, with_grad: bool) -> tuple[torch.Tensor, int]:
        """The student's video of ``data.num_frames`` latent frames, and the exit step.

        With ``dmd.rollout_factor`` N > 1 the video is a window of a longer rollout (as Self-Forcing++, Cui et
        al. 2025, trains past the teacher's horizon): a chunk-aligned end e in [F, N F] (F = ``data.num_frames``) is
        drawn, the same on every rank, and the student rolls out e frames through the KV cache its streams use
        (``dmd.sink_frames`` sink frames, a rolling window of ``dmd.rollout_window``, default F). The last F frames
        are returned: a window drawn uniformly over the chunk-aligned windows of an N F rollout, since frames after
        it cannot change it. The chunks before it run without gradient and are not kept, so memory does not grow
        with N.
        """
        obj, dmd = self.config.objective, self.config.dmd
        grid = flow_time_grid(obj.sample_steps, obj.shift)
        exit_step = rnd.shared_randint(obj.sample_steps)  # the same on every rank
        latents = batch["latents"]
        F, fpc = latents.shape[2], self.frames_per_chunk()
        end = F
        if dmd.rollout_factor > 1:
            end = F + fpc * rnd.shared_randint((dmd.rollout_factor - 1) * F // fpc + 1)
        noise = rnd.randn(latents.shape[0], latents.shape[1], end, *latents.shape[3:]).to(latents.dtype)
        _, given = self.given_first_frame(batch, rnd)  # (B, F): rollouts that start from the given first frame
        with torch.set_grad_enabled(with_grad):
            video = self_forcing_rollout(
                self.student, noise, batch["context"], grid=grid, exit_step=exit_step, frames_per_chunk=fpc,
                solver=self.solver, window_frames=dmd.rollout_window or F, sink_frames=dmd.sink_frames,
                draw_noise=lambda shape: rnd.randn(*shape), actions=batch.get("actions"), score_from_chunk=(end - F) // fpc,
                complement=head_complement(self.student),
                given=batch.get("image_latents") if given.any() else None, given_rows=given[:, 0],
                context_mode=self.stream_defaults().context,
            )
        return video, exit_step

    def noise_levels(self, rnd, batch: int) -> torch.Tensor:
        obj, dmd = self.config.objective, self.config.dmd
        u = dmd.min_s + (dmd.max_s - dmd.min_s) * rnd.rand(batch, 1)
        return shift_time(u, obj.shift).expand(batch, self.config.data.num_frames)  # one level per video

    def losses(self, batch, rnd, step):
        obj, dmd = self.config.objective, self.config.dmd
        generator_step = step % dmd.critic_steps == 0
        video, exit_step = self.rollout(batch, rnd, with_grad=generator_step)
        context = batch["context"]
        B = video.shape[0]
        out = {}
        mask, actions = self.score_mask(), batch.get("actions")
        kwargs = {} if actions is None else {"actions": actions}
        if generator_step:
            s = self.noise_levels(rnd, B)
            s_ = expand_time(s, video)
            x_s = ((1 - s_) * video.detach() + s_ * rnd.randn_like(video)).to(video.dtype)
            with torch.no_grad():
                v_real = guided_velocity(
                    self.teacher, x_s, 1000 * s, context, guidance=obj.guidance,
                    neg_context=self.source.empty_context(B), mask=mask, **kwargs,
                )
                v_fake = self.critic(x_s, 1000 * s, context, mask=mask, **kwargs)
            loss, keep, grad = dmd_generator_loss(video, velocity_to_x0(v_real.float(), x_s, s), velocity_to_x0(v_fake.float(), x_s, s))
            metrics = {
                "exit_step": float(exit_step),
                "dmd_grad_rms": float(grad[keep].square().mean().sqrt()) if keep.any() else float("nan"),
                "nonfinite_samples": float((~keep).sum()),
            }
            if global_sum(keep.sum().float()) == 0:  # the same decision on every rank
                loss = None
            elif self.cm_teacher is not None:  # rCM: DMD + w * TF-sCM on the data batch (full tangent, r = 1)
                scm, scm_metrics = TFSCMRecipe.scm_terms(self, batch, rnd, 1.0, self.cm_teacher)
                metrics.update({"dmd_loss": float(loss.detach()), "scm_loss": float(scm.detach()),
                                **{f"scm_{k}": v for k, v in scm_metrics.items() if k != "tangent_r"}})
                loss = loss + dmd.scm_weight * scm
            out["student"] = (loss, metrics)
        out["critic"] = self.critic_loss(video.detach(), context, rnd, mask, kwargs)
        return out

    def critic_loss(self, x: torch.Tensor, context: torch.Tensor, rnd, mask, kwargs) -> tuple[torch.Tensor | None, dict]:
        """Flow matching of the critic on generator samples; None (rejected) when it diverged."""
        B, _, F = x.shape[:3]
        s = self.sample_s(rnd, B, 1, F)
        eps = rnd.randn_like(x)
        s_ = expand_time(s, x)
        v = self.critic((1 - s_) * x + s_ * eps, 1000 * s, context, mask=mask, **kwargs)
        loss = (v.float() - (eps - x).float()).square().mean()
        value = global_mean(loss.detach().float())  # the same decision on every rank
        if not value == value or value > self.config.dmd.critic_max_loss:  # NaN or too large
            return None, {"diverged": 1.0, "loss": value}
        return loss, {}


