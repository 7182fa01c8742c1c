"""The KV cache's rotate-once ring equals the re-rotate-on-read semantics it implements (kv_cache.py)."""

import pytest
import torch

from causal_rcm.models.kv_cache import KVCache, dequantize_int8, quantize_int8
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


# ------------------------------------------------------------------------------------------ int8
def test_int8_quantisation_rounds_each_value_to_half_a_step_of_its_vectors_scale():
    x = torch.randn(3, 7, 2, 16, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 7).view(1, 7, 1, 1)
    x[0, 0, 0] = 0.0  # a zero vector: scale 0, stored exactly
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (3, 7, 2, 1) and int(q.abs().max()) == 127
    back = dequantize_int8(q, scale, torch.float32)
    assert torch.all((back - x).abs() <= scale / 2 * (1 + 1e-5) + 1e-30)
    assert torch.equal(back[0, 0, 0], torch.zeros(16))


def _cache_reads(int8: bool, dtype: torch.dtype, seed: int = 0):
    """Six chunks of 2 frames through one layer's cache (sink 1, window 5): what the last chunk attends to, and q."""
    cache = KVCache(num_layers=1, sink_frames=1, window_frames=5, int8=int8)
    g = torch.Generator().manual_seed(seed)
    H, D = 2, 64
    for step in range(6):
        cache.begin(2, TPF)
        k, v = torch.randn(2, 1, 2 * TPF, H, D, generator=g).to(dtype)  # unit scale, as after q/k RMSNorm
        rot, sinks = cache.rope_frames(2)
        sink_freqs = rope_freqs(sinks, *GRID, D) if sinks.numel() else None
        k_rot = apply_rope(k, rope_freqs(rot, *GRID, D))
        keys, values = cache.layers[0].update(k, k_rot, v, sink_freqs, commit=True)
        cache.end(2, commit=True)
    q = torch.randn(1, 2 * TPF, H, D, generator=g).to(dtype)
    return cache, q, keys, values


def test_int8_cache_attention_is_within_tolerance_of_the_fp32_caches():
    """The same keys and values through a float32 and an int8 cache: attention outputs agree to int8's rounding."""
    from causal_rcm.kernels.dispatch import math_attention

    ref_cache, q, k_ref, v_ref = _cache_reads(False, torch.float32)
    int8_cache, _, k8, v8 = _cache_reads(True, torch.float32)
    assert k8.shape == k_ref.shape and k8.dtype == torch.float32
    out_ref, out8 = (math_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                     for k, v in ((k_ref, v_ref), (k8, v8)))
    # keys and values in another order (the int8 read puts the chunk last, at full precision): attention does not
    # depend on it
    err = (out8 - out_ref).abs().max() / out_ref.abs().max()
    assert 0 < err < 0.02
    # the stored frames differ from float32 by at most half a quantisation step (order aside: sorted per column)
    for a, b in ((k8, k_ref), (v8, v_ref)):
        assert (a.sort(dim=1).values - b.sort(dim=1).values).abs().max() <= b.abs().amax() / 254 * 1.01


def test_int8_cache_bytes_halve_bf16_and_quarter_fp32():
    """Counted bytes: D + 4 per token and head in int8 (a float32 scale each), 2 D in bf16, 4 D in fp32."""
    sizes = {}
    for name, int8, dtype in (("fp32", False, torch.float32), ("bf16", False, torch.bfloat16), ("int8", True, torch.float32)):
        cache, *_ = _cache_reads(int8, dtype)
        sizes[name] = cache.nbytes()
    D, H, tokens, sink_tokens = 64, 2, (1 + 5) * TPF, 1 * TPF
    assert sizes["int8"] == 2 * tokens * H * (D + 4) + sink_tokens * H * D * 4  # keys and values; sink keys before RoPE
    assert sizes["fp32"] == (2 * tokens + sink_tokens) * H * D * 4
    sink_keys = {"fp32": sink_tokens * H * D * 4, "bf16": sink_tokens * H * D * 2, "int8": sink_tokens * H * D * 4}
    kv = {name: sizes[name] - sink_keys[name] for name in sizes}  # the keys and values of every frame
    assert kv["int8"] / kv["fp32"] == (D + 4) / (4 * D) and kv["int8"] / kv["bf16"] == (D + 4) / (2 * D)  # 0.27, 0.53


def test_a_model_streams_with_an_int8_cache_close_to_its_float_cache():
    model = random_model()
    chunks = _chunks([2] * 6, seed=3)
    ctx = torch.randn(1, 5, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = [_stream(model, model.new_kv_cache(1, 4, int8=int8), chunks, ctx) for int8 in (False, True)]
    for i, (a, b) in enumerate(zip(*outs)):
        rel = float((b - a).abs().max() / a.abs().max())
        assert rel < 0.03, f"forward {i}: {rel}"
    assert any(not torch.equal(a, b) for a, b in zip(*outs))  # it did quantise
