"""The Triton block-sparse attention against math attention and ``torch.func.jvp`` of it.

Every mask kind, odd lengths (no multiple of any tile size), Lq != Lk, rows with no allowed
key, head dims 16-64 (and a non power of two), fp32 / bf16 / fp16; forward, LSE, gradients
(O and LSE), JVP through ``torch.func.jvp`` and ``forward_ad`` (the tangents-only kernel on the
saved O, LSE), partial tangents, and the fused one-pass op.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from causal_rcm.kernels import op as kernels
from causal_rcm.kernels import reference
from causal_rcm.kernels import masks
from causal_rcm.kernels.dispatch import attention as dispatch_attention
from causal_rcm.kernels.dispatch import math_attention


def _random_mask(fq: int, fk: int, tpf: int, seed: int) -> masks.BlockSparseMask:
    """Random frame matrix with at least one fully masked query frame."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(fq, fk, generator=g) < 0.5
    allowed[1] = False
    return masks.BlockSparseMask(allowed, tpf, kind="random")


# name -> (mask or None, Sq, Sk); tokens-per-frame odd so no tile boundary meets a frame boundary
MASKS = {
    "none": (None, 77, 77),
    "none_lq_ne_lk": (None, 19, 133),
    "bidirectional": (masks.bidirectional(3, 2, 11), 66, 66),
    "block_causal_framewise": (masks.block_causal(7, 1, 13), 91, 91),
    "block_causal_chunk2": (masks.block_causal(4, 2, 9), 72, 72),
    "teacher_forcing": (masks.teacher_forcing(3, 2, 7), 84, 84),
    "sliding_window_sink": (masks.block_causal(6, 1, 11) & masks.sliding_window(6, 1, 11, 3, 1), 66, 66),
    "random_empty_rows": (_random_mask(9, 9, 13, 0), 117, 117),
    "kv_cache_lq_ne_lk": (_random_mask(2, 7, 19, 1), 38, 133),
}


def _inputs(mask_name, d, dtype, device, batch=2, heads=2, seed=0):
    _, sq, sk = MASKS[mask_name]
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, sq, d), (batch, heads, sk, d), (batch, heads, sk, d)]
    primals = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    tangents = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    return primals, tangents


def _mask(mask_name, device):
    mask = MASKS[mask_name][0]
    return None if mask is None else mask.to(device)


def _math(q, k, v, mask):
    """The fp32 reference on the same (rounded) inputs."""
    return math_attention(q.float(), k.float(), v.float(), mask)


def _assert_close(actual, expected, dtype, what):
    actual, expected = actual.float(), expected.float()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if dtype == torch.float32:
        err = (actual - expected).abs().max().item()
        assert err <= 1e-4 * max(1.0, expected.abs().max().item()), f"{what}: max abs error {err:.3g}"
    else:
        rel = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()
        assert rel <= 2e-2, f"{what}: relative error {rel:.3g}"


def _empty_rows(mask):
    """(Sq,) bool: query rows with no allowed key."""
    if mask is None:
        return None
    return ~mask.allowed.any(dim=1).repeat_interleave(mask.tokens_per_frame)


CASES = [(name, 32, torch.float32) for name in MASKS] + [(name, 64, torch.bfloat16) for name in MASKS]
CASES += [("teacher_forcing", 16, torch.float16), ("random_empty_rows", 40, torch.float32),
          ("random_empty_rows", 16, torch.bfloat16)]


