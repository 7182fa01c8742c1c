"""Samplers: stateless functions over a flow-matching network ``model(x, t_net, context, **kw) -> v``.

Shared signature, as in k-diffusion: ``sampler(model, noise, context, *, steps, shift,
guidance, neg_context, ..., callback)``. ``steps`` is either an int (a grid
``shift(1 - i / steps)`` from s = 1 to 0, see :func:`~.schedules.flow_time_grid`) or an
explicit strictly decreasing grid of flow-matching times ending at 0, used exactly as given
(``shift`` must then stay 1; convert TrigFlow times with
:func:`~.conversions.trigflow_to_flow_time`). The network is evaluated at ``grid[:-1]``.

Three update rules, selected by ``solver``:

* ``"euler"``: ``x <- x + (s_next - s) v``, the probability-flow ODE (many-step teachers).
* ``"consistency"``: ``x0 = x - s v``, then ``x <- (1 - s_next) x0 + s_next eps`` with fresh
  ``eps`` (multistep consistency sampling, Song et al. 2023, Alg. 1), for 1-4 step students.
  For a TrigFlow student ``x - s v`` *is* its consistency function ``cos t x_t - sin t F``.
* ``"meanflow"``: ``x <- x + (s_next - s) u(x, r=s_next, s)`` (MeanFlow, Geng et al. 2025,
  Eq. (12)): the network is called with ``interval = s - s_next`` (in network units) and
  returns the average velocity over the step, so the jump is exact for a perfect model.

All land on ``x0`` at the last step (s_next = 0), so one step of euler and consistency is the same.

``complement`` (optional, every sampler): the projection of latents onto the directions the
network's output cannot change, ``model.head_complement()``. A head that maps ``dim`` features
to more than ``dim`` values per token leaves a subspace of each token's values out of reach;
there ``x0 = x - s v`` is ``x``'s own component (its noise) less a constant, so the Euler
solvers carry the initial noise in it to the end and the consistency solver a mix of its draws
(the shapes models' speckle, ``docs/results/fidelity_2026-12-07.md``). With ``complement`` ``C``
each x0 estimate is completed there with the network's own estimate of the data's mean, which
is ``-C(v)`` (its bias; what the flow-matching loss makes of a direction it cannot predict):
``x0 <- x0 - C(x0 + v)``, i.e. the velocity ``v + C(x + (1 - s) v) / s``. Outside those
directions nothing changes, so a network with a full-rank head samples as before.

Fresh noise is drawn on the data's device and dtype from ``generator`` (which must live on that
device). The state keeps the noise's dtype: keep it float32 and run a bf16 network under
``torch.autocast`` (the model does not cast its inputs).

``callback`` (optional) is called once per network evaluation with a dict: ``x`` (input),
``i`` (step), ``s``, ``s_next``, ``x0`` (denoised estimate) and, for causal sampling,
``chunk``.

Causal sampling (CausVid, Yin et al. 2025; Self Forcing, Huang et al. 2025) generates the
video chunk by chunk: each chunk is denoised attending to a KV cache of the chunks before it,
then committed to the cache. Two ways to commit (``context``, :data:`CONTEXTS`):

* ``"clean"``: re-run the clean chunk at t = 0 with ``update_cache=True`` (Self Forcing's
  refresh): one more forward per chunk and branch;
* ``"noisy"``: keep the keys and values of the chunk's last denoising forward (its input
  ``x`` at ``s = grid[-2]``, the forward whose x0 estimate is the chunk), committed by that
  forward itself: no extra forward. The next chunk then attends to its predecessors as the
  last step saw them, noisy, so a student is trained for it (``dmd.noisy_context``: the
  self-forcing rollout commits the same forward).

With guidance, the conditional and unconditional branches keep separate caches (each history
computed with its own prompt).

The caches can be rebuilt from the clean chunks they cover (:class:`ChunkHistory`, bounded by the sink and the
window): on a prompt switch (``switches``) the conditional cache is re-run under the new prompt (Self Forcing's
refresh applied to the old frames, so the scene carries over), and with ``recache_every = K`` every cache is
rebuilt every K chunks, so that each entry is computed from the frames the cache still holds instead of from
frames evicted since (LongLive's KV re-cache, Yang et al. 2025, applied periodically). A stream
(:class:`~causal_rcm.pipeline.Stream`) does the same one chunk at a time.

Continuing given frames (``prefix``, e.g. a world model's real context frames, an image, the end of a clip): a
causal model commits its whole chunks to its caches, a chunk at a time, exactly as it commits its own clean
chunks, then samples the new ones. Given frames that do not fill a chunk (an image is one latent frame; a chunk
holds several) open the first new chunk as clean frames at t = 0 beside its noisy ones (``sample_chunk``'s
``given``): the model's per-frame times make a chunk with clean and noisy frames one forward, the noisy frames
attend to the clean ones inside the chunk, and the chunk is committed whole. A bidirectional model samples the
window ``[prefix | new]`` with the known frames put back at every step at the current noise level,
``(1 - s) x0 + s eps`` with one ``eps`` ("replacement", Song et al. 2021, Sec. 5 and App. I.2), and returns the
new frames.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from causal_rcm.diffusion.conversions import time_dtype, velocity_to_x0
from causal_rcm.diffusion.guidance import guided_velocity, is_unguided
from causal_rcm.diffusion.schedules import check_time_grid, flow_time_grid, to_net_time
from causal_rcm.errors import UserError

__all__ = [
    "CONTEXTS",
    "SOLVERS",
    "SamplerSpec",
    "check_window",
    "head_complement",
    "sample",
    "time_grid",
    "euler_sample",
    "consistency_sample",
    "make_kv_caches",
    "refresh_kv_caches",
    "ChunkHistory",
    "CommitTracker",
    "rebuild_kv_cache",
    "sample_chunk",
    "causal_sample_stream",
    "causal_sample",
]

SOLVERS = ("euler", "consistency", "meanflow")
CONTEXTS = ("clean", "noisy")  # how a causal sampler commits a chunk to the KV cache (module docstring)
Steps = int | Sequence[float] | torch.Tensor
Callback = Callable[[dict[str, Any]], None]
Complement = Callable[[torch.Tensor], torch.Tensor]


def time_grid(steps: Steps, shift: float = 1.0) -> torch.Tensor:
    """The (N + 1,) float64 sampling grid from ``steps``: an int N with ``shift``, or an explicit grid."""
    if isinstance(steps, int):
        return flow_time_grid(steps, shift)
    if shift != 1:
        raise ValueError(
            "an explicit time grid is used exactly as given; pass shift only with an integer number "
            "of steps, or shift the grid yourself with causal_rcm.diffusion.shift_time"
        )
    return check_time_grid(steps)


def _net_time(s: float, x: torch.Tensor) -> torch.Tensor:
    """(B, F) network time (Wan units) for flow-matching time s on every frame of x (B, C, F, H, W)."""
    return to_net_time(torch.full((x.shape[0], x.shape[2]), s, dtype=time_dtype(x), device=x.device))


def _integrate(
    velocity: Callable[..., torch.Tensor],
    x: torch.Tensor,
    grid: torch.Tensor,
    *,
    solver: str,
    generator: torch.Generator | None,
    callback: Callback | None,
    commit_last: bool = False,
) -> torch.Tensor:
    """Run ``solver`` over ``grid`` from ``x`` (noise at s = grid[0]); returns the sample at s = 0.

    ``commit_last``: the last network call commits its keys and values to the KV caches (noisy context)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    last = len(grid) - 2
    for i in range(len(grid) - 1):
        s, s_next = float(grid[i]), float(grid[i + 1])
        commit = commit_last and i == last
        v = velocity(x, s, s_next, commit=commit) if solver == "meanflow" else velocity(x, s, commit=commit)
        x0 = velocity_to_x0(v, x, s).to(x.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "s": s, "s_next": s_next, "x0": x0})
        if s_next == 0:
            x = x0
        elif solver in ("euler", "meanflow"):
            x = x + (s_next - s) * v
        else:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (1 - s_next) * x0 + s_next * eps
    return x


