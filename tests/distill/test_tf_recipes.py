"""The teacher-forcing consistency recipes end to end at toy size: train, export, sample; bad configs fail at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from causal_rcm.runs import load_config
from causal_rcm.models.wan import CausalWanModel
from causal_rcm.runs import train
from causal_rcm.models.adapters import load_model

from tests.conftest import FAST

RECIPES = {"tf-dcm": "consistency", "tf-scm": "consistency", "tf-meanflow": "meanflow"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "causal_rcm.cli", *args], env=_env(), capture_output=True, text=True, **kw)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_and_exports_a_few_step_student(recipe, teachers, tmp_path):
    out = tmp_path / recipe
    steps = (1, 2, 4) if recipe == "tf-scm" else (1,)  # evaluation dominates the cost: all three once
    config = load_config(recipe, None, FAST + [
        "train.steps=3", f"train.out_dir={out}", f"train.teacher={teachers['causal-teacher']}",
        f"objective.student_steps={','.join(map(str, steps))}", "train.eval_stream_seconds=2",
    ])
    summary = train(config, restart=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/student"] for r in records if "loss/student" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for k in steps:
        assert 0.0 <= summary["eval"][f"{k}step/caption_adherence"] <= 1.0
    assert "long_drift" in summary["eval"]  # the export default (2 steps) is also rolled out 4x long
    assert summary["eval"]["stream_seconds"] == 2.0 and "1step/stream_seconds" not in summary["eval"]  # ... and streamed
    meta = json.loads((out / "model" / "config.json").read_text())
    sampler = meta["pipeline"]["sampler"]
    assert sampler["solver"] == RECIPES[recipe] and sampler["steps"] == 2 and sampler["guidance"] == 1.0
    assert meta["pipeline"]["causal"] is True
    assert meta["model"]["interval_embedding"] is (recipe == "tf-meanflow")


def test_a_meanflow_student_generates_from_the_cli(teachers, tmp_path):
    out = tmp_path / "mf"
    config = load_config("tf-meanflow", None, FAST + ["train.steps=1", f"train.out_dir={out}", f"train.teacher={teachers['causal-teacher']}", "objective.student_steps=1"])
    train(config, restart=True)
    video = tmp_path / "v.gif"
    result = _cli("generate", "-c", str(out / "model"), "-p", "a red circle moves right", "--steps", "2", "--seconds", "1", "-o", str(video))
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 0
    chosen = _cli("generate", "-c", str(out / "model"), "-p", "a red circle", "--times", "0.8,0.4", "-o", str(tmp_path / "t.gif"))
    assert chosen.returncode == 0, chosen.stderr
    bad = _cli("generate", "-c", str(out / "model"), "-p", "a red circle", "--times", "0.4,0.8", "-o", str(tmp_path / "b.gif"))
    assert bad.returncode == 2 and "must decrease strictly" in bad.stderr


def test_chosen_intermediate_times_are_the_grid_the_student_sees(teachers, tmp_path):
    from causal_rcm.pipeline import StreamingPipeline

    out = tmp_path / "scm"
    train(load_config("tf-scm", None, FAST + ["train.steps=1", f"train.out_dir={out}", f"train.teacher={teachers['causal-teacher']}", "objective.student_steps=1", "train.eval_drift=0"]), restart=True)
    pipe = StreamingPipeline.from_pretrained(out / "model")
    seen = []
    original = pipe.model.forward

    def spy(x, t, context, **kw):
        if not kw.get("update_cache"):
            seen.append(round(float(t[0, 0]) / 1000, 4))
        return original(x, t, context, **kw)

    pipe.model.forward = spy
    pipe.generate("a red circle", num_frames=2, times=[0.6])
    assert seen == [1.0, 0.6]  # one chunk of 2 frames, two steps: 1 -> 0.6 -> 0


def test_a_meanflow_student_starts_as_its_teacher(teachers):
    teacher = load_model(teachers["causal-teacher"])
    with torch.no_grad():  # a trained-looking head, so the outputs are not all zero
        teacher.head.head.weight.normal_(0, 0.1)
    import dataclasses

    student = CausalWanModel(dataclasses.replace(teacher.config, interval_embedding=True))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("interval_embedding.") for k in missing)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, teacher.config.in_dim, 2, 8, 8, generator=g)
    t = torch.rand(2, 2, generator=g) * 1000
    context = torch.randn(2, 4, teacher.config.text_dim, generator=g)
    out = teacher(x, t, context)
    assert out.abs().max() > 0
    torch.testing.assert_close(student(x, t, context, interval=t / 2), out)
    with torch.no_grad():
        student.interval_embedding[-1].weight.normal_(0, 0.1)
    assert not torch.allclose(student(x, t, context, interval=t / 2), out)


def test_non_finite_samples_are_dropped_and_counted(teachers, tmp_path, monkeypatch):
    from causal_rcm.distill.tf_scm import TFSCMRecipe

    original = TFSCMRecipe.teacher_velocity

    def broken(self, *args, **kwargs):
        v = original(self, *args, **kwargs).clone()
        v[0] = float("nan")
        return v

    monkeypatch.setattr(TFSCMRecipe, "teacher_velocity", broken)
    out = tmp_path / "nan"
    config = load_config("tf-scm", None, FAST + ["train.steps=2", f"train.out_dir={out}", f"train.teacher={teachers['causal-teacher']}", "objective.student_steps=1", "train.eval_videos=1"])
    train(config, restart=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss/student" in line]
    assert all(r["student/nonfinite_samples"] == 1.0 for r in records)
    assert all(torch.isfinite(torch.tensor(r["loss/student"])) for r in records)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["objective.jvp_backend=sdpa"], "tf-scm needs a JVP through attention, which objective.jvp_backend='sdpa' cannot do"),
        (["objective.jvp_backend=flex"], "cannot do"),
        (["objective.jvp_backend=triton", "train.device=cpu"], "jvp_backend=triton needs a CUDA device"),
        (["train.teacher="], "tf-scm needs train.teacher=PATH: the causal teacher"),
        (["@teacher"], "is a bidirectional model"),
        (["data.frames_per_chunk=1"], "the teacher was trained with 2 frames per chunk"),
        (["train.eval_stream_seconds=-5"], "train.eval_stream_seconds must be in [0, 3600], got -5.0"),
    ],
)
def test_config_errors_fail_at_start_with_one_line(extra, message, teachers, tmp_path):
    out = tmp_path / "run"
    teacher = teachers["causal-teacher"]
    if extra == ["@teacher"]:
        teacher, extra = teachers["teacher"], []
    result = _cli("train", "tf-scm", *FAST, f"train.out_dir={out}", f"train.teacher={teacher}", *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "checkpoint").exists()


def test_eval_scores_a_causal_checkpoint_with_drift_from_the_cli(teachers, tmp_path):
    out = tmp_path / "metrics.json"
    result = _cli("eval", "-c", str(teachers["causal-teacher"]), "--steps", "2", "-n", "2", "--drift", "2", "--json", str(out),
                  "--stream-seconds", "3")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["caption_adherence"] <= 1 and "long_drift" in metrics
    assert metrics["stream_seconds"] == 3.0 and 0 <= metrics["stream_caption_adherence"] <= 1  # 6 clips of 4 frames at 8 fps
    assert "caption_adherence" in result.stdout
    for checkpoint, seconds, message in ((teachers["teacher"], "3", "needs a causal checkpoint"),
                                         (teachers["causal-teacher"], "-1", "'--stream-seconds': -1.0 is not in the range")):
        result = _cli("eval", "-c", str(checkpoint), "-n", "1", "--stream-seconds", seconds)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
