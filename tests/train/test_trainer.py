import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from causal_rcm.runs import load_config
from causal_rcm.errors import UserError
from causal_rcm.models.adapters import load_model
from tests.checkpoints import read_training_checkpoint

FAST = [
    "model.dim=32", "model.num_heads=2", "model.num_layers=2", "model.ffn_dim=64",
    "train.batch_size=4", "train.eval_videos=2", "train.eval_steps=2", "train.log_every=1",
    "train.progress=false", "optim.warmup_steps=2",
]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "causal_rcm.cli", *args]


def _losses(out_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/student"] for r in records if "loss/student" in r]


@pytest.mark.parametrize("echo", [1, 3])
def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, echo):
    # With data echo 3 the checkpoints at steps 4, 8, 12 fall mid-echo: the batch in use is drawn again.
    args = ["train", "teacher", *FAST, "train.steps=16", "train.ckpt_every=4", f"train.data_echo={echo}"]
    full = tmp_path / "full"
    subprocess.run(_cli(*args, f"train.out_dir={full}"), check=True, env=_env(), capture_output=True)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_cli(*args, f"train.out_dir={broken}"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "checkpoint").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_training_checkpoint(broken)["step"]
    assert 4 <= step < 16
    resumed = subprocess.run(_cli(*args, f"train.out_dir={broken}"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(full / "model" / "model.safetensors"), load_file(broken / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(broken)[-1] == _losses(full)[-1]


def test_data_echo_draws_one_batch_per_echo_cycle(tmp_path):
    out = tmp_path / "run"
    args = ["train", "teacher", *FAST, "train.steps=6", "train.ckpt_every=100", "train.eval_videos=0", "train.data_echo=2"]
    subprocess.run(_cli(*args, f"train.out_dir={out}"), check=True, env=_env(), capture_output=True)
    state = read_training_checkpoint(out)
    assert state["data"]["samples_seen"] == 3 * 4  # batches drawn at steps 0, 2, 4 (batch size 4)
    losses = _losses(out)
    assert len(losses) == 6 and len(set(losses)) == 6  # fresh noise and times on every echo


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    args = ["train", "teacher", *FAST, "train.steps=4", "train.ckpt_every=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(*args, f"train.out_dir={one}"), check=True, env=_env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "causal_rcm.cli"]
    result = subprocess.run(torchrun + args + [f"train.out_dir={two}"], env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((two / "train_report.json").read_text())
    assert report["processes"] == 2
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)), rtol=1e-4, atol=1e-6)
    a, b = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)


def test_non_finite_losses_are_skipped_and_stop_the_run(tmp_path, monkeypatch):
    from causal_rcm import runs as train_pkg
    from causal_rcm.distill.flow import TeacherRecipe

    original = TeacherRecipe.losses

    def poisoned(self, batch, rnd, step):
        out = original(self, batch, rnd, step)
        loss, metrics = out["student"]
        return {"student": (loss * float("nan") if step >= 2 else loss, metrics)}

    monkeypatch.setattr(TeacherRecipe, "losses", poisoned)
    config = load_config("teacher", None, FAST + ["train.steps=10", "optim.max_bad_steps=3", f"train.out_dir={tmp_path}"])
    from causal_rcm.train.trainer import NonFiniteError

    with pytest.raises(NonFiniteError, match="3 consecutive steps with non-finite or rejected losses or gradients up to step 5"):
        train_pkg.train(config)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite/student", 0) for r in records] == [0, 0, 1, 1, 1]
    # the parameters never saw a NaN
    state = read_training_checkpoint(tmp_path) if (tmp_path / "checkpoint").exists() else None
    assert state is None or all(torch.isfinite(v).all() for v in state["models"]["student"].values())


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "nope"], "unknown recipe 'nope'"),
        (["train", "teacher", "train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train", "teacher", "train.steps=abc"], "train.steps: cannot read 'abc' as int"),
        (["train", "teacher", "steps"], "not of the form section.key=value"),
        (["eval", "--checkpoint", "/nonexistent/ckpt"], "checkpoint /nonexistent/ckpt does not exist"),
        (["train", "teacher", "data.codec_frames=2", "data.num_frames=4"], "set model.in_dim=96 model.out_dim=96"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message):
    result = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_unwritable_output_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        result = subprocess.run(_cli("train", "teacher", *FAST, f"train.out_dir={locked / 'run'}"), env=_env(), capture_output=True, text=True)
        assert result.returncode == 2 and "is not writable" in result.stderr
    finally:
        locked.chmod(0o700)


