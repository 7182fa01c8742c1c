"""causal-rcm: distil a video diffusion model into a real-time streaming generator (Causal-rCM)."""

from causal_rcm.version import __version__

__all__ = ["StreamingPipeline", "__version__"]


def __getattr__(name: str):
    # Lazy: `import causal_rcm` (e.g. for the CLI's --help) must not import torch.
    if name == "StreamingPipeline":
        from causal_rcm.pipeline import StreamingPipeline

        return StreamingPipeline
    raise AttributeError(f"module 'causal_rcm' has no attribute {name!r}")
