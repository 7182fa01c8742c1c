"""Recording Atari episodes from the real emulator (ale-py): policies, shards, manifest, resume, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import webdataset

from causal_rcm.data.atari import AGENTS, CollectArgs, collect, make_env, record_episode
from causal_rcm.data.shards import Manifest, ShardReader
from causal_rcm.errors import UserError

ARGS = dict(env="ALE/Breakout-v5", episodes=3, max_steps=20, episodes_per_shard=1, holdout=0.34, size=32)


@pytest.fixture(scope="module")
def breakout():
    env = make_env("ALE/Breakout-v5")
    yield env
    env.close()


@pytest.mark.parametrize("policy", ["random", "sticky", "agent"])
def test_each_policy_writes_whole_episodes_with_a_manifest(policy, tmp_path):
    summary = collect(tmp_path, CollectArgs(policy=policy, **ARGS), progress=False)
    manifest = Manifest.read(tmp_path)
    assert manifest == summary.manifest and summary.episodes == 3
    env = manifest.env
    assert (env.id, env.num_actions, env.action_meanings) == ("ALE/Breakout-v5", 4, ("NOOP", "FIRE", "RIGHT", "LEFT"))
    assert (env.frameskip, env.repeat_action_probability, env.emulator_fps, env.fps) == (4, 0.25, 60.0, 15.0)
    assert env.ale_py and env.gymnasium and manifest.frame_size == 32 and manifest.collection["policy"] == policy
    assert [(s.file, s.split, s.episodes) for s in manifest.shards] == [
        ("train-000000.tar", "train", (0,)), ("train-000001.tar", "train", (1,)), ("heldout-000000.tar", "heldout", (2,))]
    for entry in manifest.shards:
        (episode,) = ShardReader(tmp_path, entry, manifest).episodes
        T = len(episode.frames)
        assert 2 <= T <= 21 and entry.frames == T and episode.meta["steps"] == T - 1
        assert episode.frames.dtype == np.uint8 and episode.frames.shape == (T, 32, 32, 3) and episode.frames.std() > 10
        assert episode.actions.dtype == np.int64 and episode.actions.shape == (T,) and episode.actions[0] == 0
        assert 0 <= episode.actions.min() and episode.actions.max() < 4 and len(set(episode.actions[1:].tolist())) > 1
        assert episode.rewards.dtype == np.float32 and episode.rewards.sum() == episode.meta["return"]
    # Plain webdataset reads the shards: one sample per episode, its members under the episode's key.
    sample = next(iter(webdataset.WebDataset(str(tmp_path / "train-000001.tar"), shardshuffle=False).decode()))
    assert sample["__key__"] == "ep000001" and sample["frames.npy"].shape[1:] == (32, 32, 3)
    assert sample["meta.json"]["episode"] == 1 and sample["meta.json"]["policy"] == policy


def test_a_killed_run_resumes_rewriting_only_what_the_manifest_lacks(tmp_path):
    args = CollectArgs(policy="sticky", **ARGS)
    collect(tmp_path, args, progress=False)
    manifest = Manifest.read(tmp_path)
    whole = {s.file: ((tmp_path / s.file).stat().st_mtime_ns, s.sha256) for s in manifest.shards}
    # As if killed while writing the last shard: the manifest lists the first two, a partial tar lies on disk.
    last = manifest.shards.pop()
    manifest.write(tmp_path)
    (tmp_path / last.file).write_bytes((tmp_path / last.file).read_bytes()[:5000])
    said = []
    summary = collect(tmp_path, args, progress=False, say=said.append)
    assert summary.skipped_shards == 2 and summary.episodes == 1
    assert any(last.file in line and "not in the manifest" in line for line in said)
    resumed = Manifest.read(tmp_path)
    assert [s.file for s in resumed.shards] == list(whole)
    for s in resumed.shards:  # finished shards untouched; the partial one rewritten with the very same bytes
        assert s.sha256 == whole[s.file][1]
        assert ((tmp_path / s.file).stat().st_mtime_ns == whole[s.file][0]) == (s.file != last.file)
    # A shard the manifest lists that changed on disk is recorded again; other arguments are refused.
    (tmp_path / "train-000000.tar").write_bytes(b"")
    said.clear()
    assert collect(tmp_path, args, progress=False, say=said.append).episodes == 1 and "changed" in said[0]
    with pytest.raises(UserError, match=r"holds another collection \(episodes=3 \(now 4\)\)"):
        collect(tmp_path, CollectArgs(policy="sticky", **{**ARGS, "episodes": 4}), progress=False)


def test_the_scripted_players_score_more_and_live_longer_than_random_play():
    """Over capped episodes from the same seeds; the follower's RAM addresses are the ones in its docstring."""

    def play(env_id: str, policy: str, steps: int, episodes: int) -> tuple[float, float]:
        env = make_env(env_id)
        runs = [record_episode(env, policy, index=i, seed=0, size=16, max_steps=steps, emulator_seed=0 if i == 0 else None)
                for i in range(episodes)]
        env.close()
        return sum(r.meta["return"] for r in runs), float(np.mean([r.meta["steps"] for r in runs]))

    (agent, agent_steps), (rand, rand_steps) = (play("ALE/Breakout-v5", p, 250, 3) for p in ("agent", "random"))
    assert agent >= rand + 6 and agent_steps > rand_steps, (agent, rand, agent_steps, rand_steps)  # measured 18 vs 3, 250 vs 170
    (agent, _), (rand, _) = (play("ALE/Pong-v5", p, 300, 2) for p in ("agent", "random"))
    assert agent >= rand + 4, (agent, rand)  # measured -2 vs -12
    assert set(AGENTS) == {"breakout", "pong"}


