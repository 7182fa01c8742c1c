"""The checkpoint's ``pipeline`` section, typed: how to turn a model into video. Its only reader and writer.

A model folder in our layout (``config.json`` + ``model.safetensors``) carries, beside the model's
architecture, a ``pipeline`` section: the data source it was trained on (and, for recorded episodes, the
environment: frame rate, frameskip, action meanings), frame structure, codec, text encoder, sampler
defaults and stream defaults. :class:`PipelineSpec` parses it (clear errors
for missing or unsupported parts), builds the sampler settings from it, and writes it; the trainer's
export, the pipeline, evaluation, the CLI and the training recipes all go through it.

The codec and the text encoder are named by kind with their params (``data.components``): ``pixel`` / ``toy``
for the shapes world and Atari, ``wan-vae`` / ``umt5`` for Wan2.1, whose files are named by paths relative to the
checkpoint folder (or absolute). A Wan release (``models.release``) has no section: :meth:`PipelineSpec.of_release`
makes one, with Wan2.1's own defaults (:data:`WAN_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from causal_rcm.config import DataConfig
from causal_rcm.data.codec import PixelCodecSpec
from causal_rcm.data.components import (
    CODECS, TEXT_ENCODERS, CodecSpec, TextSpec, codec_spec, latent_channels, relocated, spec_dict, text_dim, text_spec,
)
from causal_rcm.data.shards import EnvInfo
from causal_rcm.data.source import SOURCES, VideoSource
from causal_rcm.data.text import ToyTextSpec
from causal_rcm.diffusion.samplers import CONTEXTS, SOLVERS, SamplerSpec, check_window
from causal_rcm.errors import UserError
from causal_rcm.limits import MAX_STEPS, field_problems, ranged, show
from causal_rcm.models.adapters import detect_layout, read_pipeline_config
from causal_rcm.models.release import WanRelease, find_release
from causal_rcm.models.wan import CausalWanConfig

__all__ = ["CODECS", "TEXT_ENCODERS", "WAN_DEFAULTS", "CodecSpec", "EnvInfo", "TextSpec", "SamplerDefaults", "StreamDefaults",
           "PipelineSpec"]

RELEASE_SOURCE = "wan"  # the data source of a Wan release: Wan's own training data, which no source rebuilds

# What Wan2.1's text-to-video release generates by default (its generate.py and configs): 832 x 480, 81 frames
# (21 latent frames) at 16 fps, 50 steps of shift 5 (a diffusers release: its scheduler's flow_shift) with CFG 5.
WAN_DEFAULTS = {"resolution": 480, "width": 832, "num_frames": 21, "fps": 16.0, "steps": 50, "shift": 5.0, "guidance": 5.0}


@dataclass(frozen=True)
class SamplerDefaults:
    """The sampler a checkpoint is used with unless told otherwise.

    ``complete_x0`` (``SamplerSpec.complete_x0``) is on unless a checkpoint says otherwise: checkpoints written
    before it existed sample without the noise their head cannot remove (``docs/results/fidelity_2026-12-07.md``).
    """

    solver: str = "euler"
    steps: int = ranged(50, 1, MAX_STEPS)
    shift: float = ranged(3.0, 0, 1000, above=True)
    guidance: float = ranged(3.0, 0, 100)
    complete_x0: bool = True


@dataclass(frozen=True)
class StreamDefaults:
    """A causal model's KV cache in streams: ``sink_frames`` kept for ever, ``window_frames`` attended (None: all),
    rebuilt from its kept clean chunks every ``recache_every`` chunks (0: never; ``diffusion.samplers``), and how
    each chunk is committed, ``context`` (``diffusion.samplers``): ``"clean"``, re-run at t = 0, or ``"noisy"``, the
    last denoising step's keys and values (what an SF-DMD student trained with ``dmd.noisy_context`` expects)."""

    sink_frames: int = ranged(0, 0, 65536)
    window_frames: int | None = ranged(None, 1, 65536)
    recache_every: int = ranged(0, 0, 65536)
    context: str = ranged("clean", choices=CONTEXTS)


