import torch

from causal_rcm.config import DataConfig
from causal_rcm.data.embedded import ShapesWorld


def _world(workers: int) -> ShapesWorld:
    return ShapesWorld(DataConfig(workers=workers), text_dim=64, local_batch=3)


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
