"""Training with given first frames (data.given_frames_prob): what the recipes see and what carries their loss."""

from __future__ import annotations

import pytest
import torch

from causal_rcm.data.source import ShapesSource
from causal_rcm.distill import RECIPES
from causal_rcm.distill.base import frame_mean
from causal_rcm.distill.self_forcing import self_forcing_rollout
from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.errors import UserError
from causal_rcm.runs import load_config
from causal_rcm.train.parallel import DistEnv, StepRandom
from tests.conftest import FAST, random_model, small_config


def built(recipe: str, teachers, *overrides: str):
    """A recipe on the toy shapes world, built on the CPU, with its source."""
    teacher = teachers["teacher" if recipe == "sf-dmd" else "causal-teacher"]
    extra = [] if recipe == "causal-teacher" else [f"train.teacher={teacher}"]
    config = load_config(recipe, None, FAST + extra + ["train.eval_drift=0", *overrides])
    cls = RECIPES[recipe].recipe
    cls.prepare(config)
    source = ShapesSource(config.data, config.model.text_dim, local_batch=config.train.batch_size)
    recipe_ = cls(config, source)
    recipe_.build(torch.device("cpu"))
    return recipe_, source


class Seen:
    """Records the (x, t) of every forward of a module and can add ``bump`` to its output's frames ``frames``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bump: tuple[slice, float] | None = None
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls.append((args[0].detach().clone(), args[1].detach().clone()))
        if self.bump is None:
            return output
        frames, value = self.bump
        out = output.clone()
        out[:, :, frames] += value
        return out


def test_frame_mean_averages_the_kept_frames_only():
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 3, 4, 2, 2)
    keep = torch.tensor([[True, True, True, True], [False, True, True, False]])
    torch.testing.assert_close(frame_mean(x, keep), torch.stack([x[0].mean(), x[1, :, 1:3].mean()]))


def test_the_given_first_frame_is_the_first_image_as_a_stream_encodes_it(teachers):
    recipe, source = built("causal-teacher", teachers, "data.given_frames_prob=1", "data.codec_frames=2",
                            "model.in_dim=96", "model.out_dim=96")
    batch = source.next_batch()
    rnd = StepRandom(0, 0, DistEnv())
    x0, given = recipe.given_first_frame(batch, rnd)
    assert given[:, 0].all() and not given[:, 1:].any()
    torch.testing.assert_close(x0[:, :, 1:], batch["latents"][:, :, 1:], rtol=0, atol=0)
    video = source.codec.decode(x0[:, :, :1])  # (B, 3, 2, H, W): the first rendered frame, twice
    real = source.codec.decode(batch["latents"][:, :, :1])
    torch.testing.assert_close(video[:, :, 1], real[:, :, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(video[:, :, 0], real[:, :, 0], atol=1e-5, rtol=0)
    assert (real[:, :, 1] - real[:, :, 0]).abs().amax() > 0.5  # the real latent frame moves; the given one is still

    plain, _ = built("causal-teacher", teachers)
    rnd = StepRandom(0, 0, DistEnv())
    x0, given = plain.given_first_frame(source.next_batch(), rnd)
    assert not given.any() and rnd._draw == 0  # p = 0 draws nothing: runs without given frames keep their noise


@pytest.mark.parametrize("recipe", ["causal-teacher", "tf-dcm", "tf-scm", "tf-meanflow"])
def test_a_given_frame_is_clean_at_t0_and_carries_no_loss(recipe, teachers):
    """Every sample given: the student sees the image latent at t = 0 in the noisy half too, and what it outputs
    there changes nothing of the loss (an independent check of the masking: perturb that output)."""
    student_recipe, source = built(recipe, teachers, "data.given_frames_prob=1")
    batch = source.next_batch()
    F = batch["latents"].shape[2]
    seen = Seen(student_recipe.student)

    def loss() -> float:
        seen.calls.clear()
        with torch.no_grad() if recipe != "tf-scm" else torch.enable_grad():
            value = student_recipe.losses(batch, StepRandom(0, 3, DistEnv()), step=3)["student"][0]
        return float(value.detach())

    base = loss()
    x, t = seen.calls[-1]
    assert x.shape[2] == 2 * F  # [clean | noisy]
    torch.testing.assert_close(x[:, :, F], batch["image_latents"][:, :, 0], rtol=0, atol=0)  # the noisy half's first frame
    assert (t[:, F] == 0).all() and (t[:, F + 1 :] > 0).all()
    seen.bump = (slice(F, F + 1), 5.0)  # the student's output at the given frame
    assert loss() == pytest.approx(base, rel=1e-6, abs=1e-9)
    seen.bump = (slice(F + 1, F + 2), 5.0)  # ... and at the frame beside it, which is learnt
    assert loss() != pytest.approx(base, rel=1e-3)


def test_recipes_that_cannot_give_frames_refuse_it(teachers):
    for recipe in ("teacher", "ode-init"):
        with pytest.raises(UserError, match=f"data.given_frames_prob .* {recipe} does not take it"):
            built(recipe, teachers, "data.given_frames_prob=0.5")
    with pytest.raises(UserError, match=r"data.given_frames_prob must be in \[0, 1\]"):
        load_config("sf-dmd", None, ["data.given_frames_prob=1.5"])


@pytest.mark.parametrize("frames_per_chunk", [1, 2])
def test_a_self_forcing_rollout_starts_from_the_given_frame(frames_per_chunk):
    """The given rows open their first chunk with the given frame, clean at t = 0 at every step and returned as it
    is (no gradient there); the other rows roll out from noise as before."""
    model = random_model(small_config(), backend="math")
    g = torch.Generator().manual_seed(0)
    noise, context = torch.randn(2, 4, 4, 4, 6, generator=g), torch.randn(2, 8, 24, generator=g)
    given = torch.randn(2, 4, 1, 4, 6, generator=g)
    rows = torch.tensor([True, False])
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().clone(), args[1].clone())))
    grid = flow_time_grid(2, 3.0)
    video = self_forcing_rollout(model, noise, context, grid=grid, exit_step=1, frames_per_chunk=frames_per_chunk,
                                 given=given, given_rows=rows, draw_noise=lambda shape: torch.randn(shape, generator=g))
    torch.testing.assert_close(video[0, :, :1], given[0], rtol=0, atol=0)
    assert (video[1, :, 0] - given[1, :, 0]).abs().amax() > 0.1
    first_chunk = [c for c in calls[:2]]  # the first chunk's two steps
    for x, t in first_chunk:
        assert t[0, 0] == 0 and (t[1, 0] > 0)
        torch.testing.assert_close(x[0, :, 0], given[0, :, 0], rtol=0, atol=0)
    video.square().sum().backward()  # the given frame carries no gradient, the rest does
    with torch.no_grad():
        plain = self_forcing_rollout(model, noise, context, grid=grid, exit_step=1, frames_per_chunk=frames_per_chunk,
                                     draw_noise=lambda shape: torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    assert (plain[0, :, -1] - video[0, :, -1].detach()).abs().amax() > 1e-3  # the given frame conditions what follows


def test_sf_dmd_rolls_out_from_given_frames(teachers, monkeypatch):
    recipe, source = built("sf-dmd", teachers, "data.given_frames_prob=1", "dmd.critic_steps=1")
    batch = source.next_batch()
    video, _ = recipe.rollout(batch, StepRandom(0, 0, DistEnv()), with_grad=False)
    torch.testing.assert_close(video[:, :, :1], batch["image_latents"], rtol=0, atol=0)
    losses = recipe.losses(batch, StepRandom(0, 1, DistEnv()), step=0)
    assert torch.isfinite(losses["student"][0]) and torch.isfinite(losses["critic"][0])
