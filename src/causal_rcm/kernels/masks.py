"""Attention masks built from the frame / chunk structure of a video token sequence.

Every mask this project uses is *frame-granular*: whether query token i may attend to key
token j depends only on the frames they belong to. A mask is therefore stored as a small
boolean frame matrix ``allowed[Fq, Fk]`` plus ``tokens_per_frame``; from it we derive

* the block-sparse tile table for any tile size (which (BLOCK_M, BLOCK_N) tile pairs are
  full, partial or empty) in O(#tiles) with a summed-area table, never touching S x S;
* the FlexAttention ``BlockMask`` (built from that table, not by evaluating the mask);
* a dense boolean ``(Sq, Sk)`` view, for small sizes and tests only.

A 65520-token teacher-forcing mask of Wan2.1-1.3B is a 42 x 42 frame matrix.

Kinds (``num_chunks`` chunks of ``frames_per_chunk`` frames, ``frames_per_chunk=1`` is
frame-wise):

* ``bidirectional``: everything sees everything.
* ``block_causal``: chunk i sees chunks <= i.
* ``teacher_forcing``: sequence ``[clean chunks | noisy chunks]``; clean chunk i sees clean
  chunks <= i, noisy chunk i sees clean chunks < i and itself. Noisy chunk i reuses clean
  chunk i's RoPE positions (``frame_positions``).
* ``sliding_window``: chunk i sees the last ``window_frames`` frames up to the end of chunk i
  plus the first ``sink_frames`` frames; combine with ``&``:
  ``block_causal(...) & sliding_window(...)`` is the streaming mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

__all__ = [
    "BlockSparseMask",
    "TileTable",
    "EMPTY",
    "PARTIAL",
    "FULL",
    "bidirectional",
    "block_causal",
    "teacher_forcing",
    "sliding_window",
]

EMPTY, PARTIAL, FULL = 0, 1, 2

# Beyond this many elements a dense view is refused: use the tile table instead.
_MAX_DENSE_ELEMENTS = 1 << 28


class TileTable(NamedTuple):
    """Block-sparse structure of a mask for one tile size.

    ``kind[i, j]`` is ``EMPTY``, ``PARTIAL`` or ``FULL`` for query tile i and key tile j.
    The index lists follow FlexAttention's convention: for each query tile, the partial key
    tiles (``kv_num_blocks``, ``kv_indices``) and the full key tiles (``full_kv_num_blocks``,
    ``full_kv_indices``), each list left-aligned, ascending, padded with zeros.
    """

    block_m: int
    block_n: int
    kind: torch.Tensor  # (Mq, Nk) int8
    kv_num_blocks: torch.Tensor  # (Mq,) int32
    kv_indices: torch.Tensor  # (Mq, Nk) int32
    full_kv_num_blocks: torch.Tensor  # (Mq,) int32
    full_kv_indices: torch.Tensor  # (Mq, Nk) int32


def left_aligned_indices(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices where ``select`` is true, left-aligned and zero padded."""
    n_cols = select.shape[1]
    cols = torch.arange(n_cols, device=select.device).expand_as(select)
    # Sort selected columns first while keeping their order: key = col for selected, n_cols + col otherwise.
    order = torch.where(select, cols, cols + n_cols).argsort(dim=1)
    count = select.sum(dim=1)
    indices = torch.where(cols < count[:, None], order, torch.zeros_like(order))
    return count.to(torch.int32), indices.to(torch.int32)


