import math

import pytest
import torch

from causal_rcm.diffusion import (
    check_time_grid,
    flow_time_grid,
    sample_flow_time,
    sample_trigflow_time,
    shift_time,
    to_net_time,
    unshift_time,
)


def test_shift_known_values_and_fixed_points():
    s = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_time(s, 5.0), torch.tensor([0.0, 1 / 1.8, 2.5 / 3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(shift_time(s, 1.0), s)
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)


@pytest.mark.parametrize("shift", [0.3, 1.0, 5.0, 12.0])
def test_shift_round_trip_and_monotone(shift):
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = shift_time(s, shift)
    assert bool((shifted[1:] > shifted[:-1]).all())
    torch.testing.assert_close(unshift_time(shifted, shift), s)
    torch.testing.assert_close(shift_time(unshift_time(s, shift), shift), s)


def test_shift_rejects_nonpositive():
    with pytest.raises(ValueError):
        shift_time(0.5, 0.0)


def test_flow_time_grid():
    grid = flow_time_grid(4, shift=5.0)
    assert grid.dtype == torch.float64 and grid.shape == (5,)
    assert grid[0] == 1 and grid[-1] == 0
    torch.testing.assert_close(grid, shift_time(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64), 5.0))
    # shift > 1 spends the steps at high noise
    assert grid[2] > 0.8
    torch.testing.assert_close(flow_time_grid(2), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))


def test_check_time_grid():
    torch.testing.assert_close(check_time_grid([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    for bad in ([1.0], [1.0, 0.5], [1.0, 1.0, 0.0], [0.5, 0.7, 0.0], [1.5, 0.0]):
        with pytest.raises(ValueError):
            check_time_grid(bad)


def test_to_net_time():
    torch.testing.assert_close(to_net_time(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([0.0, 250.0, 1000.0]))


def test_sample_flow_time_uniform_with_shift():
    g = torch.Generator().manual_seed(0)
    s = sample_flow_time((200_000,), shift=3.0, generator=g)
    assert s.min() > 0 and s.max() < 1
    # shift is monotone: quantiles map through it, P(s <= shift(q)) = q
    for q in (0.1, 0.5, 0.9):
        assert (s <= shift_time(q, 3.0)).float().mean().item() == pytest.approx(q, abs=5e-3)


def test_sample_flow_time_logit_normal():
    g = torch.Generator().manual_seed(0)
    s = sample_flow_time((200_000,), kind="logit_normal", loc=0.5, scale=0.8, generator=g)
    logit = torch.log(s / (1 - s))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError):
        sample_flow_time((3,), kind="beta")


def test_sample_trigflow_time_log_normal_tan():
    g = torch.Generator().manual_seed(0)
    t = sample_trigflow_time((200_000,), p_mean=-0.8, p_std=1.6, sigma_d=0.5, generator=g)
    assert t.min() > 0 and t.max() < math.pi / 2
    log_sigma = torch.log(torch.tan(t.double()) * 0.5)  # sigma = sigma_d tan t is log-normal
    assert log_sigma.mean().item() == pytest.approx(-0.8, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.6, abs=0.02)
