"""The checkpoint's ``pipeline`` section, typed: how to turn a model into video. Its only reader and writer.

A model folder in our layout (``config.json`` + ``model.safetensors``) carries, beside the model's
architecture, a ``pipeline`` section: the data source it was trained on (and, for recorded episodes, the
environment: frame rate, frameskip, action meanings), frame structure, codec, text encoder, sampler
defaults and stream defaults. :class:`PipelineSpec` parses it (clear errors
for missing or unsupported parts), builds the sampler settings from it, and writes it; the trainer's
export, the pipeline, evaluation, the CLI and the training recipes all go through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from causal_rcm.config import DataConfig
from causal_rcm.data.shards import EnvInfo
from causal_rcm.data.source import SOURCES, VideoSource
from causal_rcm.diffusion.samplers import SOLVERS, SamplerSpec
from causal_rcm.errors import UserError
from causal_rcm.limits import MAX_SEED, MAX_STEPS, field_problems, ranged, show
from causal_rcm.models.adapters import detect_layout, read_pipeline_config
from causal_rcm.models.wan import CausalWanConfig

__all__ = ["CodecSpec", "EnvInfo", "TextSpec", "SamplerDefaults", "StreamDefaults", "PipelineSpec"]

CODECS = ("pixel",)
TEXT_ENCODERS = ("toy",)


@dataclass(frozen=True)
class CodecSpec:
    """The video codec: ``pixel`` = pixel-unshuffle by ``factor``, ``frames`` frames packed per latent frame,
    latents normalised as ``(pixel - shift) * scale``."""

    kind: str = "pixel"
    factor: int = ranged(1, 1, 64)
    frames: int = ranged(1, 1, 64)
    shift: float = ranged(0.0, -1e6, 1e6)
    scale: float = ranged(1.0, 0, 1e6, above=True)


@dataclass(frozen=True)
class TextSpec:
    """The text encoder: ``toy`` = the shapes world's vocabulary, embedded by a table rebuilt from ``seed``."""

    kind: str = "toy"
    dim: int = ranged(64, 2, 4096)  # its fixed convolution holds 5 dim^2 weights
    text_len: int = ranged(24, 1, 4096)
    seed: int = ranged(0, 0, MAX_SEED)


@dataclass(frozen=True)
class SamplerDefaults:
    """The sampler a checkpoint is used with unless told otherwise."""

    solver: str = "euler"
    steps: int = ranged(50, 1, MAX_STEPS)
    shift: float = ranged(3.0, 0, 1000, above=True)
    guidance: float = ranged(3.0, 0, 100)


@dataclass(frozen=True)
class StreamDefaults:
    """A causal model's KV cache in streams: ``sink_frames`` kept for ever, ``window_frames`` attended (None: all)."""

    sink_frames: int = ranged(0, 0, 65536)
    window_frames: int | None = ranged(None, 1, 65536)


