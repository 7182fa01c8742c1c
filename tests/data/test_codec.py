import pytest
import torch
import torch.nn.functional as Fn

from causal_rcm.data.codec import PixelCodec
from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.errors import UserError


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_encode_matches_pixel_unshuffle_per_frame(factor):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 5, 16, 8, generator=g) * 2 - 1
    codec = PixelCodec(factor)
    lat = codec.encode(video)
    assert lat.shape == (2, 3 * factor**2, 5, 16 // factor, 8 // factor) and codec.latent_channels == 3 * factor**2
    ref = torch.stack([Fn.pixel_unshuffle(video[:, :, f], factor) for f in range(5)], dim=2)
    assert torch.equal(lat, ref)
    assert torch.equal(codec.decode(lat), video)


def test_scaled_round_trip_and_fit():
    video = ShapesDataset(ShapesConfig(num_frames=4), seed=0).batch(8)["video"]
    shift, scale = PixelCodec.fit(video)
    codec = PixelCodec(2, shift, scale)
    lat = codec.encode(video)
    assert abs(lat.mean().item()) < 1e-4 and abs(lat.std().item() - 1) < 1e-4
    assert torch.allclose(codec.decode(lat), video, atol=1e-6)
    assert codec.latent_shape(4, 32, 32) == (12, 4, 16, 16) and codec.temporal_factor == 1


def test_codec_errors():
    codec = PixelCodec(4)
    with pytest.raises(UserError, match="divisible by 4"):
        codec.encode(torch.zeros(1, 3, 2, 30, 32))
    with pytest.raises(UserError, match=r"\[B, 3, F, H, W\]"):
        codec.encode(torch.zeros(3, 2, 32, 32))
    with pytest.raises(UserError, match="48"):
        codec.decode(torch.zeros(1, 12, 2, 8, 8))
