import itertools

import pytest
import torch

from causal_rcm.diffusion import (
    causal_sample,
    causal_sample_stream,
    consistency_sample,
    euler_sample,
    flow_time_grid,
    make_kv_caches,
    sample,
    sample_chunk,
    time_grid,
)
from causal_rcm.kernels.masks import block_causal
from tests.conftest import random_model, small_config


# ------------------------------------------------------------------ analytic cases
def test_euler_converges_to_the_exact_ode_solution(mocks):
    """Gaussian data: the probability-flow ODE maps eps to mu + sigma eps; Euler converges at first order."""
    model = mocks.GaussianVelocity(mu=0.7, sigma=0.3)
    noise = torch.randn(4, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = 0.7 + 0.3 * noise
    ctx = torch.zeros(4, 1, 1)
    errors = [(euler_sample(model, noise, ctx, steps=n) - exact).abs().max().item() for n in (4, 16, 64, 256)]
    assert errors[0] > 1e-2  # few steps are visibly wrong ...
    assert errors[-1] < 1e-2  # ... and many steps are right
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 5.0  # 4x the steps, 4x smaller error: first order
    shifted = (euler_sample(model, noise, ctx, steps=1024, shift=5.0) - exact).abs().max().item()
    assert shifted < 1e-2


@pytest.mark.parametrize("steps", [1, 3, [1.0, 0.9, 0.2, 0.0]])
def test_euler_is_exact_for_a_point_mass(mocks, video_shape, steps):
    """Straight paths: with the exact velocity of a point mass, every Euler step lands on the path."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(video_shape, generator=g), torch.randn(video_shape, generator=g)
    out = euler_sample(mocks.PointMassOracle(x0), noise, torch.zeros(2, 1, 1), steps=steps)
    torch.testing.assert_close(out, x0)


def test_consistency_sampler_with_oracle_returns_x0_and_uses_fresh_noise(mocks, video_shape):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(video_shape, generator=g), torch.randn(video_shape, generator=g)
    oracle = mocks.PointMassOracle(x0)
    times = [1.0, 0.8, 0.5, 0.2, 0.0]
    out = consistency_sample(oracle, noise, torch.zeros(2, 1, 1), steps=times, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, x0)
    # called at the chosen times, in Wan units, one per frame
    assert [c["t"].unique().tolist() for c in oracle.calls] == [[pytest.approx(1000 * s)] for s in times[:-1]]
    assert all(c["t"].shape == (2, 6) for c in oracle.calls)
    # between steps the input is x0 re-noised with fresh, unit-variance noise
    eps = [noise] + [(c["x"] - (1 - s) * x0) / s for c, s in zip(oracle.calls[1:], times[1:-1])]
    for a, b in itertools.combinations(eps, 2):
        assert (a - b).abs().mean() > 0.5
    assert all(0.6 < e.std().item() < 1.4 for e in eps)
    # reproducible with the same generator
    again = mocks.PointMassOracle(x0)
    consistency_sample(again, noise, torch.zeros(2, 1, 1), steps=times, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(again.calls[2]["x"], oracle.calls[2]["x"])


def test_one_step_euler_equals_one_step_consistency(mock_model, contexts, video_shape):
    noise = torch.randn(video_shape)
    a = euler_sample(mock_model, noise, contexts[0], steps=1)
    b = consistency_sample(mock_model, noise, contexts[0], steps=1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_guidance_one_equals_conditional_sampling(mock_model, contexts, video_shape):
    ctx, neg = contexts
    noise = torch.randn(video_shape)
    plain = euler_sample(mock_model, noise, ctx, steps=4)
    mock_model.calls.clear()
    with_neg = euler_sample(mock_model, noise, ctx, steps=4, guidance=1.0, neg_context=neg)
    torch.testing.assert_close(with_neg, plain, rtol=0, atol=0)
    assert all(c["context"] is ctx for c in mock_model.calls)
    guided = euler_sample(mock_model, noise, ctx, steps=4, guidance=3.0, neg_context=neg)
    assert (guided - plain).abs().max() > 1e-2


def test_euler_sample_passes_mask_and_callback(mock_model, contexts, video_shape):
    mask = block_causal(3, 2, 4)
    seen = []
    euler_sample(mock_model, torch.randn(video_shape), contexts[0], steps=3, shift=5.0, mask=mask, callback=seen.append)
    assert all(c["mask"] is mask for c in mock_model.calls)
    assert [d["i"] for d in seen] == [0, 1, 2]
    torch.testing.assert_close(torch.tensor([d["s"] for d in seen], dtype=torch.float64), flow_time_grid(3, 5.0)[:-1])
    assert seen[-1]["s_next"] == 0 and seen[0]["x0"].shape == video_shape


def test_time_grid_arguments():
    torch.testing.assert_close(time_grid(2, 3.0), flow_time_grid(2, 3.0))
    torch.testing.assert_close(time_grid([1.0, 0.25, 0.0]), torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="shift"):
        time_grid([1.0, 0.25, 0.0], 5.0)
    with pytest.raises(ValueError):
        time_grid([0.25, 1.0, 0.0])


# ------------------------------------------------------------------------ causal
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_causal_one_chunk_equals_bidirectional_euler(mock_model, contexts, video_shape, guidance):
    ctx, neg = contexts
    noise = torch.randn(video_shape)
    kw = dict(steps=5, shift=3.0, guidance=guidance, neg_context=neg)
    causal = causal_sample(mock_model, noise, ctx, frames_per_chunk=video_shape[2], **kw)
    torch.testing.assert_close(causal, euler_sample(mock_model, noise, ctx, **kw))


@pytest.mark.parametrize("frames_per_chunk", [1, 2, 3])
def test_causal_euler_with_cfg_equals_cache_free_reference(mocks, mock_model, contexts, video_shape, frames_per_chunk):
    ctx, neg = contexts
    noise = torch.randn(video_shape, generator=torch.Generator().manual_seed(3))
    out = causal_sample(mock_model, noise, ctx, frames_per_chunk=frames_per_chunk, steps=4, shift=2.0,
                        guidance=3.0, neg_context=neg)
    ref = mocks.reference_causal(mock_model, noise, ctx, frames_per_chunk=frames_per_chunk, grid=flow_time_grid(4, 2.0),
                           guidance=3.0, neg=neg)
    torch.testing.assert_close(out, ref)
    # the history matters: generating the chunks independently differs
    alone = torch.cat([euler_sample(mock_model, c, ctx, steps=4, shift=2.0, guidance=3.0, neg_context=neg)
                       for c in noise.split(frames_per_chunk, dim=2)], dim=2)
    assert (alone[:, :, frames_per_chunk:] - out[:, :, frames_per_chunk:]).abs().max() > 1e-3


def test_causal_consistency_equals_cache_free_reference(mocks, mock_model, contexts, video_shape):
    ctx = contexts[0]
    noise = torch.randn(video_shape)
    times = [1.0, 0.9, 0.6, 0.0]
    out = causal_sample(mock_model, noise, ctx, frames_per_chunk=2, steps=times, solver="consistency",
                        generator=torch.Generator().manual_seed(7))
    ref = mocks.reference_causal(mock_model, noise, ctx, frames_per_chunk=2, grid=times, solver="consistency",
                           generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, ref)


def test_cache_refresh_runs_the_clean_chunk_at_t0(mock_model, contexts, video_shape):
    ctx, neg = contexts
    noise = torch.randn(video_shape)
    chunks = list(causal_sample_stream(mock_model, noise, ctx, frames_per_chunk=2, steps=3, guidance=2.0,
                                       neg_context=neg))
    refreshes = [c for c in mock_model.calls if c["update_cache"]]
    # 3 chunks x 3 steps x 2 branches, plus one refresh per branch for all but the last chunk
    assert len(mock_model.calls) == 3 * 3 * 2 + 2 * 2 and len(refreshes) == 4
    for i, call in enumerate(refreshes):
        assert bool((call["t"] == 0).all()) and call["t"].shape == (2, 2)
        torch.testing.assert_close(call["x"], chunks[i // 2], rtol=0, atol=0)
        assert call["context"] is (ctx if i % 2 == 0 else neg)
    cond_cache, uncond_cache = refreshes[0]["kv_cache"], refreshes[1]["kv_cache"]
    assert cond_cache is not uncond_cache and cond_cache.num_frames == uncond_cache.num_frames == 4
    assert not any(c["update_cache"] for c in mock_model.calls if not bool((c["t"] == 0).all()))


def test_cache_refreshed_at_wrong_time_would_change_the_result(mocks, contexts, video_shape):
    """The mock's keys depend on t, so the exact match with the reference pins the refresh to t = 0."""
    ctx = contexts[0]
    noise = torch.randn(video_shape)

    class RefreshAtHalf(mocks.MockCausalModel):
        def forward(self, x, t, context, **kw):
            if kw.get("update_cache"):
                t = torch.full_like(t, 500.0)
            return super().forward(x, t, context, **kw)

    good = causal_sample(mocks.MockCausalModel(), noise, ctx, frames_per_chunk=2, steps=3)
    bad = causal_sample(RefreshAtHalf(), noise, ctx, frames_per_chunk=2, steps=3)
    assert (good[:, :, 2:] - bad[:, :, 2:]).abs().max() > 1e-3
    torch.testing.assert_close(good[:, :, :2], bad[:, :, :2])


def test_few_step_causal_with_oracle_returns_x0_any_length(mocks):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 3, 7, 2, 2, generator=g)  # 7 frames in chunks of 3: last chunk has 1
    oracle = mocks.PointMassOracle(x0)
    for steps in (1, 2, 4):
        out = causal_sample(oracle, noise, torch.zeros(1, 1, 1), frames_per_chunk=3, steps=steps, shift=5.0,
                            solver="consistency")
        torch.testing.assert_close(out, x0)


