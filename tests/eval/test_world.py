"""`causal-rcm eval world`: world models against the emulator's frames of held-out episodes, beside the baselines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.data.shards import Manifest
from causal_rcm.errors import UserError
from causal_rcm.eval.world import PSNR_MAX, Candidate, evaluate_world, psnr, ssim
from causal_rcm.runs import load_config, train
from causal_rcm.spec import PipelineSpec
from tests.checkpoints import make_checkpoint
from tests.conftest import FAST


# ------------------------------------------------------------------ metrics
def _images(seed: int, shape=(4, 32, 40, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_psnr_of_a_perfect_prediction_is_capped_and_known_errors_give_known_values():
    a = _images(0)
    assert torch.equal(psnr(a, a), torch.full((4,), PSNR_MAX, dtype=torch.float64))
    black, white = np.zeros((2, 16, 16, 3), np.uint8), np.full((2, 16, 16, 3), 255, np.uint8)
    torch.testing.assert_close(psnr(black, white), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(psnr(black, black + 1), torch.full((2,), 20 * np.log10(255), dtype=torch.float64))


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    a = _images(1).astype(np.int64)
    assert torch.allclose(ssim(a, a), torch.ones(4, dtype=torch.float64))
    noisy = [np.clip(a + np.random.default_rng(2).normal(0, sigma, a.shape), 0, 255).astype(np.uint8) for sigma in (5, 20, 80)]
    scores = [float(ssim(n, a.astype(np.uint8)).mean()) for n in noisy]
    assert 1 > scores[0] > scores[1] > scores[2]
    torch.testing.assert_close(ssim(noisy[1], a), ssim(a, noisy[1]))  # symmetric
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_ssim_equals_scikit_images():
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("scikit-image is a test dependency (pip install -e .[test])")
        pytest.skip("scikit-image is not installed")
    real = _images(3, (3, 40, 33, 3))
    rng = np.random.default_rng(4)
    preds = [np.clip(real + rng.normal(0, 30, real.shape), 0, 255).astype(np.uint8), _images(5, real.shape),
             np.roll(real, 2, axis=2)]
    for pred in preds:
        ours = ssim(pred, real)
        for i in range(len(real)):
            reference = structural_similarity(pred[i], real[i], channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=255)
            assert abs(float(ours[i]) - reference) < 1e-9


# ---------------------------------------------------------------- end to end
def _train(recipe: str, shards, out, *overrides: str):
    atari = ["data.source=atari", f"data.shards={shards}", "data.resolution=64", "train.steps=2", "train.eval_videos=0",
             "train.eval_drift=0", f"train.out_dir={out}"]
    train(load_config(recipe, None, [*FAST, *atari, *overrides]), restart=True)
    return out / "model"


@pytest.fixture(scope="module")
def world_models(breakout_shards, tmp_path_factory) -> dict:
    """Barely trained checkpoints (2 steps) on the Breakout shards: a causal teacher, a bidirectional teacher and a
    causal teacher trained without actions."""
    root = tmp_path_factory.mktemp("world")
    return {
        "causal": _train("causal-teacher", breakout_shards, root / "causal-teacher"),
        "teacher": _train("teacher", breakout_shards, root / "teacher"),
        "no-action": _train("causal-teacher", breakout_shards, root / "no-action", "data.actions=false"),
    }


def test_a_model_trained_without_actions_records_its_game_but_no_actions(world_models):
    spec = PipelineSpec.read(world_models["no-action"])
    assert spec.num_actions == 0 and spec.env.id == "ALE/Breakout-v5" and spec.env.num_actions == 4
    assert PipelineSpec.read(world_models["causal"]).num_actions == 4


def test_eval_world_compares_models_and_baselines_per_horizon(world_models, breakout_shards, tmp_path, capsys):
    out = tmp_path / "eval"
    main(["eval", "world", "-c", f"{world_models['causal']}@1", "-c", str(world_models["teacher"]), "--shards",
          str(breakout_shards), "--horizon", "4", "--steps", "2", "--no-action-model", str(world_models["no-action"]),
          "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads((out / "world_eval.json").read_text())
    assert (out / "world_eval.png").stat().st_size > 10_000 and "| copy last context frame |" in printed
    assert (result["env"], result["context"], result["horizon"], len(result["episodes"])) == ("ALE/Breakout-v5", 2, 4, 1)
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["copy last context frame", "causal-teacher (1 step)", "teacher (2 steps)",
                          "no-action (2 steps) without actions"]
    for r in rows.values():
        assert len(r["psnr"]) == len(r["ssim"]) == len(r["delta_psnr"]) == 4
        assert all(np.isfinite(r["psnr"])) and all(-1 <= s <= 1 for s in r["ssim"])
    copy = rows["copy last context frame"]
    for label in ("causal-teacher (1 step)", "teacher (2 steps)", "no-action (2 steps) without actions"):
        assert all(c > m for c, m in zip(copy["psnr"], rows[label]["psnr"]))  # an untrained model paints noise
        assert all(c > m for c, m in zip(copy["ssim"], rows[label]["ssim"]))
    assert copy["delta_psnr"] == rows["no-action (2 steps) without actions"]["delta_psnr"] == [0.0] * 4
    model = rows["causal-teacher (1 step)"]
    assert len(model["psnr_random_actions"]) == 4
    np.testing.assert_allclose(model["delta_psnr"], np.subtract(model["psnr"], model["psnr_random_actions"]))
    assert (out / "world_eval.md").read_text() in printed and "causal-rcm eval world -c" in (out / "world_eval.md").read_text()


def test_a_rollout_equal_to_the_emulators_frames_scores_the_ceiling(world_models, breakout_shards, monkeypatch):
    """A rollout equal to the emulator's frames (from frame --start on) scores PSNR_MAX and SSIM 1 at every horizon."""
    import causal_rcm.eval.world as world

    held = world.heldout(breakout_shards, context=2, horizon=4, episodes=1, start=5)
    assert held.frames.shape[1] == 6 and held.start == 5
    monkeypatch.setattr(world, "rollout", lambda pipe, frames, actions, horizon, **kw: held.frames[:, 2:])
    result = evaluate_world([Candidate(world_models["causal"])], breakout_shards, horizon=4, start=5, say=lambda line: None)
    model = result["rows"][1]
    assert model["psnr"] == [PSNR_MAX] * 4 and np.allclose(model["ssim"], 1.0)
    assert all(c < PSNR_MAX for c in result["rows"][0]["psnr"])


