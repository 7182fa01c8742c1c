"""Wan2.1's VAE as a codec: the frames of diffusers' ``WanPipeline`` decode (whole, and chunk by chunk with the
causal cache), the normalised posterior mean, and the same VAE from Wan's original file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from causal_rcm.data.components import codec_spec, make_codec, spec_dict  # noqa: E402
from causal_rcm.data.wan_vae import (  # noqa: E402
    StreamingWanDecoder, WanVAECodec, WanVAESpec, _config_from_wan_state, diffusers_vae_to_wan, read_vae_config,
    wan_vae_to_diffusers,
)
from causal_rcm.errors import CheckpointError, UserError  # noqa: E402

STATS = dict(latents_mean=[0.3, -0.2, 0.1, 0.5], latents_std=[2.0, 0.5, 1.5, 1.2])


def _tiny_vae(**config):
    torch.manual_seed(0)
    config = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]) | config
    return diffusers.AutoencoderKLWan(**config).eval()


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1), (1, 2, 2), (2, 3)])
def test_chunked_decode_equals_whole_video_decode(chunks):
    vae = _tiny_vae()
    z = torch.randn(1, 4, sum(chunks), 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vae.decode(z).sample
    decoder = StreamingWanDecoder(vae)
    parts, start = [], 0
    for n in chunks:
        parts.append(decoder.decode(z[:, :, start : start + n]))
        start += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape == (1, 3, 1 + 4 * (sum(chunks) - 1), 32, 32)
    torch.testing.assert_close(streamed, whole, rtol=1e-4, atol=1e-5)
    decoder.reset()  # a new video starts from a clean cache
    torch.testing.assert_close(decoder.decode(z[:, :, :2]), whole[:, :, :5], rtol=1e-4, atol=1e-5)


def test_channels_last_decode_equals_the_default_layout_and_switches_back():
    vae = _tiny_vae()
    z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    decoder = StreamingWanDecoder(vae)
    default = decoder.decode(z)
    seen = []
    probes = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last_3d)))
              for m in vae.modules() if isinstance(m, torch.nn.Conv3d)]
    decoder.use_channels_last()
    decoder.reset()
    torch.testing.assert_close(decoder.decode(z), default, rtol=1e-4, atol=1e-5)
    assert seen and all(seen)  # every convolution took its input channels-last
    decoder.use_channels_last(False)
    seen.clear()
    decoder.reset()
    torch.testing.assert_close(decoder.decode(z), default, rtol=1e-4, atol=1e-5)
    assert not any(seen) and not decoder.channels_last
    for probe in probes:
        probe.remove()


def test_compiled_decode_equals_eager_and_compiles_for_the_steady_state_only():
    """The compiled steady-state forward gives the eager pixels; the first video traces it at most twice (its
    first compiled frame sees caches written eagerly, the next ones caches with Inductor's strides), later videos never."""
    import torch._dynamo

    vae = _tiny_vae()
    z = torch.randn(1, 4, 7, 4, 4, generator=torch.Generator().manual_seed(3))
    decoder = StreamingWanDecoder(vae)
    with torch.no_grad():
        eager = torch.cat([decoder.decode(z[:, :, :1]), decoder.decode(z[:, :, 1:4]), decoder.decode(z[:, :, 4:])], dim=2)
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    decoder.compile(backend=counting_backend)
    assert decoder.compiled
    counts = []
    for _ in range(2):
        decoder.reset()
        with torch.no_grad():
            compiled = torch.cat([decoder.decode(z[:, :, :1]), decoder.decode(z[:, :, 1:4]), decoder.decode(z[:, :, 4:])], dim=2)
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
        counts.append(len(compiles))
    assert 1 <= counts[0] <= 2 and counts[1] == counts[0]
    decoder.compile(False)
    assert not decoder.compiled


def _stats(vae):
    shape = (1, -1, 1, 1, 1)
    return torch.tensor(vae.config.latents_mean).view(shape), torch.tensor(vae.config.latents_std).view(shape)


def test_codec_decodes_as_wanpipeline_whole_and_chunk_by_chunk():
    vae = _tiny_vae(**STATS)
    codec = WanVAECodec(vae)
    z = torch.randn(1, 4, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    mean, std = _stats(vae)
    with torch.no_grad():  # WanPipeline: latents / (1 / latents_std) + latents_mean, then the VAE's decode
        reference = vae.decode(z / (1.0 / std) + mean).sample
    whole = codec.decode(z)
    assert whole.shape == reference.shape == (1, 3, codec.video_frames(4), 16, 16) == (1, 3, 13, 16, 16)
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-5)
    decoder = codec.stream_decoder()
    parts = [decoder.decode(z[:, :, a:b]) for a, b in ((0, 1), (1, 2), (2, 4))]
    assert [p.shape[2] for p in parts] == [1, 4, 8]
    torch.testing.assert_close(torch.cat(parts, dim=2), reference, rtol=1e-5, atol=1e-5)


def test_codec_encodes_the_normalised_posterior_mean_of_1_plus_4k_frames():
    vae = _tiny_vae(**STATS)
    codec = WanVAECodec(vae)
    video = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    mean, std = _stats(vae)
    with torch.no_grad():
        expected = (vae.encode(video).latent_dist.mode() - mean) / std
    latents = codec.encode(video)
    assert latents.shape == (2, *codec.latent_shape(9, 16, 16)) == (2, 4, 3, 2, 2)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    assert (codec.latent_frames(9), codec.latent_frames(10), codec.video_frames(3), codec.spatial_factor) == (3, 4, 9, 8)
    with pytest.raises(UserError, match=r"1 \+ 4k frames"):
        codec.encode(video[:, :, :8])
    with pytest.raises(UserError, match="multiples of 8"):
        codec.latent_shape(9, 16, 20)


def test_streams_sharing_a_vae_keep_their_own_caches():
    codec = WanVAECodec(_tiny_vae(**STATS))
    g = torch.Generator().manual_seed(6)
    za, zb = torch.randn(1, 4, 3, 2, 2, generator=g), torch.randn(1, 4, 3, 2, 2, generator=g)
    a, b = codec.stream_decoder(), codec.stream_decoder()
    interleaved = [a.decode(za[:, :, :1]), b.decode(zb[:, :, :1]), a.decode(za[:, :, 1:]), b.decode(zb[:, :, 1:])]
    torch.testing.assert_close(torch.cat(interleaved[0::2], dim=2), codec.decode(za), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(interleaved[1::2], dim=2), codec.decode(zb), rtol=1e-5, atol=1e-5)


def test_original_vae_file_loads_the_same_vae(tmp_path):
    vae = _tiny_vae(base_dim=8, z_dim=16)  # an original file has no latent statistics: Wan2.1's 16 channels
    wan = diffusers_vae_to_wan(vae.state_dict(), vae.config)
    back = wan_vae_to_diffusers(wan, vae.config)
    assert back.keys() == vae.state_dict().keys() and all(torch.equal(back[k], v) for k, v in vae.state_dict().items())
    torch.save(wan, tmp_path / "Wan2.1_VAE.pth")
    inferred = read_vae_config(tmp_path / "Wan2.1_VAE.pth")
    for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "attn_scales"):
        assert inferred[key] == vae.config[key], key
    spec = codec_spec({"kind": "wan-vae", "path": "Wan2.1_VAE.pth"})
    assert spec == WanVAESpec("Wan2.1_VAE.pth") and codec_spec(spec_dict(spec)) == spec
    codec = make_codec(spec, tmp_path)
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(codec.decode(z), WanVAECodec(vae).decode(z), rtol=0, atol=0)