def test_causal_gaussian_matches_per_frame_ode(mocks):
    """Frames independent: causal Euler equals bidirectional Euler, for any chunking and length."""
    model = mocks.GaussianVelocity(mu=-0.5, sigma=1.5)
    noise = torch.randn(2, 2, 11, 2, 2, generator=torch.Generator().manual_seed(1))
    ctx = torch.zeros(2, 1, 1)
    ref = euler_sample(model, noise, ctx, steps=8, shift=5.0)
    torch.testing.assert_close(causal_sample(model, noise, ctx, frames_per_chunk=4, steps=8, shift=5.0), ref)


def test_stream_yields_chunks_and_accepts_an_unbounded_noise_source(mock_model, contexts):
    ctx = contexts[0][:1]
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 3, 6, 2, 2, generator=g)
    seen = []
    whole = causal_sample(mock_model, noise, ctx, frames_per_chunk=2, steps=2, callback=seen.append)
    assert [(d["chunk"], d["i"]) for d in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]

    def endless():
        for k in itertools.count():
            yield noise[:, :, 2 * k : 2 * k + 2] if k < 3 else torch.randn(1, 3, 2, 2, 2)

    stream = causal_sample_stream(mock_model, endless(), ctx, frames_per_chunk=2, steps=2)
    first = list(itertools.islice(stream, 4))
    assert [c.shape[2] for c in first] == [2, 2, 2, 2]
    torch.testing.assert_close(torch.cat(first[:3], dim=2), whole)