def _velocity_fn(
    model: Callable[..., torch.Tensor],
    context: torch.Tensor,
    guidance: float,
    neg_context: torch.Tensor | None,
    kv_caches: Sequence[Any] | None,
    model_kwargs: dict[str, Any],
    complement: Complement | None = None,
    given: torch.Tensor | None = None,
) -> Callable[..., torch.Tensor]:
    """The (guided, completed) velocity of the noisy frames x at time s (``r``: a MeanFlow step's end); ``given``
    (B, C, G, H, W) clean frames sit before x at t = 0 in every call (module docstring); ``commit``: the call commits
    its keys and values to the KV caches (a noisy context's last step)."""
    G = 0 if given is None else given.shape[2]

    def velocity(x: torch.Tensor, s: float, r: float | None = None, *, commit: bool = False) -> torch.Tensor:
        kwargs = model_kwargs if r is None else {**model_kwargs, "interval": _net_time(s - r, x)}
        if commit:
            kwargs = {**kwargs, "update_cache": True}
        t = _net_time(s, x)
        if G:
            x_in = torch.cat([given.to(x.dtype), x], dim=2)  # (B, C, G + F, H, W)
            t = torch.cat([t.new_zeros(t.shape[0], G), t], dim=1)  # (B, G + F): the given frames at t = 0
            if r is not None:
                kwargs["interval"] = torch.cat([t.new_zeros(t.shape[0], G), kwargs["interval"]], dim=1)
        else:
            x_in = x
        v = guided_velocity(
            model, x_in, t, context,
            guidance=guidance, neg_context=neg_context, kv_caches=kv_caches, **kwargs,
        )[:, :, G:]
        if complement is None:
            return v
        return v + complement(x + (1 - s) * v) / s  # x0 completed outside the head's reach (module docstring)

    return velocity


