import numpy as np
import pytest
import torch

from causal_rcm.config import DataConfig
from causal_rcm.spec import PipelineSpec, SamplerDefaults, StreamDefaults
from causal_rcm.data.source import AtariSource, ShapesSource
from causal_rcm.data.video import to_uint8
from causal_rcm.errors import UserError


def _world(workers: int) -> ShapesSource:
    return ShapesSource(DataConfig(workers=workers), text_dim=64, local_batch=3)


def test_worker_pool_gives_exactly_the_serial_batches_and_resumes():
    serial, pooled = _world(0), _world(2)
    try:
        for _ in range(3):
            a, b = serial.next_batch(), pooled.next_batch()
            assert torch.equal(a["latents"], b["latents"]) and a["caption"] == b["caption"]
        state = pooled.state_dict()
        assert state == serial.state_dict()
        # The uint8 frames converted on the device are the dataset's float videos, encoded.
        ref = _world(0)
        ref.dataset.position = serial.dataset.position - 3
        assert torch.equal(a["latents"], ref.codec.encode(ref.dataset.batch(3)["video"]))
        resumed = _world(2)
        try:
            resumed.load_state_dict(state)
            assert torch.equal(resumed.next_batch()["latents"], serial.next_batch()["latents"])
        finally:
            resumed.close()
    finally:
        pooled.close()


def test_batches_are_normalised_latents_with_context():
    world = _world(0)
    batch = world.next_batch()
    assert batch["latents"].shape == (3, 48, 8, 8, 8)  # 32 px, codec factor 4, 8 frames
    assert abs(batch["latents"].mean().item()) < 0.5 and 0.5 < batch["latents"].std().item() < 2.0
    assert batch["context"].shape == (3, 24, 64)
    assert world.empty_context(2).shape == (2, 24, 64)


def test_packed_codec_renders_codec_frames_per_latent_frame():
    world = ShapesSource(DataConfig(workers=0, num_frames=4, codec_frames=2), text_dim=64, local_batch=2)
    batch = world.next_batch()
    assert batch["latents"].shape == (2, 96, 4, 8, 8) == (2, *world.latent_shape())
    assert world.codec.decode(batch["latents"]).shape == (2, 3, 8, 32, 32)  # 8 rendered frames
    ref = world.eval_set(4, num_frames=8)  # num_frames counts latent frames: 16 rendered
    assert ref["video"].shape == (4, 3, 16, 32, 32)
    assert world.oracle.evaluate(ref["video"], ref["scene"]).metrics["direction_accuracy"] > 0.9
    spec = PipelineSpec.of_source(world, causal=False, sampler=SamplerDefaults(), stream=StreamDefaults())
    assert spec.codec.frames == 2 and spec.data_config().codec_frames == 2
    with pytest.raises(UserError, match="one action per latent frame"):
        ShapesSource(DataConfig(workers=0, agent=True, codec_frames=2, num_frames=4), text_dim=64)


def _atari(folder, **changes) -> AtariSource:
    data = DataConfig(**{"source": "atari", "shards": str(folder), "resolution": 64, "num_frames": 8, **changes})
    return AtariSource(data, text_dim=64, local_batch=3)


def test_atari_windows_are_frames_of_training_episodes_with_their_actions(breakout_shards):
    source = _atari(breakout_shards)
    batch = source.next_batch()
    assert batch["latents"].shape == (3, 48, 8, 16, 16) == (3, *source.latent_shape())
    assert batch["actions"].shape == (3, 8) and batch["actions"].dtype == torch.int64
    assert batch["context"].shape == (3, 24, 64) and torch.equal(batch["context"][0], source.empty_context(1)[0])
    # Every window is 8 consecutive frames of one training episode, with the actions recorded for them.
    video = to_uint8(source.codec.decode(batch["latents"]))  # (B, F, H, W, 3)
    episodes = source.train.episodes
    assert len(episodes) == 2 and source.train.count == 2 * (25 - 8 + 1)
    for frames, actions in zip(video, batch["actions"].numpy()):
        found = [(ep, s) for ep in episodes for s in range(len(ep.frames) - 7) if np.array_equal(ep.frames[s : s + 8], frames)]
        assert any(np.array_equal(ep.actions[s : s + 8], actions) for ep, s in found)
    spec = PipelineSpec.of_source(source, causal=True, sampler=SamplerDefaults(), stream=StreamDefaults(), num_actions=4)
    assert (spec.source, spec.fps, spec.env.id, spec.env.frameskip) == ("atari", 15.0, "ALE/Breakout-v5", 4)
    assert PipelineSpec.from_dict(spec.to_dict()) == spec and spec.data_config().source == "atari"


def test_atari_stream_resumes_exactly_and_splits_over_ranks(breakout_shards):
    serial = _atari(breakout_shards)
    first, second = serial.next_batch(), serial.next_batch()
    resumed = _atari(breakout_shards)
    resumed.load_state_dict(_atari(breakout_shards).state_dict() | {"samples_seen": 3})
    assert torch.equal(resumed.next_batch()["latents"], second["latents"])
    ranks = [AtariSource(serial.data, text_dim=64, rank=r, world_size=3, local_batch=1) for r in range(3)]
    assert torch.equal(torch.cat([r.next_batch()["actions"] for r in ranks]), first["actions"])
    with pytest.raises(UserError, match="trained on other shards or another data.seed"):
        resumed.load_state_dict({**serial.state_dict(), "shards": "0" * 16})


def test_atari_eval_windows_come_from_held_out_episodes(breakout_shards):
    source = _atari(breakout_shards)
    ref = source.eval_set(4)
    assert ref["video"].shape == (4, 3, 8, 64, 64) and ref["actions"].shape == (4, 8) and ref["caption"] == [""] * 4
    (held,) = source.heldout
    assert held.meta["episode"] == 2
    for frames in to_uint8(ref["video"]):
        assert any(np.array_equal(held.frames[s : s + 8], frames) for s in range(len(held.frames) - 7))
    assert torch.equal(source.eval_set(4)["actions"], ref["actions"])  # a fixed set
    with pytest.raises(UserError, match="no held-out episode of .* has 30 frames"):
        source.eval_set(2, num_frames=30)


@pytest.mark.parametrize("changes, message", [
    ({"resolution": 32}, r"holds 64x64 frames but data.resolution=32: set data.resolution=64 \(or collect with --size 32\)"),
    ({"shards": ""}, r"data.source=atari reads recorded episodes: set data.shards=PATH"),
    ({"num_frames": 30}, r"no training episode of .* has data.num_frames=30 frames \(the longest has 25\)"),
    ({"codec_frames": 2}, r"Atari data has one action per frame: it needs data.codec_frames=1"),
])
def test_atari_source_refuses_data_it_cannot_use(changes, message, breakout_shards):
    with pytest.raises(UserError, match=message):
        _atari(breakout_shards, **changes)
