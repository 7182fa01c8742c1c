"""The math of the consistency recipes against independent references.

* sCM's tangent (a network JVP under the teacher-forcing mask) equals a central finite
  difference of F along the teacher trajectory (float64).
* MeanFlow's identity u = v - (s - r) du/ds holds for the closed-form average velocity of a
  Gaussian-to-Gaussian flow, and fails for a wrong u; the meanflow solver is exact in one step.
"""

from __future__ import annotations

import math

import torch

from causal_rcm.diffusion.samplers import sample_chunk
from causal_rcm.distill.base import chunk_norm
from causal_rcm.distill.tf_meanflow import meanflow_target
from causal_rcm.distill.tf_scm import scm_direction, scm_loss, scm_tangent
from causal_rcm.kernels import masks
from causal_rcm.models.precond import TrigFlowWrapper
from tests.conftest import random_model, small_config

TOKENS = 6  # 4 x 6 latents, patch 2 -> 6 tokens a frame


def _tf_F(model, x0, context, chunks, fpc):
    wrapper = TrigFlowWrapper(model)
    mask = masks.teacher_forcing(chunks, fpc, TOKENS)
    F = x0.shape[2]

    def F_noisy(x_noisy, t_noisy):
        X = torch.cat([x0, x_noisy], dim=2)
        T = torch.cat([torch.zeros_like(t_noisy), t_noisy], dim=1)
        return wrapper(X, T, context, mask=mask)[:, :, F:]

    return F_noisy


def test_scm_tangent_equals_a_finite_difference_along_the_trajectory():
    model = random_model(small_config(), seed=3).double()
    g = torch.Generator().manual_seed(0)
    B, chunks, fpc = 2, 2, 2
    F = chunks * fpc
    x0 = torch.randn(B, 4, F, 4, 6, generator=g, dtype=torch.float64)
    x_t = torch.randn(B, 4, F, 4, 6, generator=g, dtype=torch.float64)
    dxdt = torch.randn(B, 4, F, 4, 6, generator=g, dtype=torch.float64)
    t = (0.2 + 1.1 * torch.rand(B, chunks, generator=g, dtype=torch.float64)).repeat_interleave(fpc, dim=1)
    context = torch.randn(B, 8, 24, generator=g, dtype=torch.float64)
    F_fn = _tf_F(model, x0, context, chunks, fpc)

    with torch.no_grad():
        F_value, cs_dFdt = scm_tangent(F_fn, x_t, t, dxdt)
        h = 1e-6
        plus = F_fn(x_t + h * dxdt, t + h)
        minus = F_fn(x_t - h * dxdt, t - h)
    cs = (torch.cos(t) * torch.sin(t))[:, None, :, None, None]
    fd = cs * (plus - minus) / (2 * h)
    assert fd.abs().max() > 1e-2  # the derivative is not trivially zero
    torch.testing.assert_close(F_value, F_fn(x_t, t).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cs_dFdt.double(), fd, rtol=0, atol=1e-4 * fd.abs().max().item())
    x_only = cs * (F_fn(x_t + h * dxdt, t) - F_fn(x_t - h * dxdt, t)) / (2 * h)
    assert x_only.abs().max() > 1e-3  # the x part of the tangent contributes too


def test_scm_direction_is_normalised_per_chunk_and_warms_up():
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 4, 2, 2)
    F_minus, cs_dFdt, dxdt, x_t = (torch.randn(shape, generator=g) for _ in range(4))
    t = torch.rand(2, 2, generator=g).repeat_interleave(2, dim=1) + 0.1
    direction, norm = scm_direction(F_minus, cs_dFdt, dxdt, x_t, t, r=0.0, c=0.1, frames_per_chunk=2)
    cos2 = torch.cos(t)[:, None, :, None, None] ** 2
    raw = -cos2 * (F_minus - dxdt)  # r = 0: no tangent term
    torch.testing.assert_close(direction * (norm + 0.1), raw)
    assert (chunk_norm(direction, 2) < 1).all()
    full, _ = scm_direction(F_minus, cs_dFdt, dxdt, x_t, t, r=1.0, c=0.1, frames_per_chunk=2)
    assert not torch.allclose(full, direction)