@pytest.mark.parametrize("mask_name,d,dtype", CASES)
def test_forward_lse_and_jvp(mask_name, d, dtype, device):
    mask = _mask(mask_name, device)
    (q, k, v), (tq, tk, tv) = _inputs(mask_name, d, dtype, device)

    o, lse = kernels.attention_with_lse(q, k, v, mask)
    assert o.shape == q.shape and o.dtype == dtype
    _assert_close(o, _math(q, k, v, mask), dtype, "O")
    allowed = None if mask is None else mask.allowed
    _, lse_ref, _, tlse_ref = reference.jvp(q, k, v, tq, tk, tv, allowed, _tpf(mask), d**-0.5)
    f_math = lambda a, b, c: _math(a, b, c, mask)  # noqa: E731
    o_ref, to_ref = torch.func.jvp(f_math, (q.float(), k.float(), v.float()), (tq.float(), tk.float(), tv.float()))
    (o_jvp, lse_jvp), (to_jvp, tlse) = torch.func.jvp(
        lambda a, b, c: kernels.attention_with_lse(a, b, c, mask), (q, k, v), (tq, tk, tv))
    assert torch.equal(lse_jvp, lse)
    empty = _empty_rows(mask)
    if empty is not None and empty.any():
        assert torch.isneginf(lse[..., empty]).all() and (o[..., empty, :] == 0).all()
        assert (to_jvp[..., empty, :] == 0).all() and (tlse[..., empty] == 0).all()
        lse, lse_ref = lse[..., ~empty], lse_ref[..., ~empty]
    tol = torch.float32 if dtype == torch.float32 else dtype
    _assert_close(lse, lse_ref, tol, "LSE")
    _assert_close(o_jvp, o_ref, dtype, "func.jvp primal")
    _assert_close(to_jvp, to_ref, dtype, "func.jvp tangent")
    _assert_close(tlse, tlse_ref, tol, "func.jvp tLSE")

    o_one, to_one = kernels.attention_jvp(q, k, v, tq, tk, tv, mask)
    _assert_close(o_one, o_ref, dtype, "one-pass primal")
    _assert_close(to_one, to_ref, dtype, "one-pass tangent")


def _tpf(mask):
    return 1 if mask is None else mask.tokens_per_frame


@pytest.mark.parametrize("mask_name,d,dtype", CASES)
def test_gradients(mask_name, d, dtype, device):
    mask = _mask(mask_name, device)
    (q, k, v), _ = _inputs(mask_name, d, dtype, device, seed=1)
    g = torch.Generator().manual_seed(2)
    do = torch.randn(q.shape, generator=g).to(device, dtype)

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    kernels.attention(*leaves, mask).backward(do)
    ref_leaves = [x.float().requires_grad_() for x in (q, k, v)]
    _math(*ref_leaves, mask).backward(do.float())
    for name, got, want in zip("qkv", leaves, ref_leaves):
        assert got.grad.dtype == dtype
        _assert_close(got.grad, want.grad, dtype, f"d{name}")


@pytest.mark.parametrize("mask_name", ["teacher_forcing", "random_empty_rows", "kv_cache_lq_ne_lk"])
def test_lse_is_differentiable(mask_name, device):
    """dLSE flows into dQ, dK (Delta = rowsum(dO * O) - dLSE) and tLSE = rowsum(P * tS)."""
    mask = _mask(mask_name, device)
    (q, k, v), (tq, tk, tv) = _inputs(mask_name, 32, torch.float32, device, seed=3)

    def lse_ref(a, b):
        s = torch.matmul(a, b.transpose(-2, -1)) * a.shape[-1] ** -0.5
        if mask is not None:
            s = s.masked_fill(~mask.dense().to(device), float("-inf"))
        keep = torch.isfinite(s).any(-1)
        return torch.where(keep, torch.logsumexp(s.masked_fill(~keep[..., None], 0.0), -1), 0.0)

    def loss(o, lse):
        return (o * o).sum() + torch.where(torch.isfinite(lse), lse, 0.0).square().sum()

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    loss(*kernels.attention_with_lse(*leaves, mask)).backward()
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    loss(_math(*ref, mask), lse_ref(ref[0], ref[1])).backward()
    for got, want in zip(leaves, ref):
        _assert_close(got.grad, want.grad, torch.float32, "grad through LSE")

    _, tlse = torch.func.jvp(lambda a, b, c: kernels.attention_with_lse(a, b, c, mask)[1], (q, k, v), (tq, tk, tv))
    _, tlse_ref = torch.func.jvp(lse_ref, (q, k), (tq, tk))
    _assert_close(tlse, tlse_ref, torch.float32, "tLSE")


@pytest.mark.parametrize("mask_name,dtype", [("teacher_forcing", torch.float32), ("random_empty_rows", torch.float32),
                                             ("kv_cache_lq_ne_lk", torch.bfloat16)])
