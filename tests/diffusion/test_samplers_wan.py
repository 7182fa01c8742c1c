"""The samplers on the real tiny CausalWanModel (KV cache, RoPE positions, CFG)."""

import dataclasses

import pytest
import torch

from causal_rcm.diffusion import SamplerSpec, causal_sample, euler_sample, flow_time_grid, make_kv_caches, sample, sample_chunk
from causal_rcm.models.wan import CausalWanConfig, CausalWanModel

from ..conftest import random_model, small_config

TOKENS_PER_FRAME = 4  # 4 x 4 latents, patch 2 x 2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = CausalWanModel(CausalWanConfig.preset("tiny"), attn_backend="math").eval()
    with torch.no_grad():  # the zero-initialised head would make every velocity 0
        for p in m.head.parameters():
            p.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def inputs(tiny):
    g = torch.Generator().manual_seed(1)
    cfg = tiny.config
    noise = torch.randn(1, cfg.in_dim, 6, 4, 4, generator=g)
    ctx = torch.randn(1, 8, cfg.text_dim, generator=g)
    neg = torch.randn(1, 8, cfg.text_dim, generator=g)
    return noise, ctx, neg


@torch.no_grad()
def test_one_chunk_equals_bidirectional_euler(tiny, inputs):
    noise, ctx, neg = inputs
    kw = dict(steps=3, shift=5.0, guidance=2.0, neg_context=neg)
    out = causal_sample(tiny, noise[:, :, :3], ctx, frames_per_chunk=3, **kw)
    ref = euler_sample(tiny, noise[:, :, :3], ctx, **kw)
    assert out.abs().mean() > 0.1
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@torch.no_grad()
@pytest.mark.parametrize("solver", ["euler", "consistency"])
def test_causal_with_cache_equals_block_causal_reference(tiny, inputs, mocks, solver):
    noise, ctx, neg = inputs
    grid = flow_time_grid(3, 5.0)
    out = causal_sample(tiny, noise, ctx, frames_per_chunk=2, steps=grid, solver=solver, guidance=2.0,
                        neg_context=neg, generator=torch.Generator().manual_seed(4))
    ref = mocks.reference_causal(tiny, noise, ctx, frames_per_chunk=2, grid=grid, solver=solver, guidance=2.0,
                                 neg=neg, generator=torch.Generator().manual_seed(4), tokens_per_frame=TOKENS_PER_FRAME)
    torch.testing.assert_close(out, ref, atol=5e-5, rtol=5e-5)


@torch.no_grad()
def test_rolling_window_stream_is_bounded(tiny, inputs):
    """Longer than the window: memory stays bounded, the output finite; a window that holds
    everything changes nothing."""
    noise, ctx, _ = inputs
    long_noise = torch.cat([noise, noise.flip(2), noise], dim=2)  # 18 frames
    caches = make_kv_caches(tiny, sink_frames=1, window_frames=5)
    sizes, chunks = [], []
    for chunk in long_noise.split(2, dim=2):
        chunks.append(sample_chunk(tiny, chunk, ctx, caches, steps=2, solver="consistency"))
        sizes.append(caches[0].nbytes())
    assert torch.isfinite(torch.cat(chunks, 2)).all()
    assert sizes[3] == sizes[-1] and caches[0].num_frames == 18

    full = causal_sample(tiny, noise, ctx, frames_per_chunk=2, steps=2, window_frames=None)
    roomy = causal_sample(tiny, noise, ctx, frames_per_chunk=2, steps=2, window_frames=6)
    torch.testing.assert_close(roomy, full)


# ---------------------------------------------------------------- a head narrower than a token
@pytest.fixture(scope="module")
def narrow():
    """A random model whose head maps 32 features to 12 x 2 x 2 = 48 values per token: 16 directions out of reach."""
    return random_model(small_config(in_dim=12, out_dim=12), seed=1)


def _draws(seed: int, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 12, 4, 4, 4, generator=g) for _ in range(n)]  # (B, C, F, H, W)


