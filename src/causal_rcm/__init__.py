"""causal-rcm: distil a video diffusion model into a real-time streaming generator (Causal-rCM)."""

__version__ = "0.1.0"
