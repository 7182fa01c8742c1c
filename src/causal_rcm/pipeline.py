"""StreamingPipeline: a checkpoint plus its codec and text encoder, generating decoded frames.

The CLI (`generate`) and the server (`serve`) only call this module. A checkpoint is a folder of our layout or a
Wan2.1 release (diffusers' or the original layout); its codec and text encoder are built by ``data.components``
from its :class:`~causal_rcm.spec.PipelineSpec`, and seen here only through their interfaces.

* :meth:`StreamingPipeline.stream` runs a causal checkpoint autoregressively, chunk by chunk
  (``mode="chunk"``: the checkpoint's ``frames_per_chunk``; ``mode="frame"``: one frame per
  chunk), with a rolling KV cache and sink frames, so a stream has no length limit and bounded
  memory. It returns a :class:`Stream`, an iterator of :class:`StreamFrame` whose prompt
  (and, for world models, actions) can change while it runs.
* :meth:`StreamingPipeline.generate` returns a whole video: the Euler ODE over the training
  length for a bidirectional checkpoint, a stream of any length (with a prompt schedule) for
  a causal one.

Prompt switching. The KV cache holds the history *as seen under the prompt it was made
with*. On a switch the conditional cache is rebuilt: the clean latents the cache covers (the
sink chunks and the chunks of the rolling window, kept as a bounded history,
``diffusion.samplers.ChunkHistory``) are re-run at t = 0 with the new prompt, chunk by chunk as
they were first committed, exactly the Self Forcing cache refresh (Huang et al. 2025) applied to
the old frames. The next chunk then attends to the same frames under the new prompt, so the scene
continues without a cut. The unconditional cache of CFG depends only on the empty prompt and is
kept. A checkpoint's ``recache_every`` K (stream defaults) rebuilds both caches the same way every
K chunks, as ``diffusion.samplers.causal_sample_stream`` does.

Given frames (image-to-video, continuing a clip, a world model's real context). ``stream(image=...)`` starts from
an image: fitted to the checkpoint's frame size (centre-cropped to its aspect ratio with an ``InputWarning`` when
that cuts, then resized) and repeated over the frames of one latent frame (one frame for Wan's VAE, whose first
latent frame holds one; ``codec frames`` for the packed pixel codec), it is encoded as the clean first latent
frame. ``stream(video=...)`` continues a clip from its last whole latent frames that the window holds. Given latent
frames that fill whole chunks are committed to the caches as the stream commits its own; the rest, fewer than a
chunk (an image's one latent frame), open the first chunk at t = 0 beside its noisy frames
(``diffusion.samplers``, module docstring). The stream then continues text-conditioned as usual; the generated
frames are numbered after the given ones, and a prompt switch re-runs the given frames too.

Speed and memory options of a stream: ``context="noisy"`` (one forward a chunk fewer: a chunk's last denoising step
commits its keys and values, ``diffusion.samplers``; the kept history is then that step's input and time, re-run
the same way on a switch or a re-cache), ``kv_int8`` (the KV cache in int8, ``models.kv_cache``), and ``overlap``
(on a GPU, the default: chunk k is decoded on a second CUDA stream while chunk k + 1 is denoised,
:class:`DecodeQueue`). ``StreamingPipeline(..., low_memory=True)`` (``--low-memory``) makes int8 caches the default
and decodes in spatial tiles where the codec can (Wan's VAE).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from causal_rcm.data.codec import StreamDecoder, VideoCodec
from causal_rcm.data.components import make_codec, make_text_encoder
from causal_rcm.data.text import TextEncoder
from causal_rcm.data.video import fit_frames, from_uint8, to_uint8, uint8_frames
from causal_rcm.diffusion.guidance import is_unguided
from causal_rcm.diffusion.samplers import (
    CONTEXTS,
    ChunkHistory,
    CommitTracker,
    check_window,
    head_complement,
    make_kv_caches,
    rebuild_kv_cache,
    refresh_kv_caches,
    sample,
    sample_chunk,
    time_grid,
)
from causal_rcm.errors import InputWarning, UserError
from causal_rcm.models.adapters import load_model
from causal_rcm.spec import PipelineSpec

__all__ = ["MODES", "DecodeQueue", "StreamFrame", "Stream", "StreamingPipeline"]

MODES = ("frame", "chunk")
Actions = Callable[[int], int] | Iterable[int] | None


@dataclass
class StreamFrame:
    """One decoded frame of a stream.

    ``image`` uint8 (H, W, 3); ``index`` its position in the stream; ``chunk`` the chunk that
    made it; ``prompt`` the prompt it was generated under; ``chunk_seconds`` the time to denoise,
    commit and decode its chunk; ``time`` seconds since the stream started when it was ready; ``action``
    (world models) the action that led to it.
    """

    image: np.ndarray
    index: int
    chunk: int
    prompt: str
    chunk_seconds: float
    time: float
    action: int | None = None  # world models: the action the frame was generated with


class DecodeQueue:
    """Decodes a stream's chunks in order, on a second CUDA stream when ``overlap`` is on, so that chunk k decodes
    while chunk k + 1 is denoised.

    :meth:`put` queues the decode of latents (1, C, f, h, w) behind the work already queued on the current CUDA
    stream (the side stream waits for it, and the latents are kept alive for the side stream), converts the frames
    to uint8 there and copies them to pinned host memory, recording an event; :meth:`get` waits for the oldest
    entry's event and returns its frames, uint8 (frames, H, W, 3) on the CPU, with what was put beside it. Without
    a GPU, or with ``overlap`` off, :meth:`put` decodes at once. ``lag``: entries a consumer keeps queued before
    taking the oldest (1 with ``overlap``: a chunk's frames are taken once the next chunk is queued on the GPU).
    """

    def __init__(self, decoder: StreamDecoder, device: torch.device, *, overlap: bool) -> None:
        self.decoder = decoder
        self.overlap = overlap
        self.stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None
        self._entries: deque = deque()

    @property
    def lag(self) -> int:
        return 1 if self.overlap else 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, latents: torch.Tensor, item: Any = None) -> None:
        """Queue the decode of ``latents`` (1, C, f, h, w); ``item`` comes back with its frames."""
        if self.stream is None:
            self._entries.append((uint8_frames(self.decoder.decode(latents)[0]).cpu(), None, item))
            return
        self.stream.wait_stream(torch.cuda.current_stream(latents.device))
        with torch.cuda.stream(self.stream):
            frames = uint8_frames(self.decoder.decode(latents)[0])  # (f', H, W, 3) on the GPU
            host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        latents.record_stream(self.stream)  # not reused by the main stream before the side stream has read it
        self._entries.append((host, done, item))

    def get(self) -> tuple[torch.Tensor, Any]:
        """The oldest entry's frames, uint8 (frames, H, W, 3) on the CPU, and its item (waits for its decode)."""
        frames, done, item = self._entries.popleft()
        if done is not None:
            done.synchronize()
        return frames, item


class Stream:
    """A running stream: iterate for :class:`StreamFrame` s; ``switch_prompt`` / ``close`` from any thread.

    Work happens lazily in ``__next__``, one chunk at a time; ``num_frames=None`` never ends. A stream may
    start from given frames instead of its own first chunk (:meth:`prefill`; a world model's real context).
    State held: the KV caches (``sink_frames + window_frames`` frames per layer and CFG branch, see
    ``kv_cache.py``)
    and the latents they were committed from (for prompt switches), so memory is bounded.

    With ``overlap`` the frames of chunk k are handed out once chunk k + 1 is queued (:class:`DecodeQueue`), so a
    prompt switch or an action asked for while chunk k is shown acts from chunk k + 2; ``switches`` scheduled at
    frame indices apply from the first chunk (after the first) that starts at or after them either way
    (``generate``).
    """

    def __init__(
        self,
        pipe: StreamingPipeline,
        prompt: str,
        *,
        steps: int,
        frames_per_chunk: int,
        seed: int,
        guidance: float,
        num_frames: int | None,
        actions: Actions,
        times: Sequence[float] | None = None,
        window_frames: int | None = None,
        recache_every: int | None = None,
        context: str = "clean",
        kv_int8: bool = False,
        overlap: bool = False,
        switches: Sequence[tuple[int, str]] = (),
    ) -> None:
        self._pipe = pipe
        cfg = pipe.config
        self.prompt = prompt
        self.steps = steps
        self.frames_per_chunk = frames_per_chunk
        self.num_frames = num_frames
        self._context = pipe.encode_prompt(prompt)  # (1, L, D)
        self._neg = None if is_unguided(guidance) else pipe.encode_prompt("")
        self._guidance = guidance
        self._grid = time_grid(steps, cfg.sampler.shift) if times is None else time_grid([1.0, *times, 0.0])
        self._solver = cfg.sampler.solver
        self._complement = head_complement(pipe.model, cfg.sampler.complete_x0)
        self._generator = torch.Generator(pipe.device).manual_seed(seed)
        self._sink = cfg.stream.sink_frames
        self._window = cfg.stream.window_frames if window_frames is None else window_frames
        self._recache = cfg.stream.recache_every if recache_every is None else recache_every
        self._kv_int8 = kv_int8
        self._caches = make_kv_caches(pipe.model, guidance=guidance, sink_frames=self._sink, window_frames=self._window,
                                      kv_int8=kv_int8)
        self._history = ChunkHistory(self._sink, self._window)  # the chunks the cache covers, as committed
        self._commits = CommitTracker(context)
        self._actions = _action_source(actions, pipe.config.num_actions)
        self._pending: tuple[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._buffer: deque[StreamFrame] = deque()
        # a causal codec's state between chunks
        self._decodes = DecodeQueue(pipe.codec.stream_decoder(tiled=pipe.low_memory), pipe.device, overlap=overlap)
        self._switches = sorted(switches, key=lambda s: s[0])  # (frame, prompt), applied at generation
        self._chunk = 0  # chunks made or prefilled
        self._made_chunks = 0  # chunks made
        self._shown_chunk = 0  # the chunk of the next frames handed out
        self._made = 0  # latent frames generated
        self._frame = 0  # decoded frames handed out or prefilled (codec.temporal_factor per latent frame; a last chunk is cut)
        self._first = 0  # frames given by prefill: the generated ones are numbered from here
        self._given: tuple[torch.Tensor, torch.Tensor | None] | None = None  # given latent frames opening the next chunk
        self._start = time.perf_counter()

    # ------------------------------------------------------------- control
    def switch_prompt(self, prompt: str) -> None:
        """Use ``prompt`` from the next chunk on (UserError, raised here, for words outside the vocabulary)."""
        context = self._pipe.encode_prompt(prompt)
        with self._lock:
            self._pending = (prompt, context)

    def close(self) -> None:
        """End the stream: the iterator stops after the frames already made."""
        self._closed = True

    @torch.inference_mode()
    def prefill(self, frames: np.ndarray, actions: Sequence[int] | None = None) -> None:
        """Continue given frames: uint8 ``frames`` (P, H, W, 3), whole latent frames of the codec, become the clean
        context of the stream's first frame (module docstring: whole chunks are committed to the KV caches as if the
        stream had made them; a remainder opens the first chunk at t = 0).

        A world model continues a real game from them (``actions``: the P actions that led to each, default NOOP,
        0). The generated frames are numbered from P on, and ``num_frames`` still counts generated frames.
        UserError for frames of another size or not whole latent frames, or a stream already running.
        """
        pipe, fc, codec = self._pipe, self.frames_per_chunk, self._pipe.codec
        if self._frame:
            raise UserError("prefill a stream before its first frame")
        frames = np.asarray(frames)
        H, W = pipe.frame_size
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (H, W, 3) or not len(frames):
            raise UserError(f"prefill takes uint8 frames (P, {H}, {W}, 3); got {frames.dtype} {list(frames.shape)}")
        P = len(frames)
        if codec.video_frames(codec.latent_frames(P)) != P:
            raise UserError(f"prefill takes whole latent frames: {P} frames do not make them "
                            f"(the codec packs {codec.temporal_factor} frames in a latent frame)")
        if actions is not None and self._actions is None:
            raise UserError("this checkpoint is not action-conditioned (num_actions is 0): do not pass actions")
        acts = None
        if self._actions is not None:
            given = [0] * P if actions is None else list(actions)
            if len(given) != P:
                raise UserError(f"prefill takes one action per frame: {P} frames, {len(given)} actions")
            checked = _action_source(given, pipe.config.num_actions)
            acts = torch.tensor([[checked(i) for i in range(P)]], dtype=torch.long, device=pipe.device)  # (1, P)
        latents = pipe.encode(frames)  # (1, C, L, h, w)
        L = latents.shape[2]
        whole = L - L % fc
        for start in range(0, whole, fc):
            x0 = latents[:, :, start : start + fc]
            kwargs = {} if acts is None else {"actions": acts[:, start : start + fc]}
            refresh_kv_caches(pipe.model, x0, self._context, self._caches, neg_context=self._neg, **kwargs)
            self._history.add(x0, **kwargs)
            self._chunk += 1
        if whole < L:
            self._given = (latents[:, :, whole:], None if acts is None else acts[:, whole:])
        self._decodes.decoder.decode(latents.float())  # a causal codec's decoder state after the given frames (not kept)
        self._frame = self._first = P
        self._shown_chunk = self._chunk

    @property
    def frames_done(self) -> int:
        """Frames generated so far, prefilled ones not counted (chunks are generated whole, so it may run ahead of
        the consumer)."""
        return self._frame - self._first

    @property
    def window_frames(self) -> int | None:
        """Latent frames the stream attends, the current chunk included (None: unbounded)."""
        return self._window

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held by the stream: ``kv_cache`` (all branches) and ``history`` (latents kept for switches)."""
        kv = sum(c.nbytes() for c in self._caches if c is not None)
        return {"kv_cache": kv, "history": self._history.nbytes()}

    # ---------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[StreamFrame]:
        return self

    def __next__(self) -> StreamFrame:
        while not self._buffer:
            if not self._closed and not self._generated_all():
                self._next_chunk()
                if len(self._decodes) <= self._decodes.lag:
                    continue
            elif not len(self._decodes):
                raise StopIteration
            self._show()
        return self._buffer.popleft()

    def _generated_all(self) -> bool:
        return self.num_frames is not None and self._made >= self._pipe.codec.latent_frames(self.num_frames)

    def _next_frame(self) -> int:
        """The index of the next chunk's first frame."""
        return self._first + self._pipe.codec.video_frames(self._made)

    @torch.inference_mode()
    def _next_chunk(self) -> None:
        """Denoise and commit the next chunk, and queue its decode."""
        pipe = self._pipe
        given, given_actions = self._given if self._given is not None else (None, None)
        self._given = None
        G = 0 if given is None else given.shape[2]
        fc = self.frames_per_chunk - G  # new latent frames of this chunk
        if self.num_frames is not None:
            fc = min(fc, pipe.codec.latent_frames(self.num_frames) - self._made)
        started = time.perf_counter()
        while self._switches and self._made_chunks and self._switches[0][0] <= self._next_frame():
            self.switch_prompt(self._switches.pop(0)[1])
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._apply_prompt(*pending)
        if self._recache and self._chunk and self._chunk % self._recache == 0:
            self._caches = tuple(None if c is None else rebuild_kv_cache(pipe.model, self._history, ctx, kv_int8=self._kv_int8)
                                 for c, ctx in zip(self._caches, (self._context, self._neg)))
        actions = self._next_actions(fc)  # (1, fc): the new frames'
        chunk_actions = actions if given_actions is None else torch.cat([given_actions, actions], dim=1)
        kwargs = {} if chunk_actions is None else {"actions": chunk_actions}
        noise = torch.randn((1, *pipe.latent_shape(fc)), generator=self._generator, device=pipe.device)
        x0 = sample_chunk(
            pipe.model, noise, self._context, self._caches, steps=self._grid, solver=self._solver,
            guidance=self._guidance, neg_context=self._neg, generator=self._generator, complement=self._complement,
            given=given, context_mode="noisy" if self._commits.noisy else "clean",
            callback=self._commits.track(None, self._chunk), **kwargs,
        )  # (1, C, G + fc, h, w)
        committed, refresh_kwargs = self._commits.committed(x0, G)
        self._history.add(committed, **refresh_kwargs, **kwargs)
        self._made += fc
        self._chunk += 1
        self._made_chunks += 1
        self._decodes.put(x0[:, :, G:].float(), (started, self.prompt, actions))

    def _show(self) -> None:
        """Hand out the frames of the oldest decoded chunk."""
        frames, (started, prompt, actions) = self._decodes.get()  # (frames, H, W, 3)
        if self.num_frames is not None:
            frames = frames[: self.num_frames - self.frames_done]  # a packed last latent frame may overshoot
        done = time.perf_counter()
        for i, image in enumerate(frames.numpy()):
            action = None if actions is None else int(actions[0, i])
            self._buffer.append(StreamFrame(image, self._frame, self._shown_chunk, prompt, done - started, done - self._start, action))
            self._frame += 1
        self._shown_chunk += 1

    def _next_actions(self, frames: int) -> torch.Tensor | None:
        if self._actions is None:
            return None
        first = self._next_frame()
        acts = [self._actions(first + i) for i in range(frames)]
        return torch.tensor([acts], dtype=torch.long, device=self._pipe.device)  # (1, frames)

    def _apply_prompt(self, prompt: str, context: torch.Tensor) -> None:
        """Rebuild the conditional cache from the kept chunks under the new prompt (module docstring)."""
        self._caches = (rebuild_kv_cache(self._pipe.model, self._history, context, kv_int8=self._kv_int8), self._caches[1])
        self._context, self.prompt = context, prompt


def _action_source(actions: Actions, num_actions: int) -> Callable[[int], int] | None:
    """A function frame index -> action id, checked against ``num_actions`` (0 = not a world model)."""
    if num_actions == 0:
        if actions is not None:
            raise UserError("this checkpoint is not action-conditioned (num_actions is 0): do not pass actions")
        return None
    if actions is None:
        fn: Callable[[int], int] = lambda i: 0  # noqa: E731 - noop
    elif callable(actions):
        fn = actions
    else:
        iterator = iter(actions)

        def fn(i: int) -> int:
            try:
                return next(iterator)
            except StopIteration:
                raise UserError(f"the action sequence ended at frame {i}; give one action per frame") from None

    def checked(i: int) -> int:
        a = fn(i)
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 0 <= int(a) < num_actions:
            raise UserError(f"action {a!r} at frame {i} is not an integer in 0..{num_actions - 1}")
        return int(a)

    return checked


class StreamingPipeline:
    """A model with its codec, text encoder and sampler defaults (read from the checkpoint).

    Args:
        model: a :class:`~causal_rcm.models.wan.CausalWanModel` (eval mode).
        config: the checkpoint's :class:`~causal_rcm.spec.PipelineSpec`.
        device: where the model runs; frames are returned on the CPU.
        compile: ``torch.compile`` each block's pure tensor math
            (:meth:`~causal_rcm.models.wan.CausalWanModel.compile_blocks`): the first chunks of a
            stream compile (seconds to a minute), later ones run the fused kernels; the same frames
            to float rounding. Off by default.
        root: the checkpoint folder, where the spec's component paths start.
        component_dtype: the codec's and text encoder's dtype (None: as stored).
        low_memory: the ``--low-memory`` preset: streams keep int8 KV caches unless told otherwise, and decode in
            spatial tiles where the codec can (Wan's VAE; a pixel codec has nothing to tile).
        context: the streams' default context, ``"clean"`` or ``"noisy"`` (:meth:`stream`); None: the checkpoint's.
    """

    def __init__(
        self, model: Any, config: PipelineSpec, device: torch.device | str = "cpu", *, compile: bool = False,
        root: str | Path | None = None, component_dtype: torch.dtype | None = None, low_memory: bool = False,
        context: str | None = None,
    ) -> None:
        config.check_model(model.config, root)
        self.low_memory = low_memory
        self.context = config.stream.context if context is None else context
        if self.context not in CONTEXTS:
            raise UserError(f"context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        self.model = model.eval()
        if compile:
            model.compile_blocks()
        self.config = config
        self.device = torch.device(device)
        self.codec: VideoCodec = make_codec(config.codec, root, device=self.device, dtype=component_dtype)
        _, _, h, w = self.latent_shape(1)  # UserError from the codec for a frame size it cannot encode
        patch = model.config.patch_size
        if h % patch[1] or w % patch[2]:
            height, width = self.frame_size
            raise UserError(f"frames of {height}x{width} px make {h}x{w} latents, which the model's {patch[1]}x{patch[2]} "
                            f"patches do not tile: use a resolution and width divisible by {self.codec.spatial_factor * patch[1]}")
        self.text_encoder: TextEncoder = make_text_encoder(config.text, root, device=self.device, dtype=component_dtype)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
        attn_backend: str = "sdpa", compile: bool = False, pipeline: dict | None = None, low_memory: bool = False,
        context: str | None = None, sink_frames: int | None = None,
    ) -> StreamingPipeline:
        """Load a checkpoint folder: our layout (config.json with a ``pipeline`` section + model.safetensors), or a
        Wan2.1 release, a diffusers Wan folder (``model_index.json``) or Wan's original folder (``models.release``;
        a missing or mismatched component is one error, before the VAE and text encoder load).

        ``dtype`` None keeps the stored dtype on a GPU and loads float32 on the CPU (which runs
        half-precision weights slowly, if at all); the codec and text encoder load float32 on the CPU, as stored on a
        GPU. ``compile``: see the class.
        ``pipeline``: pipeline-section keys that replace the checkpoint's (:meth:`PipelineSpec.read`), e.g.
        ``{"causal": True, "frames_per_chunk": 3}`` to stream a causal model published in a Wan layout, or another
        ``resolution`` / ``width`` / ``num_frames`` than Wan's 480 x 832 x 21 latent frames. ``low_memory``, ``context``: see
        the class. ``sink_frames``: a causal checkpoint's attention sink in latent frames, in place of its own
        (``pipeline.stream.sink_frames``; 0: none).
        """
        config = PipelineSpec.read(path, overrides=pipeline)
        if sink_frames is not None:
            if not config.causal:
                raise UserError(f"an attention sink is for causal checkpoints; {path} is bidirectional")
            config = dataclasses.replace(config, stream=dataclasses.replace(config.stream, sink_frames=sink_frames))
            config.check(f"{path} with sink_frames={sink_frames!r}")  # the spec's own ranges
        cpu = torch.device(device).type == "cpu"
        if dtype is None and cpu:
            dtype = torch.float32
        model = load_model(path, device=device, dtype=dtype, attn_backend=attn_backend)
        return cls(model, config, device=device, compile=compile, root=path, component_dtype=torch.float32 if cpu else None,
                   low_memory=low_memory, context=context)

    # ------------------------------------------------------------ pieces
    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of a frame."""
        return self.config.resolution, self.config.width or self.config.resolution

    @property
    def video_frames(self) -> int:
        """Decoded frames of a training-length video (``num_frames`` latent frames)."""
        return self.codec.video_frames(self.config.num_frames)

    def latent_shape(self, num_frames: int) -> tuple[int, int, int, int]:
        """(C, F, h, w) of ``num_frames`` latent frames."""
        return self.codec.latent_shape(self.codec.video_frames(num_frames), *self.frame_size)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, L, D) context of one prompt; UserError for words outside the vocabulary or too many tokens (toy encoder)."""
        if not isinstance(prompt, str):
            raise UserError(f"a prompt must be a string, got {type(prompt).__name__}")
        with torch.inference_mode():
            context, _ = self.text_encoder([prompt])
        return context.to(self.device)

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames (F, H, W, 3) -> latents (1, C, F / codec.temporal_factor, h, w) on the device."""
        video = from_uint8(torch.from_numpy(np.ascontiguousarray(frames)))[None]  # (1, 3, F, H, W) in [-1, 1]
        return self.codec.encode(video).to(self.device)

    def fit(self, frames: np.ndarray, what: str = "the given frames") -> np.ndarray:
        """uint8 frames (F, h, w, 3) of any size -> (F, H, W, 3) of the checkpoint's: centre-cropped to its aspect ratio
        (an :class:`~causal_rcm.errors.InputWarning` when that cuts) and resized; ``what`` names them in messages."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise UserError(f"{what} must be uint8 RGB frames (F, H, W, 3), got {frames.dtype} {list(frames.shape)}")
        return fit_frames(frames, *self.frame_size,
                          warn=lambda message: warnings.warn(f"{what}: {message}", InputWarning, stacklevel=4))

    def given_frames(self, *, image: np.ndarray | None = None, video: np.ndarray | None = None,
                     window_frames: int | None = None) -> np.ndarray | None:
        """The frames a stream continues (module docstring), fitted to the checkpoint's size, or None for neither.

        ``image`` uint8 (h, w, 3): repeated over one latent frame's frames (``codec.video_frames(1)``).
        ``video`` uint8 (F, h, w, 3): its last whole latent frames, at most ``window_frames`` of them (default the
        checkpoint's window; the cache holds no more); a clip shorter than one latent frame gives its last frame as
        an image."""
        if image is not None and video is not None:
            raise UserError("give an image or a video to continue, not both")
        codec = self.codec
        if video is not None:
            clip = self.fit(video, "the video")
            L = codec.latent_frames(len(clip))
            L -= codec.video_frames(L) > len(clip)
            if L == 0:
                image = clip[-1]
            else:
                window = self.config.stream.window_frames if window_frames is None else window_frames
                L = min(L, window or self.model.config.max_frames - self.config.stream.sink_frames)
                return clip[len(clip) - codec.video_frames(L):]
        if image is None:
            return None
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise UserError(f"the image must be uint8 RGB (H, W, 3), got {image.dtype} {list(image.shape)}")
        return np.repeat(self.fit(image[None], "the image"), codec.video_frames(1), axis=0)

    def decode(self, latents: torch.Tensor, decoder: StreamDecoder | None = None) -> np.ndarray:
        """Latents (1, C, F, h, w) -> uint8 frames (frames, H, W, 3) on the CPU; ``decoder``: a stream's, for its next chunk."""
        return to_uint8((decoder or self.codec).decode(latents.float())[0])

    def _steps(self, steps: int | None) -> int:
        steps = self.config.sampler.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps must be a positive integer, got {steps!r}")
        return steps

    @staticmethod
    def _times(times: Sequence[float] | None, steps: int | None) -> tuple[list[float] | None, int | None]:
        """Validated intermediate times and the step count they imply (``steps`` must agree if given)."""
        if times is None:
            return None, steps
        times = [float(x) for x in times]
        grid = [1.0, *times, 0.0]
        if any(not a > b for a, b in zip(grid, grid[1:])):
            raise UserError(f"intermediate times must decrease strictly between 1 and 0, got {times}")
        if steps is not None and steps != len(times) + 1:
            raise UserError(f"{len(times)} intermediate times make {len(times) + 1} steps, but steps={steps}")
        return times, len(times) + 1

    def _guidance(self, guidance: float | None) -> float:
        return self.config.sampler.guidance if guidance is None else float(guidance)

    # ------------------------------------------------------------ public
    def check_window(self, window_frames: int | None, frames_per_chunk: int | None = None, *, name: str = "window_frames") -> None:
        """Refuse a stream window (latent frames, the chunk included; None: the checkpoint's) that is not a
        positive integer or cannot hold a chunk of ``frames_per_chunk`` (default: the checkpoint's chunk); ``name``
        is how the error names the window (e.g. a CLI option)."""
        if window_frames is not None and (isinstance(window_frames, bool) or not isinstance(window_frames, int) or window_frames < 1):
            raise UserError(f"{name} must be a positive integer, got {window_frames!r}")
        fc = self.config.frames_per_chunk if frames_per_chunk is None else frames_per_chunk
        most = self.model.config.max_frames - self.config.stream.sink_frames
        if window_frames is not None:
            check_window(window_frames, fc, name, most=most)
        elif self.config.stream.window_frames is not None:
            check_window(self.config.stream.window_frames, fc, "the checkpoint's window", most=most)

    def stream(
        self,
        prompt: str,
        *,
        steps: int | None = None,
        mode: str = "chunk",
        seed: int = 0,
        guidance: float | None = None,
        num_frames: int | None = None,
        actions: Actions = None,
        times: Sequence[float] | None = None,
        window_frames: int | None = None,
        recache_every: int | None = None,
        image: np.ndarray | None = None,
        video: np.ndarray | None = None,
        context: str | None = None,
        kv_int8: bool | None = None,
        overlap: bool | None = None,
        switches: Sequence[tuple[int, str]] = (),
    ) -> Stream:
        """Start a causal stream of decoded frames.

        Args:
            prompt: the text prompt (switch it later with :meth:`Stream.switch_prompt`).
            steps: sampler steps per chunk (default: the checkpoint's; 1-4 for distilled students).
            mode: ``"chunk"`` (the checkpoint's frames_per_chunk latent frames per chunk) or ``"frame"`` (one;
                a packed codec decodes each latent frame to its ``frames`` frames).
            seed: seeds the noise of every chunk.
            guidance: CFG scale (default: the checkpoint's; 1 = no unconditional branch).
            num_frames: stop after this many frames; None = unbounded.
            actions: world models only: a function frame index -> action id, or an iterable of
                action ids (one per frame); None = noop.
            times: the few-step sampler's intermediate flow-matching times, e.g. ``[0.75]`` for 2
                steps 1 -> 0.75 -> 0 (default: the checkpoint's shifted uniform grid).
            window_frames: latent frames the stream attends, the current chunk included (default: the
                checkpoint's, its training length); more context can hold a long stream steadier
                (``docs/results/stream_window_2026-12-03.md``). Memory grows with it.
            recache_every: rebuild the KV caches from the kept clean chunks every this many chunks (0: never;
                default: the checkpoint's), see the module docstring.
            image: uint8 (h, w, 3), any size: the clean first latent frame (image-to-video; module docstring); the
                generated frames are numbered after its ``codec.video_frames(1)`` frames.
            video: uint8 (F, h, w, 3), any size: a clip to continue from its last frames (module docstring); the
                generated frames are numbered after the frames used.
            context: how each chunk is committed to the KV cache, ``"clean"`` (re-run at t = 0) or ``"noisy"`` (the
                last step's keys and values, one forward a chunk fewer; ``diffusion.samplers``); default: the
                pipeline's, else the checkpoint's (``stream.context``, ``"noisy"`` for a student trained with
                ``dmd.noisy_context``).
            kv_int8: keep the KV caches in int8 (``models.kv_cache``); default: on with ``low_memory``.
            overlap: decode each chunk on a second CUDA stream while the next one is denoised (:class:`DecodeQueue`;
                a chunk's frames come out once the next chunk is queued); default: on a GPU.
            switches: ``[(frame, prompt), ...]`` (stream frame indices): prompt switches applied from the first chunk
                (after the first made) that starts at or after ``frame`` (what :meth:`generate` schedules).
        Returns:
            a :class:`Stream`, iterating :class:`StreamFrame` with ``image`` uint8 (H, W, 3).
        """
        cfg = self.config
        if not cfg.causal:
            if image is not None or video is not None:
                raise UserError("this checkpoint is a bidirectional model: continuing an image or a video needs a "
                                "causal checkpoint (a causal teacher or a distilled student)")
            raise UserError("this checkpoint is a bidirectional model and cannot stream: use `generate` (fixed length)")
        times, steps = self._times(times, steps)
        if mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if num_frames is not None and num_frames < 1:
            raise UserError(f"num_frames must be >= 1, got {num_frames}")
        fc = cfg.frames_per_chunk if mode == "chunk" else 1
        self.check_window(window_frames, fc)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {seed!r}")
        if recache_every is not None and (isinstance(recache_every, bool) or not isinstance(recache_every, int) or recache_every < 0):
            raise UserError(f"recache_every must be a non-negative integer (0: never), got {recache_every!r}")
        context = self.context if context is None else context
        if context not in CONTEXTS:
            raise UserError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
        given = self.given_frames(image=image, video=video, window_frames=window_frames)
        stream = Stream(
            self, prompt, steps=self._steps(steps), frames_per_chunk=fc, seed=seed, guidance=self._guidance(guidance),
            num_frames=num_frames, actions=actions, times=times, window_frames=window_frames, recache_every=recache_every,
            context=context, kv_int8=self.low_memory if kv_int8 is None else bool(kv_int8),
            overlap=self.device.type == "cuda" if overlap is None else bool(overlap), switches=switches,
        )
        if given is not None:
            stream.prefill(given)
        return stream

    def generate(
        self,
        prompt: str,
        *,
        num_frames: int | None = None,
        steps: int | None = None,
        mode: str = "chunk",
        seed: int = 0,
        guidance: float | None = None,
        switches: Sequence[tuple[int, str]] = (),
        actions: Actions = None,
        times: Sequence[float] | None = None,
        window_frames: int | None = None,
        recache_every: int | None = None,
        image: np.ndarray | None = None,
        video: np.ndarray | None = None,
        context: str | None = None,
        kv_int8: bool | None = None,
        overlap: bool | None = None,
    ) -> np.ndarray:
        """A whole video, uint8 (F, H, W, 3).

        Bidirectional checkpoints: Euler ODE (or the checkpoint's consistency sampler) with CFG over
        exactly the training length. Causal checkpoints: a stream of ``num_frames`` frames (default
        the training length); ``switches`` = ``[(frame, prompt), ...]`` changes the prompt from the
        first chunk that starts at or after ``frame`` (the first chunk keeps ``prompt``); ``window_frames``,
        ``recache_every``, ``context``, ``kv_int8`` and ``overlap`` as in :meth:`stream`.

        ``image`` or ``video`` (causal checkpoints, :meth:`stream`): the video begins with the given frames, fitted
        to the checkpoint's size (the image's latent frame, or the whole clip), and ``num_frames`` frames are
        generated after them (default: the training length, less an image's frames); switch frames count from
        the video's first frame.
        """
        cfg = self.config
        for _, p in switches:
            self.encode_prompt(p)  # fail before any work
        if cfg.causal:
            clip = None if video is None else self.fit(video, "the video")
            head = self.given_frames(image=image, video=clip, window_frames=window_frames)
            if num_frames is None:
                num_frames = self.video_frames - (len(head) if image is not None else 0)
            start = 0 if head is None else len(head)
            frames = [] if head is None else list(head if clip is None else clip)
            offset = len(frames) - start  # a clip's frames before those the stream continues
            stream = self.stream(
                prompt, steps=steps, mode=mode, seed=seed, guidance=guidance, num_frames=max(1, num_frames),
                actions=actions, times=times, window_frames=window_frames, recache_every=recache_every, video=head,
                context=context, kv_int8=kv_int8, overlap=overlap, switches=[(f - offset, p) for f, p in switches],
            )
            frames += [frame.image for frame in stream]
            return np.stack(frames)
        if image is not None or video is not None:
            raise UserError("continuing an image or a video needs a causal checkpoint (a causal teacher or a distilled "
                            "student); this one is bidirectional")
        if switches:
            raise UserError("prompt switching needs a causal checkpoint; this one is bidirectional")
        if window_frames is not None or recache_every:
            raise UserError("a stream window and re-caching need a causal checkpoint; this one is bidirectional")
        if num_frames is not None and num_frames != self.video_frames:
            raise UserError(
                f"this bidirectional checkpoint generates exactly its training length, {self.video_frames} frames "
                f"({self.video_frames / cfg.fps:g} s); a causal checkpoint generates any length"
            )
        if actions is not None:
            raise UserError("actions need a causal world-model checkpoint")
        if times is not None:
            raise UserError("intermediate times are for causal few-step students")
        guidance = self._guidance(guidance)
        generator = torch.Generator(self.device).manual_seed(seed)
        noise = torch.randn((1, *self.latent_shape(cfg.num_frames)), generator=generator, device=self.device)
        spec = cfg.sampler_spec(steps=self._steps(steps))
        spec = dataclasses.replace(spec, guidance=guidance)
        with torch.inference_mode():
            context = self.encode_prompt(prompt)
            neg = None if is_unguided(guidance) else self.encode_prompt("")
            latents = sample(self.model, noise, context, spec, neg_context=neg, generator=generator)
        return self.decode(latents)
