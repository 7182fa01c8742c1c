import pytest
import torch

from causal_rcm.kernels import masks as M
from causal_rcm.models.wan import CausalWanConfig, CausalWanModel
from causal_rcm.models.adapters import load_model

from ..conftest import random_model, small_config

def diffusers_model(heads, head_dim, layers, in_ch, text_dim, seed):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_ch,
        out_channels=in_ch, text_dim=text_dim, freq_dim=32, ffn_dim=3 * heads * head_dim, num_layers=layers,
        cross_attn_norm=True, eps=1e-6,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    return ref


@pytest.mark.parametrize(
    "heads,head_dim,layers,frames,height,width",
    [(2, 16, 2, 3, 6, 8), (4, 24, 3, 5, 8, 4)],
    ids=["2heads-2layers-3f-6x8", "4heads-3layers-5f-8x4"],
)
def test_equivalence_with_diffusers(tmp_path, heads, head_dim, layers, frames, height, width):
    ref = diffusers_model(heads, head_dim, layers, in_ch=4, text_dim=24, seed=layers)
    ref.save_pretrained(tmp_path)
    model = load_model(tmp_path, attn_backend="math").eval()
    torch.manual_seed(1)
    x = torch.randn(2, 4, frames, height, width)
    t = torch.tensor([250.0, 875.0])
    ctx = torch.randn(2, 7, 24)
    tpf = (height // 2) * (width // 2)
    with torch.no_grad():
        expected = ref(x, t, ctx, return_dict=False)[0]
        out = model(x, t[:, None].expand(2, frames), ctx, mask=M.bidirectional(frames, 1, tpf))
        out_nomask = model(x, t[:, None].expand(2, frames), ctx)
        # Per-frame timesteps equal diffusers' per-token timesteps repeated over each frame's tokens.
        t_frames = torch.rand(2, frames) * 1000
        expected_pf = ref(x, t_frames.repeat_interleave(tpf, dim=1), ctx, return_dict=False)[0]
        out_pf = model(x, t_frames, ctx)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_nomask, out, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_pf, expected_pf, atol=1e-4, rtol=0)


def _inputs(frames, seed=0, hw=(4, 4)):
    torch.manual_seed(seed)
    x = torch.randn(1, 4, frames, *hw)
    t = torch.rand(1, frames) * 1000
    ctx = torch.randn(1, 5, 24)
    return x, t, ctx


@pytest.mark.parametrize("frames_per_chunk,num_chunks", [(1, 4), (2, 3), (3, 3)])
def test_streaming_equals_block_causal_full_sequence(model, frames_per_chunk, num_chunks):
    frames = frames_per_chunk * num_chunks
    x, t, ctx = _inputs(frames)
    mask = M.block_causal(num_chunks, frames_per_chunk, tokens_per_frame=4)
    with torch.no_grad():
        full = model(x, t, ctx, mask=mask)
        cache = model.new_kv_cache()
        outs = []
        for c in range(num_chunks):
            sl = slice(c * frames_per_chunk, (c + 1) * frames_per_chunk)
            outs.append(model(x[:, :, sl], t[:, sl], ctx, kv_cache=cache))  # a denoising step: no commit
            committed = model(x[:, :, sl], t[:, sl], ctx, kv_cache=cache, update_cache=True)
            torch.testing.assert_close(committed, outs[-1], atol=0, rtol=0)
    assert cache.num_frames == frames
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-5, rtol=0)
    # the mask matters: bidirectional attention gives other outputs for early chunks
    with torch.no_grad():
        bidir = model(x, t, ctx)
    assert (bidir[:, :, :frames_per_chunk] - full[:, :, :frames_per_chunk]).abs().max() > 1e-3


@pytest.mark.parametrize("frames_per_chunk,num_chunks", [(1, 4), (2, 3)])
def test_teacher_forcing_equals_noisy_chunk_on_a_cache_of_clean_chunks(model, frames_per_chunk, num_chunks):
    frames = frames_per_chunk * num_chunks
    torch.manual_seed(3)
    clean = torch.randn(1, 4, frames, 4, 4)
    noisy = torch.randn(1, 4, frames, 4, 4)
    t_noisy = torch.rand(1, frames) * 1000
    ctx = torch.randn(1, 5, 24)
    x = torch.cat([clean, noisy], dim=2)
    t = torch.cat([torch.zeros(1, frames), t_noisy], dim=1)
    with torch.no_grad():
        out = model(x, t, ctx, mask=M.teacher_forcing(num_chunks, frames_per_chunk, 4))
        cache = model.new_kv_cache()
        for c in range(num_chunks):
            sl = slice(c * frames_per_chunk, (c + 1) * frames_per_chunk)
            alone = model(noisy[:, :, sl], t_noisy[:, sl], ctx, kv_cache=cache)
            torch.testing.assert_close(alone, out[:, :, frames + sl.start : frames + sl.stop], atol=1e-5, rtol=0)
            model(clean[:, :, sl], torch.zeros(1, frames_per_chunk), ctx, kv_cache=cache, update_cache=True)