def _copy(shards, folder, edit) -> str:
    """A copy of the shards whose manifest ``edit(data)`` changed."""
    folder = shutil.copytree(shards, folder)
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_bad_input_is_one_clear_line(world_models, breakout_shards, tmp_path):
    causal = Candidate(world_models["causal"])

    def run(candidates, shards=breakout_shards, **kw):
        evaluate_world(candidates, shards, say=lambda line: None, **{"horizon": 4, **kw})

    pong = _copy(breakout_shards, tmp_path / "pong", lambda d: d["env"].update(
        id="ALE/Pong-v5", num_actions=6, action_meanings=[f"A{i}" for i in range(6)]))
    small = _copy(breakout_shards, tmp_path / "small", lambda d: d.update(frame_size=32))
    trained_only = _copy(breakout_shards, tmp_path / "train-only", lambda d: d.update(
        shards=[s for s in d["shards"] if s["split"] == "train"]))
    shapes = make_checkpoint(tmp_path / "shapes", num_actions=5)
    cases = [
        (dict(candidates=[causal], shards=pong), "is a world model of ALE/Breakout-v5 but .* holds ALE/Pong-v5 episodes"),
        (dict(candidates=[causal], shards=small), "makes 64x64 frames but .* holds 32x32 ones: evaluate it on episodes "
                                                  "collected with --size 64"),
        (dict(candidates=[causal], shards=trained_only), "has no held-out episodes: collect with --holdout > 0"),
        (dict(candidates=[causal], horizon=40), "--context 2 and --horizon 40 need episodes of 42 frames, but the longest "
                                                "held-out episode of .* has 25: lower --horizon"),
        (dict(candidates=[causal], start=20), "--context 2 and --horizon 4 from frame 20 need episodes of 26 frames"),
        (dict(candidates=[Candidate(world_models["no-action"])]), "was trained without actions: it is a baseline, pass it "
                                                                  "as --no-action-model"),
        (dict(candidates=[causal], no_action=causal), "--no-action-model .* takes actions"),
        (dict(candidates=[Candidate(shapes)]), "was trained on shapes data, not on recorded Atari episodes"),
        (dict(candidates=[causal], context=3), "--context 3 is not whole chunks of .*'s 2 frames"),
        (dict(candidates=[Candidate(world_models["teacher"])], context=4), "--context 4 leaves no new frame in the 4-frame "
                                                                          "windows of the bidirectional"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UserError, match=match):
            run(**kwargs)
    assert Manifest.read(small).frame_size == 32


def test_checkpoints_take_their_steps_after_an_at_sign(world_models, breakout_shards, capsys):
    from causal_rcm.cli import _candidate

    assert _candidate("runs/sf-dmd/model@1,2", "-c") == Candidate(Path("runs/sf-dmd/model"), (1, 2))
    assert _candidate(str(world_models["causal"]), "-c") == Candidate(world_models["causal"])
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "world", "-c", f"{world_models['causal']}@0", "--shards", str(breakout_shards)])
    assert exit_.value.code == 2
    assert "error: -c " in capsys.readouterr().err
