"""Per-layer rolling KV cache with attention-sink frames, for unbounded streaming.

Positions (see docs/architecture.md). A chunk of f frames sees the ``sink_frames`` first frames
of the stream, then the most recent frames, then itself; the model sees them at the contiguous
temporal positions ``0 .. s-1`` (sinks), ``s .. P-1`` (recent) and ``P .. P+f-1`` (the chunk).
Two consequences:

* while the stream fits (no frame evicted yet) these are exactly the absolute positions, so
  streaming equals the block-causal forward over the whole sequence;
* once frames are evicted, positions never exceed ``sink_frames + window_frames - 1``: a stream
  can run forever without leaving the position range seen in training (StreamingLLM,
  Xiao et al. 2023, assigns positions within the cache the same way).

How they are applied cheaply. RoPE scores depend only on ``q_pos - k_pos``, and from one read to
the next the recent frames and the chunk move by the *same* shift. So every non-sink key is
rotated once, when its chunk is written, at its **stored position**: its frame's index in the
stream (queries use the same positions), and the recent frames are never re-rotated. Only the
sinks' distance changes, so their keys are kept before RoPE and re-rotated at ``offset + j``,
``offset = stored - seen`` position of the chunk, whenever the offset changes (once per committed
chunk, over ``sink_frames`` frames). Stored positions grow with the stream, but only their
differences reach the scores: the angles are computed in float64 from exact integer positions
(error ~ position x 1e-16 rad) before cos / sin are rounded to fp32, so a key at frame 10^6 is
rotated as accurately as one at frame 0, and the scores equal those at the seen positions to
float rounding (tested on a long stream against a re-rotate-on-read reference).

Memory. One preallocated buffer per layer for keys (after RoPE) and one for values, laid out
``[sink slots | ring of window_frames slots]`` (sink j in slot ``sink_frames - 1 - j``, so the
sinks held are always the slots just before the ring). A forward writes its chunk into the ring
over the oldest frames and attends to one contiguous view: the held sinks plus the ring's used
slots (attention is order-independent over keys, and every key in the view is visible to every
query). Nothing is concatenated or copied per read; committing a chunk is free (its keys and
values are already in place). ``window_frames`` counts the chunk: it sees the last
``window_frames - f`` recent frames, which matches ``masks.sliding_window``. Memory is
``(sink_frames + window_frames)`` frames of keys and of values plus ``sink_frames`` frames of keys
before RoPE, per layer. With ``window_frames=None`` the ring grows (by half, at least) and never wraps.

Caveat of the ring: a read of f frames overwrites the ring slots of the f oldest frames. A later
read of fewer frames before the next commit would need them; :meth:`KVCache.begin` raises then
(the samplers always read one chunk size between commits).

With gradient (self forcing's exit step), the chunk's own keys and values must stay in the
autograd graph: the cached part is then copied next to the live chunk instead of read in place.

int8 (``KVCache(..., int8=True)``, for memory). Keys (after RoPE) and values are stored as int8
with one float32 scale per token and head, symmetric: ``scale = max_d |x_d| / 127``,
``q = round(x / scale)`` (absmax quantisation, as LLM.int8, Dettmers et al. 2022, applies per
vector). A chunk is quantised when it is written into the ring (so its commit stays free) and
its frames are read back dequantised by the chunks after it: each forward dequantises the
visible cached frames into the compute dtype, one layer at a time, and attends to them beside
the chunk's own keys and values at full precision (the copy path above). Bytes per token and
head: ``D + 4`` against ``2 D`` (bf16) or ``4 D`` (fp32); the pre-RoPE sink keys stay in the
compute dtype (``sink_frames`` frames). The error of a stored value is at most
``scale / 2 = max |x| / 254`` per element.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

from causal_rcm.models.rope import apply_rope

__all__ = ["Int8Buffer", "KVCache", "LayerKVCache", "dequantize_int8", "quantize_int8"]


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 over the last dim: x (..., D) -> (q int8 (..., D), scale float32 (..., 1)),
    ``x ~ q * scale`` with ``scale = max |x| / 127`` (module docstring); a zero vector gets scale 0."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float() / 127
    q = (x.detach().float() / scale.clamp_min(torch.finfo(torch.float32).tiny)).round().clamp_(-127, 127)
    return q.to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` in ``dtype`` (the inverse of :func:`quantize_int8`, to its rounding)."""
    return q.to(dtype) * scale.to(dtype)


