"""Self-forcing rollout and DMD: where the gradient goes, flat memory, and the safety checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from causal_rcm.runs import load_config
from causal_rcm.diffusion.samplers import causal_sample
from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.distill.dmd import dmd_generator_loss
from causal_rcm.distill.self_forcing import self_forcing_rollout
from causal_rcm.runs import train
from tests.conftest import random_model, small_config
from tests.conftest import FAST as BASE


class Recorder(torch.nn.Module):
    """Wraps a model and records, per call: grad mode, whether it updates the cache, input requires_grad."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def new_kv_cache(self, **kw):
        return self.model.new_kv_cache(**kw)

    def forward(self, x, t, context, **kw):
        self.calls.append({"grad": torch.is_grad_enabled(), "refresh": kw.get("update_cache", False), "x_grad": x.requires_grad})
        return self.model(x, t, context, **kw)


def _inputs(F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, F, 4, 6, generator=g), torch.randn(2, 8, 24, generator=g)


@pytest.mark.parametrize("solver", ["consistency", "meanflow"])
@pytest.mark.parametrize("exit_step", [0, 2])
def test_gradient_reaches_only_each_chunks_exit_step_and_no_refresh(exit_step, solver):
    model = Recorder(random_model(small_config(interval_embedding=solver == "meanflow"), backend="math"))
    noise, context = _inputs()
    grid = flow_time_grid(3, 3.0)
    video = self_forcing_rollout(model, noise, context, grid=grid, exit_step=exit_step, frames_per_chunk=2, solver=solver)
    chunks = 2
    per_chunk = exit_step + 1
    denoise = [c for c in model.calls if not c["refresh"]]
    refresh = [c for c in model.calls if c["refresh"]]
    assert len(denoise) == chunks * per_chunk and len(refresh) == chunks - 1
    for chunk in range(chunks):
        steps = denoise[chunk * per_chunk : (chunk + 1) * per_chunk]
        assert [c["grad"] for c in steps] == [False] * exit_step + [True]
    assert all(not c["grad"] and not c["x_grad"] for c in refresh)  # the refresh carries no gradient
    assert video.requires_grad

    # and through the exit steps the gradient reaches the parameters
    video.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}
    assert grads and any(g.abs().max() > 0 for g in grads.values())


def test_chunks_before_the_scored_window_run_without_gradient_and_are_not_kept():
    model = Recorder(random_model(small_config(), backend="math"))
    noise, context = _inputs(F=6)
    video = self_forcing_rollout(model, noise, context, grid=flow_time_grid(2, 3.0), exit_step=1, frames_per_chunk=2, score_from_chunk=2)
    denoise = [c["grad"] for c in model.calls if not c["refresh"]]
    assert denoise == [False, False, False, False, False, True]  # 3 chunks x 2 steps: only the last chunk's exit step
    assert video.shape[2] == 2 and video.requires_grad  # the scored chunk alone
    video.square().sum().backward()
    assert all(c["grad"] is False for c in model.calls if c["refresh"])
    with pytest.raises(ValueError, match="score_from_chunk must be in"):
        self_forcing_rollout(model, noise, context, grid=flow_time_grid(2, 3.0), exit_step=1, frames_per_chunk=2, score_from_chunk=3)


def _saved_for_backward(fn) -> tuple[int, int]:
    """(tensors, bytes) autograd saves for backward while ``fn`` runs."""
    count = total = 0

    def pack(t):
        nonlocal count, total
        count, total = count + 1, total + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count, total


def test_long_rollout_memory_does_not_grow_with_its_length():
    """N = 2 against N = 8 times the training length (4 frames), with the stream's sink and window: autograd saves
    the same tensors, those of the scored window; grading the whole rollout would save about N times as much."""
    model = random_model(small_config(), backend="math")
    F, context = 4, _inputs()[1]

    def rollout(N: int, scored: bool = True):
        noise = torch.randn(2, 4, N * F, 4, 6, generator=torch.Generator().manual_seed(N))
        video = self_forcing_rollout(
            model, noise, context, grid=flow_time_grid(2, 3.0), exit_step=1, frames_per_chunk=2, window_frames=4,
            sink_frames=2, score_from_chunk=(N * F - F) // 2 if scored else 0, complement=model.head_complement(),
        )
        assert video.shape[2] == (F if scored else N * F) and video.requires_grad

    short, long = _saved_for_backward(lambda: rollout(2)), _saved_for_backward(lambda: rollout(8))
    assert short[1] > 0 and long == short
    whole = _saved_for_backward(lambda: rollout(8, scored=False))
    assert whole[1] > 6 * short[1]