@dataclass(frozen=True)
class PipelineSpec:
    """The ``pipeline`` section of a checkpoint's config.json (see the module docstring)."""

    resolution: int = ranged(MISSING, 1, 4096)  # MISSING: no default; frame height (and width, unless ``width`` is set)
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
    width: int | None = ranged(None, 1, 4096)  # frame width; None: square frames, ``resolution`` wide

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
                "codec": codec_spec(data["codec"]), "text": text_spec(data["text"]),
                "sampler": _typed(SamplerDefaults, data.get("sampler", {})), "stream": _typed(StreamDefaults, data.get("stream", {})),
                "env": EnvInfo.from_dict(data["env"], source) if data.get("env") else None,
            }
            top = {k: data[k] for k in ("resolution", "width", "num_frames", "frames_per_chunk", "causal", "fps", "num_actions", "source", "recipe") if k in data}
            spec = cls(**top, **parts)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: unreadable pipeline config ({exc})") from None
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        if "window_frames" not in data.get("stream", {}):  # the training length, by default
            spec = dataclasses.replace(spec, stream=dataclasses.replace(spec.stream, window_frames=spec.num_frames))
        spec.check(source)
        return spec

    @classmethod
    def read(cls, path: str | Path, overrides: dict | None = None) -> PipelineSpec:
        """The spec of the checkpoint folder ``path``: our layout's section, or a Wan release's
        (:meth:`of_release`); UserError if it is neither, or a release lacks a component. ``overrides``: section
        keys that replace the checkpoint's (e.g. ``{"causal": True, "frames_per_chunk": 3}`` for a causal model
        published in a Wan layout)."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"checkpoint {path} does not exist")
        release = find_release(path)
        if release is not None:
            if release.missing():
                raise UserError(f"{path} is a Wan release ({release.layout} layout) without its {', '.join(release.missing())}")
            return cls.of_release(release, overrides)
        layout = detect_layout(path) if path.is_dir() else None
        if layout in ("wan", "diffusers"):
            raise UserError(f"{path} is a bare transformer ({layout} layout): a pipeline also needs its VAE, text encoder "
                            "and tokenizer; load the whole Wan release folder")
        if layout != "causal-rcm":
            raise UserError(f"{path} is not a causal-rcm checkpoint folder (config.json + model.safetensors) or a Wan release "
                            "(a diffusers Wan folder with model_index.json, or Wan2.1's original folder)")
        return cls.from_dict({**read_pipeline_config(path), **(overrides or {})}, source=str(path))

    @classmethod
    def read_if_any(cls, path: str | Path) -> PipelineSpec | None:
        """The spec of ``path`` when it is a checkpoint of ours with a pipeline section or a whole Wan release,
        else None (another layout, a bare transformer, a file that does not exist yet, or no path: "")."""
        if not str(path) or not Path(path).exists():  # Path("") is "." and exists
            return None
        release = find_release(path)
        if release is not None:
            return None if release.missing() else cls.of_release(release)
        section = read_pipeline_config(path)
        return cls.from_dict(section, source=str(path)) if section else None

    @classmethod
    def of_release(cls, release: WanRelease, overrides: dict | None = None) -> PipelineSpec:
        """The section of a Wan release: its own components (``wan-vae``, ``umt5`` with 512 tokens), a bidirectional
        model, Wan2.1's defaults (:data:`WAN_DEFAULTS`; the shift of the release's scheduler if it names one);
        ``overrides`` as in :meth:`read`."""
        d = WAN_DEFAULTS
        shift = d["shift"] if release.flow_shift is None else release.flow_shift
        section = {
            "source": RELEASE_SOURCE, "resolution": d["resolution"], "width": d["width"], "num_frames": d["num_frames"],
            "frames_per_chunk": d["num_frames"], "causal": False, "fps": d["fps"],
            "codec": {"kind": "wan-vae", "path": release.vae},
            "text": {"kind": "umt5", "path": release.text_encoder, "tokenizer": release.tokenizer, "text_len": 512},
            "sampler": {"solver": "euler", "steps": d["steps"], "shift": shift, "guidance": d["guidance"]},
        }
        return cls.from_dict({**section, **(overrides or {})}, source=str(release.root))

    def relocated(self, src: str | Path, dst: str | Path) -> PipelineSpec:
        """This spec (of the checkpoint at ``src``) for a copy at ``dst``: component paths that still find the files."""
        return dataclasses.replace(self, codec=relocated(self.codec, src, dst), text=relocated(self.text, src, dst))

    def check(self, source: str = "checkpoint") -> None:
        """UserError for values of the wrong type or out of their ranges, and for kinds this version cannot run
        (the codec's and text encoder's kinds are checked where they are parsed, ``data.components``)."""
        problems = field_problems(self, "pipeline.")
        if problems:
            raise UserError(f"{source}: " + "; ".join(problems))
        if self.sampler.solver not in SOLVERS:
            raise UserError(f"{source}: sampler solver {show(self.sampler.solver)} is not one of {SOLVERS}")
        if self.source not in (*SOURCES, RELEASE_SOURCE):
            raise UserError(f"{source}: data source {show(self.source)} is not supported (only {', '.join((*SOURCES, RELEASE_SOURCE))})")
        if self.causal and self.stream.window_frames is not None:
            check_window(self.stream.window_frames, self.frames_per_chunk, f"{source}: pipeline.stream.window_frames")
        if self.env is not None and self.num_actions not in (0, self.env.num_actions):  # 0: the no-action baseline
            raise UserError(f"{source}: the pipeline config has {self.num_actions} actions but its env {self.env.id} {self.env.num_actions}")

    def check_model(self, model: CausalWanConfig, root: str | Path | None = None) -> None:
        """UserError when ``model`` cannot run with this spec (its latent channels, text width or actions), checked
        before the codec and the text encoder are built from the spec: from their configs alone (a Wan VAE's
        ``z_dim``, a UMT5's ``d_model``), their files found from ``root``, the checkpoint folder."""
        channels = latent_channels(self.codec, root)
        if model.in_dim != channels or model.out_dim != channels:
            raise UserError(
                f"the model takes {model.in_dim} latent channels but the codec ({_named(self.codec)}) makes {channels}: "
                "the checkpoint's pipeline config does not match its model"
            )
        dim = text_dim(self.text, root)
        if model.text_dim != dim:
            raise UserError(f"the model takes text_dim {model.text_dim} but the text encoder ({_named(self.text)}) makes {dim}")
        if self.num_actions and model.num_actions != self.num_actions:
            raise UserError(f"the pipeline config has {self.num_actions} actions, the model {model.num_actions}")
        if self.num_actions and not (isinstance(self.codec, PixelCodecSpec) and self.codec.frames == 1):
            raise UserError("an action-conditioned checkpoint needs one frame per latent frame (a pixel codec of frames 1)")

    # ------------------------------------------------------------ writing
    @classmethod
    def of_source(
        cls, source: VideoSource, *, causal: bool, sampler: SamplerDefaults, stream: StreamDefaults, num_actions: int = 0,
        recipe: str = "",
    ) -> PipelineSpec:
        """The spec of a model trained on ``source`` (its frame structure, codec, text encoder and environment)."""
        data = source.data
        height, width = source.frame_size
        return cls(
            resolution=height, width=None if width == height else width, num_frames=data.num_frames,
            frames_per_chunk=data.frames_per_chunk, causal=causal,
            codec=source.codec_spec, text=source.text_spec, sampler=sampler, stream=stream,
            fps=source.fps, num_actions=num_actions, source=source.name, recipe=recipe, env=source.env,
        )

    def data_config(self) -> DataConfig:
        """The data settings that rebuild the source the model was trained on (for evaluation; recorded episodes
        also need ``shards``, which the checkpoint does not keep); UserError for a model of other data."""
        if self.source not in SOURCES or not isinstance(self.codec, PixelCodecSpec) or not isinstance(self.text, ToyTextSpec):
            raise UserError(f"this checkpoint was trained on {self.source!r} data with a {self.codec.kind} codec and a "
                            f"{self.text.kind} text encoder; only shapes-world and Atari checkpoints rebuild their data source")
        return DataConfig(
            source=self.source, resolution=self.resolution, num_frames=self.num_frames, frames_per_chunk=self.frames_per_chunk,
            codec_factor=self.codec.factor, codec_frames=self.codec.frames, codec_shift=self.codec.shift,
            codec_scale=self.codec.scale, text_len=self.text.text_len, text_seed=self.text.seed,
            agent=self.source == "shapes" and bool(self.num_actions), actions=self.source != "atari" or bool(self.num_actions),
        )

    def to_dict(self) -> dict:
        """The JSON section (what :meth:`from_dict` reads back)."""
        return {**dataclasses.asdict(self), "codec": spec_dict(self.codec), "text": spec_dict(self.text)}

    # ------------------------------------------------------------ using
    def sampler_spec(
        self, *, steps: int | None = None, window_frames: int | None = None, context: str | None = None, kv_int8: bool = False,
    ) -> SamplerSpec:
        """The sampler this checkpoint is used with (``steps`` / ``window_frames`` / ``context`` None: its defaults;
        ``kv_int8``: int8 KV caches)."""
        return SamplerSpec(
            causal=self.causal, steps=self.sampler.steps if steps is None else steps, solver=self.sampler.solver,
            shift=self.sampler.shift, guidance=self.sampler.guidance, complete_x0=self.sampler.complete_x0,
            frames_per_chunk=self.frames_per_chunk, sink_frames=self.stream.sink_frames,
            window_frames=self.stream.window_frames if window_frames is None else window_frames,
            recache_every=self.stream.recache_every,
            context=self.stream.context if context is None else context, kv_int8=kv_int8,
        )


def _named(spec: CodecSpec | TextSpec) -> str:
    """A codec or text encoder as an error names it: its kind, and its file where it has one."""
    path = getattr(spec, "path", None)
    return spec.kind if path is None else f"{spec.kind} {path}"


def _typed(cls: type, value: Any) -> Any:
    """``cls(**value)`` with unknown keys dropped; TypeError for a value that is not a JSON object."""
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in names})
