"""Training data sources: videos -> latents + text context, for one process.

``ShapesSource`` renders the embedded shapes world; ``AtariSource`` reads episodes recorded from the Atari
emulator (``causal-rcm collect``, :mod:`causal_rcm.data.shards`); ``LatentSource`` reads latents and text
context stored by ``causal-rcm synth`` or ``causal-rcm data prepare`` (:mod:`causal_rcm.data.latents`). Each
builds what a recipe needs (codec, text encoder, frame structure) from a :class:`~causal_rcm.config.DataConfig`
(and, for stored latents, the shards' header); ``next_batch`` yields this process's slice of the global batch on
the training device, and its position is part of the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from causal_rcm.errors import UserError
from causal_rcm.data.codec import PixelCodecSpec, VideoCodec
from causal_rcm.data.components import CodecSpec, TextSpec, codec_spec, make_codec, make_text_encoder, text_spec
from causal_rcm.data.components import text_dim as component_text_dim
from causal_rcm.data.latents import LatentShards
from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.data.shards import Episode, EnvInfo, Manifest, ShardReader
from causal_rcm.data.text import TextEncoder, ToyTextSpec
from causal_rcm.data.video import from_uint8

# Evaluation prompts come from a stream the training stream never reaches.
EVAL_SEED_OFFSET = 1_000_003


def _single_thread() -> None:
    """Worker initialiser: rendering is numpy; idle torch thread pools would only contend for cores."""
    torch.set_num_threads(1)


def _render(task: tuple[ShapesDataset, list[int]]) -> list[dict[str, Any]]:
    dataset, indices = task
    return [dataset.render_sample(i) for i in indices]


class VideoSource:
    """What every source gives a recipe: the codec, the text encoder and the frame structure, on one device.

    ``codec_spec`` and ``text_spec`` are what a checkpoint trained on the source records (``PipelineSpec.of_source``),
    ``codec`` and ``text`` the components they build (``data.components``), on first use: a source of stored
    latents and contexts needs them only to evaluate. ``name`` is the source's ``data.source`` as checkpoints record
    it; ``fps`` the frame rate its videos play at; ``frame_size`` (height, width) of a frame; ``env`` the
    environment of recorded episodes (None for a rendered world); ``oracle`` the analytic scorer where the world has
    one (None: evaluation compares pixels)."""

    name = ""
    fps: float
    env: EnvInfo | None = None
    oracle: ShapesOracle | None = None

    def __init__(self, data, codec_spec: CodecSpec, text_spec: TextSpec, *, local_batch: int = 1,
                 device: torch.device | str = "cpu", frame_size: tuple[int, int] | None = None) -> None:
        self.data = data
        self.device = torch.device(device)
        self.local_batch = local_batch
        self.codec_spec, self.text_spec = codec_spec, text_spec
        self.frame_size = frame_size or (data.resolution, data.resolution)
        self.text_dim = component_text_dim(text_spec)
        self._codec: VideoCodec | None = None
        self._text: TextEncoder | None = None
        self._empty: torch.Tensor | None = None

    @property
    def codec(self) -> VideoCodec:
        if self._codec is None:
            self._codec = make_codec(self.codec_spec)
        return self._codec

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = make_text_encoder(self.text_spec, device=self.device)
        return self._text

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, int, int, int]:
        """(C, F, h, w) of the latents of one video of ``num_frames`` latent frames (default ``data.num_frames``)."""
        frames = self.data.num_frames if num_frames is None else num_frames
        return self.codec.latent_shape(self.codec.video_frames(frames), *self.frame_size)

    def tokens_per_frame(self, patch: tuple[int, int, int]) -> int:
        _, _, h, w = self.latent_shape()
        return (h // patch[1]) * (w // patch[2])

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) context for ``prompts`` (UserError on words outside the vocabulary)."""
        context, _ = self.text(list(prompts))
        return context.to(self.device)

    def image_latents(self, video: torch.Tensor) -> torch.Tensor:
        """Each video's first frame encoded as a stream encodes a given image (``StreamingPipeline.given_frames``:
        repeated over one latent frame's frames): (B, 3, F, H, W) in [-1, 1] -> (B, C, 1, h, w)."""
        return self.codec.encode(video[:, :, :1].expand(-1, -1, self.codec.video_frames(1), -1, -1))

    def _given(self, batch: dict[str, Any], video: torch.Tensor) -> dict[str, Any]:
        """``batch`` with ``image_latents`` when the recipes give first frames (``data.given_frames_prob``)."""
        if self.data.given_frames_prob > 0:
            batch["image_latents"] = self.image_latents(video)
        return batch

    def empty_context(self, batch: int) -> torch.Tensor:
        """(B, L, D) context of the empty prompt: the unconditional branch of CFG."""
        if self._empty is None:
            self._empty = self.encode_text([""])
        return self._empty.expand(batch, -1, -1)

    def close(self) -> None:
        """Release workers and files (nothing to release by default)."""