def test_wan21_vae_names_and_shapes_give_its_architecture():
    """Wan2.1's VAE (diffusers' default AutoencoderKLWan) in Wan's names (wan/modules/vae.py: flat downsamples and
    upsamples, residual Sequentials, middle, head), and its architecture read back from those names' shapes."""
    with torch.device("meta"):
        vae = diffusers.AutoencoderKLWan()
    wan = diffusers_vae_to_wan(vae.state_dict(), vae.config)
    assert len(wan) == len(vae.state_dict())
    assert {
        "conv1.weight", "conv2.weight", "encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
        "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.3.shortcut.weight",
        "encoder.downsamples.5.time_conv.weight", "encoder.downsamples.8.time_conv.weight", "encoder.middle.1.to_qkv.weight",
        "encoder.middle.2.residual.6.weight", "encoder.head.2.weight", "decoder.middle.0.residual.3.gamma",
        "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.7.time_conv.weight",
        "decoder.upsamples.11.resample.1.weight", "decoder.upsamples.14.residual.6.weight", "decoder.head.0.gamma",
    } <= wan.keys()
    inferred = _config_from_wan_state(wan, Path("Wan2.1_VAE.pth"))
    assert inferred == {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                        "temperal_downsample": [False, True, True]}


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="Wan VAE not found"):
        make_codec(WanVAESpec("vae"), tmp_path)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(CheckpointError, match="not a Wan VAE"):
        make_codec(WanVAESpec("vae"), tmp_path)
    torch.save({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not a Wan2.1 VAE state dict"):
        make_codec(WanVAESpec("bad.pth"), tmp_path)
    with pytest.raises(UserError, match="codec kind 'vqgan' is not supported"):
        codec_spec({"kind": "vqgan"})


def test_a_tiled_stream_decodes_as_the_vaes_tiled_decode():
    """Frames larger than a tile: each tile keeps its own cache across chunks, blended as diffusers' tiled_decode
    blends a whole video (48 x 40 px in tiles of 32 with stride 24: 2 x 2 tiles, the edge ones cut)."""
    vae = _tiny_vae(**STATS)
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24)
    z = torch.randn(1, 4, 4, 6, 5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = vae.decode(z).sample  # tiled: the frames are larger than a tile
    untiled = StreamingWanDecoder(vae).decode(z)
    decoder = StreamingWanDecoder(vae, tiled=True)
    parts = torch.cat([decoder.decode(z[:, :, a:b]) for a, b in ((0, 1), (1, 3), (3, 4))], dim=2)
    assert parts.shape == reference.shape == (1, 3, 13, 48, 40)
    torch.testing.assert_close(parts, reference, rtol=1e-5, atol=1e-5)
    assert (reference - untiled).abs().max() > 1e-3  # the tiles' seams are blended, not the untiled decode
    small = StreamingWanDecoder(vae, tiled=True).decode(z[:, :, :, :4, :4])  # fits one tile: decoded whole
    torch.testing.assert_close(small, StreamingWanDecoder(vae).decode(z[:, :, :, :4, :4]), rtol=0, atol=0)
