"""Small models that follow CausalWanModel's call semantics, for sampler tests.

``model(x, t, context, *, mask=None, kv_cache=None, update_cache=False, actions=None) -> v`` with
x (B, C, F, H, W), t (B, F) in Wan units (1000 s), and ``model.new_kv_cache(sink_frames, window_frames)``.
With a cache, x holds only the new chunk, which sees every cached frame and itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from causal_rcm.kernels.masks import block_causal


class ListCache:
    """A KV cache that stores whatever the model appends along the frame axis (dim 2)."""

    def __init__(self, sink_frames: int = 0, window_frames: int | None = None) -> None:
        self.sink_frames, self.window_frames = sink_frames, window_frames
        self.keys: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reset(self) -> None:
        self.keys = None

    def append(self, keys: torch.Tensor) -> None:
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=2)


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    return p[None, :, None, None, None]


class MockCausalModel(nn.Module):
    """Frame-granular toy attention: ``v_f = local(x_f, t_f, context) + 0.5 mean_{j visible} k(x_j, t_j)``.

    Keys depend on their frame's t and on the prompt, so a cache refreshed at the wrong time or
    with the wrong prompt changes the output.
    Records every call in ``self.calls``.
    """

    def __init__(self, channels: int = 3, text_dim: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w_k = nn.Parameter(torch.randn(channels, generator=g))
        self.u_k = nn.Parameter(torch.randn(channels, generator=g))
        self.w_l = nn.Parameter(torch.randn(channels, generator=g))
        self.u_l = nn.Parameter(torch.randn(channels, generator=g))
        self.proj = nn.Parameter(torch.randn(text_dim, channels, generator=g))
        self.calls: list[dict] = []

    def new_kv_cache(self, sink_frames: int = 0, window_frames: int | None = None) -> ListCache:
        return ListCache(sink_frames, window_frames)

    def forward(self, x, t, context, *, mask=None, kv_cache=None, update_cache=False, actions=None):
        self.calls.append(
            {"x": x.detach().clone(), "t": t.detach().clone(), "context": context, "kv_cache": kv_cache,
             "update_cache": update_cache, "actions": actions, "mask": mask}
        )
        tt = (t / 1000)[:, None, :, None, None].to(x.dtype)
        text = (context.mean(1) @ self.proj)[:, :, None, None, None]
        keys = torch.tanh(_per_channel(self.w_k) * x + _per_channel(self.u_k) * tt + 0.3 * text)
        local = torch.sin(_per_channel(self.w_l) * x + _per_channel(self.u_l) * tt) + text * (1 + tt)
        if actions is not None:
            local = local + actions[:, None, :, None, None]
        if kv_cache is not None:
            visible = keys if kv_cache.keys is None else torch.cat([kv_cache.keys, keys], dim=2)
            mix = visible.mean(dim=2, keepdim=True).expand_as(keys)
            if update_cache:
                kv_cache.append(keys)
        else:
            n = x.shape[2]
            allowed = torch.ones(n, n, dtype=torch.bool) if mask is None else mask.allowed
            w = allowed.to(x.dtype) / allowed.sum(dim=1, keepdim=True)
            mix = torch.einsum("bcjhw,fj->bcfhw", keys, w)
        return local + 0.5 * mix


class GaussianVelocity(nn.Module):
    """Exact velocity E[eps - x0 | x_s] for data x0 ~ N(mu, sigma^2) per element (context ignored).

    x_s ~ N(m, V) with m = (1 - s) mu, V = (1 - s)^2 sigma^2 + s^2, and
    v = (s - (1 - s) sigma^2) / V (x_s - m) - mu. The ODE solution from x_1 = eps is mu + sigma eps.
    """

    def __init__(self, mu: float, sigma: float) -> None:
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def new_kv_cache(self, sink_frames: int = 0, window_frames: int | None = None) -> ListCache:
        return ListCache(sink_frames, window_frames)

    def forward(self, x, t, context, *, kv_cache=None, update_cache=False, **kw):
        s = (t / 1000)[:, None, :, None, None].to(x.dtype)
        var = (1 - s) ** 2 * self.sigma**2 + s**2
        if kv_cache is not None and update_cache:
            kv_cache.append(x)
        return (s - (1 - s) * self.sigma**2) / var * (x - (1 - s) * self.mu) - self.mu


class PointMassOracle(nn.Module):
    """Exact velocity (x_s - x0) / s for known clean frames x0 (B, C, F_total, H, W): an oracle x0-predictor.

    In cache mode it locates the chunk by the number of committed frames, so it also checks
    that every chunk before was committed. Records the inputs in ``self.calls``.
    """

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.calls: list[dict] = []

    def new_kv_cache(self, sink_frames: int = 0, window_frames: int | None = None) -> ListCache:
        return ListCache(sink_frames, window_frames)

    def forward(self, x, t, context, *, kv_cache=None, update_cache=False, **kw):
        self.calls.append({"x": x.clone(), "t": t.clone(), "update_cache": update_cache})
        start = 0 if kv_cache is None else kv_cache.num_frames
        x0 = self.x0[:, :, start : start + x.shape[2]]
        if kv_cache is not None and update_cache:
            kv_cache.append(x)
        s = (t / 1000)[:, None, :, None, None].to(x.dtype)
        return torch.where(s > 0, (x - x0) / s.clamp_min(1e-12), torch.zeros_like(x))


def reference_causal(model, noise, ctx, *, frames_per_chunk, grid, solver="euler", guidance=1.0, neg=None,
                     generator=None, tokens_per_frame=1, prefix=None):
    """Chunk-by-chunk generation without a KV cache: every step re-runs the clean history at t = 0
    followed by the noisy chunk, under a block-causal mask, and keeps the chunk's output.

    ``prefix`` (B, C, P, H, W): clean frames before the new ones; its whole chunks are history, the rest open the
    first new chunk at t = 0 (as the first frames of that chunk)."""
    B = noise.shape[0]
    P = 0 if prefix is None else prefix.shape[2]
    whole = P - P % frames_per_chunk
    out = [] if prefix is None else [prefix]
    sizes = [frames_per_chunk - (P - whole)]
    sizes += [frames_per_chunk] * ((noise.shape[2] - sizes[0]) // frames_per_chunk)
    for x in noise.split(sizes, dim=2):
        done = torch.cat(out, dim=2) if out else noise[:, :, :0]
        history, given = done[:, :, : done.shape[2] - done.shape[2] % frames_per_chunk], done[:, :, done.shape[2] - done.shape[2] % frames_per_chunk :]
        mask = block_causal(history.shape[2] // frames_per_chunk + 1, frames_per_chunk, tokens_per_frame)

        def velocity(x, s):
            seq = torch.cat([history, given, x], dim=2)
            t = torch.cat([torch.zeros(B, history.shape[2] + given.shape[2]), torch.full((B, x.shape[2]), 1000 * s)], dim=1)
            v = model(seq, t, ctx, mask=mask)[:, :, -x.shape[2]:]
            if guidance != 1:
                v_u = model(seq, t, neg, mask=mask)[:, :, -x.shape[2]:]
                v = v_u + guidance * (v - v_u)
            return v

        grid_ = [float(g) for g in grid]
        for s, s_next in zip(grid_[:-1], grid_[1:]):
            v = velocity(x, s)
            if solver == "euler":
                x = x + (s_next - s) * v
            else:
                x0 = x - s * v
                x = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * torch.randn(x.shape, generator=generator)
        out.append(x)
    return torch.cat(out, dim=2)[:, :, P:]


@pytest.fixture
def video_shape():
    """(B, C, F, H, W) of the mock tests: 2 samples, 3 channels, 6 frames of 2 x 2."""
    return (2, 3, 6, 2, 2)


@pytest.fixture
def mock_model():
    return MockCausalModel()


@pytest.fixture
def contexts():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)


@pytest.fixture
def mocks():
    """The mock classes and the cache-free causal reference sampler."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ListCache=ListCache, MockCausalModel=MockCausalModel, GaussianVelocity=GaussianVelocity,
        PointMassOracle=PointMassOracle, reference_causal=reference_causal,
    )
