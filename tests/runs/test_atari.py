"""The recipes train action-conditioned models on recorded Atari episodes (`data.source=atari`)."""

from __future__ import annotations

import json
import shutil

import pytest

from causal_rcm.data.shards import Manifest
from causal_rcm.errors import UserError
from causal_rcm.eval.score import evaluate_checkpoint
from causal_rcm.models.adapters import load_checkpoint
from causal_rcm.runs import load_config, train
from causal_rcm.spec import PipelineSpec
from tests.conftest import FAST


def _config(recipe: str, shards, out, *overrides: str):
    atari = ["data.source=atari", f"data.shards={shards}", "data.resolution=64", "train.steps=2", "train.eval_drift=0",
             "objective.student_steps=1", f"train.out_dir={out}"]
    return load_config(recipe, None, [*FAST, *atari, *overrides])


@pytest.fixture(scope="module")
def atari_teacher(breakout_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("atari") / "teacher"
    summary = train(_config("teacher", breakout_shards, out), restart=True)
    return out / "model", summary


def test_a_teacher_trains_on_episodes_and_its_checkpoint_records_the_env(atari_teacher):
    model, summary = atari_teacher
    assert summary["steps"] == 2 and {"pixel_mse", "psnr"} <= set(summary["eval"])
    spec = PipelineSpec.read(model)
    assert (spec.source, spec.num_actions, spec.fps, spec.resolution) == ("atari", 4, 15.0, 64)
    assert (spec.env.id, spec.env.action_meanings, spec.env.frameskip) == ("ALE/Breakout-v5", ("NOOP", "FIRE", "RIGHT", "LEFT"), 4)
    assert load_checkpoint(model)[0].num_actions == 4  # set from the manifest
    resolved = json.loads((model.parent / "config.json").read_text())
    assert resolved["model"]["num_actions"] == 4 and resolved["data"]["source"] == "atari"
    with pytest.raises(UserError, match=r"`causal-rcm eval` scores shapes-world checkpoints with the oracle; .* was "
                                        r"trained on atari data \(ALE/Breakout-v5\)"):
        evaluate_checkpoint(model)


def test_sf_dmd_distils_the_world_model_from_it(atari_teacher, breakout_shards, tmp_path):
    config = _config("sf-dmd", breakout_shards, tmp_path, f"train.teacher={atari_teacher[0]}", "dmd.critic_steps=1")
    assert train(config, restart=True)["steps"] == 2
    spec = PipelineSpec.read(tmp_path / "model")
    assert spec.causal and spec.recipe == "sf-dmd" and spec.env == PipelineSpec.read(atari_teacher[0]).env


def _regame(breakout_shards, tmp_path, num_actions: int):
    """A copy of the shards whose manifest says another game (more actions) recorded them."""
    folder = shutil.copytree(breakout_shards, tmp_path / "other")
    data = json.loads((folder / "manifest.json").read_text())
    data["env"].update(id="ALE/Pong-v5", num_actions=num_actions, action_meanings=[f"A{i}" for i in range(num_actions)])
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_data_that_does_not_fit_is_refused_before_training(atari_teacher, breakout_shards, tmp_path):
    other = _regame(breakout_shards, tmp_path, 6)
    with pytest.raises(UserError, match=f"the model takes 4 actions but {other} records 6"):
        train(_config("sf-dmd", other, tmp_path / "a", f"train.teacher={atari_teacher[0]}"), restart=True)
    with pytest.raises(UserError, match="holds 64x64 frames but data.resolution=32"):
        train(_config("teacher", breakout_shards, tmp_path / "b", "data.resolution=32"), restart=True)
    with pytest.raises(UserError, match="has no manifest.json"):
        train(_config("teacher", tmp_path, tmp_path / "c"), restart=True)
    held_out_of = _regame(breakout_shards, tmp_path / "x", 4)
    manifest = Manifest.read(held_out_of)
    manifest.shards = manifest.split("train")
    manifest.write(held_out_of)
    with pytest.raises(UserError, match="no held-out episode of .* has 4 frames: collect with --holdout"):
        train(_config("teacher", held_out_of, tmp_path / "d"), restart=True)
    assert not any((tmp_path / run / "model").exists() for run in "abcd")