def test_a_long_rollout_with_a_sink_makes_the_frames_of_the_pipelines_stream(tmp_path):
    """The rollout at its last exit step, with the checkpoint's sink and window and the stream's noise, is the stream:
    training sees what a stream of the exported checkpoint shows, far past the window (16 frames, window 4)."""
    from causal_rcm import StreamingPipeline
    from tests.checkpoints import make_checkpoint

    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "ckpt", solver="consistency", steps=2, sink_frames=2, window_frames=4))
    prompt = "a red circle moves left"
    frames = np.stack([f.image for f in pipe.stream(prompt, seed=3, num_frames=16)])
    g = torch.Generator().manual_seed(3)  # the stream draws each chunk's noise, then its fresh noise between steps
    drawn = [torch.randn((1, *pipe.latent_shape(2)), generator=g) for _ in range(2 * 8)]
    fresh = iter(drawn[1::2])
    with torch.no_grad():
        rolled = self_forcing_rollout(
            pipe.model, torch.cat(drawn[0::2], dim=2), pipe.encode_prompt(prompt), grid=flow_time_grid(2, 3.0), exit_step=1,
            frames_per_chunk=2, window_frames=4, sink_frames=2, draw_noise=lambda shape: next(fresh),
            complement=pipe.model.head_complement(),
        )
        got = pipe.decode(rolled)
        fresh = iter(drawn[1::2])
        no_sink = pipe.decode(self_forcing_rollout(
            pipe.model, torch.cat(drawn[0::2], dim=2), pipe.encode_prompt(prompt), grid=flow_time_grid(2, 3.0), exit_step=1,
            frames_per_chunk=2, window_frames=4, sink_frames=0, draw_noise=lambda shape: next(fresh),
            complement=pipe.model.head_complement(),
        ))
    assert got.shape == frames.shape and np.abs(got.astype(int) - frames.astype(int)).max() <= 1
    assert np.abs(no_sink[:4].astype(int) - frames[:4].astype(int)).max() <= 1  # the sink matters once the window is full
    assert np.abs(no_sink.astype(int) - frames.astype(int)).max() > 1


def test_rollout_memory_does_not_grow_with_sampler_steps():
    model = random_model(small_config(), backend="math")
    noise, context = _inputs()

    def saved_bytes(steps: int, exit_step: int) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self_forcing_rollout(model, noise, context, grid=flow_time_grid(steps, 3.0), exit_step=exit_step, frames_per_chunk=2)
        return total

    base = saved_bytes(1, 0)
    assert base > 0
    assert saved_bytes(4, 3) == base  # the last of four steps saves what the only step of one does
    assert saved_bytes(8, 5) == base