def _closure(allowed: torch.Tensor) -> torch.Tensor:
    reach = allowed.clone()
    for _ in range(allowed.shape[0]):
        reach = reach | (reach.float() @ reach.float() > 0)
    return reach


@pytest.mark.parametrize(
    "mask",
    [M.block_causal(4, 1, 4), M.block_causal(2, 2, 4), M.teacher_forcing(2, 1, 4),
     M.block_causal(5, 1, 4) & M.sliding_window(5, 1, 4, window_frames=2, sink_frames=1)],
    ids=lambda m: m.kind,
)
@pytest.mark.parametrize("what", ["input", "timestep"])
def test_a_frame_only_influences_frames_allowed_to_see_it(model, mask, what):
    frames = mask.num_frames_q
    x, t, ctx = _inputs(frames, seed=5)
    reach = _closure(mask.allowed)  # with several layers, influence follows paths through the mask
    with torch.no_grad():
        base = model(x, t, ctx, mask=mask)
        for j in range(frames):
            x2, t2 = x.clone(), t.clone()
            if what == "input":
                x2[:, :, j] += 1.0
            else:
                t2[:, j] = (t2[:, j] + 400) % 1000
            diff = (model(x2, t2, ctx, mask=mask) - base).abs().amax(dim=(0, 1, 3, 4))  # (F,)
            for a in range(frames):
                if reach[a, j]:
                    if mask.allowed[a, j]:
                        assert diff[a] > 1e-4, (a, j)
                else:
                    assert diff[a] == 0, (a, j)


def test_sliding_window_stream_without_sinks_equals_windowed_mask_beyond_the_window(model):
    # With no sink frames, the re-assigned positions are a uniform shift of the absolute ones, and RoPE
    # only sees position differences: the stream must equal the full sequence under the windowed mask.
    frames, window = 8, 3
    x, t, ctx = _inputs(frames, seed=7)
    mask = M.block_causal(frames, 1, 4) & M.sliding_window(frames, 1, 4, window_frames=window)
    with torch.no_grad():
        full = model(x, t, ctx, mask=mask)
        cache = model.new_kv_cache(window_frames=window)
        outs = [model(x[:, :, i : i + 1], t[:, i : i + 1], ctx, kv_cache=cache, update_cache=True) for i in range(frames)]
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-5, rtol=0)


