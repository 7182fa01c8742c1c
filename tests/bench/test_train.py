"""`causal-rcm bench train` at toy size on the CPU: the trainer's step of every recipe, with activation checkpointing
on and off, timed and in JSON; a step out of GPU memory is recorded and the rest runs; the sharding it would need."""

from __future__ import annotations

import json
import math

import torch
from click.testing import CliRunner

from causal_rcm.bench import attention
from causal_rcm.bench.train import STEPS, run_train_bench, sharding_hint
from causal_rcm.cli import cli
from causal_rcm.train.trainer import Trainer

TOY = ["--size", "tiny", "--device", "cpu", "--height", "32", "--width", "32", "--frames", "4", "--frames-per-chunk", "2",
       "--repeats", "1"]


def test_bench_train_times_every_recipe_step_with_checkpointing_on_and_off(tmp_path, monkeypatch):
    recomputed = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: recomputed.append(1) or checkpoint(*a, **k))
    result = CliRunner().invoke(cli, ["bench", "train", *TOY, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [path] = tmp_path.glob("train_tiny_cpu_*.json")
    record = json.loads(path.read_text())
    assert record["benchmark"] == "train" and record["device"] == "cpu" and record["torch"] and record["date"]
    assert "triton" in record and record["setup"]["tf_seq_len"] == 2 * 4 * 4 and record["setup"]["jvp_backend"] == "math"
    assert record["setup"]["sf_dmd"]["critic_steps"] == 5 and record["setup"]["batch"] == 1
    assert set(record["results"]) == set(STEPS)
    for name, settings in record["results"].items():
        assert set(settings) == {"checkpointing_on", "checkpointing_off"}
        for entry in settings.values():
            assert entry["status"] == "ok" and "dropped_updates" not in entry, (name, entry)
            assert entry["ms"] > 0 and entry["peak_gib"] > 0 and entry["state_gib"] > 0
    # The right trainer steps: SF-DMD's generator steps are the multiples of dmd.critic_steps, the critic's the others
    assert record["results"]["sf_dmd_generator"]["checkpointing_on"]["steps"] == [5]
    assert record["results"]["sf_dmd_critic"]["checkpointing_on"]["steps"] == [2]
    assert record["results"]["sf_dmd_generator"]["checkpointing_off"]["exit_steps"][0] in (0, 1)
    # Training state: SF-DMD trains two models and keeps a teacher, TF diffusion trains one and keeps none
    state = {name: settings["checkpointing_on"]["state_gib"] for name, settings in record["results"].items()}
    assert state["sf_dmd_generator"] == state["sf_dmd_critic"] > state["tf_scm"] > state["tf_diffusion"]
    assert recomputed  # checkpointing on recomputed blocks (and off, below, none)
    ratio = record["scm_over_diffusion"]
    for setting in ("checkpointing_on", "checkpointing_off"):
        results = record["results"]
        assert ratio[setting] == results["tf_scm"][setting]["ms"] / results["tf_diffusion"][setting]["ms"]
    lines = result.output.splitlines()
    for name in STEPS:
        for setting in ("on", "off"):
            assert sum(f"{name} (checkpointing {setting}):" in line for line in lines) == 1
    assert f"wrote {path}" in result.output


def test_activation_checkpointing_off_recomputes_nothing(monkeypatch):
    recomputed = []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: recomputed.append(1))
    record = run_train_bench("tiny", 32, 32, 4, 2, repeats=1, device_name="cpu", steps=("tf_diffusion",),
                             checkpointing=(False,), log=lambda line: None)
    assert record["results"]["tf_diffusion"]["checkpointing_off"]["status"] == "ok" and not recomputed


def test_a_step_out_of_memory_or_failing_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    train_step = Trainer.train_step

    def short_of_memory(self, batches):
        checkpointing = self.config.train.activation_checkpointing
        if self.recipe.name == "tf-scm" and not checkpointing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.19 GiB")
        if self.recipe.name == "causal-teacher" and not checkpointing:
            raise ValueError("a bug")
        return train_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", short_of_memory)
    writes = []
    monkeypatch.setattr(attention, "write_result", lambda record, *a: writes.append(json.dumps(record)) or tmp_path / "x.json")
    result = CliRunner().invoke(cli, ["bench", "train", *TOY, "--steps", "tf_diffusion,tf_scm"])
    assert result.exit_code == 1 and "1 step(s) failed (tracebacks above): tf_diffusion (checkpointing_off)" in result.output
    record = json.loads(writes[-1])
    results = record["results"]
    oom = results["tf_scm"]["checkpointing_off"]
    assert oom["status"] == "oom" and oom["requested_gib"] == 2.5 and oom["reached_gib"] == oom["peak_gib"] + 2.5
    assert "out of memory" in oom["error"] and oom["state_gib"] > 0
    assert [results[n][s]["status"] for n in ("tf_diffusion", "tf_scm") for s in ("checkpointing_on", "checkpointing_off")] \
        == ["ok", "error", "ok", "oom"]
    assert results["tf_diffusion"]["checkpointing_off"]["error"] == "ValueError: a bug"
    assert set(record["scm_over_diffusion"]) == {"checkpointing_on"}  # no ratio where a step is missing
    assert "tf_scm (checkpointing off): out of memory at" in result.output
    assert "tf_diffusion (checkpointing off): FAILED, ValueError: a bug" in result.output
    assert 'Traceback' in result.output and 'raise ValueError("a bug")' in result.output
    assert len(writes) == 4  # the JSON is rewritten after every step


def test_sharding_hint_counts_the_gpus_fsdp2_would_need():
    # TF-sCM at 1.3B: 34 GiB of state; it failed at 80 GiB on an 80 GiB GPU, so >= 46 GiB of activations, which
    # leave 0.95 * 80 - 46 = 30 GiB a GPU for state: ceil(34 / 30) = 2
    assert sharding_hint(34.0, 80.0, 80.0, True).startswith("FSDP2 over at least 2 GPUs (34.0 GiB of training state")
    # 14B: 300 GiB of state fails at once (no activations yet): ceil(300 / 76) = 4 is the least
    assert sharding_hint(300.0, 80.0, 80.0, True).startswith(f"FSDP2 over at least {math.ceil(300 / 76)} GPUs")
    # 34 GiB of state and >= 86 GiB of activations: no number of GPUs holds those with FSDP2 alone
    hint = sharding_hint(34.0, 120.0, 80.0, False)
    assert "activations alone (>= 86.0 GiB) exceed one 80 GiB GPU" in hint and "train.activation_checkpointing=true" in hint
    assert "context (sequence) parallelism" in sharding_hint(34.0, 120.0, 80.0, True)
    assert "or train.activation_checkpointing=true" in sharding_hint(34.0, 80.0, 80.0, False)


def test_bad_steps_are_refused_in_one_line():
    result = CliRunner().invoke(cli, ["bench", "train", *TOY, "--steps", "tf_scm,warp"])
    assert result.exit_code == 2 and "choose one or more of tf_diffusion" in result.output
