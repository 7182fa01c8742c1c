"""Streaming Wan VAE decode, chunk by chunk with the causal cache, equals diffusers' whole-video decode."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from causal_rcm.bench.vae_stream import StreamingWanDecoder  # noqa: E402


def _tiny_vae():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])
    return vae.eval()


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
