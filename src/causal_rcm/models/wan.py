"""CausalWanModel: the Wan2.1 text-to-video DiT with per-frame timesteps, block masks and a KV cache.

Architecture as Wan2.1 T2V (Wan Team 2025): 3D patch embedding, text-embedding MLP, sinusoidal
time embedding -> MLP -> 6-way adaLN modulation per block (plus a learned table), self-attention
with RMSNorm on q and k and 3D RoPE, cross-attention to text, GELU(tanh) FFN, and a head with
2-way modulation. Parameter names are those of Wan's checkpoints, so original weights load
without renaming (``adapters.py`` maps diffusers' names).

What is added for causal generation:

* ``t`` is per frame, (B, F): modulation is computed per frame and broadcast to its tokens,
  so clean context frames (t = 0) and noisy frames live in one sequence.
* ``mask`` (a :class:`BlockSparseMask`) restricts self-attention and carries the RoPE frame
  positions (teacher forcing repeats them for the noisy half).
* ``kv_cache`` streams chunk by chunk: the new frames attend to the cached frames and to
  themselves; ``update_cache=True`` commits their keys and values.
* ``actions`` (B, F): per-frame action embeddings added to the time embedding, so the same
  adaLN path carries them (zero-initialised: a text-to-video model starts unchanged).
* ``interval`` (B, F): for MeanFlow students (Geng et al. 2025), the length t - r of the
  average-velocity interval, embedded like t by its own zero-initialised MLP and added to the
  time embedding (MeanFlow conditions on (t, t - r)); ``interval = 0`` is the instantaneous
  velocity, so a student made from a teacher starts as the teacher.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from causal_rcm.kernels.dispatch import attention, available_backends
from causal_rcm.limits import field_problems, ranged
from causal_rcm.models.kv_cache import KVCache, LayerKVCache
from causal_rcm.kernels.masks import BlockSparseMask
from causal_rcm.models.rope import apply_rope, at_least_fp32, rope_freqs

__all__ = ["CausalWanConfig", "CausalWanModel", "PRESETS"]


@dataclass
class CausalWanConfig:
    """Architecture of a (causal) Wan2.1 DiT. Defaults are Wan2.1-T2V-1.3B."""

    # Each size's upper bound is well above Wan2.1-14B's, and below what no machine could hold.
    in_dim: int = ranged(16, 1, 4096)
    out_dim: int = ranged(16, 1, 4096)
    dim: int = ranged(1536, 1, 65536)
    ffn_dim: int = ranged(8960, 1, 262144)
    freq_dim: int = ranged(256, 2, 65536)
    text_dim: int = ranged(4096, 1, 65536)
    text_len: int = ranged(512, 1, 4096)
    num_heads: int = ranged(12, 1, 1024)
    num_layers: int = ranged(30, 1, 1024)
    patch_size: tuple[int, int, int] = ranged((1, 2, 2), 1, 64)
    eps: float = ranged(1e-6, 0, 1, above=True)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = ranged(10000.0, 1, 1e12)
    max_frames: int = ranged(1024, 1, 65536)  # temporal RoPE positions available (Wan: 1024)
    num_actions: int = ranged(0, 0, 65536)  # discrete actions (embedding table); 0 = none
    action_dim: int = ranged(0, 0, 65536)  # continuous actions (MLP); 0 = none
    interval_embedding: bool = False  # MeanFlow's second time input t - r (zero-initialised)

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, list):  # as JSON holds it
            self.patch_size = tuple(self.patch_size)
        problems = field_problems(self)
        if problems:  # the checks below need numbers of the right types
            raise ValueError("invalid model config: " + "; ".join(problems))
        if self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        elif (self.dim // self.num_heads) % 2 or self.dim // self.num_heads < 6:
            problems.append(f"head dim {self.dim // self.num_heads} must be even and >= 6 for RoPE")
        if self.freq_dim % 2:
            problems.append(f"freq_dim {self.freq_dim} must be even (cosines and sines)")
        if self.patch_size[0] != 1:
            problems.append(f"patch_size must be (1, p, p) so that timesteps are per frame, got {self.patch_size}")
        if self.num_actions and self.action_dim:
            problems.append("set num_actions (discrete) or action_dim (continuous), not both")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> CausalWanConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CausalWanConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, dict] = {
    # A few M parameters: unit tests and CPU experiments.
    "tiny": dict(dim=256, ffn_dim=768, num_heads=4, num_layers=4, text_dim=64, text_len=32),
    # The embedded shapes world (32 px, pixel codec factor 4 -> 48 x 8 x 8 latents, 16 tokens a frame).
    "shapes": dict(in_dim=48, out_dim=48, dim=192, ffn_dim=768, num_heads=4, num_layers=6, text_dim=64, text_len=24),
    "wan2.1-1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


# --------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in fp32 and rounded to x's dtype before the weight (as Wan)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm upcasts half inputs: x * rsqrt(mean(x^2) + eps) in fp32, out in x's dtype
        # (one fused op on CUDA; forward AD defined). The weight multiplies after the rounding, as in Wan.
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (Wan and diffusers do the same).

    ``F.layer_norm`` computes half inputs in fp32 and rounds once, so x goes in as it is when
    the weight has its dtype (no casts); an fp32 weight with a half x casts x up instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x if self.weight is None or self.weight.dtype == x.dtype else at_least_fp32(x)
        w = None if self.weight is None else self.weight.to(x_in.dtype)
        b = None if self.bias is None else self.bias.to(x_in.dtype)
        return F.layer_norm(x_in, self.normalized_shape, w, b, self.eps).to(x.dtype)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos(t w_i), sin(t w_i)] with w_i = 10000^(-i / (dim/2)) (Wan's order), float64 -> (N, dim)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class _Projections(nn.Module):
    """q, k, v, o projections with optional RMSNorm on q and k across heads (Wan's names)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()


class SelfAttention(_Projections):
    """Multi-head self-attention with q/k RMSNorm (across heads), 3D RoPE, a mask or a KV cache.

    In two parts, so that the pure tensor math can be compiled apart from the cache (``WanBlock``):
    :meth:`project` (projections, norms, RoPE) and :meth:`attend` (cache and attention kernel).
    """

    def project(self, x: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, S, dim), freqs (S, D/2) (``rope_freqs``) -> q (rotated), k (before RoPE), k_rot, v, each (B, S, H, D)."""
        heads = self.num_heads
        q = self.norm_q(self.q(x)).unflatten(-1, (heads, -1))  # (B, S, H, D)
        k = self.norm_k(self.k(x)).unflatten(-1, (heads, -1))
        v = self.v(x).unflatten(-1, (heads, -1))
        return apply_rope(q, freqs), k, apply_rope(k, freqs), v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        k_rot: torch.Tensor,
        v: torch.Tensor,
        sink_freqs: torch.Tensor | None,
        mask: BlockSparseMask | None,
        backend: str,
        cache: LayerKVCache | None,
        update_cache: bool,
    ) -> torch.Tensor:
        """The output of :meth:`project` attended over the chunk (and the cache) -> (B, S, H * D), before ``o``.

        sink_freqs: with a cache, the rotations of the held sink frames (or None).
        """
        if cache is not None:  # keys and values of the visible cached frames and the chunk, (B, N, H, D)
            k_rot, v = cache.update(k, k_rot, v, sink_freqs, commit=update_cache)
        out = attention(q.transpose(1, 2), k_rot.transpose(1, 2), v.transpose(1, 2), mask, backend=backend)
        return out.transpose(1, 2).flatten(2)  # (B, S, H * D)


class CrossAttention(_Projections):
    """Attention from video tokens to text tokens (no RoPE, no mask)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str) -> torch.Tensor:
        """x (B, S, dim), context (B, L, dim) -> (B, S, dim)."""
        heads = self.num_heads
        q = self.norm_q(self.q(x)).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, S, D)
        k = self.norm_k(self.k(context)).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, L, D)
        v = self.v(context).unflatten(-1, (heads, -1)).transpose(1, 2)
        out = attention(q, k, v, None, backend=backend)
        return self.o(out.transpose(1, 2).flatten(2))