@dataclass(frozen=True, eq=False)
class BlockSparseMask:
    """A frame-granular attention mask.

    Attributes:
        allowed: (Fq, Fk) bool; ``allowed[a, b]`` lets every token of query frame a attend to
            every token of key frame b.
        tokens_per_frame: tokens of one frame (after patching: H' * W').
        frame_positions: (Fq,) int64 temporal RoPE index of each frame of the sequence, for
            self-attention over one sequence (Fq == Fk). Teacher forcing repeats positions.
        kind: a short name for messages.
    """

    allowed: torch.Tensor
    tokens_per_frame: int
    frame_positions: torch.Tensor | None = None
    kind: str = "custom"
    _flex_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.allowed.dtype != torch.bool or self.allowed.ndim != 2:
            raise ValueError(f"allowed must be a 2-D bool tensor, got {self.allowed.dtype} {tuple(self.allowed.shape)}")
        if self.tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")
        if self.frame_positions is not None and self.frame_positions.shape != (self.allowed.shape[0],):
            raise ValueError("frame_positions must have one entry per query frame")

    # ------------------------------------------------------------------ sizes
    @property
    def num_frames_q(self) -> int:
        return self.allowed.shape[0]

    @property
    def num_frames_k(self) -> int:
        return self.allowed.shape[1]

    @property
    def seq_len_q(self) -> int:
        return self.num_frames_q * self.tokens_per_frame

    @property
    def seq_len_k(self) -> int:
        return self.num_frames_k * self.tokens_per_frame

    @property
    def is_full(self) -> bool:
        return bool(self.allowed.all())

    def density(self) -> float:
        """Fraction of (query, key) pairs that are allowed."""
        return float(self.allowed.float().mean())

    def positions(self) -> torch.Tensor:
        """(Fq,) temporal RoPE index of each query frame (0..Fq-1 unless set)."""
        if self.frame_positions is not None:
            return self.frame_positions
        return torch.arange(self.num_frames_q, device=self.allowed.device)

    def __repr__(self) -> str:
        return (
            f"BlockSparseMask(kind={self.kind!r}, frames={self.num_frames_q}x{self.num_frames_k}, "
            f"tokens_per_frame={self.tokens_per_frame}, density={self.density():.3f})"
        )

    # ------------------------------------------------------------- combining
    def __and__(self, other: BlockSparseMask) -> BlockSparseMask:
        if self.allowed.shape != other.allowed.shape or self.tokens_per_frame != other.tokens_per_frame:
            raise ValueError(f"cannot combine masks of different structure: {self} and {other}")
        positions = self.frame_positions if self.frame_positions is not None else other.frame_positions
        return BlockSparseMask(
            self.allowed & other.allowed, self.tokens_per_frame, positions, f"{self.kind}&{other.kind}"
        )

    def to(self, device: torch.device | str) -> BlockSparseMask:
        positions = None if self.frame_positions is None else self.frame_positions.to(device)
        return BlockSparseMask(self.allowed.to(device), self.tokens_per_frame, positions, self.kind)

    # ----------------------------------------------------------------- views
    def dense(self) -> torch.Tensor:
        """(Sq, Sk) bool view. Small sizes only: refuses beyond 2**28 elements."""
        if self.seq_len_q * self.seq_len_k > _MAX_DENSE_ELEMENTS:
            raise ValueError(
                f"refusing to build a dense {self.seq_len_q}x{self.seq_len_k} mask; use tiles() or a block-sparse backend"
            )
        tpf = self.tokens_per_frame
        return self.allowed.repeat_interleave(tpf, dim=0).repeat_interleave(tpf, dim=1)

    def element(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        """The element mask at token indices (broadcasting): ``allowed[q // tpf, kv // tpf]``."""
        return self.allowed[q_idx // self.tokens_per_frame, kv_idx // self.tokens_per_frame]

    def tiles(self, block_m: int, block_n: int) -> TileTable:
        """Classify every (block_m x block_n) tile pair as empty, partial or full.

        Exact and O(#tiles): a tile spans a rectangle of frames, every frame of which it
        touches, so the number of allowed frame pairs in that rectangle (from a summed-area
        table) tells whether the tile is all-allowed, all-masked, or mixed.
        """
        device = self.allowed.device
        tpf = self.tokens_per_frame
        sat = torch.zeros(self.num_frames_q + 1, self.num_frames_k + 1, dtype=torch.int64, device=device)
        sat[1:, 1:] = self.allowed.long().cumsum(0).cumsum(1)

        def frame_span(seq_len: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
            start = torch.arange(0, seq_len, block, device=device)
            end = torch.clamp(start + block, max=seq_len)
            return start // tpf, (end - 1) // tpf + 1  # frame range [f0, f1)

        q0, q1 = frame_span(self.seq_len_q, block_m)
        k0, k1 = frame_span(self.seq_len_k, block_n)
        q0, q1, k0, k1 = q0[:, None], q1[:, None], k0[None, :], k1[None, :]
        count = sat[q1, k1] - sat[q0, k1] - sat[q1, k0] + sat[q0, k0]
        total = (q1 - q0) * (k1 - k0)
        kind = torch.full(count.shape, PARTIAL, dtype=torch.int8, device=device)
        kind[count == 0] = EMPTY
        kind[count == total] = FULL
        kv_num, kv_idx = left_aligned_indices(kind == PARTIAL)
        full_num, full_idx = left_aligned_indices(kind == FULL)
        return TileTable(block_m, block_n, kind, kv_num, kv_idx, full_num, full_idx)

    def to_flex(self, block_size: int = 128):
        """A FlexAttention ``BlockMask`` built from the tile table (cached per device/size)."""
        key = (str(self.allowed.device), block_size)
        if key not in self._flex_cache:
            from torch.nn.attention.flex_attention import BlockMask

            table = self.tiles(block_size, block_size)
            allowed, tpf = self.allowed, self.tokens_per_frame

            def mask_mod(b, h, q_idx, kv_idx):
                return allowed[q_idx // tpf, kv_idx // tpf]

            self._flex_cache[key] = BlockMask.from_kv_blocks(
                table.kv_num_blocks[None, None],
                table.kv_indices[None, None],
                table.full_kv_num_blocks[None, None],
                table.full_kv_indices[None, None],
                BLOCK_SIZE=block_size,
                mask_mod=mask_mod,
                seq_lengths=(self.seq_len_q, self.seq_len_k),
            )
        return self._flex_cache[key]


# ---------------------------------------------------------------------- builders
def _check(num_chunks: int, frames_per_chunk: int, tokens_per_frame: int) -> None:
    for name, value in (("num_chunks", num_chunks), ("frames_per_chunk", frames_per_chunk), ("tokens_per_frame", tokens_per_frame)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _chunk_of_frame(num_chunks: int, frames_per_chunk: int) -> torch.Tensor:
    return torch.arange(num_chunks * frames_per_chunk) // frames_per_chunk


def bidirectional(num_chunks: int, frames_per_chunk: int, tokens_per_frame: int) -> BlockSparseMask:
    """Every token sees every token."""
    _check(num_chunks, frames_per_chunk, tokens_per_frame)
    n = num_chunks * frames_per_chunk
    return BlockSparseMask(torch.ones(n, n, dtype=torch.bool), tokens_per_frame, kind="bidirectional")


def block_causal(num_chunks: int, frames_per_chunk: int, tokens_per_frame: int) -> BlockSparseMask:
    """Chunk i sees chunks <= i (frame-wise causal when ``frames_per_chunk == 1``)."""
    _check(num_chunks, frames_per_chunk, tokens_per_frame)
    chunk = _chunk_of_frame(num_chunks, frames_per_chunk)
    return BlockSparseMask(chunk[None, :] <= chunk[:, None], tokens_per_frame, kind="block_causal")


def sliding_window(
    num_chunks: int, frames_per_chunk: int, tokens_per_frame: int, window_frames: int, sink_frames: int = 0
) -> BlockSparseMask:
    """Chunk i sees the ``window_frames`` frames ending with chunk i, plus the first ``sink_frames``.

    The window counts the query's own chunk, matching a KV cache that keeps
    ``sink_frames + window_frames`` frames. Combine with ``block_causal`` via ``&``.
    """
    _check(num_chunks, frames_per_chunk, tokens_per_frame)
    if window_frames < frames_per_chunk:
        raise ValueError(f"window_frames ({window_frames}) must cover one chunk ({frames_per_chunk} frames)")
    if sink_frames < 0:
        raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
    n = num_chunks * frames_per_chunk
    chunk_end = (_chunk_of_frame(num_chunks, frames_per_chunk) + 1) * frames_per_chunk  # (F,)
    key = torch.arange(n)
    allowed = (key[None, :] < sink_frames) | (key[None, :] >= chunk_end[:, None] - window_frames)
    return BlockSparseMask(allowed, tokens_per_frame, kind=f"sliding_window({window_frames},{sink_frames})")


def teacher_forcing(num_chunks: int, frames_per_chunk: int, tokens_per_frame: int) -> BlockSparseMask:
    """Mask over ``[clean chunks | noisy chunks]`` (2 * num_chunks * frames_per_chunk frames).

    Clean chunk i sees clean chunks <= i; noisy chunk i sees clean chunks < i and itself.
    Noisy frame j gets the RoPE position of clean frame j.
    """
    _check(num_chunks, frames_per_chunk, tokens_per_frame)
    chunk = _chunk_of_frame(num_chunks, frames_per_chunk)
    n = chunk.numel()
    clean_clean = chunk[None, :] <= chunk[:, None]
    noisy_clean = chunk[None, :] < chunk[:, None]
    noisy_noisy = chunk[None, :] == chunk[:, None]
    allowed = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    allowed[:n, :n] = clean_clean
    allowed[n:, :n] = noisy_clean
    allowed[n:, n:] = noisy_noisy
    positions = torch.arange(n).repeat(2)
    return BlockSparseMask(allowed, tokens_per_frame, positions, kind="teacher_forcing")