def world_specs(data, text_dim: int) -> tuple[PixelCodecSpec, ToyTextSpec]:
    """The pixel codec and toy text encoder of a rendered or recorded world's ``data`` settings."""
    if data.width and data.width != data.resolution:
        raise UserError(f"data.width={data.width}: the {data.source} world's frames are square (data.resolution); "
                        "leave data.width at 0")
    codec = PixelCodecSpec(factor=data.codec_factor, frames=data.codec_frames, shift=data.codec_shift, scale=data.codec_scale)
    return codec, ToyTextSpec(dim=text_dim, text_len=data.text_len, seed=data.text_seed)


class ShapesSource(VideoSource):
    """Dataset, codec, text encoder and oracle of the shapes world, for one process."""

    name = "shapes"
    fps = 8  # rendered frames per second of video, as its checkpoints' streams play them

    def __init__(self, data, text_dim: int, *, rank: int = 0, world_size: int = 1, local_batch: int = 1, device: torch.device | str = "cpu") -> None:
        if data.agent and data.codec_frames != 1:
            raise UserError("data.agent takes one action per latent frame: it needs data.codec_frames=1")
        super().__init__(data, *world_specs(data, text_dim), local_batch=local_batch, device=device)
        self.shapes = self._shapes_config(data.num_frames)
        self.dataset = ShapesDataset(self.shapes, seed=data.seed, rank=rank, world_size=world_size)
        self.oracle = ShapesOracle(self.shapes)
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
        frames = self.codec.video_frames(num_frames)
        return ShapesConfig(size=self.data.resolution, num_frames=frames, max_shapes=self.data.max_shapes, agent=self.data.agent)

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
        video = from_uint8(frames)  # (B, 3, F, H, W) in [-1, 1]
        captions = [it["caption"] for it in items]
        batch = {
            "latents": self.codec.encode(video),  # (B, C, F, h, w)
            "context": self.encode_text(captions),
            "caption": captions,
            "scene": [it["scene"] for it in items],
        }
        if "actions" in items[0]:
            batch["actions"] = torch.from_numpy(np.stack([it["actions"] for it in items])).to(self.device)
        return self._given(batch, video)

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)

    # -------------------------------------------------------------- eval
    def eval_set(self, n: int, num_frames: int | None = None) -> dict[str, Any]:
        """n fixed evaluation samples (captions, scenes, ground-truth videos) from a held-out stream, ``num_frames`` latent frames long."""
        frames = self.data.num_frames if num_frames is None else num_frames
        return ShapesDataset(self._shapes_config(frames), seed=self.data.seed + EVAL_SEED_OFFSET).batch(n)