class WanBlock(nn.Module):
    """One DiT block; modulation (shift, scale, gate) x 2 per frame, computed in fp32.

    ``forward`` runs in three stages. :meth:`pre_attention` (modulation, norm, q/k/v, RoPE) and
    :meth:`post_attention` (output projection, gate, cross-attention, FFN) are pure tensor math
    whose shapes depend only on the chunk's frame count; between them ``self_attn.attend`` writes
    the KV cache (in-place ring writes driven by host-side positions) and runs the attention
    kernel over a key length that grows with the stream. :meth:`CausalWanModel.compile_blocks`
    compiles the two pure stages and leaves the middle eager (see there for why).
    """

    def __init__(self, cfg: CausalWanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.stages = None  # compiled (pre_attention, post_attention) functions, set by CausalWanModel.compile_blocks

    def pre_attention(self, x: torch.Tensor, e: torch.Tensor, freqs: torch.Tensor) -> tuple[tuple, tuple]:
        """x (B, F, T, dim), e (B, F, 6, dim) fp32, freqs (F * T, D/2) (``apply_rope``) -> (q, k, k_rot, v), 4 modulations.

        The modulation math is fp32 without casting x: e is (at least) fp32, so type promotion
        computes ``x * (1 + scale)`` and ``x + y * gate`` in fp32 inside the op, exactly as on x.float().
        """
        mod = (self.modulation + e).unsqueeze(3)  # (B, F, 6, 1, dim), in e's dtype
        shift_sa, scale_sa, *rest = mod.unbind(2)  # each (B, F, 1, dim)
        h = (self.norm1(x) * (1 + scale_sa) + shift_sa).to(x.dtype)
        return self.self_attn.project(h.flatten(1, 2), freqs), tuple(rest)

    def post_attention(
        self, x: torch.Tensor, mod: tuple, attn: torch.Tensor, context: torch.Tensor, backend: str
    ) -> torch.Tensor:
        """x (B, F, T, dim), mod from :meth:`pre_attention`, attn (B, F * T, dim) from ``attend`` -> (B, F, T, dim)."""
        B, F_, T, dim = x.shape
        gate_sa, shift_ff, scale_ff, gate_ff = mod
        x = (x + self.self_attn.o(attn).view(B, F_, T, dim) * gate_sa).to(x.dtype)
        # 2. cross-attention
        x = x + self.cross_attn(self.norm3(x).flatten(1, 2), context, backend).view(B, F_, T, dim)
        # 3. feed-forward
        h = (self.norm2(x) * (1 + scale_ff) + shift_ff).to(x.dtype)
        return (x + self.ffn(h) * gate_ff).to(x.dtype)

    def forward(self, x, e, context, rope, mask, backend, cache, update_cache):
        """x (B, F, T, dim) tokens grouped by frame; e (B, F, 6, dim) fp32 per-frame modulation."""
        pre, post = self.stages or (WanBlock.pre_attention, WanBlock.post_attention)
        freqs, sink_freqs = rope
        if self.stages is not None:  # the table's real view: inductor makes no code for complex tensors
            freqs = torch.view_as_real(freqs)
        # 1. self-attention, the cache and the kernel between the two pure stages; 2. and 3. in post
        qkv, mod = pre(self, x, e, freqs)
        attn = self.self_attn.attend(*qkv, sink_freqs, mask, backend, cache, update_cache)
        return post(self, x, mod, attn, context, backend)


class Head(nn.Module):
    def __init__(self, cfg: CausalWanConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x (B, F, T, dim), e (B, F, dim) fp32 -> (B, F, T, out_dim * prod(patch)); fp32 modulation as in WanBlock."""
        shift, scale = (self.modulation + e[:, :, None]).unsqueeze(3).unbind(2)  # (B, F, 1, dim)
        return self.head((self.norm(x) * (1 + scale) + shift).to(x.dtype))


# --------------------------------------------------------------------------- model
class CausalWanModel(nn.Module):
    """Wan2.1 DiT with per-frame timesteps, block-sparse masks, KV-cache streaming and actions.

    ``model(x, t, context)`` returns the raw network output (for Wan weights: the
    flow-matching velocity v = eps - x0 at x_s = (1 - s) x0 + s eps, with t = 1000 s).
    """

    def __init__(self, config: CausalWanConfig, *, attn_backend: str = "sdpa") -> None:
        super().__init__()
        self.config = cfg = config
        self.attn_backend = attn_backend
        # Recompute each block in backward instead of keeping its activations (torchtitan's
        # per-block activation checkpointing): a runtime switch, not part of the weights' config.
        self.activation_checkpointing = False
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        if cfg.num_actions:
            self.action_embedding = nn.Embedding(cfg.num_actions, cfg.dim)
        elif cfg.action_dim:
            self.action_embedding = nn.Sequential(
                nn.Linear(cfg.action_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim)
            )
        else:
            self.action_embedding = None
        self.interval_embedding = (
            nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
            if cfg.interval_embedding else None
        )
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._rope_memo: dict[tuple, torch.Tensor] = {}  # see _rope_freqs
        self.init_weights()

    # ---------------------------------------------------------------- set-up
    @property
    def attn_backend(self) -> str:
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        if name not in available_backends():
            raise ValueError(f"unknown attention backend {name!r}; choose from {', '.join(available_backends())}")
        self._attn_backend = name

    def init_weights(self) -> None:
        """Wan's initialisation: Xavier-uniform linears, zero biases, small embeddings, zero output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for module in seq:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        if self.action_embedding is not None:
            last = self.action_embedding if self.config.num_actions else self.action_embedding[-1]
            nn.init.zeros_(last.weight)
        if self.interval_embedding is not None:
            nn.init.normal_(self.interval_embedding[0].weight, std=0.02)
            nn.init.zeros_(self.interval_embedding[-1].weight)

    def compile_blocks(self, mode: str | None = None) -> CausalWanModel:
        """Compile every block's pure tensor math with ``torch.compile``, for inference; returns self.

        Opt-in (``StreamingPipeline(..., compile=True)``, ``bench stream --compile``): a streamed
        forward at one latent frame a chunk is launch-bound on a GPU, and fusing each block's
        elementwise work (fp32 modulation, norms, RoPE, gates, GELU) cuts its kernel launches.

        What is compiled: :meth:`WanBlock.pre_attention` and :meth:`WanBlock.post_attention`, one
        compiled function each, shared by all blocks (the weights are graph inputs, so one graph
        serves every block). What stays eager: ``SelfAttention.attend``, the KV cache's ring writes
        and the self-attention kernel. Compiling the whole block instead (the trainer's
        ``block.compile()``) traces the cache's Python bookkeeping and ring writes into the graph,
        and each new state of it (the sinks held, the window full) fails a guard and recompiles
        (on the CPU, over the tests' 6-chunk frame-wise stream: 6 graphs, added at chunks 1, 2
        and 6, against 2, all at chunk 1; past its recompile limit dynamo falls back to eager).
        Split this way, the compiled stages see only the chunk's frame count: the first chunk
        size compiles a pair of static graphs, and a new size adds one pair, at most twice
        (dynamo specialises a count of 1; for counts >= 2 its automatic dynamic shapes make the
        count symbolic, so one pair serves them all). Every other forward of a stream, the cache
        refresh included, reuses the graphs.

        ``mode`` is ``torch.compile``'s mode; those that use CUDA graphs (``reduce-overhead``,
        ``max-autotune``) are refused: a CUDA graph's outputs live in memory its next replay
        overwrites, and the same graph runs for every block with the eager cache writes and
        attention kernel in between, a pattern CUDA-graph trees have not been checked against here.
        """
        if mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"compile mode {mode!r} uses CUDA graphs, which the streamed blocks do not support; "
                "use None (default) or 'max-autotune-no-cudagraphs'"
            )
        pre = torch.compile(WanBlock.pre_attention, mode=mode)
        post = torch.compile(WanBlock.post_attention, mode=mode)
        for block in self.blocks:
            block.stages = (pre, post)
        return self

    def new_kv_cache(self, sink_frames: int = 0, window_frames: int | None = None, *, int8: bool = False) -> KVCache:
        """An empty cache for streaming (see ``kv_cache.py`` for the position design); ``int8``: keys and values
        stored in int8."""
        return KVCache(self.config.num_layers, sink_frames, window_frames, int8=int8)

    @torch.no_grad()
    def head_complement(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The projection of latents onto what no output of this network can change; None if there is none.

        The head maps each token's ``dim`` features linearly to its ``n = out_dim * ph * pw`` output
        values, so when ``n > dim`` every output lies in ``bias + span(W)``, a ``dim``-dimensional
        affine subspace of each token's values (``W`` the head's (n, dim) weight). The returned
        function maps latents (B, out_dim, F, H, W) to their component orthogonal to ``span(W)``,
        token by token, taken from the weights as they are now. A sampler needs it: along those
        directions ``x0 = x_s - s v`` keeps the noise of ``x_s`` whatever the network does
        (``diffusion.samplers``, ``complete_x0``).
        """
        cfg = self.config
        _, ph, pw = cfg.patch_size
        n = cfg.out_dim * ph * pw
        if n <= cfg.dim:
            return None
        weight = self.head.head.weight.detach()
        if hasattr(weight, "full_tensor"):  # sharded by FSDP2 (a DTensor): every rank gathers the whole head
            weight = weight.full_tensor()
        weight = weight.double()  # (n, dim)
        basis = torch.linalg.svd(weight, full_matrices=False).U.float()  # (n, dim): an orthonormal basis of span(W)

        def complement(x: torch.Tensor) -> torch.Tensor:
            B, C, F_, H, W = x.shape
            q = basis.to(x.device, x.dtype)
            tokens = x.reshape(B, C, F_, H // ph, ph, W // pw, pw).permute(0, 2, 3, 5, 4, 6, 1)  # (B, F, gh, gw, ph, pw, C)
            tokens = tokens.reshape(B, F_, H // ph, W // pw, n)  # the head's feature order (p_h, p_w, c)
            outside = tokens - (tokens @ q) @ q.T
            outside = outside.view(B, F_, H // ph, W // pw, ph, pw, C)
            return outside.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, C, F_, H, W)  # as forward's unpatchify

        return complement

    @classmethod
    def from_preset(cls, name: str, *, attn_backend: str = "sdpa", **overrides) -> CausalWanModel:
        return cls(CausalWanConfig.preset(name, **overrides), attn_backend=attn_backend)

    # --------------------------------------------------------------- forward
    def _rope_freqs(self, positions: torch.Tensor, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """``rope_freqs`` of a (positions, grid) on ``device``, kept for host positions.

        A stream's forwards of one chunk (its denoising steps and its cache refresh) rotate at the
        same positions: the table is built once, with one small host-to-device copy of the
        positions, instead of once per forward. Positions already on a device are not looked up
        (that would synchronise). Inference-mode tables are kept apart: they cannot enter autograd.
        """
        cfg = self.config
        if positions.device.type != "cpu":
            return rope_freqs(positions.to(device), gh, gw, cfg.head_dim, cfg.rope_theta)
        key = (tuple(positions.tolist()), gh, gw, torch.device(device), torch.is_inference_mode_enabled())
        freqs = self._rope_memo.get(key)
        if freqs is None:
            if len(self._rope_memo) >= 8:  # a stream needs two (its chunk and its sinks)
                self._rope_memo.clear()
            freqs = self._rope_memo[key] = rope_freqs(positions.to(device), gh, gw, cfg.head_dim, cfg.rope_theta)
        return freqs

    def _check_inputs(self, x, t, context, mask, kv_cache, update_cache, actions, interval=None):
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be (B, {cfg.in_dim}, F, H, W), got {tuple(x.shape)}")
        B, _, F_, H, W = x.shape
        if H % cfg.patch_size[1] or W % cfg.patch_size[2]:
            raise ValueError(f"spatial size {H}x{W} is not divisible by the patch size {cfg.patch_size[1:]}")
        if t.ndim == 1:
            t = t[:, None].expand(B, F_)
        if t.shape != (B, F_):
            raise ValueError(f"t must be (B, F) = ({B}, {F_}) per-frame timesteps, got {tuple(t.shape)}")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be (B={B}, L, {cfg.text_dim}), got {tuple(context.shape)}")
        tpf = (H // cfg.patch_size[1]) * (W // cfg.patch_size[2])
        if mask is not None:
            if kv_cache is not None:
                raise ValueError("pass either a mask or a kv_cache: cached streaming attends to the whole cache")
            if mask.num_frames_q != F_ or mask.num_frames_k != F_ or mask.tokens_per_frame != tpf:
                raise ValueError(f"{mask} does not fit {F_} frames of {tpf} tokens")
        if update_cache and kv_cache is None:
            raise ValueError("update_cache=True needs a kv_cache")
        if actions is not None:
            if self.action_embedding is None:
                raise ValueError("this model has no action conditioning (config num_actions / action_dim are 0)")
            expected = (B, F_) if cfg.num_actions else (B, F_, cfg.action_dim)
            if tuple(actions.shape) != expected:
                raise ValueError(f"actions must have shape {expected}, got {tuple(actions.shape)}")
        if interval is not None:
            if self.interval_embedding is None:
                raise ValueError("this model has no interval conditioning (config interval_embedding is off)")
            if interval.ndim == 1:
                interval = interval[:, None].expand(B, F_)
            if interval.shape != (B, F_):
                raise ValueError(f"interval must be (B, F) = ({B}, {F_}), got {tuple(interval.shape)}")
        return t, tpf, interval

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        *,
        mask: BlockSparseMask | None = None,
        kv_cache: KVCache | None = None,
        update_cache: bool = False,
        actions: torch.Tensor | None = None,
        interval: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw network output for latents ``x``.

        Args:
            x: (B, C, F, H, W) latents (with a kv_cache: only the new chunk's frames).
            t: (B, F) per-frame timesteps in the weights' units (0-1000 for Wan); (B,) is broadcast.
            context: (B, L, text_dim) text-encoder states (padded as the weights expect).
            mask: self-attention mask over the F frames; None = bidirectional.
            kv_cache: stream state; the frames attend to the cached frames and to each other.
            update_cache: commit these frames' keys/values to ``kv_cache`` (the t=0 refresh).
            actions: (B, F) long for discrete actions, (B, F, action_dim) for continuous.
            interval: (B, F) MeanFlow interval t - r in t's units (models with ``interval_embedding``);
                None = 0, the instantaneous velocity.
        Returns:
            (B, out_dim, F, H, W).
        """
        cfg = self.config
        t, tpf, interval = self._check_inputs(x, t, context, mask, kv_cache, update_cache, actions, interval)
        B, _, F_, H, W = x.shape
        _, ph, pw = cfg.patch_size
        gh, gw = H // ph, W // pw

        # 1. patch embedding -> tokens grouped by frame (inputs in the parameters' dtype; output in x's)
        out_dtype, param_dtype = x.dtype, self.patch_embedding.weight.dtype
        if not torch.is_autocast_enabled(x.device.type):
            x, context = x.to(param_dtype), context.to(param_dtype)
        h = self.patch_embedding(x)  # (B, dim, F, gh, gw)
        h = h.flatten(3).permute(0, 2, 3, 1)  # (B, F, T, dim)

        # 2. per-frame time (+ action) embedding, kept in fp32
        time_dtype = self.time_embedding[0].weight.dtype
        e = at_least_fp32(self.time_embedding(sinusoidal_embedding(t.flatten(), cfg.freq_dim).to(time_dtype)))
        e = e.view(B, F_, cfg.dim)  # (B, F, dim)
        if actions is not None:
            e = e + at_least_fp32(self.action_embedding(actions))
        if interval is not None:
            h_emb = sinusoidal_embedding(interval.flatten(), cfg.freq_dim).to(time_dtype)
            e = e + at_least_fp32(self.interval_embedding(h_emb)).view(B, F_, cfg.dim)
        e6 = at_least_fp32(self.time_projection(e.to(time_dtype))).unflatten(-1, (6, cfg.dim))  # (B, F, 6, dim)

        # 3. text
        context = self.text_embedding(context)  # (B, L, dim)

        # 4. rotary positions. With a cache, the model sees bounded positions (q_pos) but rotates at
        # stored positions that differ from them by a uniform shift, and the sinks apart (kv_cache.py).
        sink_freqs = None
        if kv_cache is not None:
            q_pos = kv_cache.begin(F_, tpf)
            rot_pos, sink_pos = kv_cache.rope_frames(F_)
            if sink_pos.numel():
                sink_freqs = self._rope_freqs(sink_pos, gh, gw, x.device)
        else:
            q_pos = rot_pos = mask.positions() if mask is not None else torch.arange(F_)
        if int(q_pos.max()) >= cfg.max_frames:
            raise ValueError(f"temporal position {int(q_pos.max())} exceeds max_frames={cfg.max_frames}")
        rope = (self._rope_freqs(rot_pos, gh, gw, x.device), sink_freqs)

        # 5. blocks
        recompute = self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                h = torch.utils.checkpoint.checkpoint(block, h, e6, context, rope, mask, self.attn_backend, None, False, use_reentrant=False)
                continue
            layer_cache = kv_cache.layers[i] if kv_cache is not None else None
            h = block(h, e6, context, rope, mask, self.attn_backend, layer_cache, update_cache)
        if kv_cache is not None:
            kv_cache.end(F_, commit=update_cache)

        # 6. head and unpatchify: features are ordered (p_t, p_h, p_w, c) as in Wan
        out = self.head(h, e)  # (B, F, T, out * ph * pw)
        out = out.view(B, F_, gh, gw, ph, pw, cfg.out_dim)
        return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(B, cfg.out_dim, F_, H, W).to(out_dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

