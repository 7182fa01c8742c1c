"""The TF-sCM tangent with the triton JVP backend equals the math backend's (the recipe's own functions)."""

from __future__ import annotations

import torch

from causal_rcm.distill.base import attention_backend
from causal_rcm.distill.tf_scm import scm_tangent
from causal_rcm.kernels import masks
from causal_rcm.models.precond import TrigFlowWrapper
from tests.conftest import random_model, small_config


def test_scm_tangent_triton_equals_math(device):
    model = random_model(small_config(), seed=4).to(device)
    g = torch.Generator().manual_seed(0)
    x0, x_t, dxdt = (torch.randn(2, 4, 2, 4, 6, generator=g).to(device) for _ in range(3))
    t = (0.2 + 1.2 * torch.rand(2, 2, generator=g)).to(device)
    context = torch.randn(2, 8, 24, generator=g).to(device)
    mask = masks.teacher_forcing(2, 1, 6).to(device)
    wrapper = TrigFlowWrapper(model)

    def F_noisy(xn, tn):
        return wrapper(torch.cat([x0, xn], 2), torch.cat([torch.zeros_like(tn), tn], 1), context, mask=mask)[:, :, 2:]

    results = {}
    for backend in ("math", "triton"):
        with torch.no_grad(), attention_backend(model, backend):
            results[backend] = scm_tangent(F_noisy, x_t, t, dxdt)
    assert results["math"][1].abs().max() > 1e-2
    for ref, out in zip(results["math"], results["triton"]):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * max(1.0, ref.abs().max().item()))