# ------------------------------------------------------------------ bidirectional
def euler_sample(
    model: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    context: torch.Tensor,
    *,
    steps: Steps,
    shift: float = 1.0,
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    mask: Any = None,
    callback: Callback | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    complement: Complement | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Euler solver of the flow-matching ODE dx/ds = v from s = 1 to 0 (Lipman et al. 2023; Wan's flow Euler).

    Args:
        noise: (B, C, F, H, W) standard normal (x at s = 1); context: (B, L, D).
        mask: a :class:`~causal_rcm.kernels.masks.BlockSparseMask` for every call, None = full attention.
        prefix: (B, C, P, H, W) known clean frames before the new ones, kept by replacement (module docstring);
            ``generator`` draws their noise. The network then sees P + F frames (``actions`` (B, P + F)).
        complement: ``model.head_complement()`` to complete each x0 estimate (module docstring).
        model_kwargs: passed to every call (e.g. ``actions``).
    Returns:
        (B, C, F, H, W) sample.
    """
    return _bidirectional(model, noise, context, "euler", steps=steps, shift=shift, guidance=guidance, neg_context=neg_context,
                          mask=mask, generator=generator, callback=callback, prefix=prefix, complement=complement,
                          model_kwargs=model_kwargs)


def consistency_sample(
    model: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    context: torch.Tensor,
    *,
    steps: Steps,
    shift: float = 1.0,
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    mask: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    prefix: torch.Tensor | None = None,
    complement: Complement | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): predict x0, re-noise with fresh noise.

    Same arguments as :func:`euler_sample`; ``generator`` draws the fresh noise between steps.
    """
    return _bidirectional(model, noise, context, "consistency", steps=steps, shift=shift, guidance=guidance,
                          neg_context=neg_context, mask=mask, generator=generator, callback=callback, prefix=prefix,
                          complement=complement, model_kwargs=model_kwargs)


def _bidirectional(
    model: Callable[..., torch.Tensor], noise: torch.Tensor, context: torch.Tensor, solver: str, *, steps: Steps,
    shift: float, guidance: float, neg_context: torch.Tensor | None, mask: Any, generator: torch.Generator | None,
    callback: Callback | None, prefix: torch.Tensor | None, complement: Complement | None, model_kwargs: dict[str, Any],
) -> torch.Tensor:
    """:func:`euler_sample` and :func:`consistency_sample`: one window, with a known ``prefix`` put back at every step."""
    if mask is not None:
        model_kwargs["mask"] = mask
    velocity = _velocity_fn(model, context, guidance, neg_context, None, model_kwargs, complement)
    grid = time_grid(steps, shift)
    if prefix is None:
        return _integrate(velocity, noise, grid, solver=solver, generator=generator, callback=callback)
    P = prefix.shape[2]
    eps = torch.randn(prefix.shape, generator=generator, device=prefix.device, dtype=noise.dtype)

    def replaced(x: torch.Tensor, s: float, *r: float, **kw: Any) -> torch.Tensor:
        known = ((1 - s) * prefix + s * eps).to(x.dtype)  # the prefix at noise level s, on one noise path
        return velocity(torch.cat([known, x[:, :, P:]], dim=2), s, *r, **kw)

    x = torch.cat([eps, noise], dim=2)  # (B, C, P + F, H, W) at s = 1
    return _integrate(replaced, x, grid, solver=solver, generator=generator, callback=callback)[:, :, P:]


# ------------------------------------------------------------------------- causal
def make_kv_caches(
    model: Any, *, guidance: float = 1.0, sink_frames: int = 0, window_frames: int | None = None, kv_int8: bool = False,
) -> tuple[Any, Any]:
    """``(cond_cache, uncond_cache)`` from ``model.new_kv_cache``; the second is None without guidance.
    ``kv_int8``: caches that store keys and values in int8 (``models.kv_cache``)."""
    def new() -> Any:
        if kv_int8:
            return model.new_kv_cache(sink_frames=sink_frames, window_frames=window_frames, int8=True)
        return model.new_kv_cache(sink_frames=sink_frames, window_frames=window_frames)

    return new(), (None if is_unguided(guidance) else new())


def refresh_kv_caches(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    context: torch.Tensor,
    kv_caches: Sequence[Any],
    *,
    neg_context: torch.Tensor | None = None,
    s: float | torch.Tensor = 0.0,
    **model_kwargs: Any,
) -> None:
    """Commit a chunk (B, C, Fc, H, W) to each cache: run it at flow time ``s`` with ``update_cache=True``.

    ``s = 0``: the clean chunk x0 (Self Forcing's refresh); a rebuilt noisy-context cache re-runs the kept input of
    each chunk's last step at that step's ``s`` (a (Fc,) tensor of per-frame times where given frames at 0 opened
    the chunk). Runs without gradient (Self Forcing, Huang et al. 2025: the cache is built from the detached
    output). The unconditional cache is refreshed with ``neg_context``.
    """
    if isinstance(s, torch.Tensor):
        t = to_net_time(s.to(x0.device, time_dtype(x0)).expand(x0.shape[0], x0.shape[2]))
    else:
        t = _net_time(s, x0)
    with torch.no_grad():
        for cache, ctx in zip(kv_caches, (context, neg_context)):
            if cache is None:
                continue
            if ctx is None:
                raise ValueError("refreshing the unconditional cache needs neg_context")
            model(x0, t, ctx, kv_cache=cache, update_cache=True, **model_kwargs)


class ChunkHistory:
    """The chunks a KV cache covers, as they were committed, kept to rebuild it: the chunks holding sink frames, for
    ever, and the fewest last chunks that hold ``window_frames`` frames (all of them when the window is None).
    Bounded by the sink and the window, like the cache. A chunk is its latents and the keywords of
    :func:`refresh_kv_caches` that commit it: the clean chunk (at t = 0), or with a noisy context its last step's
    input and time ``s`` (:class:`CommitTracker`)."""

    def __init__(self, sink_frames: int = 0, window_frames: int | None = None) -> None:
        self.sink_frames, self.window_frames = sink_frames, window_frames
        self._sinks: list[tuple[int, torch.Tensor, dict]] = []
        self._recent: deque[tuple[int, torch.Tensor, dict]] = deque()
        self._frames = 0  # latent frames committed so far

    def add(self, x0: torch.Tensor, **model_kwargs: Any) -> None:
        """Keep a committed chunk (B, C, Fc, H, W) with the keyword arguments it was committed with."""
        item = (self._frames, x0, model_kwargs)
        if self._frames < self.sink_frames:
            self._sinks.append(item)
        self._recent.append(item)
        self._frames += x0.shape[2]
        if self.window_frames is not None:
            while len(self._recent) > 1 and self._frames - self._recent[1][0] >= self.window_frames:
                self._recent.popleft()

    def chunks(self) -> list[tuple[torch.Tensor, dict]]:
        """``(x0, model_kwargs)`` of the kept chunks in stream order."""
        first = self._recent[0][0] if self._recent else self._frames
        return [(x0, kw) for _, x0, kw in [c for c in self._sinks if c[0] < first] + list(self._recent)]

    def __len__(self) -> int:
        return len(self.chunks())

    def nbytes(self) -> int:
        return sum(x0.numel() * x0.element_size() for x0, _ in self.chunks())


def rebuild_kv_cache(model: Any, history: ChunkHistory, context: torch.Tensor, *, kv_int8: bool = False) -> Any:
    """A new KV cache (the history's sink and window; ``kv_int8``: in int8) with the kept chunks committed under
    ``context``, chunk by chunk as they were first committed (Self Forcing's refresh, Huang et al. 2025, re-run on
    the old frames)."""
    cache = (model.new_kv_cache(sink_frames=history.sink_frames, window_frames=history.window_frames, int8=True) if kv_int8
             else model.new_kv_cache(sink_frames=history.sink_frames, window_frames=history.window_frames))
    for x0, kwargs in history.chunks():
        refresh_kv_caches(model, x0, context, (cache,), **kwargs)
    return cache


def sample_chunk(
    model: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    context: torch.Tensor,
    kv_caches: Sequence[Any],
    *,
    steps: Steps,
    shift: float = 1.0,
    solver: str = "euler",
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    refresh: bool = True,
    context_mode: str = "clean",
    complement: Complement | None = None,
    given: torch.Tensor | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Denoise one chunk against the KV caches and (``refresh``) commit it to them, as ``context_mode`` says:
    ``"clean"`` re-runs the clean chunk at t = 0 (Self Forcing), ``"noisy"`` keeps the last step's keys and
    values (module docstring).

    The building block of :func:`causal_sample_stream`, for pipelines that change the prompt
    or the actions between chunks. The caches (from :func:`make_kv_caches`) are the only state.

    Args:
        noise: (B, C, Fc, H, W), the new chunk at s = 1; context: (B, L, D).
        kv_caches: ``(cond_cache, uncond_cache)``; uncond_cache None when ``guidance == 1``.
        complement: ``model.head_complement()`` to complete each x0 estimate (module docstring);
            the completed chunk is the one committed to the caches.
        given: (B, C, G, H, W) clean frames that open the chunk (e.g. an image's latent frame): at t = 0 beside the
            noisy ones at every step, committed and returned with them (module docstring).
        model_kwargs: passed to every call, the refresh included (e.g. ``actions`` (B, G + Fc)).
    Returns:
        (B, C, G + Fc, H, W) the clean chunk, the given frames first.
    """
    if context_mode not in CONTEXTS:
        raise ValueError(f"unknown context mode {context_mode!r}; choose one of {CONTEXTS}")
    noisy = refresh and context_mode == "noisy"
    velocity = _velocity_fn(model, context, guidance, neg_context, kv_caches, model_kwargs, complement, given)
    x0 = _integrate(velocity, noise, time_grid(steps, shift), solver=solver, generator=generator, callback=callback,
                    commit_last=noisy)
    if given is not None:
        x0 = torch.cat([given.to(x0.dtype), x0], dim=2)
    if refresh and not noisy:
        refresh_kv_caches(model, x0, context, kv_caches, neg_context=neg_context, **model_kwargs)
    return x0


def _tagged(callback: Callback | None, chunk: int) -> Callback | None:
    if callback is None:
        return None
    return lambda info: callback({**info, "chunk": chunk})


class CommitTracker:
    """What each chunk's commit ran on, for :class:`ChunkHistory`: the clean chunk at t = 0, or with a noisy context
    the last network call's input at its time (module docstring), seen through the sampler's callback."""

    def __init__(self, context_mode: str) -> None:
        self.noisy = context_mode == "noisy"
        self._last: dict[str, Any] = {}

    def track(self, callback: Callback | None, chunk: int) -> Callback | None:
        """The callback to give :func:`sample_chunk` for ``chunk``: ``callback`` (tagged with the chunk), and the
        last call's input kept when the context is noisy."""
        tagged = _tagged(callback, chunk)
        if not self.noisy:
            return tagged

        def call(info: dict[str, Any]) -> None:
            self._last = info
            if tagged is not None:
                tagged(info)

        return call

    def committed(self, x0: torch.Tensor, given: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(latents, refresh keywords)`` that commit the chunk just sampled, x0 (B, C, G + F, H, W) with its
        ``given`` G frames first: ``(x0, {})``, or the last step's input with its time ``s`` (the given frames at 0)."""
        if not self.noisy:
            return x0, {}
        x, s = self._last["x"], self._last["s"]
        if not given:
            return x, {"s": s}
        times = torch.tensor([0.0] * given + [s] * x.shape[2], dtype=torch.float64)
        return torch.cat([x0[:, :, :given], x.to(x0.dtype)], dim=2), {"s": times}


def causal_sample_stream(
    model: Any,
    noise: torch.Tensor | Iterable[torch.Tensor],
    context: torch.Tensor,
    *,
    frames_per_chunk: int,
    steps: Steps,
    shift: float = 1.0,
    solver: str = "euler",
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    sink_frames: int = 0,
    window_frames: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    actions: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    complement: Complement | None = None,
    switches: Mapping[int, torch.Tensor] | None = None,
    recache_every: int = 0,
    context_mode: str = "clean",
    kv_int8: bool = False,
) -> Iterator[torch.Tensor]:
    """Autoregressive chunk-by-chunk generation with a KV cache, yielding each clean chunk (Self Forcing).

    Args:
        noise: (B, C, F, H, W) for F frames (any F; a last chunk may be shorter), or an iterable
            of (B, C, frames_per_chunk, H, W) chunks for an unbounded stream.
        frames_per_chunk: frames denoised together (1 = frame-wise).
        steps, shift, solver: the per-chunk schedule and update rule (module docstring):
            many-step ``"euler"`` for causal teachers, 1-4 step ``"consistency"`` for students.
        sink_frames, window_frames: the cache's attention sink and rolling window
            (``window_frames=None``: unbounded).
        actions: (B, F, ...) per-frame actions, split into chunks like the noise (tensor noise only); with a
            prefix, (B, P + F, ...): the prefix's first.
        prefix: (B, C, P, H, W) clean frames to continue: its whole chunks are committed to the cache chunk by chunk
            before the first new chunk, as the model's own chunks are; the last ``P % frames_per_chunk`` open the
            first new chunk at t = 0, which then makes ``frames_per_chunk - P % frames_per_chunk`` new frames.
        complement: ``model.head_complement()`` to complete each x0 estimate (module docstring).
        switches: ``{chunk: context}``: from that chunk (counted after the prefix) on, the prompt is ``context``
            (B, L, D) and the conditional cache is rebuilt under it (module docstring).
        recache_every: K > 0 rebuilds every cache from its kept chunks before every K-th chunk (0: never).
        context_mode: how each chunk is committed, ``"clean"`` or ``"noisy"`` (module docstring); a prefix's whole
            chunks are committed clean, at t = 0, in both; a rebuilt cache re-runs each chunk as it was committed.
        kv_int8: int8 KV caches (``models.kv_cache``).
    Yields:
        (B, C, Fc, H, W) clean chunks of new frames in order. The last chunk of tensor noise is not committed
        to the cache (nothing reads it), saving one forward pass.
    """
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    grid = time_grid(steps, shift)
    kv_caches = make_kv_caches(model, guidance=guidance, sink_frames=sink_frames, window_frames=window_frames, kv_int8=kv_int8)
    P = 0 if prefix is None else prefix.shape[2]
    whole = P - P % frames_per_chunk  # prefix frames committed as whole chunks
    given = None if P == whole else prefix[:, :, whole:]
    first = frames_per_chunk - (P - whole)  # new frames of the first chunk
    if isinstance(noise, torch.Tensor):
        F = noise.shape[2]
        sizes = [min(first, F)] + [frames_per_chunk] * math.ceil(max(F - first, 0) / frames_per_chunk)
        sizes[-1] -= sum(sizes) - F
        chunks: Iterable[torch.Tensor] = noise.split(sizes, dim=2)
        num_chunks = len(sizes)
    else:
        if actions is not None:
            raise ValueError("actions need tensor noise; for a live stream call sample_chunk per chunk")
        chunks, num_chunks = noise, None
    if recache_every < 0:
        raise ValueError(f"recache_every must be >= 0, got {recache_every}")
    switches = dict(switches or {})
    history = ChunkHistory(sink_frames, window_frames) if switches or recache_every else None
    tracker = CommitTracker(context_mode)

    def chunk_actions(start: int, stop: int) -> dict[str, Any]:
        return {} if actions is None else {"actions": actions[:, start:stop]}

    for k in range(whole // frames_per_chunk):
        start = k * frames_per_chunk
        model_kwargs = chunk_actions(start, start + frames_per_chunk)
        refresh_kv_caches(model, prefix[:, :, start : start + frames_per_chunk], context, kv_caches,
                          neg_context=neg_context, **model_kwargs)
        if history is not None:
            history.add(prefix[:, :, start : start + frames_per_chunk], **model_kwargs)
    done = whole // frames_per_chunk  # chunks committed before the first new one (the prefix's): the cache's age
    start = whole  # the frame (prefix included) that opens the next chunk
    for k, chunk in enumerate(chunks):
        G = P - whole if k == 0 else 0  # given frames that open this chunk
        if num_chunks is None and chunk.shape[2] != (first if k == 0 else frames_per_chunk):
            raise ValueError(f"stream chunk {k} has {chunk.shape[2]} frames, expected {first if k == 0 else frames_per_chunk}")
        model_kwargs = chunk_actions(start, start + G + chunk.shape[2])
        if history is not None and len(history):
            recache = recache_every > 0 and (done + k) % recache_every == 0
            if k in switches:
                context = switches[k]
            if recache or k in switches:
                kv_caches = (rebuild_kv_cache(model, history, context, kv_int8=kv_int8),
                             rebuild_kv_cache(model, history, neg_context, kv_int8=kv_int8)
                             if recache and kv_caches[1] is not None else kv_caches[1])
        elif k in switches:
            context = switches[k]
        x0 = sample_chunk(
            model, chunk, context, kv_caches,
            steps=grid, solver=solver, guidance=guidance, neg_context=neg_context, generator=generator,
            callback=tracker.track(callback, k), refresh=k + 1 != num_chunks, context_mode=context_mode, complement=complement,
            given=given if k == 0 else None, **model_kwargs,
        )
        if history is not None:
            committed, refresh_kwargs = tracker.committed(x0, G)
            history.add(committed, **refresh_kwargs, **model_kwargs)
        start += G + chunk.shape[2]
        yield x0[:, :, G:]


def causal_sample(
    model: Any,
    noise: torch.Tensor,
    context: torch.Tensor,
    *,
    frames_per_chunk: int,
    steps: Steps,
    shift: float = 1.0,
    solver: str = "euler",
    guidance: float = 1.0,
    neg_context: torch.Tensor | None = None,
    sink_frames: int = 0,
    window_frames: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    actions: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    complement: Complement | None = None,
    switches: Mapping[int, torch.Tensor] | None = None,
    recache_every: int = 0,
    context_mode: str = "clean",
    kv_int8: bool = False,
) -> torch.Tensor:
    """Autoregressive sampling with a KV cache (Self Forcing): :func:`causal_sample_stream`, concatenated.

    ``noise`` (B, C, F, H, W) -> (B, C, F, H, W), the new frames; arguments as :func:`causal_sample_stream`.
    """
    if not isinstance(noise, torch.Tensor):
        raise TypeError("causal_sample needs the whole noise tensor; use causal_sample_stream for a stream")
    stream = causal_sample_stream(
        model, noise, context, frames_per_chunk=frames_per_chunk, steps=steps, shift=shift, solver=solver,
        guidance=guidance, neg_context=neg_context, sink_frames=sink_frames, window_frames=window_frames,
        generator=generator, callback=callback, actions=actions, prefix=prefix, complement=complement,
        switches=switches, recache_every=recache_every, context_mode=context_mode, kv_int8=kv_int8,
    )
    return torch.cat(list(stream), dim=2)


# ------------------------------------------------------------- one entry point
@dataclass(frozen=True)
class SamplerSpec:
    """How to sample a model: bidirectional or causal, solver, steps, guidance and, causal, the KV-cache layout.

    ``window_frames``: latent frames a causal model attends, the current chunk included (None: unbounded).
    ``recache_every``: rebuild the KV caches from their kept chunks every this many chunks (0: never; module
    docstring). ``complete_x0``: complete each x0 estimate where the network's head cannot reach, with the
    network's own mean (module docstring), for a model that says where that is (``head_complement``).
    ``context``: how a causal model commits each chunk, ``"clean"`` (a re-run at t = 0) or ``"noisy"`` (the last
    step's keys and values; module docstring). ``kv_int8``: int8 KV caches (``models.kv_cache``).
    """

    causal: bool
    steps: int = 50
    solver: str = "euler"  # one of SOLVERS
    shift: float = 3.0
    guidance: float = 3.0
    frames_per_chunk: int = 1
    sink_frames: int = 0
    window_frames: int | None = None
    recache_every: int = 0
    complete_x0: bool = True
    context: str = "clean"  # one of CONTEXTS
    kv_int8: bool = False

    def calls_per_batch(self, num_frames: int) -> int:
        """Network calls to sample one batch of ``num_frames`` frames: steps x CFG branches, per chunk
        when causal, plus, with a clean context, the cache commit of every chunk but the last (a noisy context
        commits with the last step), and the re-runs of the kept chunks at each re-cache (see
        ``causal_sample_stream``)."""
        branches = 1 if self.guidance == 1 else 2
        if not self.causal:
            return self.steps * branches
        chunks = math.ceil(num_frames / self.frames_per_chunk)
        recached = 0
        if self.recache_every:
            history = ChunkHistory(self.sink_frames, self.window_frames)
            for k in range(chunks):
                recached += len(history) if k and k % self.recache_every == 0 else 0
                history.add(torch.empty(0, 0, min(self.frames_per_chunk, num_frames - k * self.frames_per_chunk)))
        commits = chunks - 1 if self.context == "clean" else 0
        return (chunks * self.steps + commits + recached) * branches


def head_complement(model: Any, enabled: bool = True) -> Complement | None:
    """``model.head_complement()`` when ``enabled`` and the model has one (a network that says where its output
    cannot reach, as ``CausalWanModel`` does), else None: the ``complement`` argument of the samplers."""
    get = getattr(model, "head_complement", None)
    return get() if enabled and get is not None else None


def check_window(window: int, frames_per_chunk: int, name: str, *, zero: str | None = None, most: int | None = None) -> None:
    """Refuse a KV-cache window (latent frames, the current chunk included) that cannot hold a chunk, or is longer
    than ``most`` (a model's temporal RoPE positions, less its sink frames: the cache is allocated whole).

    ``zero`` names what 0 means where it is a default (e.g. "the training length"); without it 0 is refused too.
    The one check behind every window a user can set: config keys, CLI options and the streaming API."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise UserError(f"{name} must be an integer number of latent frames, got {window!r}")
    if most is not None and window > most:
        raise UserError(f"{name} must be at most {most} latent frames (the model's max_frames RoPE positions, less "
                        f"the sink frames), got {window}")
    if (zero is not None and window == 0) or window >= frames_per_chunk:
        return
    allowed = f"be 0 ({zero}) or hold" if zero is not None else "hold"
    raise UserError(f"{name} must {allowed} a chunk of {frames_per_chunk} frames, got {window}")


def sample(
    model: Any,
    noise: torch.Tensor,
    context: torch.Tensor,
    spec: SamplerSpec,
    *,
    neg_context: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    actions: torch.Tensor | None = None,
    callback: Callback | None = None,
    prefix: torch.Tensor | None = None,
    switches: Mapping[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A whole video as ``spec`` says: causal chunk by chunk with a KV cache, or bidirectional with its solver.

    ``noise`` (B, C, F, H, W), ``context`` (B, L, D), ``actions`` (B, F) for world models -> (B, C, F, H, W).
    With ``prefix`` (B, C, P, H, W), known clean frames the video continues (module docstring), ``actions`` is
    (B, P + F) and the F new frames are returned. ``switches`` (causal): ``{chunk: context}`` prompt switches
    (:func:`causal_sample_stream`). The entry point of evaluation and of
    :meth:`~causal_rcm.pipeline.StreamingPipeline.generate`."""
    common = dict(steps=spec.steps, shift=spec.shift, guidance=spec.guidance, neg_context=neg_context, callback=callback,
                  generator=generator, prefix=prefix, complement=head_complement(model, spec.complete_x0))
    if spec.causal:
        return causal_sample(
            model, noise, context, frames_per_chunk=spec.frames_per_chunk, solver=spec.solver,
            sink_frames=spec.sink_frames, window_frames=spec.window_frames, actions=actions, switches=switches,
            recache_every=spec.recache_every, context_mode=spec.context, kv_int8=spec.kv_int8, **common,
        )
    if switches:
        raise UserError("prompt switches need a causal model")
    model_kwargs = {} if actions is None else {"actions": actions}
    if spec.solver == "consistency":
        return consistency_sample(model, noise, context, **common, **model_kwargs)
    if spec.solver != "euler":
        raise UserError(f"a bidirectional model samples with euler or consistency, not {spec.solver!r}")
    return euler_sample(model, noise, context, **common, **model_kwargs)
