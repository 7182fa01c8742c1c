"""The recipe-agnostic training loop.

A :class:`Recipe` owns its models and losses; the trainer owns everything around them:
devices and processes (FSDP2 under torchrun, for the trained models and the frozen ones), optimisers
(AdamW, warm-up, clipping), gradient accumulation, the EMA of the student, bf16 autocast on CUDA,
non-finite detection, progress bar, jsonl and TensorBoard logs, periodic evaluation, a time guard,
sharded checkpoints (DCP) and exact resume (models, EMA, optimisers, RNG, data position, step) on any
number of processes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from causal_rcm.config import Config, config_to_dict, save_config
from causal_rcm.errors import TrainingStopped, UserError
from causal_rcm.train.checkpoint import load_sharded, read_meta, rng_state, save_sharded, set_rng_state
from causal_rcm.train.ema import EMA
from causal_rcm.models.adapters import save_checkpoint
from causal_rcm.models.wan import CausalWanModel
from causal_rcm.train.parallel import DistEnv, StepRandom, all_reduce_mean, apply_fsdp, global_max, init_dist

CHECKPOINT = "checkpoint"  # a folder: DCP shards and meta.pt (train.checkpoint)
LEGACY_CHECKPOINT = "checkpoint.pt"  # one file, written before checkpoints were sharded


class DataSource(Protocol):
    def next_batch(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Recipe:
    """A training objective. Subclasses build models in ``build`` and return losses per group.

    ``trainable()`` maps optimiser groups to modules; the first group is the student, whose EMA
    the trainer keeps and exports. ``losses`` returns ``{group: (loss, metrics)}`` for the groups
    to update this step; each loss is back-propagated into its own group's parameters only.
    A loss of None rejects that group's update (logged as ``skipped/<group>`` and counted
    like a non-finite step towards ``optim.max_bad_steps``).
    """

    name = "recipe"

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    def prepare(cls, config: Config) -> None:
        """Resolve and check ``config`` in place before any process, data or model is set up.

        A recipe raises :class:`UserError` here for settings it cannot run with, so a bad
        config fails at start rather than mid-run.
        """

    def build(self, device: torch.device) -> None:
        raise NotImplementedError

    def trainable(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def frozen(self) -> dict[str, nn.Module]:
        """The frozen models (teachers) the trainer shards like the trained ones under FSDP2."""
        return {}

    def optimizer_options(self, group: str) -> dict:
        """Per-group overrides of AdamW settings (e.g. DMD's beta1 = 0)."""
        return {}

    def losses(self, batch: dict, rnd: StepRandom, step: int) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
        raise NotImplementedError

    def evaluate(self, student: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Metrics of the (EMA) student; may write samples under out_dir. Runs on the main process."""
        return {}

    def export(self, student_state: dict[str, torch.Tensor], path: Path) -> None:
        """Write the final student (EMA weights) as a loadable checkpoint."""
        save_checkpoint(self.config.model, student_state, path, "causal-rcm")


class NonFiniteError(TrainingStopped):
    """Too many consecutive steps with non-finite losses or gradients."""


class Trainer:
    def __init__(self, config: Config, recipe: Recipe, data: DataSource, *, dist: DistEnv | None = None) -> None:
        self.config = config
        self.recipe = recipe
        self.data = data
        self.dist = dist or init_dist(config.train.device)
        self.out_dir = config.out_dir()
        cfg = config.train
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if self.dist.device.type == "cuda" else "fp32")
        if self.precision not in ("bf16", "fp32"):
            raise UserError(f"train.precision must be auto, bf16 or fp32, got {cfg.precision!r}")
        if cfg.batch_size % (self.dist.size * cfg.grad_accum):
            raise UserError(f"train.batch_size={cfg.batch_size} is not divisible by the {self.dist.size} processes times "
                            f"train.grad_accum={cfg.grad_accum}")
        self.local_batch = cfg.batch_size // (self.dist.size * cfg.grad_accum)  # one micro-batch of one process
        self.step = 0
        self.bad_steps = 0
        self.history: list[dict] = []
        self._elapsed_before = 0.0
        self._start = time.perf_counter()
        self._batch: list[dict] | None = None  # the micro-batches in use (data echo serves them train.data_echo steps)
        self._batch_data_state: dict | None = None  # the data position it was drawn from
        self._budget_used = 0.0  # fraction of the run's budget (steps or time guard) used, see _update_budget

    # --------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Build the recipe's models on the device, shard them (FSDP2 where distributed), and make the optimisers and
        EMA. ``fit`` calls it; a caller that drives :meth:`train_step` itself (``causal-rcm bench train``) calls it once."""
        torch.manual_seed(self.config.train.seed)
        self.recipe.build(self.dist.device)
        self.groups = self.recipe.trainable()
        for name, module in self.groups.items():
            if hasattr(module, "activation_checkpointing"):
                module.activation_checkpointing = self.config.train.activation_checkpointing
            if self.config.train.compile:  # torchtitan's order: checkpointing, compile, then fully_shard
                for block in getattr(module, "blocks", []):
                    block.compile()
            self.groups[name] = apply_fsdp(module, self.dist, mixed_precision=self.precision == "bf16")
        for module in self.recipe.frozen().values():  # sharded in place: the recipe keeps calling it
            apply_fsdp(module, self.dist, mixed_precision=self.precision == "bf16")
        optim = self.config.optim
        self.optimizers = {}
        for name, module in self.groups.items():
            options = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)
            options.update(self.recipe.optimizer_options(name))
            self.optimizers[name] = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], **options)
        self.student_group = next(iter(self.groups))
        self.ema = EMA(self.groups[self.student_group], optim.ema_decay)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ----------------------------------------------------------- checkpoint
    def _tensors(self) -> dict:
        """What the checkpoint holds as DCP tensors: models, optimisers and EMA, sharded as they are trained."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {
            "models": {n: get_model_state_dict(m) for n, m in self.groups.items()},
            "optimizers": {n: get_optimizer_state_dict(self.groups[n], o) for n, o in self.optimizers.items()},
            "ema": self.ema.shadow,
        }

    def _meta(self) -> dict:
        return {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "config": config_to_dict(self.config),
            "data": self._data_state(),
            "rng": rng_state(),
            "history": self.history,
            "train_seconds": self.elapsed(),
            "processes": self.dist.size,
        }

    def _data_state(self) -> dict:
        """The data position to resume from: mid-echo, that of the batch in use, so it is drawn again."""
        if self._batch is not None and self.step % self.config.train.data_echo:
            return self._batch_data_state
        return self.data.state_dict()

    def _next_batch(self) -> list[dict]:
        """``train.grad_accum`` new micro-batches every ``train.data_echo`` steps (and after a resume), else those in use."""
        if self._batch is None or self.step % self.config.train.data_echo == 0:
            self._batch_data_state = self.data.state_dict()
            self._batch = [self.data.next_batch() for _ in range(self.config.train.grad_accum)]
        return self._batch

    def save_checkpoint(self) -> None:
        """Every process writes its shards (a collective), the main one the rest (:mod:`causal_rcm.train.checkpoint`)."""
        save_sharded(self.out_dir / CHECKPOINT, self._tensors(), self._meta(), self.dist)

    def _resume(self) -> bool:
        path = self.out_dir / CHECKPOINT
        meta = read_meta(path)
        if meta is None:
            if (self.out_dir / LEGACY_CHECKPOINT).exists():
                raise UserError(f"{self.out_dir / LEGACY_CHECKPOINT} was written by an older version (one file, not sharded): "
                                "resume it with that version, or start over with --restart")
            return False
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        saved, current = dict(meta["config"]), config_to_dict(self.config)
        for cfg in (saved, current):  # a longer run, a new log cadence or another accumulation may resume
            for key in ("steps", "max_seconds", "log_every", "ckpt_every", "eval_every", "progress", "grad_accum"):
                cfg["train"].pop(key, None)
        if saved != current:
            raise UserError(f"{self.out_dir} holds a run with a different config; use another train.out_dir or --restart")
        tensors = self._tensors()
        load_sharded(path, tensors, self.dist)
        for name, module in self.groups.items():
            set_model_state_dict(module, tensors["models"][name])
            set_optimizer_state_dict(module, self.optimizers[name], tensors["optimizers"][name])
        self.data.load_state_dict(meta["data"])
        set_rng_state(meta["rng"])
        self.step, self.bad_steps, self.history = meta["step"], meta["bad_steps"], meta["history"]
        self._elapsed_before = meta.get("train_seconds", 0.0)
        if self.dist.is_main:  # drop log lines written after the checkpoint: they will be redone
            log = self.out_dir / "metrics.jsonl"
            if log.exists():
                kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
                log.write_text("".join(line + "\n" for line in kept))
        return True

    def elapsed(self) -> float:
        """Training wall-clock seconds, over every resumed segment."""
        return self._elapsed_before + time.perf_counter() - self._start

    def _update_budget(self) -> bool:
        """Record the fraction of the run's budget used; return whether the time guard is reached.

        The budget is ``train.steps`` or ``train.max_seconds``, whichever is used up further; the
        elapsed time is the largest over the processes, so every process takes the same decisions
        and the same learning rate.
        """
        cfg = self.config.train
        used = self.step / max(1, cfg.steps)
        late = False
        if cfg.max_seconds > 0:
            elapsed = global_max(self.elapsed(), self.dist)
            late = elapsed >= cfg.max_seconds
            used = max(used, elapsed / cfg.max_seconds)
        self._budget_used = min(1.0, used)
        return late

    # ------------------------------------------------------------------ loop
    def _lr(self) -> float:
        """Linear warm-up, then constant or cosine to ``lr * final_lr_ratio`` over the budget (Loshchilov & Hutter 2017)."""
        optim = self.config.optim
        lr = optim.lr * min(1.0, (self.step + 1) / max(1, optim.warmup_steps))
        if optim.schedule == "cosine":
            lr *= optim.final_lr_ratio + (1 - optim.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * self._budget_used))
        return lr

    def train_step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimiser step per group over ``train.grad_accum`` micro-batches: each loss is back-propagated scaled by
        1 / A (gradients of the mean over the global batch), FSDP2 reduces gradients at the last micro-batch only."""
        A = len(micro_batches)
        lr = self._lr()
        logged: dict[str, float] = {"lr": lr}
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        losses: dict[str, list[torch.Tensor]] = {}
        metrics: dict[str, list[float]] = {}
        dropped: dict[str, str] = {}  # group -> "skipped" (rejected by the recipe) or "nonfinite"
        for m, batch in enumerate(micro_batches):
            # Micro-batch m of step k draws as step k A + m: with A = 1 the noise of every earlier run.
            rnd = StepRandom(self.config.train.seed, self.step * A + m, self.dist)
            with self._autocast():
                step_losses = self.recipe.losses(batch, rnd, self.step)
            for group, (loss, group_metrics) in step_losses.items():
                for k, v in group_metrics.items():
                    metrics.setdefault(f"{group}/{k}", []).append(float(v))
                if group in dropped:
                    continue
                if loss is None:  # the recipe rejected this update (e.g. a diverged critic); its metrics say why
                    dropped[group] = "skipped"
                    continue
                finite = torch.isfinite(loss.detach()).float()
                if all_reduce_mean(finite, self.dist).item() < 1.0:
                    dropped[group] = "nonfinite"
                    continue
                module = self.groups[group]
                if hasattr(module, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once, after the last
                    module.set_requires_gradient_sync(m == A - 1)
                # A plain backward: under FSDP2 the graph holds all-gathered copies of the sharded
                # parameters, so `inputs=params` would miss them. No recipe's loss reaches another
                # group's parameters (their models run without gradient there).
                (loss / A).backward()
                losses.setdefault(group, []).append(loss.detach().float())
        logged.update({k: sum(v) / len(v) for k, v in metrics.items()})
        for group in dict.fromkeys([*losses, *dropped]):
            module, optimizer = self.groups[group], self.optimizers[group]
            if group in dropped:
                optimizer.zero_grad(set_to_none=True)
                logged[f"{dropped[group]}/{group}"] = 1.0
                continue
            params = [p for p in module.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                logged[f"nonfinite/{group}"] = 1.0
                continue
            for g in optimizer.param_groups:
                g["lr"] = lr * self.recipe.optimizer_options(group).get("lr_scale", 1.0)
            optimizer.step()
            if group == self.student_group:
                self.ema.update(module, self.step)
            logged[f"loss/{group}"] = all_reduce_mean(torch.stack(losses[group]).mean(), self.dist).item()
            logged[f"grad_norm/{group}"] = float(grad_norm)
        return logged

    def evaluate(self) -> dict[str, float]:
        if self.config.train.eval_videos <= 0:
            return {}
        ema_state = self.ema.full_state_dict()  # collective
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            student = self._eval_model(ema_state)
            metrics = self.recipe.evaluate(student, self.step, self.out_dir)
        if self.dist.distributed:
            torch.distributed.barrier()
        return metrics

    def _eval_model(self, ema_state: dict) -> nn.Module:
        model = CausalWanModel(self.config.model, attn_backend=self.config.attn_backend)
        model.load_state_dict(ema_state)
        return model.to(self.dist.device).eval()

    def fit(self, restart: bool = False) -> dict:
        """Train to ``train.steps``; resumes from ``out_dir/checkpoint`` unless ``restart``."""
        cfg = self.config.train
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if restart:
                shutil.rmtree(self.out_dir / CHECKPOINT, ignore_errors=True)
                (self.out_dir / LEGACY_CHECKPOINT).unlink(missing_ok=True)
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
            save_config(self.config, self.out_dir / "config.json")
        if self.dist.distributed:
            torch.distributed.barrier()
        self.setup()
        resumed = self._resume()
        writer = _tensorboard(self.out_dir / "tb") if self.dist.is_main else None
        log_file = open(self.out_dir / "metrics.jsonl", "a") if self.dist.is_main else None
        bar = None
        if self.dist.is_main and cfg.progress:
            from tqdm.auto import tqdm

            guard = f" (time guard {cfg.max_seconds:g} s)" if cfg.max_seconds > 0 else ""
            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.config.recipe + guard, unit="step", dynamic_ncols=True)
            if resumed:
                bar.write(f"resumed from {self.out_dir / CHECKPOINT} at step {self.step}")
        self._start, window = time.perf_counter(), []
        try:
            if cfg.eval_at_start and self.step == 0 and cfg.eval_videos:  # the starting point of a curve
                self._log_eval(self.evaluate(), log_file, writer)
            out_of_time = self._update_budget() and resumed  # a fresh run makes at least one step
            stop = self.step >= cfg.steps or out_of_time
            while not stop:
                logged = self.train_step(self._next_batch())
                bad = any(k.startswith(("nonfinite/", "skipped/")) for k in logged)
                self.bad_steps = self.bad_steps + 1 if bad else 0
                self.step += 1
                out_of_time = self._update_budget()
                stop = self.step >= cfg.steps or out_of_time
                window.append(logged)
                if bar is not None:
                    bar.update(1)
                    losses = {k.split("/", 1)[1]: v for k, v in logged.items() if k.startswith("loss/")}
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
                if self.step % cfg.log_every == 0 or stop:
                    record = _mean_records(window)
                    record.update(step=self.step, time=self.elapsed())
                    window = []
                    self.history.append(record)
                    if log_file is not None:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                        if writer is not None:
                            for k, v in record.items():
                                if k != "step":
                                    writer.add_scalar(k, v, self.step)
                if self.bad_steps >= self.config.optim.max_bad_steps:
                    raise NonFiniteError(
                        f"{self.bad_steps} consecutive steps with non-finite or rejected losses or gradients up to step {self.step}; "
                        f"the last checkpoint is kept in {self.out_dir}"
                    )
                if cfg.eval_every and self.step % cfg.eval_every == 0 and not stop:
                    self._log_eval(self.evaluate(), log_file, writer)
                if self.step % cfg.ckpt_every == 0 or stop:
                    self.save_checkpoint()
            if out_of_time and bar is not None:
                bar.write(f"time guard: stopped at step {self.step} of {cfg.steps} after {self.elapsed():.0f} s (train.max_seconds={cfg.max_seconds:g})")
            train_seconds = self.elapsed()  # the final evaluation and export are not training
            final_eval = self.evaluate()
            self._log_eval(final_eval, log_file, writer)
            ema_state = self.ema.full_state_dict()
            summary = {
                "recipe": self.config.recipe,
                "steps": self.step,
                "processes": self.dist.size,
                "device": str(self.dist.device),
                "precision": self.precision,
                "train_seconds": train_seconds,
                "time_guard": out_of_time,
                "final": self.history[-1] if self.history else {},
                "eval": final_eval,
            }
            if self.dist.is_main:
                dtype = getattr(torch, cfg.export_dtype)
                self.recipe.export({k: v.to(dtype) for k, v in ema_state.items()}, self.out_dir / "model")
                (self.out_dir / "train_report.json").write_text(json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
            if writer is not None:
                writer.close()

    def _log_eval(self, metrics: dict, log_file, writer) -> None:
        if not metrics or log_file is None:
            return
        record = {"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}}
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, self.step)


def _mean_records(records: list[dict]) -> dict:
    keys = {k for r in records for k in r}
    out = {}
    for key in sorted(keys):
        values = [r[key] for r in records if key in r and math.isfinite(r[key])]
        if key.startswith(("nonfinite/", "skipped/")):
            out[key] = float(sum(r.get(key, 0.0) for r in records))
        elif values:
            out[key] = sum(values) / len(values)
    return out


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; stay usable if a user removed it
        return None
    return SummaryWriter(str(path))