@torch.no_grad()
def test_euler_keeps_the_noise_the_head_cannot_reach(narrow):
    """The shapes models' speckle: where no output can go, x0 = x - s v is x's noise less a constant, so Euler ends
    where it started there (less the head's bias), whatever the steps and the shift."""
    complement, ctx = narrow.head_complement(), torch.randn(1, 8, 24)
    noise = _draws(0, 1)[0]
    bias = complement(narrow(noise, torch.full((1, 4), 500.0), ctx))  # the same for every input
    for steps, shift in ((2, 1.0), (6, 8.0)):
        out = euler_sample(narrow, noise, ctx, steps=steps, shift=shift)
        torch.testing.assert_close(complement(out), complement(noise) - bias, atol=1e-4, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("solver", ["euler", "consistency"])
@pytest.mark.parametrize("causal", [False, True])
def test_completed_samples_hold_the_networks_mean_where_its_head_cannot_reach(narrow, solver, causal):
    """With ``complete_x0`` the component out of reach is the network's own estimate (-bias), not the noise; the
    spec's switch turns it off; one step changes nothing else (causal: in the first chunk; the later ones attend to
    the completed chunks before them)."""
    complement, ctx = narrow.head_complement(), torch.randn(1, 8, 24)
    bias = complement(narrow(_draws(9, 1)[0], torch.full((1, 4), 500.0), ctx))
    spec = SamplerSpec(causal=causal, steps=3, solver=solver, shift=3.0, guidance=1.0, frames_per_chunk=2)
    for noise in _draws(1):
        done = sample(narrow, noise, ctx, spec, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(complement(done), -bias, atol=1e-4, rtol=0)
        plain = sample(narrow, noise, ctx, dataclasses.replace(spec, complete_x0=False), generator=torch.Generator().manual_seed(0))
        assert (complement(plain) + bias).abs().mean() > 0.3  # the noise is still there
    one = dataclasses.replace(spec, steps=1)
    noise = _draws(2, 1)[0]
    plain = sample(narrow, noise, ctx, dataclasses.replace(one, complete_x0=False))
    first = slice(0, 2 if causal else 4)
    torch.testing.assert_close(sample(narrow, noise, ctx, one)[:, :, first], (plain - complement(noise))[:, :, first], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- noisy context
@torch.no_grad()
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_noisy_context_commits_the_last_step_and_saves_one_forward_per_chunk(tiny, inputs, guidance):
    """Counted forwards: a clean context runs steps + 1 per committed chunk and branch, a noisy one steps, its last
    step committing; the frames differ from the clean refresh's and repeat exactly for the same seed."""
    noise, ctx, neg = inputs  # 6 frames: 3 chunks of 2, the last not committed
    commits: list[bool] = []
    hook = tiny.register_forward_hook(lambda m, a, kw, out: commits.append(kw.get("update_cache", False)), with_kwargs=True)
    outs, calls = {}, {}
    try:
        for mode in ("clean", "noisy", "noisy"):
            commits.clear()
            outs.setdefault(mode, []).append(causal_sample(
                tiny, noise, ctx, frames_per_chunk=2, steps=2, shift=3.0, solver="consistency", guidance=guidance,
                neg_context=neg, generator=torch.Generator().manual_seed(5), context_mode=mode))
            calls[mode] = list(commits)
    finally:
        hook.remove()
    branches = 1 if guidance == 1 else 2
    assert len(calls["clean"]) == (3 * 2 + 2) * branches and len(calls["noisy"]) == 3 * 2 * branches
    assert sum(calls["clean"]) == sum(calls["noisy"]) == 2 * branches
    per_chunk = 2 * branches  # the noisy context commits with each committed chunk's last step (both branches)
    assert calls["noisy"][: 2 * per_chunk] == ([False] * branches + [True] * branches) * 2
    a, b = outs["noisy"]
    assert torch.equal(a, b)
    clean = outs["clean"][0]
    torch.testing.assert_close(a[:, :, :2], clean[:, :, :2])  # the first chunk sees no context
    assert (a[:, :, 2:] - clean[:, :, 2:]).abs().mean() > 1e-3


@torch.no_grad()
def test_noisy_context_stream_equals_a_plain_loop_that_commits_the_last_step(tiny, inputs):
    """The reference written out: consistency steps against the cache, the last step's forward committing."""
    noise, ctx, _ = inputs
    grid = flow_time_grid(3, 3.0)
    out = causal_sample(tiny, noise, ctx, frames_per_chunk=2, steps=grid, solver="consistency",
                        generator=torch.Generator().manual_seed(7), context_mode="noisy", window_frames=4, sink_frames=1)
    cache, g, ref = tiny.new_kv_cache(sink_frames=1, window_frames=4), torch.Generator().manual_seed(7), []
    for x in noise.split(2, dim=2):
        for i in range(3):
            s, s_next = float(grid[i]), float(grid[i + 1])
            v = tiny(x, torch.full((1, 2), 1000 * s), ctx, kv_cache=cache, update_cache=i == 2)
            x0 = x - s * v
            x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * torch.randn(x.shape, generator=g)
        ref.append(x)
    torch.testing.assert_close(out, torch.cat(ref, dim=2), atol=1e-5, rtol=1e-5)
