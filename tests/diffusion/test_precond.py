import math

import torch
from torch import nn

from causal_rcm.diffusion import flow_to_trigflow_time, trigflow_to_flow_time
from causal_rcm.models.precond import TrigFlowWrapper


class ConstantVelocity(nn.Module):
    """Returns a fixed velocity and records what it was called with."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.seen = {}

    def forward(self, x, t, context, **kw):
        self.seen = {"x": x, "t": t, "context": context, **kw}
        return self.v


def test_wrapper_maps_exact_velocity_to_exact_trigflow_target():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(2, 4, generator=g, dtype=torch.float64) * (math.pi / 2)
    ct, st = torch.cos(t)[:, None, :, None, None], torch.sin(t)[:, None, :, None, None]
    x_t = ct * x0 + st * eps
    net = ConstantVelocity(eps - x0)
    wrapper = TrigFlowWrapper(net)
    ctx = torch.zeros(2, 1, 1)
    F = wrapper.F_theta(x_t, t, ctx, actions="a")
    torch.testing.assert_close(F, ct * eps - st * x0)
    assert net.seen["actions"] == "a"
    torch.testing.assert_close(wrapper.x0(x_t, t, ctx), x0)
    # the net saw the flow-matching state and Wan-unit time of the same point
    s = trigflow_to_flow_time(t)
    torch.testing.assert_close(net.seen["t"], 1000 * s)
    torch.testing.assert_close(net.seen["x"], (1 - s)[:, None, :, None, None] * x0 + s[:, None, :, None, None] * eps)
    assert list(wrapper.parameters()) == list(net.parameters())


def test_wrapper_jvp_matches_finite_differences(mocks):
    torch.manual_seed(0)
    net = mocks.MockCausalModel().double()
    wrapper = TrigFlowWrapper(net)
    x_t = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    t = torch.rand(2, 4, dtype=torch.float64) * 1.2 + 0.1
    ctx = torch.randn(2, 3, 5, dtype=torch.float64)
    dx, dt = torch.randn_like(x_t), torch.randn_like(t)

    out, tangent = torch.func.jvp(lambda x, tt: wrapper(x, tt, ctx), (x_t, t), (dx, dt))
    h = 1e-6
    fd = (wrapper(x_t + h * dx, t + h * dt, ctx) - wrapper(x_t - h * dx, t - h * dt, ctx)) / (2 * h)
    torch.testing.assert_close(out, wrapper(x_t, t, ctx))
    torch.testing.assert_close(tangent, fd, atol=1e-7, rtol=1e-6)


def test_wrapper_backward_reaches_net_parameters(mocks):
    net = mocks.MockCausalModel()
    wrapper = TrigFlowWrapper(net)
    x_t = torch.randn(1, 3, 2, 2, 2)
    t = torch.full((1, 2), 0.7)
    wrapper(x_t, t, torch.randn(1, 2, 5)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_wrapper_agrees_with_velocity_sampling_step(mocks):
    """x0 from the TrigFlow consistency function equals x_s - s v of the raw net at the same point."""
    net = mocks.MockCausalModel().double()
    x_s = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    s = torch.rand(2, 4, dtype=torch.float64) * 0.9 + 0.05
    ctx = torch.randn(2, 3, 5, dtype=torch.float64)
    v = net(x_s, 1000 * s, ctx)
    t = flow_to_trigflow_time(s)
    x_t = x_s * (torch.cos(t) + torch.sin(t))[:, None, :, None, None]
    x0 = TrigFlowWrapper(net).x0(x_t, t, ctx)
    torch.testing.assert_close(x0, x_s - s[:, None, :, None, None] * v)
