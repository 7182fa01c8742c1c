"""Evaluation: sampling models on the shapes world and scoring them with its oracle."""

from .shapes import SamplerSpec, evaluate_model, sample_videos

__all__ = ["SamplerSpec", "evaluate_model", "sample_videos"]
