import math

import pytest
import torch

from causal_rcm.diffusion import (
    eps_to_velocity,
    expand_time,
    flow_to_trigflow_time,
    flow_to_trigflow_x,
    trigflow_to_eps,
    trigflow_to_flow_time,
    trigflow_to_flow_x,
    trigflow_to_velocity,
    trigflow_to_x0,
    velocity_to_eps,
    velocity_to_trigflow,
    velocity_to_x0,
    x0_to_trigflow,
    x0_to_velocity,
)

B, C, F, H, W = 2, 3, 4, 2, 5


@pytest.fixture
def sample():
    """A known (x0, eps) pair and per-frame flow-matching times s (B, F), all float64."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, C, F, H, W, generator=g, dtype=torch.float64)
    eps = torch.randn(B, C, F, H, W, generator=g, dtype=torch.float64)
    s = torch.rand(B, F, generator=g, dtype=torch.float64) * 0.96 + 0.02
    return x0, eps, s


def per_frame(s):
    return s[:, None, :, None, None]


def test_expand_time_shapes_and_dtype():
    x = torch.zeros(B, C, F, H, W)
    assert expand_time(torch.zeros(B, F), x).shape == (B, 1, F, 1, 1)
    assert expand_time(torch.zeros(B), x).shape == (B, 1, 1, 1, 1)
    assert expand_time(0.5, x).shape == ()
    assert expand_time(torch.zeros(B, F, dtype=torch.float64), x).dtype == torch.float32
    assert expand_time(0.5, x.bfloat16()).dtype == torch.float32  # never trigonometry in bf16
    assert expand_time(torch.zeros(B), torch.zeros(B, 7)).shape == (B, 1)


def test_flow_matching_analytic(sample):
    x0, eps, s = sample
    x_s = (1 - per_frame(s)) * x0 + per_frame(s) * eps
    v = eps - x0
    torch.testing.assert_close(velocity_to_x0(v, x_s, s), x0)
    torch.testing.assert_close(velocity_to_eps(v, x_s, s), eps)
    torch.testing.assert_close(x0_to_velocity(x0, x_s, s), v)
    torch.testing.assert_close(eps_to_velocity(eps, x_s, s), v)


def test_flow_matching_round_trips(sample):
    _, _, s = sample
    g = torch.Generator().manual_seed(1)
    x_s, v = torch.randn(2, B, C, F, H, W, generator=g, dtype=torch.float64)
    torch.testing.assert_close(x0_to_velocity(velocity_to_x0(v, x_s, s), x_s, s), v)
    torch.testing.assert_close(eps_to_velocity(velocity_to_eps(v, x_s, s), x_s, s), v)
    x0 = torch.randn(B, C, F, H, W, generator=g, dtype=torch.float64)
    torch.testing.assert_close(velocity_to_x0(x0_to_velocity(x0, x_s, s), x_s, s), x0)


def test_time_conversion_endpoints_and_round_trip():
    s = torch.linspace(0, 1, 201, dtype=torch.float64)
    t = flow_to_trigflow_time(s)
    assert t[0] == 0 and t[-1] == pytest.approx(math.pi / 2, abs=1e-15)
    assert flow_to_trigflow_time(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(math.pi / 4)
    assert bool((t[1:] > t[:-1]).all())
    torch.testing.assert_close(trigflow_to_flow_time(t), s)
    t = torch.linspace(0, math.pi / 2, 201, dtype=torch.float64)
    torch.testing.assert_close(flow_to_trigflow_time(trigflow_to_flow_time(t)), t)
    # tan t = s / (1 - s), i.e. the EDM sigma of the flow-matching time
    torch.testing.assert_close(torch.tan(flow_to_trigflow_time(s[1:-1])), s[1:-1] / (1 - s[1:-1]))


def test_trigflow_analytic(sample):
    """x_t, F = dx_t/dt and f = x0 for a known (x0, eps), from the flow-matching side."""
    x0, eps, s = sample
    t = flow_to_trigflow_time(s)
    cos_t, sin_t = torch.cos(per_frame(t)), torch.sin(per_frame(t))
    x_t = cos_t * x0 + sin_t * eps
    x_s = (1 - per_frame(s)) * x0 + per_frame(s) * eps
    torch.testing.assert_close(flow_to_trigflow_x(x_s, t), x_t)
    torch.testing.assert_close(trigflow_to_flow_x(x_t, t), x_s)

    F_true = cos_t * eps - sin_t * x0
    # F is the time derivative of the TrigFlow path (checked by autodiff, not by the formula)
    _, dx_dt = torch.func.jvp(lambda tt: torch.cos(tt) * x0 + torch.sin(tt) * eps, (per_frame(t),), (torch.ones_like(per_frame(t)),))
    torch.testing.assert_close(dx_dt, F_true)

    F = velocity_to_trigflow(eps - x0, x_t, t)
    torch.testing.assert_close(F, F_true)
    torch.testing.assert_close(trigflow_to_x0(F, x_t, t), x0)
    torch.testing.assert_close(trigflow_to_eps(F, x_t, t), eps)
    torch.testing.assert_close(x0_to_trigflow(x0, x_t, t), F_true)


def test_trigflow_round_trips(sample):
    _, _, s = sample
    t = flow_to_trigflow_time(s)
    g = torch.Generator().manual_seed(2)
    x_t, v, F_ = torch.randn(3, B, C, F, H, W, generator=g, dtype=torch.float64)
    torch.testing.assert_close(trigflow_to_velocity(velocity_to_trigflow(v, x_t, t), x_t, t), v)
    torch.testing.assert_close(velocity_to_trigflow(trigflow_to_velocity(F_, x_t, t), x_t, t), F_)
    torch.testing.assert_close(x0_to_trigflow(trigflow_to_x0(F_, x_t, t), x_t, t), F_)
    torch.testing.assert_close(trigflow_to_flow_x(flow_to_trigflow_x(x_t, t), t), x_t)


def test_design_doc_formula_for_F_from_velocity():
    """DESIGN section 6 writes F = ((cos t - sin t) x_t + v) / (cos t + sin t): check it at t = 0 and pi/2."""
    x0, eps = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-1.1], dtype=torch.float64)
    v = eps - x0
    at0 = velocity_to_trigflow(v, x0, torch.tensor(0.0, dtype=torch.float64))  # x_0 = x0: F = eps
    torch.testing.assert_close(at0, eps)
    at1 = velocity_to_trigflow(v, eps, torch.tensor(math.pi / 2, dtype=torch.float64))  # x_{pi/2} = eps: F = -x0
    torch.testing.assert_close(at1, -x0)


def test_per_frame_times_act_per_frame(sample):
    """A (B, F) time converts each frame as the scalar time of that frame would."""
    x0, eps, s = sample
    t = flow_to_trigflow_time(s)
    F_all = velocity_to_trigflow(eps - x0, x0, t)
    for b in range(B):
        for f in range(F):
            one = velocity_to_trigflow((eps - x0)[b, :, f], x0[b, :, f], t[b, f])
            torch.testing.assert_close(F_all[b, :, f], one)


def test_bf16_inputs_computed_in_float32(sample):
    x0, eps, s = sample
    t = flow_to_trigflow_time(s)
    F = velocity_to_trigflow((eps - x0).bfloat16(), x0.bfloat16(), t)
    assert F.dtype == torch.float32
    torch.testing.assert_close(F.double(), velocity_to_trigflow(eps - x0, x0, t), atol=0.05, rtol=0.02)
