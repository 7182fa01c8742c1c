"""The KV cache's rotate-once ring equals the re-rotate-on-read semantics it implements (kv_cache.py)."""

import pytest
import torch

from causal_rcm.models.kv_cache import KVCache
from causal_rcm.models.rope import apply_rope, rope_freqs

from ..conftest import random_model

GRID = (2, 2)  # latent 4x4 with patch 2x2: 4 tokens per frame
TPF = GRID[0] * GRID[1]


class ReferenceCache:
    """The straightforward semantics: keys kept before RoPE; every read lays the visible frames (sinks,
    then the last recent ones) at positions 0..P-1 and the chunk at P..P+f-1, and rotates them all."""

    def __init__(self, num_layers, head_dim, sink_frames=0, window_frames=None):
        self.sink_frames, self.window_frames, self.head_dim = sink_frames, window_frames, head_dim
        self.frames = [[] for _ in range(num_layers)]  # per layer: committed (k, v) per frame, before RoPE
        self.layers = [_ReferenceLayer(self, i) for i in range(num_layers)]
        self.num_frames = 0

    def visible(self, new_frames):  # indices of the committed frames a chunk sees
        sinks = list(range(min(self.num_frames, self.sink_frames)))
        recent = list(range(len(sinks), self.num_frames))
        if self.window_frames is not None:
            recent = recent[len(recent) - min(len(recent), self.window_frames - new_frames):]
        return sinks + recent

    def begin(self, new_frames, tokens_per_frame):
        start = len(self.visible(new_frames))
        return torch.arange(start, start + new_frames)

    def rope_frames(self, new_frames):  # the model rotates the chunk at the positions it sees; no sinks apart
        return self.begin(new_frames, TPF), torch.arange(0)

    def end(self, new_frames, commit):
        self.num_frames += new_frames if commit else 0


class _ReferenceLayer:
    def __init__(self, owner, index):
        self.owner, self.index = owner, index

    def update(self, k, k_rot, v, sink_freqs, commit):
        owner = self.owner
        f = k.shape[1] // TPF
        seen = [owner.frames[self.index][j] for j in owner.visible(f)]
        keys, values = k_rot, v
        if seen:
            freqs = rope_freqs(torch.arange(len(seen)), *GRID, owner.head_dim)
            keys = torch.cat([apply_rope(torch.cat([a for a, _ in seen], 1), freqs), k_rot], dim=1)
            values = torch.cat([b for _, b in seen] + [v], dim=1)
        if commit:
            owner.frames[self.index] += [(a.detach(), b.detach()) for a, b in zip(k.split(TPF, 1), v.split(TPF, 1))]
        return keys, values


def _chunks(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 4, n, 4, 4, generator=g), torch.rand(1, n, generator=g) * 1000) for n in sizes]


def _stream(model, cache, chunks, ctx, steps=2):
    """Each chunk: ``steps`` denoising reads at its timesteps, then the commit at t = 0; all outputs."""
    outs = []
    for x, t in chunks:
        for s in range(steps):
            outs.append(model(x, t * (s + 1) / steps, ctx, kv_cache=cache))
        outs.append(model(x, torch.zeros_like(t), ctx, kv_cache=cache, update_cache=True))
    return outs