def test_stream_passes_cache_window_and_splits_actions(mock_model, contexts):
    ctx = contexts[0]
    noise = torch.randn(2, 3, 4, 2, 2)
    actions = torch.arange(8.0).reshape(2, 4)
    list(causal_sample_stream(mock_model, noise, ctx, frames_per_chunk=2, steps=2, sink_frames=1,
                              window_frames=3, actions=actions))
    cache = mock_model.calls[0]["kv_cache"]
    assert (cache.sink_frames, cache.window_frames) == (1, 3)
    torch.testing.assert_close(mock_model.calls[0]["actions"], actions[:, :2])
    torch.testing.assert_close(mock_model.calls[-1]["actions"], actions[:, 2:])


def test_sample_chunk_is_the_building_block(mock_model, contexts):
    """A pipeline can switch prompts between chunks by calling sample_chunk itself."""
    ctx_a, ctx_b = contexts
    noise = torch.randn(2, 3, 4, 2, 2)
    guided = make_kv_caches(mock_model, guidance=torch.tensor(2.0))
    assert guided[0] is not guided[1] and guided[1] is not None
    caches = make_kv_caches(mock_model)
    assert caches[1] is None
    a = sample_chunk(mock_model, noise[:, :, :2], ctx_a, caches, steps=3)
    b = sample_chunk(mock_model, noise[:, :, 2:], ctx_b, caches, steps=3, refresh=False)
    assert caches[0].num_frames == 2
    # prompt switch: same chunk noise under the first prompt gives another result
    c = sample_chunk(mock_model, noise[:, :, 2:], ctx_a, caches, steps=3, refresh=False)
    assert (b - c).abs().max() > 1e-3 and a.shape == b.shape