def test_scm_loss_is_g_squared_with_sCMs_gradient_even_in_bf16():
    """The target's stop-gradient comes from the same forward: in bf16 a second forward of the same point
    (the JVP pass's F^-) differs by rounding, which the old target regressed on; this one has none of it."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 8, generator=g, requires_grad=True)
    x = torch.randn(3, 8, generator=g)
    direction = 3e-3 * torch.randn(3, 8, generator=g)  # a normalised g is small next to F
    F_theta = (x.bfloat16() @ weight.bfloat16())  # (B, n) in bf16, as under autocast
    loss = scm_loss(F_theta, direction)
    torch.testing.assert_close(loss, direction.square().mean(dim=1), rtol=1e-4, atol=0)  # F + g rounds in fp32
    loss.sum().backward()
    # d/dW of sum_b mean_n (F - sg(F) - g)^2 = x^T (-2 g / n), through the bf16 matmul
    expected = (x.bfloat16().float().T @ (-2 * direction / 8)).to(torch.bfloat16).float()
    torch.testing.assert_close(weight.grad, expected, rtol=2e-2, atol=1e-4)
    # the old target: F^- from a second, differently rounded evaluation of the same point
    F_minus = (x.double() @ weight.detach().double()).float()
    old = (F_theta.float() - (F_minus + direction)).square().mean(dim=1)
    assert (old > 2 * loss).all()  # bf16's rounding outweighs g there


# ------------------------------------------------------------------ MeanFlow on an analytic flow
MU, SIGMA = 0.7, 0.4  # data N(MU, SIGMA^2); z_s = (1 - s) x0 + s eps


def _m(s):
    return (1 - s) * MU


def _sd(s):
    return torch.sqrt((1 - s) ** 2 * SIGMA**2 + s**2)


def _v(z, s):
    """Instantaneous velocity of the Gaussian flow: d/ds of z_s = m(s) + sd(s)/sd(s0) (z_s0 - m(s0))."""
    dsd = ((s - 1) * SIGMA**2 + s) / _sd(s)
    return -MU + dsd / _sd(s) * (z - _m(s))


def _u(z, r, s):
    """Closed-form average velocity over [r, s]: (z_s - z_r) / (s - r) along the flow map."""
    z_r = _m(r) + _sd(r) / _sd(s) * (z - _m(s))
    return (z - z_r) / (s - r)


def _expand(s, z):
    return s[:, None, :, None, None]


def test_meanflow_identity_holds_for_the_true_average_velocity_and_not_for_a_wrong_one():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 2, 4, 2, 2, generator=g, dtype=torch.float64)
    s = 0.3 + 0.7 * torch.rand(3, 4, generator=g, dtype=torch.float64)
    r = s * torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.9
    v = _v(z, _expand(s, z))

    def u_true(z_, s_):
        return _u(z_, _expand(r, z_), _expand(s_, z_))

    target = meanflow_target(u_true, z, s, r, v)
    torch.testing.assert_close(target.double(), u_true(z, s), rtol=1e-5, atol=1e-6)

    def u_wrong(z_, s_):  # the instantaneous velocity is not the average one
        return _v(z_, _expand(s_, z_))

    assert (meanflow_target(u_wrong, z, s, r, v).double() - u_wrong(z, s)).abs().max() > 1e-2


class _AverageVelocityNet:
    """A 'network' returning the exact average velocity: model(x, t_net, ctx, interval=h_net)."""

    def __call__(self, x, t_net, context, interval=None, **_):
        s = t_net.double() / 1000
        h = torch.zeros_like(s) if interval is None else interval.double() / 1000
        if torch.all(h == 0):
            return _v(x, _expand(s, x))
        return _u(x, _expand(s - h, x), _expand(s, x))


def test_meanflow_solver_lands_on_the_flow_map_in_one_step():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(2, 2, 3, 2, 2, generator=g, dtype=torch.float64)
    context = torch.zeros(2, 1, 1)
    exact = _m(torch.tensor(0.0)) + _sd(torch.tensor(0.0)) / _sd(torch.tensor(1.0)) * (z1 - _m(torch.tensor(1.0)))
    net = _AverageVelocityNet()
    one = sample_chunk(net, z1, context, (None, None), steps=1, solver="meanflow", refresh=False)
    torch.testing.assert_close(one, exact)
    two = sample_chunk(net, z1, context, (None, None), steps=[1.0, 0.4, 0.0], solver="meanflow", refresh=False)
    torch.testing.assert_close(two, exact)
    euler = sample_chunk(net, z1, context, (None, None), steps=1, solver="euler", refresh=False)
    assert (euler - exact).abs().max() > 1e-2  # one Euler step of the instantaneous velocity is not exact
    assert math.isfinite(float(one.sum()))
