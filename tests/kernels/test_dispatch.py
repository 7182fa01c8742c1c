import pytest
import torch

from causal_rcm.kernels import masks as M
from causal_rcm.kernels.dispatch import attention, available_backends, math_attention

from .test_masks import all_kinds


def test_backends_listed():
    assert {"math", "sdpa", "flex", "triton"} <= set(available_backends())
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*torch.randn(3, 1, 1, 4, 8).unbind(0), backend="nope")


@pytest.mark.parametrize("mask", all_kinds(tpf=6), ids=lambda m: m.kind)
def test_math_and_sdpa_agree_on_outputs_and_gradients(mask):
    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, mask.seq_len_q, 16, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    out_m = attention(*qkv, mask, backend="math")
    grads_m = torch.autograd.grad(out_m.square().sum(), qkv)
    out_s = attention(*qkv, mask, backend="sdpa")
    grads_s = torch.autograd.grad(out_s.square().sum(), qkv)
    torch.testing.assert_close(out_s, out_m)
    for a, b in zip(grads_s, grads_m):
        torch.testing.assert_close(a, b)


def test_math_attention_against_explicit_softmax():
    torch.manual_seed(0)
    mask = M.block_causal(3, 1, 2)
    q, k, v = torch.randn(3, 1, 1, 6, 4, dtype=torch.float64).unbind(0)
    out = math_attention(q, k, v, mask)
    dense = mask.dense()
    for i in range(6):
        s = (q[0, 0, i] @ k[0, 0].T) / 2.0
        s[~dense[i]] = float("-inf")
        expected = torch.softmax(s, -1) @ v[0, 0]
        torch.testing.assert_close(out[0, 0, i], expected)


def test_fully_masked_rows_give_zeros_and_finite_derivatives():
    allowed = torch.tensor([[True, False], [False, False]])
    mask = M.BlockSparseMask(allowed, tokens_per_frame=3)
    qkv = [torch.randn(1, 2, 6, 8, requires_grad=True) for _ in range(3)]
    out = attention(*qkv, mask, backend="math")
    assert torch.equal(out[:, :, 3:], torch.zeros_like(out[:, :, 3:]))
    grads = torch.autograd.grad(out.sum(), qkv)
    assert all(torch.isfinite(g).all() for g in grads)
    tangents = [torch.randn_like(x) for x in qkv]
    _, jvp_out = torch.func.jvp(lambda q, k, v: math_attention(q, k, v, mask), tuple(x.detach() for x in qkv), tuple(tangents))
    assert torch.isfinite(jvp_out).all() and torch.equal(jvp_out[:, :, 3:], torch.zeros_like(jvp_out[:, :, 3:]))


def test_mask_size_mismatch_is_reported():
    mask = M.block_causal(2, 1, 4)
    with pytest.raises(ValueError, match="mask covers 8x8 tokens"):
        attention(*torch.randn(3, 1, 1, 10, 8).unbind(0), mask)


def test_flex_refuses_cpu_backward_with_a_clear_message():
    q = torch.randn(1, 1, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        attention(q, q, q, None, backend="flex")


@pytest.mark.gpu
@pytest.mark.parametrize("mask", all_kinds(tpf=70), ids=lambda m: m.kind)
def test_math_and_flex_agree_on_gradients_gpu(mask):
    torch.manual_seed(0)
    qkv = [torch.randn(1, 2, mask.seq_len_q, 64, device="cuda", requires_grad=True) for _ in range(3)]
    out_m = attention(*qkv, mask, backend="math")
    grads_m = torch.autograd.grad(out_m.square().sum(), qkv)
    out_f = attention(*qkv, mask, backend="flex")
    grads_f = torch.autograd.grad(out_f.square().sum(), qkv)
    torch.testing.assert_close(out_f, out_m, atol=2e-3, rtol=2e-3)
    for a, b in zip(grads_f, grads_m):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)
