"""Evaluation: sampling models on the shapes world and scoring them with its oracle; the quickstart's report."""

from causal_rcm.eval.score import evaluate_checkpoint, evaluate_model, load_for_eval, sample_videos

__all__ = ["evaluate_checkpoint", "evaluate_model", "load_for_eval", "sample_videos"]
