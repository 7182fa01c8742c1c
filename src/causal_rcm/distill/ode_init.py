"""``ode-init``: the Self-Forcing / CausVid initialisation, regressing the causal student on teacher ODE pairs.

For each batch the frozen teacher (with CFG) integrates its probability-flow ODE from noise
to a clean video x0 with ``ode.steps`` Euler steps, on a grid that contains the
student's few-step times s_0 = 1 > s_1 > ... > s_{N-1} (``objective.sample_steps``, shifted).
Each chunk of the student's input is the ODE state at one of those times, drawn per chunk, and
the student regresses its x0 estimate f = x - s v onto the ODE's endpoint (CausVid, Yin et al.
2025, Sec. 3.3; Self Forcing's ``ode`` initialisation):

    L = || f_theta(x_{s_i}, s_i | clean chunks before) - x0 ||^2.

The context is given under teacher forcing (``[x0 | noisy]``, the ``teacher_forcing`` mask):
the clean chunks are the ODE's own endpoint, as the KV cache holds generated chunks at
inference. The teacher is the bidirectional one (whole-video ODE); a causal teacher is run with
the block-causal mask. The student starts from the teacher's weights unless ``train.init`` is set.
"""

from __future__ import annotations

from pathlib import Path

import torch

from causal_rcm.config import Config, OdeConfig
from causal_rcm.diffusion.conversions import velocity_to_x0
from causal_rcm.diffusion.samplers import euler_sample
from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.errors import UserError
from causal_rcm.kernels import masks
from causal_rcm.models.adapters import load_checkpoint
from causal_rcm.distill.base import DistillRecipe, check_chunks, distill_config, is_causal_checkpoint


def ode_init_config() -> Config:
    config = distill_config("ode-init", steps=1000, batch_size=16, eval_every=250, lr=2e-5)
    config.ode = OdeConfig()
    return config


def ode_grid(student_grid: torch.Tensor, substeps: int) -> torch.Tensor:
    """The student's grid with each interval split into ``substeps`` equal Euler steps (float64)."""
    parts = [torch.linspace(float(a), float(b), substeps + 1, dtype=torch.float64)[:-1] for a, b in zip(student_grid[:-1], student_grid[1:])]
    return torch.cat([*parts, torch.zeros(1, dtype=torch.float64)])


class ODEInitRecipe(DistillRecipe):
    name = "ode-init"

    @classmethod
    def prepare(cls, config: Config) -> None:
        if not config.train.teacher:
            raise UserError("ode-init needs train.teacher=PATH: the teacher whose ODE pairs the student regresses")
        if not Path(config.train.teacher).exists():
            raise UserError(f"train.teacher not found: {config.train.teacher}")
        if not config.train.init:
            config.model = load_checkpoint(config.train.teacher)[0]
        check_chunks(config)
        if config.ode.steps < config.objective.sample_steps:
            raise UserError(f"ode.steps={config.ode.steps} must be >= objective.sample_steps={config.objective.sample_steps}")

    def build(self, device: torch.device) -> None:
        super().build(device)
        self.teacher_causal = is_causal_checkpoint(self.config.train.teacher)

    def ode_pairs(self, batch: dict, rnd) -> tuple[torch.Tensor, torch.Tensor]:
        """ODE states at the student's grid times (N, B, C, F, h, w) and the endpoint x0 (B, C, F, h, w): stored with
        the batch (``causal-rcm synth --ode-pairs``), else integrated by the teacher now."""
        obj = self.config.objective
        student_grid = flow_time_grid(obj.sample_steps, obj.shift)
        if "ode_states" in batch:
            return self.stored_pairs(batch, student_grid[:-1]), batch["latents"]
        substeps = max(1, self.config.ode.steps // obj.sample_steps)
        grid = ode_grid(student_grid, substeps)
        noise = rnd.randn_like(batch["latents"])
        context = batch["context"]
        mask = masks.block_causal(self.num_chunks(), self.frames_per_chunk(), self.tokens_per_frame()) if self.teacher_causal else None
        states = []

        def keep(info):
            if info["i"] % substeps == 0:
                states.append(info["x"])

        with torch.no_grad():
            x0 = euler_sample(
                self.teacher, noise, context, steps=grid, guidance=obj.guidance,
                neg_context=self.source.empty_context(context.shape[0]), mask=mask, callback=keep,
                **({} if batch.get("actions") is None else {"actions": batch["actions"]}),
            )
        return torch.stack(states), x0

    def stored_pairs(self, batch: dict, times: torch.Tensor) -> torch.Tensor:
        """The stored ODE states (B, K, C, F, h, w) at the student's times (N,) -> (N, B, C, F, h, w); UserError when
        the shards hold none of some time."""
        stored = batch["ode_times"].double().cpu()
        index = [int(torch.argmin((stored - t).abs())) for t in times]
        if any(abs(float(stored[i]) - float(t)) > 1e-5 for i, t in zip(index, times)):
            obj = self.config.objective
            raise UserError(
                f"the shards' ODE pairs are at flow times {[round(float(t), 4) for t in stored]}, but the student samples "
                f"at {[round(float(t), 4) for t in times]} (objective.sample_steps={obj.sample_steps}, objective.shift={obj.shift:g}): "
                f"set objective.sample_steps={len(stored)} and the teacher's shift, or synthesise with --ode-pairs {obj.sample_steps}"
            )
        return batch["ode_states"][:, index].transpose(0, 1)

    def losses(self, batch, rnd, step):
        obj = self.config.objective
        states, x0 = self.ode_pairs(batch, rnd)
        B, _, F = x0.shape[:3]
        student_grid = flow_time_grid(obj.sample_steps, obj.shift).to(x0.device)
        index = self.per_chunk(rnd.randint(obj.sample_steps, B, self.num_chunks()))  # (B, F) grid index per chunk
        s = student_grid[index].float()
        # each frame's state at its chunk's time: gather along the N axis
        x_s = states.permute(1, 2, 3, 0, 4, 5).gather(3, index[:, None, :, None, None, None].expand(B, x0.shape[1], F, 1, *x0.shape[3:]))
        x_s = x_s.squeeze(3).to(x0.dtype)
        v = self.student(
            self.tf_sequence(x0, x_s), 1000 * self.tf_times(s), batch["context"], mask=self.tf_mask(), **self.tf_actions(batch)
        )[:, :, F:]
        f = velocity_to_x0(v.float(), x_s.float(), s)
        loss = (f - x0.float()).square().mean()
        return {"student": (loss, {"mean_s": float(s.mean())})}
