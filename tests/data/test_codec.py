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


@pytest.mark.parametrize("factor, frames", [(1, 2), (2, 2), (4, 4)])
def test_packed_frames_follow_the_documented_channel_layout(factor, frames):
    g = torch.Generator().manual_seed(1)
    video = torch.rand(2, 3, 2 * frames, 8, 8, generator=g) * 2 - 1
    codec = PixelCodec(factor, frames=frames)
    lat = codec.encode(video)
    assert lat.shape == (2, 3 * frames * factor**2, 2, 8 // factor, 8 // factor) == (2, *codec.latent_shape(2 * frames, 8, 8))
    assert codec.temporal_factor == frames
    f = factor
    for c, k, i, j, n, y, x in [(0, 0, 0, 0, 0, 0, 0), (2, frames - 1, f - 1, 0, 1, 8 // f - 1, 1 % (8 // f)), (1, frames // 2, 0, f - 1, 1, 0, 0)]:
        channel = ((c * frames + k) * f + i) * f + j
        assert lat[1, channel, n, y, x] == video[1, c, frames * n + k, f * y + i, f * x + j]
    assert torch.equal(codec.decode(lat), video)


def test_packed_codec_refuses_a_frame_count_it_cannot_pack():
    codec = PixelCodec(2, frames=2)
    with pytest.raises(UserError, match="3-frame video cannot be packed 2 frames"):
        codec.encode(torch.zeros(1, 3, 3, 8, 8))
    with pytest.raises(UserError, match="positive integer"):
        PixelCodec(2, frames=0)