@dataclass(frozen=True)
class PipelineSpec:
    """The ``pipeline`` section of a checkpoint's config.json (see the module docstring)."""

    resolution: int = ranged(MISSING, 1, 4096)  # MISSING: no default
    num_frames: int = ranged(MISSING, 1, 65536)  # latent frames of a training video
    frames_per_chunk: int = ranged(MISSING, 1, 65536)
    causal: bool
    codec: CodecSpec
    text: TextSpec
    sampler: SamplerDefaults = field(default_factory=SamplerDefaults)
    stream: StreamDefaults = field(default_factory=StreamDefaults)
    fps: float = ranged(8.0, 0, 1000, above=True)
    num_actions: int = ranged(0, 0, 65536)
    source: str = "shapes"  # the data source the model was trained on
    recipe: str = ""  # the recipe that made it
    env: EnvInfo | None = None  # the environment of recorded episodes (data.source=atari); fps is its agent rate

    # ------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Any, source: str = "checkpoint") -> PipelineSpec:
        """Parse a pipeline section (unknown keys are ignored, so newer checkpoints stay readable); UserError
        names what is missing or unsupported."""
        if not data:
            raise UserError(
                f"{source} has no 'pipeline' section in config.json: it says how to decode and prompt the model; "
                "use a checkpoint written by `causal-rcm train`"
            )
        if not isinstance(data, dict):
            raise UserError(f"{source}: the pipeline section must be a JSON object")
        data = dict(data)
        if "world" in data:  # the key's name in checkpoints written before 2026-12-07
            data.setdefault("source", data.pop("world"))
        missing = [k for k in ("resolution", "num_frames", "frames_per_chunk", "causal", "codec", "text") if k not in data]
        if missing:
            raise UserError(f"{source}: the pipeline config lacks {', '.join(missing)}")
        try:
            parts = {
                "codec": _typed(CodecSpec, data["codec"]), "text": _typed(TextSpec, data["text"]),
                "sampler": _typed(SamplerDefaults, data.get("sampler", {})), "stream": _typed(StreamDefaults, data.get("stream", {})),
                "env": EnvInfo.from_dict(data["env"], source) if data.get("env") else None,
            }
            top = {k: data[k] for k in ("resolution", "num_frames", "frames_per_chunk", "causal", "fps", "num_actions", "source", "recipe") if k in data}
            spec = cls(**top, **parts)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: unreadable pipeline config ({exc})") from None
        if "window_frames" not in data.get("stream", {}):  # the training length, by default
            spec = dataclasses.replace(spec, stream=dataclasses.replace(spec.stream, window_frames=spec.num_frames))
        spec.check(source)
        return spec

    @classmethod
    def read(cls, path: str | Path) -> PipelineSpec:
        """The spec of the checkpoint folder ``path`` (our layout); UserError if it is missing or has none."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"checkpoint {path} does not exist")
        if not path.is_dir() or detect_layout(path) != "causal-rcm":
            raise UserError(f"{path} is not a causal-rcm checkpoint folder (config.json + model.safetensors)")
        return cls.from_dict(read_pipeline_config(path), source=str(path))

    @classmethod
    def read_if_any(cls, path: str | Path) -> PipelineSpec | None:
        """The spec of ``path`` when it is a checkpoint of ours with a pipeline section, else None
        (a foreign layout, e.g. a Wan release, or a file that does not exist yet)."""
        section = read_pipeline_config(path) if Path(path).exists() else {}
        return cls.from_dict(section, source=str(path)) if section else None

    def check(self, source: str = "checkpoint") -> None:
        """UserError for values of the wrong type or out of their ranges, and for kinds this version cannot run."""
        problems = field_problems(self, "pipeline.")
        if problems:
            raise UserError(f"{source}: " + "; ".join(problems))
        if self.codec.kind not in CODECS:
            raise UserError(f"{source}: codec kind {show(self.codec.kind)} is not supported (only {', '.join(CODECS)})")
        if self.text.kind not in TEXT_ENCODERS:
            raise UserError(f"{source}: text encoder kind {show(self.text.kind)} is not supported (only {', '.join(TEXT_ENCODERS)})")
        if self.sampler.solver not in SOLVERS:
            raise UserError(f"{source}: sampler solver {show(self.sampler.solver)} is not one of {SOLVERS}")
        if self.source not in SOURCES:
            raise UserError(f"{source}: data source {show(self.source)} is not supported (only {', '.join(SOURCES)})")
        if self.env is not None and self.num_actions not in (0, self.env.num_actions):  # 0: the no-action baseline
            raise UserError(f"{source}: the pipeline config has {self.num_actions} actions but its env {self.env.id} {self.env.num_actions}")

    def check_model(self, model: CausalWanConfig) -> None:
        """UserError when ``model`` cannot run with this spec (its latent channels, text width or actions), checked
        before the codec and the text encoder are built from the spec."""
        channels = 3 * self.codec.frames * self.codec.factor**2  # PixelCodec.latent_channels
        if model.in_dim != channels or model.out_dim != channels:
            raise UserError(
                f"the model takes {model.in_dim} latent channels but the codec makes {channels}: "
                "the checkpoint's pipeline config does not match its model"
            )
        if model.text_dim != self.text.dim:
            raise UserError(f"the model takes text_dim {model.text_dim} but the text encoder makes {self.text.dim}")
        if self.num_actions and model.num_actions != self.num_actions:
            raise UserError(f"the pipeline config has {self.num_actions} actions, the model {model.num_actions}")
        if self.num_actions and self.codec.frames != 1:
            raise UserError("an action-conditioned checkpoint needs one frame per latent frame (codec frames 1)")

    # ------------------------------------------------------------ writing
    @classmethod
    def of_source(
        cls, source: VideoSource, *, causal: bool, sampler: SamplerDefaults, stream: StreamDefaults, num_actions: int = 0,
        recipe: str = "",
    ) -> PipelineSpec:
        """The spec of a model trained on ``source`` (its frame structure, codec, text encoder and environment)."""
        data, codec, text = source.data, source.codec, source.text
        return cls(
            resolution=data.resolution, num_frames=data.num_frames, frames_per_chunk=data.frames_per_chunk, causal=causal,
            codec=CodecSpec("pixel", factor=codec.factor, frames=codec.frames, shift=codec.shift, scale=codec.scale),
            text=TextSpec("toy", dim=text.dim, text_len=text.text_len, seed=text.seed), sampler=sampler, stream=stream,
            fps=source.fps, num_actions=num_actions, source=source.name, recipe=recipe, env=source.env,
        )

    def data_config(self) -> DataConfig:
        """The data settings that rebuild the source the model was trained on (for evaluation; recorded episodes
        also need ``shards``, which the checkpoint does not keep)."""
        return DataConfig(
            source=self.source, resolution=self.resolution, num_frames=self.num_frames, frames_per_chunk=self.frames_per_chunk,
            codec_factor=self.codec.factor, codec_frames=self.codec.frames, codec_shift=self.codec.shift,
            codec_scale=self.codec.scale, text_len=self.text.text_len, text_seed=self.text.seed,
            agent=self.source == "shapes" and bool(self.num_actions), actions=self.source != "atari" or bool(self.num_actions),
        )

    def to_dict(self) -> dict:
        """The JSON section (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------ using
    def sampler_spec(self, *, steps: int | None = None, window_frames: int | None = None) -> SamplerSpec:
        """The sampler this checkpoint is used with (``steps`` / ``window_frames`` None: its defaults)."""
        return SamplerSpec(
            causal=self.causal, steps=self.sampler.steps if steps is None else steps, solver=self.sampler.solver,
            shift=self.sampler.shift, guidance=self.sampler.guidance, frames_per_chunk=self.frames_per_chunk,
            sink_frames=self.stream.sink_frames, window_frames=self.stream.window_frames if window_frames is None else window_frames,
        )


def _typed(cls: type, value: Any) -> Any:
    """``cls(**value)`` with unknown keys dropped; TypeError for a value that is not a JSON object."""
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in names})