class Windows:
    """Every window of ``num_frames`` consecutive frames of some episodes, numbered ``0 .. count - 1``.

    Episodes shorter than a window give none; window ``u`` lies in the episode where the cumulative count
    passes ``u``, so drawing ``u`` uniformly draws a window uniformly over all frames."""

    def __init__(self, episodes: list[Episode], num_frames: int) -> None:
        self.episodes = [ep for ep in episodes if len(ep.frames) >= num_frames]
        self.num_frames = num_frames
        self.ends = np.cumsum([len(ep.frames) - num_frames + 1 for ep in self.episodes], dtype=np.int64)
        self.count = int(self.ends[-1]) if len(self.ends) else 0

    def window(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``u``: uint8 frames (F, H, W, 3) (read from the mapped shard) and int64 actions (F,)."""
        e = int(np.searchsorted(self.ends, u, side="right"))
        start = u - (int(self.ends[e - 1]) if e else 0)
        ep = self.episodes[e]
        return np.array(ep.frames[start : start + self.num_frames]), ep.actions[start : start + self.num_frames]

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` uniform windows: frames (n, F, H, W, 3) uint8, actions (n, F) int64."""
        frames, actions = zip(*(self.window(int(u)) for u in rng.integers(self.count, size=n)))
        return np.stack(frames), np.stack(actions)


class ShardStream(VideoSource):
    """A source streaming stored shards: each rank consumes samples ``rank + world_size * i``; its position and the
    identity of its shards (``_data_id``) are the checkpointed state, resumable on any world size dividing it."""

    def state_dict(self) -> dict:
        return {"seed": self.seed, "samples_seen": self.position * self.world_size, "shards": self._data_id}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shards") != self._data_id or int(state["seed"]) != self.seed:
            raise UserError("the checkpoint was trained on other shards or another data.seed: resume with the same data")
        seen = int(state["samples_seen"])
        if seen % self.world_size:
            raise UserError(f"cannot resume a data stream at {seen} samples on {self.world_size} ranks: use a world size that divides it")
        self.position = seen // self.world_size


class AtariSource(ShardStream):
    """Windows of ``data.num_frames`` consecutive frames, with their actions, from the episodes that
    ``causal-rcm collect`` recorded in ``data.shards`` (training shards; held-out ones for evaluation).

    Sample ``i`` of the global stream is a window drawn uniformly over all training frames by a generator
    seeded from ``(data.seed, i)``; rank ``r`` of ``W`` reads samples ``r, r + W, ...`` (as ``ShapesDataset``),
    so the stream resumes exactly from the number of samples consumed. Every sample has the empty prompt:
    the actions are the only condition (``data.actions=false``: none, the no-action baseline). Shards are checked against the manifest (size, SHA-256) when the
    source is built, and their frames stay mapped from disk.
    """

    name = "atari"

    def __init__(self, data, text_dim: int, *, rank: int = 0, world_size: int = 1, local_batch: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if not data.shards:
            raise UserError("data.source=atari reads recorded episodes: set data.shards=PATH (a folder written by `causal-rcm collect`)")
        if data.codec_frames != 1:
            raise UserError("Atari data has one action per frame: it needs data.codec_frames=1")
        super().__init__(data, *world_specs(data, text_dim), local_batch=local_batch, device=device)
        folder = Path(data.shards)
        self.manifest = Manifest.read(folder)
        self.env, self.fps = self.manifest.env, self.manifest.env.fps
        size = self.manifest.frame_size
        if size != data.resolution:
            raise UserError(f"{folder} holds {size}x{size} frames but data.resolution={data.resolution}: "
                            f"set data.resolution={size} (or collect with --size {data.resolution})")
        train = self._episodes(folder, "train")
        self.train = Windows(train, data.num_frames)
        if not self.train.count:
            longest = max(len(ep.frames) for ep in train)
            raise UserError(f"no training episode of {folder} has data.num_frames={data.num_frames} frames (the longest has "
                            f"{longest}): lower data.num_frames or collect longer episodes (--max-steps)")
        self.heldout = self._episodes(folder, "heldout") if self.manifest.split("heldout") else []
        self.seed, self.rank, self.world_size = data.seed, rank, world_size
        self.position = 0  # samples consumed by this rank
        self._data_id = hashlib.sha256("".join(s.sha256 for s in self.manifest.split("train")).encode()).hexdigest()[:16]

    def _episodes(self, folder: Path, split: str) -> list[Episode]:
        entries = self.manifest.split(split)
        if not entries:
            raise UserError(f"{folder} has no {split} shards: collect at least one {split} episode")
        return [ep for entry in entries for ep in ShardReader(folder, entry, self.manifest).episodes]

    def _batch(self, frames: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
        """uint8 frames (B, F, H, W, 3) and actions (B, F) -> latents, empty-prompt context and actions on the device."""
        video = from_uint8(torch.from_numpy(frames).to(self.device))  # (B, 3, F, H, W) in [-1, 1]
        B = len(frames)
        batch = {"latents": self.codec.encode(video), "context": self.empty_context(B).contiguous(), "caption": [""] * B}
        if self.data.actions:  # else the no-action baseline: the same windows, their actions unseen
            batch["actions"] = torch.from_numpy(actions).to(self.device)
        return self._given(batch, video)

    def next_batch(self) -> dict[str, Any]:
        samples = [self._sample(self.rank + self.world_size * (self.position + i)) for i in range(self.local_batch)]
        self.position += self.local_batch
        frames, actions = zip(*samples)
        return self._batch(np.stack(frames), np.stack(actions))

    def _sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return self.train.window(int(rng.integers(self.train.count)))

    def eval_set(self, n: int, num_frames: int | None = None) -> dict[str, Any]:
        """n fixed windows of held-out episodes, ``num_frames`` frames long: their videos (n, 3, F, H, W) in
        [-1, 1] and actions (n, F), with empty captions."""
        windows = Windows(self.heldout, self.data.num_frames if num_frames is None else num_frames)
        if not windows.count:
            raise UserError(f"no held-out episode of {self.data.shards} has {windows.num_frames} frames: "
                            "collect with --holdout (and longer episodes), or set train.eval_videos=0")
        frames, actions = windows.draw(np.random.default_rng(self.seed + EVAL_SEED_OFFSET), n)
        out = {"video": from_uint8(frames), "caption": [""] * n, "scene": [None] * n}
        return {**out, "actions": torch.from_numpy(actions)} if self.data.actions else out


class LatentSource(ShardStream):
    """Latents and text context stored in ``data.shards`` by ``causal-rcm synth`` (a teacher's samples, optionally
    with ODE pairs) or ``causal-rcm data prepare`` (videos of your own), :mod:`causal_rcm.data.latents`.

    The codec, text encoder, frame size and frame rate are the shards' (their ``job.json``); ``data.resolution`` and
    ``data.width`` must say the same, and ``data.num_frames`` may take the first frames of each stored video. Global
    sample ``i`` is stored sample ``perm_e[i mod N]`` of a permutation drawn from ``(data.seed, e)`` for epoch
    ``e = i // N``; rank ``r`` of ``W`` reads samples ``r, r + W, ...``, so the stream resumes exactly from the number
    of samples consumed, on any number of ranks that divides it. Batches hold ``latents``, ``context`` (padded back to
    the text encoder's length), ``caption`` and, from ``synth --ode-pairs``, ``ode_states`` (B, K, C, F, h, w) at the
    flow times ``ode_times`` (K,). The empty prompt's context is stored too, so training never loads the text
    encoder (evaluation does, for its prompts).

    Shards of the shapes world (a shapes-world teacher's samples) are evaluated as the shapes world is, with its
    oracle on prompts of its held-out stream, and checkpoints trained on them record ``source: shapes``; other
    shards are evaluated on their first stored videos, by pixels (a sample of the same prompt from other noise: a
    coarse check, not a score)."""

    name = "latents"

    def __init__(self, data, text_dim: int, *, rank: int = 0, world_size: int = 1, local_batch: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if not data.shards:
            raise UserError("data.source=latents reads latent shards: set data.shards=PATH (a folder written by "
                            "`causal-rcm synth` or `causal-rcm data prepare`)")
        self.store = LatentShards(data.shards)
        h = self.store.header
        size = (h.resolution, h.width)
        if (data.resolution, data.width or data.resolution) != size or data.num_frames > h.num_frames:
            raise UserError(f"{data.shards} holds {h.width}x{h.resolution} videos of {h.num_frames} latent frames: set "
                            f"data.resolution={h.resolution}" + (f" data.width={h.width}" if h.width != h.resolution else "")
                            + f" (data.num_frames may be at most {h.num_frames}: the first frames of each video)")
        super().__init__(data, codec_spec(h.codec), text_spec(h.text), local_batch=local_batch, device=device, frame_size=size)
        self.fps = h.fps
        self.seed, self.rank, self.world_size = data.seed, rank, world_size
        self.position = 0  # samples consumed by this rank
        self._perm: tuple[int, np.ndarray | None] = (-1, None)  # the epoch whose order is drawn
        self.world: ShapesSource | None = None
        if h.world == "shapes" and h.world_data is not None:
            world = dataclasses.replace(data, source="shapes", shards="", workers=0, width=0, **h.world_data)
            self.world = ShapesSource(world, h.text_dim, device=device)
            self.name, self.oracle, self.shapes = "shapes", self.world.oracle, self.world.shapes
        self.ode_times = torch.tensor(h.ode_times, dtype=torch.float32)
        self._negative = torch.from_numpy(self.store.negative).float().to(self.device)[None]  # (1, L, D)

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, int, int, int]:
        C, _, h, w = self.store.header.latent_shape
        return C, self.data.num_frames if num_frames is None else num_frames, h, w

    def empty_context(self, batch: int) -> torch.Tensor:
        return self._negative.expand(batch, -1, -1)

    def _order(self, i: int) -> int:
        """The stored sample that global sample ``i`` reads."""
        epoch, k = divmod(i, len(self.store))
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng(np.random.SeedSequence([self.seed, epoch])).permutation(len(self.store)))
        return int(self._perm[1][k])

    def next_batch(self) -> dict[str, Any]:
        F = self.data.num_frames
        items = [self.store.item(self._order(self.rank + self.world_size * (self.position + i))) for i in range(self.local_batch)]
        self.position += self.local_batch
        tensor = lambda key: torch.from_numpy(np.stack([it[key] for it in items])).to(self.device).float()  # noqa: E731
        batch = {"latents": tensor("latents")[:, :, :F], "context": tensor("context"), "caption": [it["meta"]["caption"] for it in items]}
        if items[0]["ode"] is not None:
            batch["ode_states"] = tensor("ode")[:, :, :, :F]  # (B, K, C, F, h, w)
            batch["ode_times"] = self.ode_times.to(self.device)
        return batch

    @property
    def _data_id(self) -> str:
        return self.store.identity

    def eval_set(self, n: int, num_frames: int | None = None) -> dict[str, Any]:
        """The shapes world's held-out set (shapes shards), else the first ``n`` stored videos, decoded, with their
        captions; ``num_frames`` past the stored length only for the shapes world."""
        if self.world is not None:
            return self.world.eval_set(n, num_frames)
        frames = self.data.num_frames if num_frames is None else num_frames
        if frames > self.store.header.num_frames or n > len(self.store):
            raise UserError(f"{self.data.shards} evaluates on its first stored videos: it has {len(self.store)} of "
                            f"{self.store.header.num_frames} latent frames, not {n} of {frames}; lower train.eval_videos "
                            "or train.eval_drift (or set train.eval_videos=0)")
        items = [self.store.item(i) for i in range(n)]
        latents = torch.from_numpy(np.stack([it["latents"] for it in items])).float()[:, :, :frames]
        with torch.no_grad():
            video = self.codec.decode(latents).clamp(-1, 1)
        return {"video": video, "caption": [it["meta"]["caption"] for it in items], "scene": [None] * n}

    def close(self) -> None:
        if self.world is not None:
            self.world.close()


SOURCES: dict[str, type[VideoSource]] = {"shapes": ShapesSource, "atari": AtariSource, "latents": LatentSource}


def make_source(data, text_dim: int, **kwargs: Any) -> VideoSource:
    """The source ``data.source`` names (``kwargs``: rank, world_size, local_batch, device); UserError for another name."""
    if data.source not in SOURCES:
        raise UserError(f"data.source={data.source!r} is not a data source; choose from {', '.join(SOURCES)}")
    return SOURCES[data.source](data, text_dim, **kwargs)
