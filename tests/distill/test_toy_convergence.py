"""The consistency losses, trained on an analytic Gaussian flow, learn the right one-step sampler.

The teacher is the exact velocity of the flow from N(0, I) to N(MU, SIGMA^2 I); a small MLP
student trained from scratch with the recipes' own loss functions (sCM's tangent and direction,
MeanFlow's target) must map noise to samples with the data's mean and standard deviation in one
step. A sign or scaling mistake anywhere in the losses leaves it far off (it starts at mean ~0.1).
"""

from __future__ import annotations

import math

import torch

from causal_rcm.diffusion.conversions import velocity_to_trigflow
from causal_rcm.distill.tf_meanflow import meanflow_target
from causal_rcm.distill.tf_scm import scm_direction, scm_tangent

MU, SIGMA, D, B = 0.7, 0.4, 2, 256


def _sd(s):
    return torch.sqrt((1 - s) ** 2 * SIGMA**2 + s**2)


def _velocity(z, s):
    """Flow-matching velocity of z_s = (1 - s) x0 + s eps for Gaussian data."""
    return -MU + ((s - 1) * SIGMA**2 + s) / _sd(s) ** 2 * (z - (1 - s) * MU)


def _mlp(inputs: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(), torch.nn.Linear(128, D)
    )


def _train(loss_fn, net, steps: int, decay: bool = True) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if decay else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    for step in range(steps):
        loss = loss_fn(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_scm_loss_learns_the_one_step_map():
    torch.manual_seed(0)
    net = _mlp(D + 2)

    def F(x, t):  # x (B, 1, 1, 1, D) in the recipes' 5-D layout, t (B, 1)
        return net(torch.cat([x.reshape(x.shape[0], D), torch.cos(t), torch.sin(t)], dim=1)).reshape(x.shape)

    def loss(step):
        x0 = MU + SIGMA * torch.randn(B, 1, 1, 1, D)
        t = torch.atan(torch.exp(1.6 * torch.randn(B, 1))).clamp(1e-3, math.pi / 2 - 1e-4)
        t_ = t[:, None, :, None, None]
        x_t = torch.cos(t_) * x0 + torch.sin(t_) * torch.randn_like(x0)
        s = torch.sin(t_) / (torch.cos(t_) + torch.sin(t_))
        dxdt = velocity_to_trigflow(_velocity(x_t / (torch.cos(t_) + torch.sin(t_)), s), x_t, t_)  # the teacher's F
        with torch.no_grad():
            F_minus, cs_dFdt = scm_tangent(F, x_t, t, dxdt)
        g, _ = scm_direction(F_minus, cs_dFdt, dxdt, x_t, t, r=min(1.0, step / 300), c=0.1, frames_per_chunk=1)
        return (F(x_t, t) - (F_minus + g).detach()).square().mean()

    _train(loss, net, 2000)
    with torch.no_grad():
        noise = torch.randn(8192, 1, 1, 1, D)
        x = -F(noise, torch.full((8192, 1), math.pi / 2))  # f(x, pi/2) = cos(pi/2) x - sin(pi/2) F
    assert abs(x.mean().item() - MU) < 0.08 and abs(x.std().item() - SIGMA) < 0.08, (x.mean(), x.std())


def test_meanflow_loss_learns_the_one_step_map():
    torch.manual_seed(0)
    net = _mlp(D + 2)

    def loss(step):
        x0 = MU + SIGMA * torch.randn(B, 1, 1, 1, D)
        a, b = torch.rand(B, 1), torch.rand(B, 1)
        s, r = torch.maximum(a, b), torch.minimum(a, b)
        r = torch.where(torch.rand(B, 1) < 0.5, s, r)
        s_ = s[:, None, :, None, None]
        z = (1 - s_) * x0 + s_ * torch.randn_like(x0)

        def u(z_, s_net):
            return net(torch.cat([z_.reshape(B, D), s_net, s_net - r], dim=1)).reshape(z_.shape)

        with torch.no_grad():
            target = meanflow_target(u, z, s, r, _velocity(z, s_))
        return (u(z, s) - target).square().mean()

    _train(loss, net, 5000, decay=False)  # it plateaus at std ~0.29 for ~3000 steps; a decayed lr stays there
    with torch.no_grad():
        z1 = torch.randn(8192, D)
        x = z1 - net(torch.cat([z1, torch.ones(8192, 1), torch.ones(8192, 1)], dim=1))  # z_0 = z_1 - (1 - 0) u(z_1, 0, 1)
    assert abs(x.mean().item() - MU) < 0.05 and abs(x.std().item() - SIGMA) < 0.05, (x.mean(), x.std())