def test_causal_rejects_bad_arguments(mock_model, contexts):
    noise = torch.randn(2, 3, 4, 2, 2)
    with pytest.raises(ValueError, match="solver"):
        causal_sample(mock_model, noise, contexts[0], frames_per_chunk=2, steps=2, solver="heun")
    with pytest.raises(ValueError, match="frames_per_chunk"):
        causal_sample(mock_model, noise, contexts[0], frames_per_chunk=0, steps=2)
    with pytest.raises(ValueError, match="neg_context"):
        causal_sample(mock_model, noise, contexts[0], frames_per_chunk=2, steps=2, guidance=2.0)


# ------------------------------------------------------------------------ prefix
@pytest.mark.parametrize("frames_per_chunk", [1, 2])
def test_a_causal_prefix_is_committed_as_the_models_own_chunks(mocks, mock_model, contexts, frames_per_chunk):
    """Continuing a prefix equals generating from a cache that committed the prefix's chunks at t = 0, with their actions."""
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 2, 3, 6, 2, 2, generator=g)
    oracle = mocks.PointMassOracle(x0)  # locates each chunk by the frames committed: the prefix must be in the cache
    out = causal_sample(oracle, noise[:, :, 2:], torch.zeros(2, 1, 1), frames_per_chunk=frames_per_chunk, steps=2,
                        solver="consistency", prefix=x0[:, :, :2], generator=g)
    torch.testing.assert_close(out, x0[:, :, 2:])

    actions = torch.arange(12.0).reshape(2, 6)
    causal_sample(mock_model, noise[:, :, 2:], contexts[0], frames_per_chunk=2, steps=2, prefix=x0[:, :, :2], actions=actions)
    first, second = mock_model.calls[0], mock_model.calls[1]
    assert first["update_cache"] and bool((first["t"] == 0).all())
    torch.testing.assert_close(first["x"], x0[:, :, :2], rtol=0, atol=0)
    torch.testing.assert_close(first["actions"], actions[:, :2])
    torch.testing.assert_close(second["actions"], actions[:, 2:4])  # the new frames take the actions after the prefix