def test_long_stream_keeps_cache_bounded_and_positions_in_range(model):
    sink, window, chunk = 1, 4, 2
    cache = model.new_kv_cache(sink_frames=sink, window_frames=window)
    x, _, ctx = _inputs(chunk, seed=9)
    sizes, positions = [], []
    with torch.no_grad():
        for step in range(4 * (sink + window) // chunk + 4):  # a stream > 4x the window
            positions.append(cache.begin(chunk, 4).tolist())
            out = model(x + 0.01 * step, torch.full((1, chunk), 500.0), ctx, kv_cache=cache, update_cache=True)
            assert torch.isfinite(out).all()
            sizes.append(cache.nbytes())
    assert cache.num_frames >= 4 * (sink + window)
    bound = sizes[-1]
    assert max(sizes) == bound and sizes[-5:] == [bound] * 5  # reached its bound and stays there
    cfg = model.config
    frame = cfg.num_layers * 4 * cfg.dim * 4  # one frame (4 tokens) of keys or values in every layer, fp32
    assert bound == frame * (2 * (sink + window) + sink)  # keys and values of sinks + window; sink keys before RoPE
    assert max(max(p) for p in positions) <= sink + window - 1


def test_actions_condition_per_frame():
    model = random_model(small_config(num_actions=5))
    x, t, ctx = _inputs(3, seed=11)
    a = torch.tensor([[0, 1, 2]])
    with torch.no_grad():
        base = model(x, t, ctx, actions=a)
        a2 = a.clone()
        a2[0, 1] = 4
        diff = (model(x, t, ctx, actions=a2, mask=None) - base).abs().amax(dim=(0, 1, 3, 4))
    assert diff[1] > 1e-4
    fresh = CausalWanModel(small_config(num_actions=5))
    assert fresh.action_embedding.weight.abs().sum() == 0  # zero-init: a T2V model starts unchanged


def test_bad_inputs_are_reported(model):
    x, t, ctx = _inputs(2)
    with pytest.raises(ValueError, match="per-frame timesteps"):
        model(x, t[:, :1].expand(1, 3), ctx)
    with pytest.raises(ValueError, match="does not fit"):
        model(x, t, ctx, mask=M.block_causal(3, 1, 4))
    with pytest.raises(ValueError, match="needs a kv_cache"):
        model(x, t, ctx, update_cache=True)
    with pytest.raises(ValueError, match="no action conditioning"):
        model(x, t, ctx, actions=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="invalid model config"):
        CausalWanConfig(dim=30, num_heads=4)


def test_presets_have_the_published_sizes():
    with torch.device("meta"):
        sizes = {name: CausalWanModel.from_preset(name).num_parameters() for name in ("tiny", "wan2.1-1.3b", "wan2.1-14b")}
    assert 1e6 < sizes["tiny"] < 1e7
    assert abs(sizes["wan2.1-1.3b"] / 1.42e9 - 1) < 0.02  # Wan2.1-T2V-1.3B: 1.42 B parameters
    assert abs(sizes["wan2.1-14b"] / 14.0e9 - 1) < 0.05


def test_math_and_flex_backends_agree_on_the_model():
    model = random_model(backend="math")
    for mask in [M.bidirectional(3, 1, 4), M.block_causal(3, 1, 4), M.teacher_forcing(3, 1, 4),
                 M.block_causal(6, 1, 4) & M.sliding_window(6, 1, 4, 3, 1)]:
        x, t, ctx = _inputs(mask.num_frames_q, seed=13)
        with torch.no_grad():
            ref = model(x, t, ctx, mask=mask)
            model.attn_backend = "flex"
            out = model(x, t, ctx, mask=mask)
            model.attn_backend = "math"
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_math_and_flex_backends_agree_on_model_gradients_gpu():
    for mask in [M.bidirectional(3, 1, 64), M.block_causal(3, 1, 64), M.teacher_forcing(3, 1, 64),
                 M.block_causal(6, 1, 64) & M.sliding_window(6, 1, 64, 3, 1)]:
        grads = {}
        for backend in ("math", "flex"):
            model = random_model(small_config(dim=64, num_heads=1), backend=backend, std=0.05).cuda()
            x, t, ctx = (v.cuda() for v in _inputs(mask.num_frames_q, seed=13, hw=(16, 16)))
            model(x, t, ctx, mask=mask).square().mean().backward()
            grads[backend] = [p.grad.clone() for p in model.parameters()]
        for a, b in zip(grads["flex"], grads["math"]):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_a_bf16_model_runs_without_autocast(model):
    x, t, ctx = _inputs(2)
    with torch.no_grad():
        ref = model(x, t, ctx)
        out = model.to(torch.bfloat16)(x, t, ctx)
    assert out.dtype == x.dtype  # output in the input's dtype
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_activation_checkpointing_gives_the_same_gradients_with_less_saved_memory():
    mask = M.teacher_forcing(3, 1, 4)
    x, t, ctx = _inputs(mask.num_frames_q, seed=5)
    grads, saved = {}, {}
    for recompute in (False, True):
        model = random_model(small_config(num_layers=3), std=0.05)
        model.activation_checkpointing = recompute
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(x, t, ctx, mask=mask).square().mean()
        loss.backward()
        grads[recompute] = [p.grad for p in model.parameters()]
        saved[recompute] = sum(sizes)
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert saved[True] < 0.5 * saved[False]


def test_rope_tables_are_built_once_per_positions_and_kept_apart_from_inference_mode():
    from causal_rcm.models.rope import rope_freqs

    model = random_model()
    pos = torch.arange(3, 5)
    with torch.inference_mode():
        kept = model._rope_freqs(pos, 2, 3, torch.device("cpu"))
        assert model._rope_freqs(pos.clone(), 2, 3, torch.device("cpu")) is kept
    torch.testing.assert_close(kept, rope_freqs(pos, 2, 3, model.config.head_dim, model.config.rope_theta), rtol=0, atol=0)
    trained = model._rope_freqs(pos, 2, 3, torch.device("cpu"))  # outside inference mode: a table autograd can use
    assert trained is not kept and not trained.is_inference()


def test_apply_rope_takes_the_real_view_of_the_table():
    """The real form (for compiled code) rotates as the complex multiply."""
    from causal_rcm.models.rope import apply_rope, rope_freqs

    freqs = rope_freqs(torch.arange(3, 6), 2, 2, 16, 10000.0)  # (12, 8) complex
    x = torch.randn(2, 12, 3, 16)
    torch.testing.assert_close(apply_rope(x, torch.view_as_real(freqs)), apply_rope(x, freqs), rtol=0, atol=1e-6)


def _stream_outputs(model, sizes, context, sink_frames=1, window_frames=4, per_chunk=None):
    """Stream noise chunks of ``sizes`` frames: a denoising forward (t = 500), then a commit at t = 0 -> outputs."""
    g = torch.Generator().manual_seed(3)
    cache = model.new_kv_cache(sink_frames=sink_frames, window_frames=window_frames)
    outs = []
    with torch.inference_mode():
        for n in sizes:
            x = torch.randn(1, 4, n, 4, 4, generator=g).to(context)
            t = torch.full((1, n), 500.0, device=context.device)
            outs.append(model(x, t, context, kv_cache=cache))
            outs.append(model(x, t * 0, context, kv_cache=cache, update_cache=True))
            if per_chunk is not None:
                per_chunk()
    return outs


@pytest.mark.parametrize("sizes", [[1] * 6, [2] * 5 + [1]], ids=["frame-wise", "chunk-wise-last-cut"])
def test_compiled_blocks_stream_like_eager_without_a_recompile_per_chunk(sizes):
    """compile_blocks: the same outputs (fp32) over a stream past its window with a sink; graphs stop growing."""
    from torch._dynamo.utils import counters

    model = random_model(backend="sdpa")
    context = torch.randn(1, 8, 24)
    expected = _stream_outputs(model, sizes, context)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    got = _stream_outputs(model.compile_blocks(), sizes, context,
                          per_chunk=lambda: graphs.append(counters["stats"]["unique_graphs"]))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Two stages, one graph each for all blocks and all forwards of a chunk size: the first chunk
    # compiles them, the cut last chunk adds a pair for its size, no other chunk compiles.
    assert graphs == [2] * (len(sizes) - 1) + [2 if sizes[-1] == sizes[0] else 4], graphs
    assert not counters["graph_break"]
    torch._dynamo.reset()


def test_compile_blocks_refuses_cuda_graph_modes():
    with pytest.raises(ValueError, match="CUDA graphs"):
        random_model().compile_blocks(mode="reduce-overhead")


@pytest.mark.gpu
def test_compiled_blocks_stream_like_eager_in_bf16_gpu():
    model = random_model(backend="sdpa").to("cuda", torch.bfloat16)
    model.time_embedding.float()  # fp32 modulation, as the pipeline's bf16 models
    model.time_projection.float()
    context = torch.randn(1, 8, 24, device="cuda", dtype=torch.bfloat16)
    sizes = [2] * 5 + [1]
    expected = _stream_outputs(model, sizes, context)
    torch._dynamo.reset()
    got = _stream_outputs(model.compile_blocks(), sizes, context)
    for a, b in zip(got, expected):
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 2e-2
    torch._dynamo.reset()


def test_head_complement_is_what_no_output_can_change():
    """A head of more values per token than features (here 12 x 2 x 2 = 48 > dim 32) leaves a subspace out of reach:
    every output has the same component there (its bias's); a full-rank head has none."""
    assert random_model(small_config()).head_complement() is None  # 4 x 2 x 2 = 16 values from dim 32
    model = random_model(small_config(in_dim=12, out_dim=12))
    complement = model.head_complement()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 3, 4, 6, generator=g)  # (B, C, F, H, W): 2 x 3 tokens a frame
    ctx = torch.randn(2, 8, 24, generator=g)
    outputs = [model(torch.randn(x.shape, generator=g), torch.rand(2, 3, generator=g) * 1000, ctx) for _ in range(2)]
    with torch.no_grad():
        reach = [complement(v) for v in outputs]
        torch.testing.assert_close(reach[0], reach[1], atol=1e-5, rtol=0)
        c = complement(x)
        torch.testing.assert_close(complement(c), c, atol=1e-5, rtol=0)  # a projection ...
        assert abs(float((c * (x - c)).sum())) < 1e-3  # ... an orthogonal one
        assert 0.2 < float(c.square().sum() / x.square().sum()) < 0.5  # onto 16 of every token's 48 values
        # token by token: the complement of one token does not depend on the others
        y = x.clone()
        y[..., :2, :2] += 1.0  # move the first token of every frame
        torch.testing.assert_close(complement(y)[..., 2:], c[..., 2:])
        torch.testing.assert_close(complement(y)[..., 2:, :2], c[..., 2:, :2])