@pytest.mark.parametrize("which", ["q", "k", "v", "qv"])
def test_partial_tangents(which, mask_name, dtype, device):
    """Tangents on some of q, k, v only: absent (None inside ``jvp``, through ``torch.func.jvp``
    and ``forward_ad``) and explicit zeros both count as zero."""
    mask = _mask(mask_name, device)
    primals, tangents = _inputs(mask_name, 32, dtype, device, seed=4)
    moving = ["qkv".index(c) for c in which]

    def partial(attn):
        def f(*xs):  # attention of the inputs in ``which``, the others held fixed
            args = list(primals)
            for i, x in zip(moving, xs):
                args[i] = x
            return attn(*args, mask)
        return f

    sub_primals, sub_tangents = tuple(primals[i] for i in moving), tuple(tangents[i] for i in moving)
    o_ref, to_ref = torch.func.jvp(partial(_math), tuple(x.float() for x in sub_primals),
                                   tuple(t.float() for t in sub_tangents))
    _, to_func = torch.func.jvp(partial(kernels.attention), sub_primals, sub_tangents)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, t) if i in moving else x for i, (x, t) in enumerate(zip(primals, tangents))]
        o_ad, to_ad = fwAD.unpack_dual(kernels.attention(*duals, mask))
    zeroed = tuple(t if i in moving else torch.zeros_like(t) for i, t in enumerate(tangents))
    _, to_zero = torch.func.jvp(lambda a, b, c: kernels.attention(a, b, c, mask), tuple(primals), zeroed)
    _assert_close(o_ad, o_ref, dtype, "forward_ad primal")
    for what, to in (("func.jvp", to_func), ("forward_ad", to_ad), ("zero tangents", to_zero)):
        _assert_close(to, to_ref, dtype, f"{what} tangent")
    empty = _empty_rows(mask)
    if empty is not None and empty.any():
        assert (to_func[..., empty, :] == 0).all()


def test_empty_rows_give_zeros_without_nan(device):
    allowed = torch.zeros(4, 4, dtype=torch.bool)
    allowed[0, 0] = allowed[2, :3] = True  # query frames 1 and 3 see nothing
    mask = masks.BlockSparseMask(allowed, 9).to(device)
    g = torch.Generator().manual_seed(5)
    q, k, v, tq, tk, tv, do = (torch.randn(1, 2, 36, 16, generator=g).to(device) for _ in range(7))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = kernels.attention(*leaves, mask)
    o.backward(do)
    _, to = kernels.attention_jvp(q, k, v, tq, tk, tv, mask)
    _, (to_func, tlse) = torch.func.jvp(lambda a, b, c: kernels.attention_with_lse(a, b, c, mask),
                                        (q, k, v), (tq, tk, tv))
    empty = _empty_rows(mask)
    assert (o[..., empty, :] == 0).all() and (to[..., empty, :] == 0).all()
    assert torch.isfinite(to_func).all() and torch.isfinite(tlse).all()
    assert (to_func[..., empty, :] == 0).all() and (tlse[..., empty] == 0).all()
    assert (leaves[0].grad[..., empty, :] == 0).all()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    # keys of frame 3 are seen by no query: no gradient reaches them
    assert (leaves[1].grad[..., 27:, :] == 0).all() and (leaves[2].grad[..., 27:, :] == 0).all()


def test_strided_inputs_and_scale(device):
    """(B, S, H, D) tensors viewed as (B, H, S, D) (as the model produces them), custom scale."""
    mask = _mask("block_causal_chunk2", device)
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 72, 3, 32, generator=g).to(device).transpose(1, 2) for _ in range(3))
    o = kernels.attention(q, k, v, mask, scale=0.3)
    _assert_close(o, math_attention(q, k, v, mask, scale=0.3), torch.float32, "strided")


