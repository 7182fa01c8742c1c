"""Reading episode shards: checked against the manifest, mapped from disk, one clear line for every bad folder."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from causal_rcm.data.shards import Episode, EnvInfo, Manifest, ShardReader, write_shard
from causal_rcm.errors import UserError


@pytest.fixture
def shards(breakout_shards, tmp_path):
    """A copy of the session's collection, free to break."""
    return shutil.copytree(breakout_shards, tmp_path / "shards")


def test_episodes_are_mapped_views_of_the_tar(breakout_shards):
    manifest = Manifest.read(breakout_shards)
    reader = ShardReader(breakout_shards, manifest.split("train")[0], manifest)
    assert [ep.meta["episode"] for ep in reader.episodes] == [0, 1]
    frames = reader.episodes[1].frames
    assert isinstance(frames.base, np.memmap) and not frames.flags.writeable and frames.shape == (25, 64, 64, 3)


def test_a_written_shard_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [(i, Episode(rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, T), rng.random(T, dtype=np.float32),
                            {"episode": i})) for i, T in ((4, 5), (7, 1))]
    entry = write_shard(tmp_path / "train-000000.tar", episodes, "train", emulator_seed=3)
    env = EnvInfo("toy", 3, ("NOOP", "UP", "DOWN"), 1, 0.0, 8.0, 8.0)
    manifest = Manifest(env, 16, {}, [entry])
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest and (entry.episodes, entry.frames) == ((4, 7), 6)
    for (_, ep), back in zip(episodes, ShardReader(tmp_path, entry, manifest).episodes):
        assert np.array_equal(ep.frames, back.frames) and np.array_equal(ep.actions, back.actions)
        assert np.array_equal(ep.rewards, back.rewards) and back.meta == ep.meta


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is truncated or changed since it was written"),
    ("empty", "is truncated or changed since it was written"),
    ("delete", "is listed in the manifest but missing"),
])
def test_a_damaged_shard_is_refused_with_one_line(damage, message, shards):
    path = shards / "train-000000.tar"
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: 40000 if damage == "truncate" else 0])
    manifest = Manifest.read(shards)
    with pytest.raises(UserError, match=message) as error:
        ShardReader(shards, manifest.shards[0], manifest)
    assert "\n" not in str(error.value) and "collect" in str(error.value)


def test_a_shard_whose_manifest_entry_lies_is_refused(shards, tmp_path):
    """Whole files that are not what the manifest says: episodes of another shard, an empty tar, another frame size."""
    manifest = Manifest.read(shards)
    train, held = manifest.shards
    with pytest.raises(UserError, match="does not hold the episodes its manifest entry lists"):
        ShardReader(shards, dataclasses.replace(held, episodes=(5,)), manifest)
    empty = write_shard(tmp_path / "empty.tar", [], "train", emulator_seed=0)
    with pytest.raises(UserError, match="holds no episodes"):
        ShardReader(tmp_path, empty, manifest)
    manifest.frame_size = 32
    with pytest.raises(UserError, match=r"not a readable episode shard \(ep000000: frames uint8 \[25, 64, 64, 3\]"):
        ShardReader(shards, train, manifest)


def test_a_folder_without_a_readable_manifest_is_named(shards, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Manifest.read(tmp_path / "nowhere")
    (shards / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"has no manifest.json: it is not a folder written by `causal-rcm collect`"):
        Manifest.read(shards)
    (shards / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="is not a readable manifest"):
        Manifest.read(shards)
    (shards / "manifest.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError, match="format 99, this version reads 1"):
        Manifest.read(shards)
