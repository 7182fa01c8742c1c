"""Wan2.1 releases: a diffusers Wan folder or Wan's original layout, and where each keeps its components.

* diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``model_index.json`` (a ``WanPipeline``) with ``transformer/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``.
* original (``Wan-AI/Wan2.1-T2V-1.3B``): ``config.json`` (``WanModel``) and ``diffusion_pytorch_model*.safetensors``,
  beside ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and the tokenizer in ``google/umt5-xxl/``.

:func:`find_release` says where each component is and :meth:`WanRelease.missing` which are not there. The
transformer itself is read by ``models.adapters`` (the folder stands for its transformer);
``spec.PipelineSpec.of_release`` gives a release the pipeline section our checkpoints carry, and
``PipelineSpec.check_model`` refuses components that do not fit the transformer (the VAE's latent channels against
``in_dim``, the text encoder's width against ``text_dim``) from their configs alone, before they load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from causal_rcm.errors import CheckpointError
from causal_rcm.models.adapters import transformer_of

__all__ = ["ORIGINAL_T5", "ORIGINAL_TOKENIZER", "ORIGINAL_VAE", "WanRelease", "find_release"]

# The original release's file names (Wan2.1's configs: vae_checkpoint, t5_checkpoint, t5_tokenizer).
ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"


@dataclass(frozen=True)
class WanRelease:
    """Where a release's components are: paths relative to ``root``; ``flow_shift`` its scheduler's, if it names one."""

    root: Path
    layout: str  # "diffusers" or "wan" (the original)
    vae: str
    text_encoder: str
    tokenizer: str
    flow_shift: float | None = None

    def missing(self) -> list[str]:
        """The components not found, by their path in the release."""
        return [name for name in (self.vae, self.text_encoder, self.tokenizer) if not (self.root / name).exists()]


def find_release(path: str | Path) -> WanRelease | None:
    """The release in the folder ``path``; None when ``path`` is not one (ours, a file, a bare transformer).

    A diffusers Wan pipeline folder is a release whatever it lacks; a ``WanModel`` folder is one (the original
    layout) when any of its VAE, text encoder and tokenizer is beside it, else a bare transformer, which trains as
    a teacher."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "model_index.json").exists():
        transformer_of(path)  # a Wan text-to-video pipeline with its transformer, or CheckpointError
        return WanRelease(path, "diffusers", "vae", "text_encoder", "tokenizer", _flow_shift(path / "scheduler" / "scheduler_config.json"))
    config = path / "config.json"
    try:
        name = json.loads(config.read_text()).get("_class_name") if config.exists() else None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable config {config}: {exc}") from None
    if name != "WanModel":
        return None
    release = WanRelease(path, "wan", ORIGINAL_VAE, ORIGINAL_T5, ORIGINAL_TOKENIZER)
    return None if len(release.missing()) == 3 else release


def _flow_shift(config: Path) -> float | None:
    try:
        shift = json.loads(config.read_text()).get("flow_shift")
    except (OSError, ValueError):
        return None
    return float(shift) if isinstance(shift, (int, float)) else None