def test_config_overrides_and_print(tmp_path):
    config = load_config("causal-teacher", None, ["optim.lr=2e-4", "data.agent=true", "model.num_layers=3"])
    assert config.optim.lr == 2e-4 and config.data.agent is True and config.model.num_layers == 3
    with pytest.raises(UserError, match="invalid model config"):
        load_config("teacher", None, ["model.num_heads=5"])
    resolved = tmp_path / "c.json"
    result = subprocess.run(_cli("train", "teacher", "train.steps=7", "--print-config"), env=_env(), capture_output=True, text=True)
    resolved.write_text(result.stdout)
    again = load_config("teacher", resolved, [])
    assert again.train.steps == 7


def test_time_guard_stops_checkpoints_and_exports(tmp_path):
    from causal_rcm import runs as train_pkg

    config = load_config("teacher", None, FAST + ["train.steps=50", "train.max_seconds=1e-6", "train.ckpt_every=100",
                                                   "train.eval_videos=0", f"train.out_dir={tmp_path}"])
    summary = train_pkg.train(config)
    assert summary["time_guard"] is True and summary["steps"] == 1 and summary["eval"] == {}
    assert read_training_checkpoint(tmp_path)["step"] == 1  # saved although not a ckpt_every step
    assert (tmp_path / "model" / "model.safetensors").is_file() and len(_losses(tmp_path)) == 1
    again = train_pkg.train(load_config("teacher", None, FAST + ["train.steps=50", "train.max_seconds=1e-6", "train.ckpt_every=100",
                                                                  "train.eval_videos=0", f"train.out_dir={tmp_path}"]))
    assert again["steps"] == 1  # resumed past its guard: no step more


def test_export_dtype_halves_the_shipped_weights_and_loads_as_float32(tmp_path):
    from causal_rcm import runs as train_pkg

    common = FAST + ["train.steps=2", "train.eval_videos=0"]
    train_pkg.train(load_config("teacher", None, common + [f"train.out_dir={tmp_path / 'a'}"]))
    train_pkg.train(load_config("teacher", None, common + ["train.export_dtype=float16", f"train.out_dir={tmp_path / 'b'}"]))
    full, half = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b"))
    assert {v.dtype for v in half.values()} == {torch.float16}
    for name, value in full.items():
        torch.testing.assert_close(half[name].float(), value, atol=1e-3, rtol=1e-3)
    model = load_model(tmp_path / "b" / "model", dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="train.export_dtype must be one of"):
        load_config("teacher", None, ["train.export_dtype=int8"])


def test_cosine_schedule_anneals_over_steps_or_the_time_guard(tmp_path):
    from causal_rcm import runs as train_pkg

    # the logged lr is the mean of the rates used by the steps since the last line (one step a line here)
    common = FAST + ["train.eval_videos=0", "optim.lr=1e-3", "optim.schedule=cosine", "optim.final_lr_ratio=0.1", "optim.warmup_steps=1"]
    train_pkg.train(load_config("teacher", None, common + ["train.steps=12", f"train.out_dir={tmp_path / 'steps'}"]))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "steps" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(1e-3) and len(lrs) == 12
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert 1e-4 < lrs[-1] < 1.2e-4  # the last step starts with 11/12 of the budget used: near lr * final_lr_ratio
    # a time guard used up after the first step: annealed at once although train.steps is far off
    train_pkg.train(load_config("teacher", None, common + ["train.steps=1000", "train.max_seconds=1e-6", f"train.out_dir={tmp_path / 'time'}"]))
    (record,) = [json.loads(line) for line in (tmp_path / "time" / "metrics.jsonl").read_text().splitlines()]
    assert record["lr"] == pytest.approx(1e-4)
    with pytest.raises(UserError, match="optim.schedule must be one of"):
        load_config("teacher", None, ["optim.schedule=linear"])


def test_teacher_on_a_packed_codec_trains_and_is_scored(tmp_path):
    out = tmp_path / "packed"
    args = ["train", "teacher", *FAST, "train.steps=2", "train.ckpt_every=100", "data.codec_frames=2", "data.num_frames=4",
            "model.in_dim=96", "model.out_dim=96", f"train.out_dir={out}"]
    subprocess.run(_cli(*args), check=True, env=_env(), capture_output=True)
    scored = subprocess.run(_cli("eval", "--checkpoint", str(out / "model"), "--videos", "2", "--json", str(tmp_path / "m.json")),
                            env=_env(), capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    assert "caption_adherence" in json.loads((tmp_path / "m.json").read_text())
    from causal_rcm import StreamingPipeline

    assert StreamingPipeline.from_pretrained(out / "model").generate("a red circle moves left").shape == (8, 32, 32, 3)
