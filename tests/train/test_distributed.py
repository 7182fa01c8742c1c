"""Training at scale on the CPU: a DCP checkpoint sharded by 2 FSDP2 processes (gloo, under torchrun) resumes on 1
process with the same weights and the same next loss; gradient accumulation gives the whole batch's step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from causal_rcm.config import Config
from causal_rcm.runs import load_config, train
from causal_rcm.train.trainer import Recipe, Trainer
from tests.checkpoints import read_training_checkpoint
from tests.conftest import FAST


def _losses(out: Path) -> list[float]:
    return [r["loss/student"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss/student" in r]


def _close(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _close(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_checkpoint_sharded_by_two_processes_resumes_on_one(tmp_path):
    args = [*FAST, "train.eval_videos=0", "train.ckpt_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config("teacher", None, [*args, "train.steps=2", f"train.out_dir={one}"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "causal_rcm.cli"]
    result = subprocess.run([*torchrun, "train", "teacher", *args, "train.steps=2", f"train.out_dir={two}"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (two / "checkpoint").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard each
    a, b = read_training_checkpoint(one), read_training_checkpoint(two)
    assert (a["processes"], b["processes"], a["step"], b["step"]) == (1, 2, 2, 2)
    _close(a["models"], b["models"])  # the same weights, gathered from 2 shards
    _close(a["ema"], b["ema"])
    _close(a["optimizers"]["student"]["state"], b["optimizers"]["student"]["state"])
    # One process resumes each: the same next loss, the same weights after it
    for out in (one, two):
        train(load_config("teacher", None, [*args, "train.steps=3", f"train.out_dir={out}"]))
    assert len(_losses(one)) == len(_losses(two)) == 3
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=1e-4, atol=1e-7)
    a, b = read_training_checkpoint(one), read_training_checkpoint(two)
    assert (a["step"], b["step"], b["processes"]) == (3, 3, 1)
    _close(a["models"], b["models"])


class LinearRegression(Recipe):
    """Mean squared error of a linear model: its gradient over a batch is the mean of its samples' gradients."""

    name = "linear"

    def build(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.student = nn.Linear(3, 1).to(device)

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def losses(self, batch, rnd, step):
        return {"student": ((self.student(batch["x"]) - batch["y"]).square().mean(), {})}

    def export(self, student_state, path) -> None:
        pass


class Rows:
    """Row i of a fixed regression problem, ``local_batch`` rows a call."""

    def __init__(self, local_batch: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
        self.local_batch, self.position = local_batch, 0

    def next_batch(self) -> dict:
        rows = slice(self.position, self.position + self.local_batch)
        self.position += self.local_batch
        return {"x": self.x[rows], "y": self.y[rows]}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def test_gradient_accumulation_takes_the_step_of_the_whole_batch(tmp_path):
    weights = {}
    for accum in (1, 2, 4):
        config = Config(recipe="linear")
        config.train.steps, config.train.batch_size, config.train.grad_accum = 3, 8, accum
        config.train.eval_videos, config.train.progress, config.train.out_dir = 0, False, str(tmp_path / f"a{accum}")
        config.optim.warmup_steps = 0
        trainer = Trainer(config, LinearRegression(config), Rows(8 // accum))
        report = trainer.fit()
        assert report["steps"] == 3 and trainer.data.position == 3 * 8
        weights[accum] = torch.cat([p.detach().flatten() for p in trainer.groups["student"].parameters()])
        losses = _losses(tmp_path / f"a{accum}")
        if accum == 1:
            reference = losses
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weights[2], weights[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weights[4], weights[1], rtol=1e-6, atol=1e-7)