@pytest.mark.parametrize("given", [1, 3])
def test_a_prefix_that_ends_inside_a_chunk_opens_it_at_t0(mocks, mock_model, contexts, given):
    """An image's latent frame (1) or a clip's end (3) before chunks of 2: the given frames sit at t = 0 inside the
    first new chunk beside its noisy frames, and the stream equals the cache-free block-causal reference."""
    g = torch.Generator().manual_seed(7)
    prefix, noise = torch.randn(2, 3, given, 2, 2, generator=g), torch.randn(2, 3, 5, 2, 2, generator=g)
    ctx, neg = contexts
    grid = time_grid(3, 2.0)
    out = causal_sample(mock_model, noise, ctx, frames_per_chunk=2, steps=grid, solver="euler", guidance=2.0,
                        neg_context=neg, prefix=prefix)
    assert out.shape == noise.shape  # only the new frames come back
    ref = mocks.reference_causal(mock_model, noise, ctx, frames_per_chunk=2, grid=grid, guidance=2.0, neg=neg, prefix=prefix)
    torch.testing.assert_close(out, ref)
    first = next(c for c in mock_model.calls if not c["update_cache"] and c["x"].shape[2] == 2 and bool((c["t"][:, 0] == 0).all()))
    assert bool((first["t"][:, 1] > 0).all())  # one chunk: the given frame clean, the new one noisy
    torch.testing.assert_close(first["x"][:, :, :1], prefix[:, :, -1:], rtol=0, atol=0)

    x0 = torch.randn(2, 3, given + 5, 2, 2, generator=g)  # an oracle of the whole video: the given frames are kept
    out = causal_sample(mocks.PointMassOracle(x0), noise, ctx, frames_per_chunk=2, steps=2, solver="consistency",
                        prefix=x0[:, :, :given], generator=g)
    torch.testing.assert_close(out, x0[:, :, given:])


@pytest.mark.parametrize("solver", [euler_sample, consistency_sample])
def test_a_bidirectional_prefix_is_put_back_at_each_noise_level(mocks, solver):
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, 2, 3, 6, 2, 2, generator=g)
    oracle = mocks.PointMassOracle(x0)
    out = solver(oracle, noise[:, :, 2:], torch.zeros(2, 1, 1), steps=3, shift=2.0, prefix=x0[:, :, :2],
                 generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(out, x0[:, :, 2:])  # the model sees the whole window; only the new frames come back
    eps = torch.randn(x0[:, :, :2].shape, generator=torch.Generator().manual_seed(6))
    for call in oracle.calls:
        s = float(call["t"][0, 0]) / 1000
        assert call["x"].shape[2] == 6
        torch.testing.assert_close(call["x"][:, :, :2], (1 - s) * x0[:, :, :2] + s * eps)  # one noise path


def test_re_caching_without_eviction_changes_nothing_and_with_it_counts_its_calls():
    """A rebuilt cache re-runs the kept chunks as they were first committed: with nothing evicted (no window) it
    is the cache it replaces, so the samples are the same; past a window it is not, and calls_per_batch counts
    the re-runs. (Three layers: a cache entry of layer l depends on l - 1 chunks of history, so with two layers and
    this window a rebuilt cache would equal the old one.)"""
    from causal_rcm.diffusion.samplers import ChunkHistory, SamplerSpec

    model = random_model(small_config(num_layers=3), backend="math")
    g = torch.Generator().manual_seed(0)
    noise, context = torch.randn(2, 4, 12, 4, 6, generator=g), torch.randn(2, 8, 24, generator=g)
    with torch.no_grad():
        def run(window, recache):
            return causal_sample(model, noise, context, frames_per_chunk=2, steps=2, solver="euler", window_frames=window,
                                 sink_frames=0 if window is None else 2, recache_every=recache)

        torch.testing.assert_close(run(None, 1), run(None, 0), rtol=1e-4, atol=1e-5)
        assert (run(4, 1) - run(4, 0)).abs().max() > 1e-3
    for recache, window, sink in ((0, 4, 2), (1, 4, 2), (2, 4, 0), (3, None, 0)):
        spec = SamplerSpec(causal=True, steps=2, guidance=1.0, frames_per_chunk=2, sink_frames=sink, window_frames=window,
                           recache_every=recache)
        calls = []
        hook = model.register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            sample(model, noise, context, spec)
        hook.remove()
        assert len(calls) == spec.calls_per_batch(12)
    history = ChunkHistory(sink_frames=1, window_frames=4)
    for k in range(5):
        history.add(torch.full((1, 1, 2, 1, 1), float(k)))
    assert [int(x0[0, 0, 0]) for x0, _ in history.chunks()] == [0, 3, 4]  # the sink's chunk, then the window's
