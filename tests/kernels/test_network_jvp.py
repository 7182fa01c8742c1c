"""Network JVP: ``torch.func.jvp`` of the whole CausalWanModel with the triton backend equals
``torch.func.jvp`` with the math backend (fp32, 1e-4), under every mask kind."""

from __future__ import annotations

import pytest
import torch

from causal_rcm.kernels import masks
from tests.conftest import random_model, small_config

TOKENS = 6  # 4 x 6 latent, patch 2x2 -> 2 x 3 tokens per frame
MASKS = {
    "bidirectional": lambda: None,
    "block_causal": lambda: masks.block_causal(2, 2, TOKENS),
    "teacher_forcing": lambda: masks.teacher_forcing(2, 1, TOKENS),
    "sliding_window": lambda: masks.block_causal(4, 1, TOKENS) & masks.sliding_window(4, 1, TOKENS, 2, 1),
}


@pytest.mark.parametrize("kind", MASKS)
def test_model_jvp_triton_equals_math(kind, device):
    model = random_model(small_config(), seed=1).to(device)
    mask = MASKS[kind]()
    mask = None if mask is None else mask.to(device)
    g = torch.Generator().manual_seed(2)
    x, tx = (torch.randn(2, 4, 4, 4, 6, generator=g).to(device) for _ in range(2))
    t = (torch.rand(2, 4, generator=g) * 1000).to(device)
    tt = torch.ones_like(t)  # sCM's tangent: (dx_t/dt, 1)
    context = torch.randn(2, 8, 24, generator=g).to(device)

    def f(x_, t_):
        return model(x_, t_, context, mask=mask)

    with torch.no_grad():
        model.attn_backend = "math"
        out_ref, tan_ref = torch.func.jvp(f, (x, t), (tx, tt))
        model.attn_backend = "triton"
        out, tan = torch.func.jvp(f, (x, t), (tx, tt))
    assert tan_ref.abs().max() > 1e-2  # a tangent that tests something
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(tan, tan_ref, rtol=0, atol=1e-4 * max(1.0, tan_ref.abs().max().item()))