def test_a_rollout_at_the_last_exit_step_equals_causal_sampling():
    """With exit at the last step and the same fresh noise, self forcing is the inference sampler."""
    model = random_model(small_config(), backend="math")
    noise, context = _inputs()
    grid = flow_time_grid(3, 3.0)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        rolled = self_forcing_rollout(
            model, noise, context, grid=grid, exit_step=2, frames_per_chunk=2, window_frames=4,
            draw_noise=lambda shape: torch.randn(shape, generator=gen_a),
        )
        sampled = causal_sample(model, noise, context, frames_per_chunk=2, steps=grid, solver="consistency", window_frames=4, generator=gen_b)
    torch.testing.assert_close(rolled, sampled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exit_step", [1, 2])
def test_a_noisy_context_rollout_commits_its_exit_step_and_at_the_last_one_is_the_noisy_stream(exit_step):
    """No refresh: the exit step's forward commits each chunk but the last, with gradient still only there; exiting
    at the last step with the same fresh noise, the rollout is the noisy-context sampler."""
    model = Recorder(random_model(small_config(), backend="math"))
    noise, context = _inputs(F=6)
    grid = flow_time_grid(3, 3.0)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    rolled = self_forcing_rollout(
        model, noise, context, grid=grid, exit_step=exit_step, frames_per_chunk=2, window_frames=4,
        draw_noise=lambda shape: torch.randn(shape, generator=gen_a), context_mode="noisy",
    )
    per_chunk = exit_step + 1
    assert len(model.calls) == 3 * per_chunk  # no refresh forwards
    assert [c["refresh"] for c in model.calls] == ([False] * exit_step + [True]) * 2 + [False] * per_chunk
    assert [c["grad"] for c in model.calls] == ([False] * exit_step + [True]) * 3
    assert rolled.requires_grad
    if exit_step == 2:
        with torch.no_grad():
            sampled = causal_sample(model.model, noise, context, frames_per_chunk=2, steps=grid, solver="consistency",
                                    window_frames=4, generator=gen_b, context_mode="noisy")
            clean = causal_sample(model.model, noise, context, frames_per_chunk=2, steps=grid, solver="consistency",
                                  window_frames=4, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(rolled.detach(), sampled, rtol=1e-4, atol=1e-5)
        assert (sampled[:, :, 2:] - clean[:, :, 2:]).abs().mean() > 1e-3


def test_dmd_gradient_points_from_fake_to_real_and_drops_non_finite_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 2, 2, generator=g, requires_grad=True)
    real, fake = torch.randn(3, 2, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, 2, generator=g)
    loss, keep, grad = dmd_generator_loss(x, real, fake)
    loss.backward()
    expected = (fake - real) / (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(x.grad, expected / expected[0].numel() / 3)  # d/dx of the mean of 0.5 ||x - sg(x - grad)||^2
    fake[1] = float("nan")
    x.grad = None
    loss, keep, _ = dmd_generator_loss(x, real, fake)
    assert keep.tolist() == [True, False, True] and torch.isfinite(loss)
    loss.backward()
    assert torch.all(x.grad[1] == 0)


FAST = [*BASE, "objective.student_steps=1", "train.eval_drift=0"]


def test_sf_dmd_updates_the_critic_every_step_and_the_generator_every_k(teachers, tmp_path):
    out = tmp_path / "sf"
    config = load_config("sf-dmd", None, FAST + ["train.steps=4", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}", "dmd.critic_steps=2"])
    summary = train(config, restart=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss/' in line]
    assert [("loss/student" in r) for r in records] == [True, False, True, False]
    assert all("loss/critic" in r for r in records)
    assert all(r["student/exit_step"] in (0.0, 1.0) for r in records if "loss/student" in r)
    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["pipeline"]["causal"] and meta["pipeline"]["sampler"]["guidance"] == 1.0
    assert 0 <= summary["eval"]["caption_adherence"] <= 1


def test_sf_dmd_scores_a_window_of_a_rollout_longer_than_the_video(teachers, tmp_path, monkeypatch):
    """dmd.rollout_factor: the student rolls out past the training length, DMD sees the last window."""
    import causal_rcm.distill.dmd as dmd

    lengths = []
    real = dmd.self_forcing_rollout

    def spy(model, noise, *args, score_from_chunk=0, **kwargs):
        lengths.append((noise.shape[2], score_from_chunk))
        return real(model, noise, *args, score_from_chunk=score_from_chunk, **kwargs)

    monkeypatch.setattr(dmd, "self_forcing_rollout", spy)
    out = tmp_path / "long"
    config = load_config("sf-dmd", None, FAST + ["train.steps=6", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}",
                                                 "dmd.critic_steps=1", "dmd.rollout_factor=2"])
    train(config, restart=True)
    # data.num_frames=4 in chunks of 2: rollouts of 4, 6 or 8 frames, gradient from the chunk that starts the last 4
    assert lengths and all(n in (4, 6, 8) and g == (n - 4) // 2 for n, g in lengths)
    assert len({n for n, _ in lengths}) > 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss/' in line]
    assert len(records) == 6 and all("loss/student" in r and "loss/critic" in r for r in records)


@pytest.mark.parametrize("overrides, rollout, stream", [
    (["data.stream_window=6"], (4, 0), (6, 0)),
    (["data.stream_window=6", "dmd.rollout_window=8"], (8, 0), (6, 0)),
    (["dmd.rollout_window=6", "dmd.sink_frames=2"], (6, 2), (6, 2)),
    (["data.stream_sink=2"], (4, 0), (4, 2)),
    (["dmd.rollout_window=6", "dmd.sink_frames=2", "data.stream_sink=0"], (6, 2), (6, 0)),
])
def test_the_rollouts_cache_reaches_the_checkpoints_streams(teachers, tmp_path, monkeypatch, overrides, rollout, stream):
    """dmd.rollout_window (default: the training length, 4 frames here) and dmd.sink_frames: the rollouts' KV cache,
    which the exported checkpoint's streams keep; data.stream_window and data.stream_sink, when set, are the
    streams' window and sink instead."""
    import causal_rcm.distill.dmd as dmd

    caches = []
    real = dmd.self_forcing_rollout

    def spy(*args, window_frames=None, sink_frames=0, **kwargs):
        caches.append((window_frames, sink_frames))
        return real(*args, window_frames=window_frames, sink_frames=sink_frames, **kwargs)

    monkeypatch.setattr(dmd, "self_forcing_rollout", spy)
    out = tmp_path / "wide"
    config = load_config("sf-dmd", None, FAST + ["train.steps=2", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}",
                                                 "dmd.critic_steps=1", "dmd.rollout_factor=2", *overrides])
    train(config, restart=True)
    assert caches and set(caches) == {rollout}
    section = json.loads((out / "model" / "config.json").read_text())["pipeline"]["stream"]
    assert (section["window_frames"], section["sink_frames"]) == stream


def test_noisy_context_reaches_the_rollouts_and_the_checkpoints_stream_defaults(teachers, tmp_path, monkeypatch):
    import causal_rcm.distill.dmd as dmd
    from causal_rcm.spec import PipelineSpec

    modes = []
    real = dmd.self_forcing_rollout

    def spy(*args, context_mode="clean", **kwargs):
        modes.append(context_mode)
        return real(*args, context_mode=context_mode, **kwargs)

    monkeypatch.setattr(dmd, "self_forcing_rollout", spy)
    out = tmp_path / "noisy"
    config = load_config("sf-dmd", None, FAST + ["train.steps=2", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}",
                                                 "dmd.critic_steps=1", "dmd.noisy_context=true"])
    train(config, restart=True)
    assert modes and set(modes) == {"noisy"}
    spec = PipelineSpec.read(out / "model")
    assert spec.stream.context == "noisy" and spec.sampler_spec().context == "noisy"


@pytest.mark.parametrize("key", ["data.stream_window", "dmd.rollout_window"])
def test_a_window_that_cannot_hold_a_chunk_is_refused_at_start(teachers, tmp_path, key):
    from causal_rcm.errors import UserError

    bad = load_config("sf-dmd", None, FAST + [f"train.out_dir={tmp_path / 'bad'}", f"train.teacher={teachers['teacher']}", f"{key}=1"])
    with pytest.raises(UserError, match=f"{key} must be 0"):
        train(bad, restart=True)


def test_a_bad_rollout_factor_is_refused_when_the_config_is_built(teachers, tmp_path):
    from causal_rcm.errors import UserError

    with pytest.raises(UserError, match=r"dmd.rollout_factor must be in \[1, 64\], got 0"):
        load_config("sf-dmd", None, FAST + [f"train.out_dir={tmp_path}", f"train.teacher={teachers['teacher']}", "dmd.rollout_factor=0"])


def test_the_scm_regulariser_adds_the_weighted_tf_scm_loss_to_dmd(teachers, tmp_path):
    """dmd.scm_weight (rCM): the generator's loss is DMD's plus w x TF-sCM's on the data batch."""
    out = tmp_path / "reg"
    config = load_config("sf-dmd", None, FAST + [
        "train.steps=3", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}", "dmd.critic_steps=1",
        "dmd.scm_weight=0.5", f"train.cm_teacher={teachers['causal-teacher']}",
    ])
    train(config, restart=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss/student"' in line]
    assert len(records) == 3
    for r in records:
        assert r["student/scm_loss"] > 0 and r["student/dmd_loss"] >= 0
        assert r["loss/student"] == pytest.approx(r["student/dmd_loss"] + 0.5 * r["student/scm_loss"], rel=1e-4)


@pytest.mark.parametrize("which, message", [
    ("none", "needs train.cm_teacher"), ("teacher", "bidirectional"), ("chunks", "cm_teacher was trained with 2 frames per chunk"),
])
def test_the_scm_regulariser_needs_a_causal_teacher(teachers, tmp_path, which, message):
    from causal_rcm.errors import UserError

    extra = {"none": [], "teacher": [f"train.cm_teacher={teachers['teacher']}"],
             "chunks": [f"train.cm_teacher={teachers['causal-teacher']}", "data.frames_per_chunk=1"]}[which]
    config = load_config("sf-dmd", None, FAST + [f"train.out_dir={tmp_path}", f"train.teacher={teachers['teacher']}", "dmd.scm_weight=1", *extra])
    with pytest.raises(UserError, match=message):
        train(config, restart=True)


def test_a_diverged_critic_is_reported_and_not_trained_on(teachers, tmp_path):
    out = tmp_path / "div"
    config = load_config("sf-dmd", None, FAST + [
        "train.steps=3", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}", "dmd.critic_max_loss=1e-6",
        "optim.max_bad_steps=2",
    ])
    from causal_rcm.errors import TrainingStopped

    with pytest.raises(TrainingStopped, match="2 consecutive steps with non-finite or rejected"):
        train(config, restart=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["skipped/critic"] == 1.0 and r["critic/diverged"] == 1.0 for r in records)
    assert not any("loss/critic" in r for r in records)


def test_ode_init_regresses_on_teacher_ode_pairs(teachers, tmp_path):
    out = tmp_path / "ode"
    config = load_config("ode-init", None, FAST + ["train.steps=2", f"train.out_dir={out}", f"train.teacher={teachers['teacher']}", "ode.steps=4"])
    summary = train(config, restart=True)
    assert torch.isfinite(torch.tensor(summary["final"]["loss/student"]))
    assert json.loads((out / "model" / "config.json").read_text())["pipeline"]["sampler"]["solver"] == "consistency"


def test_ode_pairs_hit_the_student_grid_times():
    from causal_rcm.distill.ode_init import ode_grid

    student = flow_time_grid(2, 3.0)
    grid = ode_grid(student, 3)
    assert len(grid) == 7 and float(grid[0]) == 1.0 and float(grid[-1]) == 0.0
    assert float(grid[3]) == float(student[1])  # every third Euler step lands on a student time
    assert torch.all(grid[1:] < grid[:-1])


def test_the_full_recipe_runs_both_stages_and_resumes(teachers, tmp_path):
    from causal_rcm.cli import main

    out = tmp_path / "full"
    argv = [
        "train", "causal-rcm", *FAST, f"train.out_dir={out}", f"train.teacher={teachers['causal-teacher']}",
        f"train.dmd_teacher={teachers['teacher']}", "stages.cm_steps=2", "stages.dmd_steps=2", "dmd.critic_steps=1",
    ]
    main(argv)
    report = json.loads((out / "train_report.json").read_text())
    assert [s["recipe"] for s in report["stages"]] == ["tf-scm", "sf-dmd"]
    assert (out / "model" / "model.safetensors").exists()
    stage2 = json.loads((out / "stage2-sf-dmd" / "config.json").read_text())
    assert stage2["train"]["init"].endswith("stage1-tf-scm/model") and stage2["train"]["teacher"] == str(teachers["teacher"])
    before = (out / "stage1-tf-scm" / "checkpoint").stat().st_mtime
    main(argv)  # resumes: both stages are complete, nothing is retrained
    assert (out / "stage1-tf-scm" / "checkpoint").stat().st_mtime == before


def test_the_full_recipe_gives_its_sf_dmd_stage_the_causal_teacher_for_the_scm_regulariser(tmp_path):
    from causal_rcm.runs.staged import CausalRCMRun

    base = [f"train.out_dir={tmp_path}", "train.teacher=ct", "train.dmd_teacher=bt"]
    _, dmd = CausalRCMRun.stage_configs(load_config("causal-rcm", None, base + ["dmd.scm_weight=0.1"]))
    assert (dmd.recipe, dmd.train.teacher, dmd.train.cm_teacher, dmd.dmd.scm_weight) == ("sf-dmd", "bt", "ct", 0.1)
    _, plain = CausalRCMRun.stage_configs(load_config("causal-rcm", None, base))
    assert plain.train.cm_teacher == "" and plain.dmd.scm_weight == 0