def test_sticky_play_holds_its_keys(breakout):
    actions = record_episode(breakout, "sticky", index=0, seed=0, size=16, max_steps=60, sticky_p=0.9).actions[1:]
    assert np.mean(actions[1:] == actions[:-1]) > 0.75
    actions = record_episode(breakout, "random", index=0, seed=0, size=16, max_steps=60).actions[1:]
    assert np.mean(actions[1:] == actions[:-1]) < 0.5


@pytest.mark.parametrize("env_id, message", [
    ("ALE/Breakot-v5", "unknown environment 'ALE/Breakot-v5': did you mean ALE/Breakout-v5? ale-py's"),
    ("ALE/NoSuchGame-v5", "unknown environment 'ALE/NoSuchGame-v5': ale-py's"),
    ("ALE/NoSuchGame-v5", "games are named like ALE/Breakout-v5, ALE/Pong-v5, ALE/SpaceInvaders-v5"),
    ("CartPole-v1", "CartPole-v1 is not an Atari game"),
])
def test_an_unknown_or_foreign_env_is_named_with_valid_ones(env_id, message):
    with pytest.raises(UserError) as error:
        make_env(env_id)
    assert message in str(error.value)


@pytest.mark.parametrize("changes, message", [
    ({"episodes": 0}, "--episodes must be at least 1, got 0"),
    ({"size": 8}, "--size must lie in 16..256 pixels, got 8"),
    ({"size": 1000}, "--size must lie in 16..256"),
    ({"episodes_per_shard": 0}, "--episodes-per-shard must be at least 1"),
    ({"max_steps": 0}, "--max-steps must be at least 1"),
    ({"holdout": 1.0}, "--holdout is the fraction of episodes held out, in [0, 1)"),
    ({"episodes": 1, "holdout": 0.1}, "--holdout 0.1 of 1 episode(s) leaves none to train on"),
    ({"policy": "smart"}, "--policy must be one of random, sticky, agent"),
])
def test_impossible_arguments_are_refused_before_the_emulator_starts(changes, message, tmp_path):
    with pytest.raises(UserError) as error:
        collect(tmp_path / "out", CollectArgs(**{**ARGS, "policy": "random", **changes}), progress=False)
    assert message in str(error.value) and not (tmp_path / "out").exists()


def test_agent_is_refused_for_a_game_without_a_scripted_player(tmp_path):
    with pytest.raises(UserError, match=r"scripted player only for breakout, pong \(ALE/Breakout-v5, ALE/Pong-v5\); "
                                        r"use --policy random or sticky for ALE/SpaceInvaders-v5"):
        collect(tmp_path, CollectArgs(**{**ARGS, "env": "ALE/SpaceInvaders-v5", "policy": "agent"}), progress=False)


def test_sticky_play_of_a_second_game(tmp_path):
    collect(tmp_path, CollectArgs(**{**ARGS, "env": "ALE/SpaceInvaders-v5", "policy": "sticky", "episodes": 2, "holdout": 0.0}),
            progress=False)
    manifest = Manifest.read(tmp_path)
    assert manifest.env.num_actions == 6 and [s.split for s in manifest.shards] == ["train", "train"]
    assert json.loads((tmp_path / "manifest.json").read_text())["env"]["action_meanings"][-1] == "LEFTFIRE"
    assert set(os.listdir(tmp_path)) == {"manifest.json", "train-000000.tar", "train-000001.tar"}  # no temporaries left