def test_reference_matches_autograd(device):
    """The closed-form reference (JVP, VJP) agrees with autodiff of math attention."""
    mask = _mask("random_empty_rows", device)
    (q, k, v), (tq, tk, tv) = _inputs("random_empty_rows", 16, torch.float32, device, seed=7)
    args = (mask.allowed, mask.tokens_per_frame, 0.25)
    o, lse, to, _ = reference.jvp(q, k, v, tq, tk, tv, *args)
    o_ref, to_ref = torch.func.jvp(lambda a, b, c: math_attention(a, b, c, mask, 0.25), (q, k, v), (tq, tk, tv))
    _assert_close(o, o_ref, torch.float32, "reference O")
    _assert_close(to, to_ref, torch.float32, "reference tO")
    do = torch.randn_like(o)
    grads = reference.backward(q, k, v, o, lse, do, None, *args)
    ref = torch.autograd.grad(math_attention(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), mask, 0.25),
                              (q, k, v), do)
    for got, want in zip(grads, ref):
        _assert_close(got, want, torch.float32, "reference grad")


def test_dispatch_backend_and_compile(device):
    mask = _mask("teacher_forcing", device)
    (q, k, v), _ = _inputs("teacher_forcing", 32, torch.float32, device, seed=8)
    out = dispatch_attention(q, k, v, mask, backend="triton")
    _assert_close(out, math_attention(q, k, v, mask), torch.float32, "dispatch")

    backend = "inductor" if device.type == "cuda" else "aot_eager"
    compiled = torch.compile(lambda a, b, c: kernels.attention(a, b, c, mask), backend=backend, fullgraph=True)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    compiled(*leaves).square().sum().backward()
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    math_attention(*ref, mask).square().sum().backward()
    for got, want in zip(leaves, ref):
        _assert_close(got.grad, want.grad, torch.float32, "compiled grad")


def test_dispatch_under_autocast_takes_mixed_input_dtypes(device):
    """Under bf16 autocast a model hands fp32 q, k (RMSNorm's fp32 weight promotes them) beside a bf16 v."""
    mask = _mask("teacher_forcing", device)
    (q, k, v), _ = _inputs("teacher_forcing", 32, torch.float32, device, seed=3)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = dispatch_attention(q, k, v.bfloat16(), mask, backend="triton")
    assert out.dtype == torch.bfloat16
    _assert_close(out, _math(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask), torch.bfloat16, "autocast")


def test_bad_inputs_are_refused(device):
    mask = _mask("teacher_forcing", device)
    q = torch.randn(1, 2, 84, 32, device=device)
    with pytest.raises(ValueError, match="mask covers"):
        kernels.attention(q[:, :, :80], q, q, mask)
    with pytest.raises(ValueError, match="one dtype"):
        kernels.attention(q, q.half(), q, mask)
    with pytest.raises(ValueError, match="head dim"):
        kernels.attention(*(torch.randn(1, 1, 8, 300, device=device) for _ in range(3)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d", [64, 128])
def test_wan_like_sizes_on_gpu(d, dtype):
    """Real tile sizes: teacher forcing over 2 x 4 frames of 257 tokens (S = 2056), 12 heads."""
    device = torch.device("cuda")
    mask = masks.teacher_forcing(4, 1, 257).to(device)
    g = torch.Generator().manual_seed(9)
    q, k, v, tq, tk, tv, do = (torch.randn(1, 12, 2056, d, generator=g).to(device, dtype) for _ in range(7))
    o_ref, to_ref = torch.func.jvp(lambda a, b, c: _math(a, b, c, mask), (q.float(), k.float(), v.float()),
                                   (tq.float(), tk.float(), tv.float()))
    o, to = kernels.attention_jvp(q, k, v, tq, tk, tv, mask)
    _assert_close(o, o_ref, dtype, "O")
    _assert_close(to, to_ref, dtype, "tO")
    _, to_func = torch.func.jvp(lambda a, b, c: kernels.attention(a, b, c, mask), (q, k, v), (tq, tk, tv))
    _assert_close(to_func, to_ref, dtype, "func.jvp tO")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    kernels.attention(*leaves, mask).backward(do)
    ref = [x.float().requires_grad_() for x in (q, k, v)]
    _math(*ref, mask).backward(do.float())
    for got, want in zip(leaves, ref):
        _assert_close(got.grad, want.grad, dtype, "grad")