@pytest.mark.parametrize(
    "sink,window,sizes",
    [(1, 4, [1] * 24), (2, 5, [2] * 14), (1, 6, [3] * 10), (2, 6, [1, 3, 2, 1, 1, 3, 2, 2, 3, 1, 2, 3] * 2),
     (3, 4, [2, 4, 1] * 6), (2, None, [1, 2] * 6), (0, 3, [1, 2, 3] * 6)],
    ids=["frame-s1-w4", "chunk2-s2-w5", "chunk3-s1-w6", "mixed-s2-w6", "sinks-straddle-s3-w4", "unbounded-s2",
         "mixed-nosink-w3"],
)
def test_long_stream_equals_re_rotate_on_read_reference(sink, window, sizes):
    model = random_model()
    chunks = _chunks(sizes)
    ctx = torch.randn(1, 5, 24, generator=torch.Generator().manual_seed(1))
    assert window is None or sum(sizes) >= 4 * (sink + window)
    with torch.no_grad():
        ref = _stream(model, ReferenceCache(model.config.num_layers, model.config.head_dim, sink, window), chunks, ctx)
        cache = model.new_kv_cache(sink_frames=sink, window_frames=window)
        got = _stream(model, cache, chunks, ctx)
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m: f"forward {i}: {m}")
    assert cache.num_frames == sum(sizes)


def test_gradient_through_a_cached_forward_equals_the_reference():
    """Self forcing's exit step: the chunk's own keys and values stay in the graph."""
    model = random_model()
    chunks = _chunks([2, 2, 2, 2, 2], seed=2)
    ctx = torch.randn(1, 5, 24)
    grads = []
    for cache in (model.new_kv_cache(1, 4), ReferenceCache(model.config.num_layers, model.config.head_dim, 1, 4)):
        with torch.no_grad():
            _stream(model, cache, chunks[:-1], ctx, steps=1)
        x = chunks[-1][0].clone().requires_grad_(True)
        model.zero_grad()
        model(x, chunks[-1][1], ctx, kv_cache=cache).square().sum().backward()
        grads.append((x.grad, model.blocks[0].self_attn.k.weight.grad.clone()))
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reads_attend_in_place_without_copies():
    cache = KVCache(num_layers=1, sink_frames=1, window_frames=3)
    layer = cache.layers[0]
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        cache.begin(1, TPF)
        k, v = torch.randn(2, 1, TPF, 2, 8, generator=g)
        sink_freqs = rope_freqs(*cache.rope_frames(1)[1:], *GRID, 8) if step > 0 else None
        keys, values = layer.update(k, k, v, sink_freqs, commit=True)
        assert keys.untyped_storage().data_ptr() == layer.k.untyped_storage().data_ptr()
        assert values.untyped_storage().data_ptr() == layer.v.untyped_storage().data_ptr()
        cache.end(1, commit=True)
        assert keys.shape[1] == TPF * min(step + 1, 1 + 3)
    assert cache.nbytes() == (2 * (1 + 3) + 1) * TPF * 2 * 8 * 4


def test_a_smaller_read_after_a_larger_uncommitted_one_is_refused_once_the_window_is_full(model):
    cache = model.new_kv_cache(window_frames=3)
    ctx = torch.randn(1, 5, 24)
    (x2, t2), (x1, t1) = _chunks([2, 1])
    with torch.no_grad():
        for _ in range(2):
            model(x2, t2, ctx, kv_cache=cache, update_cache=True)
        model(x2, t2, ctx, kv_cache=cache)
        with pytest.raises(ValueError, match="overwrote"):
            model(x1, t1, ctx, kv_cache=cache)
        model(x2, t2, ctx, kv_cache=cache, update_cache=True)  # committing the larger chunk goes on
        model(x1, t1, ctx, kv_cache=cache)


def test_rope_scores_depend_on_position_differences_only_even_far_into_a_stream():
    """Why stored positions may grow: angles in float64 make a shift of 10^6 frames invisible in fp32 scores."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 3 * TPF, 2, 24, generator=g)
    pos_q, pos_k = torch.tensor([7, 8, 9]), torch.tensor([0, 4, 9])
    scores = []
    for shift in (0, 10**6):
        rq = apply_rope(q, rope_freqs(pos_q + shift, *GRID, 24))
        rk = apply_rope(k, rope_freqs(pos_k + shift, *GRID, 24))
        scores.append(torch.einsum("bshd,bthd->bhst", rq, rk))
    torch.testing.assert_close(scores[1], scores[0], atol=2e-5, rtol=0)
