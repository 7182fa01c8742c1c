"""Per-layer rolling KV cache with attention-sink frames, for unbounded streaming.

Design (see docs/architecture.md): the cache stores keys **before RoPE** and assigns
temporal positions when it is read. The visible frames of a read are the ``sink_frames``
first frames of the stream followed by the most recent frames, and they get the contiguous
positions ``0 .. P-1``; the new chunk follows at ``P .. P+f-1``. Two consequences:

* while the stream fits (no frame evicted yet) these are exactly the absolute positions, so
  streaming equals the block-causal forward over the whole sequence;
* once frames are evicted, positions never exceed ``sink_frames + window_frames - 1``: a stream
  can run forever without leaving the position range seen in training (StreamingLLM,
  Xiao et al. 2023, assigns positions within the cache the same way).

Storing keys after RoPE would freeze each key's absolute position, so the distance between a
new query and the sink frames would grow without bound.

Memory is bounded by ``sink_frames + window_frames`` frames per layer. ``window_frames``
counts the current chunk as well: a chunk of f frames sees the sinks plus the last
``window_frames - f`` cached frames, which matches ``masks.sliding_window``.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache", "LayerKVCache"]


class LayerKVCache:
    """Keys (pre-RoPE) and values of one self-attention layer, (B, N, H, D), sinks kept apart."""

    def __init__(self, owner: KVCache) -> None:
        self._owner = owner
        self.sink_k = self.sink_v = None  # (B, n_sink * tpf, H, D)
        self.recent_k = self.recent_v = None  # (B, n_recent * tpf, H, D)

    def _frames(self, x: torch.Tensor | None) -> int:
        return 0 if x is None else x.shape[1] // self._owner.tokens_per_frame

    def num_frames(self) -> int:
        return self._frames(self.sink_k) + self._frames(self.recent_k)

    def read(self, new_frames: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Visible cached (k, v) for a chunk of ``new_frames`` frames, in position order."""
        owner = self._owner
        parts_k, parts_v = [], []
        if self.sink_k is not None:
            parts_k.append(self.sink_k)
            parts_v.append(self.sink_v)
        if self.recent_k is not None:
            keep = self._frames(self.recent_k)
            if owner.window_frames is not None:
                keep = min(keep, owner.window_frames - new_frames)
            if keep > 0:
                start = self.recent_k.shape[1] - keep * owner.tokens_per_frame
                parts_k.append(self.recent_k[:, start:])
                parts_v.append(self.recent_v[:, start:])
        if not parts_k:
            return None, None
        if len(parts_k) == 1:
            return parts_k[0], parts_v[0]
        return torch.cat(parts_k, dim=1), torch.cat(parts_v, dim=1)

    def visible_frames(self, new_frames: int) -> int:
        k, _ = self.read(new_frames)
        return self._frames(k)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Commit a chunk's (k, v) (B, f * tpf, H, D); evict the oldest non-sink frames beyond the window."""
        owner = self._owner
        k, v = k.detach(), v.detach()
        if self.sink_k is not None and self.sink_k.shape[0] != k.shape[0]:
            raise ValueError(f"KV cache holds batch size {self.sink_k.shape[0]}, got {k.shape[0]}; reset() it first")
        room = (owner.sink_frames - self._frames(self.sink_k)) * owner.tokens_per_frame
        if room > 0:
            to_sink_k, k = k[:, :room], k[:, room:]
            to_sink_v, v = v[:, :room], v[:, room:]
            self.sink_k = to_sink_k if self.sink_k is None else torch.cat([self.sink_k, to_sink_k], dim=1)
            self.sink_v = to_sink_v if self.sink_v is None else torch.cat([self.sink_v, to_sink_v], dim=1)
        if k.shape[1] == 0:
            return
        self.recent_k = k if self.recent_k is None else torch.cat([self.recent_k, k], dim=1)
        self.recent_v = v if self.recent_v is None else torch.cat([self.recent_v, v], dim=1)
        if owner.window_frames is not None:
            limit = owner.window_frames * owner.tokens_per_frame
            if self.recent_k.shape[1] > limit:
                self.recent_k = self.recent_k[:, -limit:].clone()
                self.recent_v = self.recent_v[:, -limit:].clone()

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.sink_k, self.sink_v, self.recent_k, self.recent_v) if x is not None)


class KVCache:
    """The KV cache of a whole model: one :class:`LayerKVCache` per block.

    Args:
        num_layers: blocks of the model.
        sink_frames: first frames of the stream that are never evicted.
        window_frames: most recent frames attended, the current chunk included; None = unbounded.
    Attributes:
        num_frames: frames committed since the last reset (the stream's length so far).
    """

    def __init__(self, num_layers: int, sink_frames: int = 0, window_frames: int | None = None) -> None:
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        if window_frames is not None and window_frames < 1:
            raise ValueError(f"window_frames must be >= 1 or None, got {window_frames}")
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        self.layers = [LayerKVCache(self) for _ in range(self.num_layers)]
        self.num_frames = 0
        self.tokens_per_frame: int | None = None

    def begin(self, new_frames: int, tokens_per_frame: int) -> torch.Tensor:
        """Check a forward of ``new_frames`` frames and return the temporal positions of its frames."""
        if self.tokens_per_frame is None:
            self.tokens_per_frame = tokens_per_frame
        elif self.tokens_per_frame != tokens_per_frame:
            raise ValueError(f"KV cache holds {self.tokens_per_frame} tokens per frame, got {tokens_per_frame}")
        if self.window_frames is not None and new_frames > self.window_frames:
            raise ValueError(f"a chunk of {new_frames} frames does not fit a window of {self.window_frames} frames")
        start = self.layers[0].visible_frames(new_frames)
        return torch.arange(start, start + new_frames)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.num_layers}, frames={self.num_frames}, sink_frames={self.sink_frames}, "
            f"window_frames={self.window_frames}, bytes={self.nbytes()})"
        )
