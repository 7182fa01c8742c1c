"""The embedded default as a training data source: shapes-world videos -> latents + text context.

``ShapesSource`` bundles what a recipe needs from the world (dataset, codec, toy text encoder,
oracle) from a :class:`~causal_rcm.config.DataConfig`; ``next_batch`` yields this process's
slice of the global batch on the training device, and its position is part of the checkpoint.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import numpy as np
import torch

from causal_rcm.errors import UserError
from causal_rcm.data.codec import PixelCodec
from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.data.text import ToyTextEncoder

# Evaluation prompts come from a stream the training stream never reaches.
EVAL_SEED_OFFSET = 1_000_003


def _single_thread() -> None:
    """Worker initialiser: rendering is numpy; idle torch thread pools would only contend for cores."""
    torch.set_num_threads(1)


def _render(task: tuple[ShapesDataset, list[int]]) -> list[dict[str, Any]]:
    dataset, indices = task
    return [dataset.render_sample(i) for i in indices]


class ShapesSource:
    """Dataset, codec, text encoder and oracle of the shapes world, for one process."""

    fps = 8  # rendered frames per second of video, as its checkpoints' streams play them

    def __init__(self, data, text_dim: int, *, rank: int = 0, world_size: int = 1, local_batch: int = 1, device: torch.device | str = "cpu") -> None:
        self.data = data
        self.device = torch.device(device)
        self.local_batch = local_batch
        if data.agent and data.codec_frames != 1:
            raise UserError("data.agent takes one action per latent frame: it needs data.codec_frames=1")
        self.codec = PixelCodec(data.codec_factor, shift=data.codec_shift, scale=data.codec_scale, frames=data.codec_frames)
        self.shapes = self._shapes_config(data.num_frames)
        self.dataset = ShapesDataset(self.shapes, seed=data.seed, rank=rank, world_size=world_size)
        self.text = ToyTextEncoder(dim=text_dim, text_len=data.text_len, seed=data.text_seed).to(self.device)
        self.oracle = ShapesOracle(self.shapes)
        self._empty: torch.Tensor | None = None
        workers = data.workers if data.workers >= 0 else (0 if self.device.type == "cpu" else max(1, min(12, (os.cpu_count() or 2) - 2)))
        # Samples depend only on their global index, so rendering them in other processes (one
        # batch ahead) gives exactly the serial batches; the position counts consumed batches only.
        # Each worker renders one slice of a batch per task and sends uint8 numpy frames back
        # (torch tensors would cross through shared-memory files, one per tensor: slower than
        # rendering serially).
        self._workers = workers
        self._pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_single_thread) if workers > 0 else None
        self._pending = None

    # ------------------------------------------------------------ shapes
    def _shapes_config(self, num_frames: int) -> ShapesConfig:
        """The world rendering videos of ``num_frames`` latent frames (``codec_frames`` rendered frames each)."""
        frames = num_frames * self.codec.temporal_factor
        return ShapesConfig(size=self.data.resolution, num_frames=frames, max_shapes=self.data.max_shapes, agent=self.data.agent)

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, int, int, int]:
        """(C, F, h, w) of the latents of one video of ``num_frames`` latent frames (default ``data.num_frames``)."""
        frames = self.data.num_frames if num_frames is None else num_frames
        return self.codec.latent_shape(frames * self.codec.temporal_factor, self.data.resolution, self.data.resolution)

    def tokens_per_frame(self, patch: tuple[int, int, int]) -> int:
        _, _, h, w = self.latent_shape()
        return (h // patch[1]) * (w // patch[2])

    # -------------------------------------------------------------- text
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) context for ``prompts`` (UserError on words outside the vocabulary)."""
        context, _ = self.text(list(prompts))
        return context.to(self.device)

    def empty_context(self, batch: int) -> torch.Tensor:
        """(B, L, D) context of the empty prompt: the unconditional branch of CFG."""
        if self._empty is None:
            self._empty = self.encode_text([""])
        return self._empty.expand(batch, -1, -1)

    # -------------------------------------------------------- data source
    def _indices(self, position: int) -> list[int]:
        """Global sample indices of the batch that starts at this process's ``position``."""
        return [self.dataset.global_index(position + i) for i in range(self.local_batch)]

    def _submit(self, position: int):
        indices = self._indices(position)
        slices = [indices[i :: self._workers] for i in range(self._workers)]
        return position, self._pool.map_async(_render, [(self.dataset, part) for part in slices if part])

    def _next_raw(self) -> list[dict[str, Any]]:
        """This process's next batch as rendered samples, in stream order; advances the position."""
        position = self.dataset.position
        if self._pool is None:
            items = _render((self.dataset, self._indices(position)))
        else:
            if self._pending is None or self._pending[0] != position:
                self._pending = self._submit(position)
            parts = self._pending[1].get()
            self._pending = self._submit(position + self.local_batch)
            items = [None] * self.local_batch
            for i, part in enumerate(parts):  # undo the round-robin split
                items[i :: self._workers] = part
        self.dataset.position = position + self.local_batch
        return items

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = self._pending = None

    def next_batch(self) -> dict[str, Any]:
        items = self._next_raw()
        frames = torch.from_numpy(np.stack([it["frames"] for it in items])).to(self.device)  # (B, F, H, W, 3) uint8
        video = frames.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)  # (B, 3, F, H, W) in [-1, 1]
        captions = [it["caption"] for it in items]
        batch = {
            "latents": self.codec.encode(video),  # (B, C, F, h, w)
            "context": self.encode_text(captions),
            "caption": captions,
            "scene": [it["scene"] for it in items],
        }
        if "actions" in items[0]:
            batch["actions"] = torch.from_numpy(np.stack([it["actions"] for it in items])).to(self.device)
        return batch

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    # -------------------------------------------------------------- eval
    def eval_set(self, n: int, num_frames: int | None = None) -> dict[str, Any]:
        """n fixed evaluation samples (captions, scenes, ground-truth videos) from a held-out stream, ``num_frames`` latent frames long."""
        frames = self.data.num_frames if num_frames is None else num_frames
        return ShapesDataset(self._shapes_config(frames), seed=self.data.seed + EVAL_SEED_OFFSET).batch(n)
