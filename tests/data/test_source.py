import pytest
import torch

from causal_rcm.config import DataConfig
from causal_rcm.spec import PipelineSpec, SamplerDefaults, StreamDefaults
from causal_rcm.data.source import ShapesSource
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