class Int8Buffer:
    """A (B, N, H, D) key or value buffer stored as int8 with a float32 scale per token and head.

    ``buf[:, a:b] = x`` quantises x into tokens a..b; :meth:`read` dequantises a token range.
    """

    def __init__(self, B: int, N: int, H: int, D: int, device: torch.device) -> None:
        self.data = torch.empty(B, N, H, D, dtype=torch.int8, device=device)
        self.scale = torch.empty(B, N, H, 1, dtype=torch.float32, device=device)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def __setitem__(self, index, x: torch.Tensor) -> None:
        self.data[index], self.scale[index] = quantize_int8(x)

    def read(self, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
        """Tokens lo..hi dequantised to ``dtype``, (B, hi - lo, H, D)."""
        return dequantize_int8(self.data[:, lo:hi], self.scale[:, lo:hi], dtype)

    def copy_from(self, other: Int8Buffer) -> None:
        """The first tokens of this (larger) buffer := ``other``'s, as stored."""
        n = other.shape[1]
        self.data[:, :n], self.scale[:, :n] = other.data, other.scale

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()


def _read_tokens(buf: torch.Tensor | Int8Buffer, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
    """Tokens lo..hi of a buffer in ``dtype`` (a plain buffer's slice is a view when the dtype is its own)."""
    return buf.read(lo, hi, dtype) if isinstance(buf, Int8Buffer) else buf[:, lo:hi].to(dtype)


class _Read(NamedTuple):
    """Where one forward of ``new`` frames reads and writes, in frames (the same for every layer)."""

    sinks: int  # sink frames held
    to_sinks: int  # frames at the chunk's start that become sinks when committed
    recent: int  # non-sink frames committed so far (ring slot of recent frame i: i mod ring)
    keep: int  # recent frames the chunk sees (the last ``keep``)
    ring_used: int  # ring slots attended: the visible recent frames and the chunk's non-sink frames
    offset: int  # stored position - seen position, for this read


def _tracked(x: torch.Tensor) -> bool:
    """Does ``x`` carry a gradient or a forward-mode tangent?"""
    return (x.requires_grad and torch.is_grad_enabled()) or fwAD.unpack_dual(x).tangent is not None


class LayerKVCache:
    """Keys (rotated at their stored positions) and values of one self-attention layer."""

    def __init__(self, owner: KVCache) -> None:
        self._owner = owner
        self.k = self.v = None  # (B, (sink_frames + ring) * tpf, H, D): [sink slots | ring]
        self.sink_k = None  # (B, sink_frames * tpf, H, D): sink keys before RoPE
        self._sinks_rotated = None  # (offset, sinks) the sink slots of self.k are rotated for

    def _ring(self) -> int:
        return self.k.shape[1] // self._owner.tokens_per_frame - self._owner.sink_frames

    def _allocate(self, k: torch.Tensor, v: torch.Tensor, ring: int) -> None:
        """Buffers for ``ring`` ring frames (B, *, H, D) like k and v; a grown ring keeps its content."""
        tpf, sinks = self._owner.tokens_per_frame, self._owner.sink_frames
        B, _, H, D = k.shape
        old_k, old_v = self.k, self.v
        N = (sinks + ring) * tpf
        if self._owner.int8:
            self.k, self.v = Int8Buffer(B, N, H, D, k.device), Int8Buffer(B, N, H, v.shape[-1], v.device)
        else:
            self.k, self.v = k.new_empty(B, N, H, D), v.new_empty(B, N, H, v.shape[-1])
        if old_k is not None:
            for new, old in ((self.k, old_k), (self.v, old_v)):
                if isinstance(new, Int8Buffer):
                    new.copy_from(old)
                else:
                    new[:, : old.shape[1]] = old
        elif sinks:
            self.sink_k = k.new_empty(B, sinks * tpf, H, D)

    def _write_sinks(self, buf: torch.Tensor, x: torch.Tensor, first: int) -> None:
        """Sink frames ``first ..`` of x (B, m * tpf, ...) into their slots (sink j in slot sink_frames - 1 - j)."""
        tpf = self._owner.tokens_per_frame
        m = x.shape[1] // tpf
        lo = (self._owner.sink_frames - first - m) * tpf
        buf[:, lo : lo + m * tpf] = x.unflatten(1, (m, tpf)).flip(1).flatten(1, 2)

    def _write_ring(self, buf: torch.Tensor, x: torch.Tensor, slot: int) -> None:
        """Frames of x (B, m * tpf, ...) into the ring from ``slot`` on, wrapping around."""
        tpf, base, ring = self._owner.tokens_per_frame, self._owner.sink_frames, self._ring()
        m = x.shape[1] // tpf
        head = min(m, ring - slot)
        buf[:, (base + slot) * tpf : (base + slot + head) * tpf] = x[:, : head * tpf]
        if head < m:
            buf[:, base * tpf : (base + m - head) * tpf] = x[:, head * tpf :]

    def _next_slot(self, r: _Read) -> int:
        """The ring slot after the newest committed recent frame: where this read's chunk goes."""
        return r.recent % self._ring() if self._owner.window_frames is not None else r.recent

    def _cached_ranges(self, r: _Read) -> list[tuple[int, int]]:
        """Buffer frame ranges of the held sinks and the visible recent frames (without the chunk)."""
        base, ring = self._owner.sink_frames, self._ring()
        end = self._next_slot(r)
        ranges = [(base - r.sinks, base)]
        if end >= r.keep:
            ranges.append((base + end - r.keep, base + end))
        else:
            ranges += [(base, base + end), (base + ring - (r.keep - end), base + ring)]
        return [(a, b) for a, b in ranges if b > a]

    def update(
        self, k: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor,
        sink_freqs: torch.Tensor | None, commit: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a chunk and return every key and value it attends to, (B, N, H, D) each.

        Args:
            k, k_rot, v: the chunk's keys before and after RoPE (at its stored positions) and
                values, (B, f * tpf, H, D).
            sink_freqs: rotations (``rope_freqs``) of the held sink frames at this read's positions, or None.
            commit: keep the chunk for later forwards (``update_cache=True``).
        """
        owner = self._owner
        tpf, base = owner.tokens_per_frame, owner.sink_frames
        r = owner._read(k.shape[1] // tpf)
        if self.k is not None and self.k.shape[0] != k.shape[0]:
            raise ValueError(f"KV cache holds batch size {self.k.shape[0]}, got {k.shape[0]}; reset() it first")
        ring = owner.window_frames or r.recent + k.shape[1] // tpf - r.to_sinks
        if self.k is None or self._ring() < ring:
            self._allocate(k, v, ring if self.k is None else max(ring, self._ring() * 3 // 2))
        # 1. the chunk: frames bound for the sinks into sink slots, the others into the ring
        k_keep, v_keep = k_rot.detach(), v.detach()
        split = r.to_sinks * tpf
        if split:
            self._write_sinks(self.k, k_keep[:, :split], r.sinks)
            self._write_sinks(self.v, v_keep[:, :split], r.sinks)
            if commit:
                self.sink_k[:, r.sinks * tpf : r.sinks * tpf + split] = k[:, :split].detach()
                self._sinks_rotated = None
        ring_slot = self._next_slot(r)
        self._write_ring(self.k, k_keep[:, split:], ring_slot)
        self._write_ring(self.v, v_keep[:, split:], ring_slot)
        # 2. the held sinks, rotated at this read's positions (only when these changed)
        if r.sinks and self._sinks_rotated != (r.offset, r.sinks):
            self._write_sinks(self.k, apply_rope(self.sink_k[:, : r.sinks * tpf], sink_freqs), 0)
            self._sinks_rotated = (r.offset, r.sinks)
        # 3. what the chunk attends to. With gradient the chunk's own keys/values stay in the graph; in int8 the
        # chunk attends to its own at full precision: both copy the cached frames next to the live chunk.
        if owner.int8 or _tracked(k_rot) or _tracked(v):
            ranges = self._cached_ranges(r)
            keys = torch.cat([_read_tokens(self.k, a * tpf, b * tpf, k_rot.dtype) for a, b in ranges] + [k_rot], dim=1)
            values = torch.cat([_read_tokens(self.v, a * tpf, b * tpf, v.dtype) for a, b in ranges] + [v], dim=1)
            return keys, values
        lo, hi = (base - r.sinks - r.to_sinks) * tpf, (base + r.ring_used) * tpf
        return self.k[:, lo:hi].to(k_rot.dtype), self.v[:, lo:hi].to(v.dtype)

    def nbytes(self) -> int:
        return sum(x.nbytes() if isinstance(x, Int8Buffer) else x.numel() * x.element_size()
                   for x in (self.k, self.v, self.sink_k) if x is not None)


class KVCache:
    """The KV cache of a whole model: one :class:`LayerKVCache` per block.

    A forward brackets its layers with :meth:`begin` (check, seen positions), :meth:`rope_frames`
    (the positions to rotate at) and :meth:`end` (commit).

    Args:
        num_layers: blocks of the model.
        sink_frames: first frames of the stream that are never evicted.
        window_frames: most recent frames attended, the current chunk included; None = unbounded.
        int8: store keys and values in int8 with per-token, per-head scales (module docstring).
    Attributes:
        num_frames: frames committed since the last reset (the stream's length so far).
    """

    def __init__(self, num_layers: int, sink_frames: int = 0, window_frames: int | None = None, *, int8: bool = False) -> None:
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        if window_frames is not None and window_frames < 1:
            raise ValueError(f"window_frames must be >= 1 or None, got {window_frames}")
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.num_layers = num_layers
        self.int8 = int8
        self.reset()

    def reset(self) -> None:
        self.layers = [LayerKVCache(self) for _ in range(self.num_layers)]
        self.num_frames = 0
        self.tokens_per_frame: int | None = None
        self._valid_from = 0  # recent frames before this one were overwritten in the ring

    def _read(self, new_frames: int) -> _Read:
        sinks = min(self.num_frames, self.sink_frames)
        recent = self.num_frames - sinks
        to_sinks = min(self.sink_frames - sinks, new_frames)
        if self.window_frames is None:
            keep, ring_used = recent, recent + new_frames - to_sinks
        else:
            keep = min(recent, self.window_frames - new_frames)
            ring_used = min(recent + new_frames - to_sinks, self.window_frames)
        return _Read(sinks, to_sinks, recent, keep, ring_used, self.num_frames - sinks - keep)

    def begin(self, new_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Check a forward of ``new_frames`` frames and return the temporal positions the model sees for them."""
        if self.tokens_per_frame is None:
            self.tokens_per_frame = tokens_per_frame
        elif self.tokens_per_frame != tokens_per_frame:
            raise ValueError(f"KV cache holds {self.tokens_per_frame} tokens per frame, got {tokens_per_frame}")
        if self.window_frames is not None and new_frames > self.window_frames:
            raise ValueError(f"a chunk of {new_frames} frames does not fit a window of {self.window_frames} frames")
        r = self._read(new_frames)
        if r.recent - r.keep < self._valid_from:
            raise ValueError(
                f"a chunk of {new_frames} frames needs cached frames that an earlier, larger chunk overwrote in the "
                "window; read chunks of one size between commits (update_cache=True), or reset() the cache"
            )
        start = r.sinks + r.keep
        return torch.arange(start, start + new_frames)

    def rope_frames(self, new_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored positions to rotate at: the chunk's queries and keys (f,), the held sinks' keys (sinks,)."""
        r = self._read(new_frames)
        return (
            torch.arange(self.num_frames, self.num_frames + new_frames),
            torch.arange(r.offset, r.offset + r.sinks),
        )

    def end(self, new_frames: int, commit: bool) -> None:
        """After a forward of ``new_frames`` frames wrote every layer: note what it overwrote; commit it."""
        r = self._read(new_frames)
        if self.window_frames is not None:
            self._valid_from = max(self._valid_from, r.recent + new_frames - r.to_sinks - self.window_frames)
        if commit:
            self.num_frames += new_frames

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.num_layers}, frames={self.num_frames}, sink_frames={self.sink_frames}, "
            f"window_frames={self.window_frames}, int8={self.int8}, bytes={self.nbytes()})"
        )
