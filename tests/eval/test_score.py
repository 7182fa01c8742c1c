"""Sampling cost accounting of the shapes-world evaluation: counted network calls match the sampler's."""

from __future__ import annotations

import dataclasses

import pytest

from causal_rcm.eval.score import NetworkCalls, evaluate, load_for_eval, sample_videos

from ..checkpoints import make_checkpoint


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_counted_calls_match_calls_per_batch(tmp_path, causal, guidance):
    path = make_checkpoint(tmp_path / "ckpt", causal=causal, solver="euler", steps=3, guidance=guidance)
    model, world, spec = load_for_eval(path, device="cpu")
    # 8 frames in chunks of 2 frames: 4 chunks; 10 frames: a last chunk of 2 as well, 14: a short last chunk
    for frames in (8, 14):
        with NetworkCalls(model) as calls:
            sample_videos(model, world, ["a red circle moves left"] * 3, spec, num_frames=frames)
        assert calls.count == spec.calls_per_batch(frames)
    branches = 1 if guidance == 1 else 2
    expected = 3 * branches if not causal else (4 * 3 + 3) * branches
    assert spec.calls_per_batch(8) == expected


def test_evaluate_reports_cost_metrics_and_long_rollouts(tmp_path):
    model, world, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt", steps=2), device="cpu")
    result = evaluate(model, world, spec, n=3, drift_factor=2, progress="test")
    assert result.nfe_per_video == spec.calls_per_batch(8) and result.seconds_per_video > 0
    assert result.videos.shape == (3, 3, 8, 32, 32) and result.long_videos.shape == (3, 3, 16, 32, 32)
    assert {"caption_adherence", "long_first_caption_adherence", "long_drift"} <= set(result.metrics)
    bidirectional = dataclasses.replace(spec, causal=False)
    assert evaluate(model, world, bidirectional, n=2, drift_factor=2).long_videos is None  # drift is for causal models


def test_swap_directions_swaps_every_direction_word_and_nothing_else():
    from causal_rcm.eval.score import swap_directions

    caption = "a red circle moves left, a blue square moves up, a white triangle follows the actions"
    swapped = swap_directions(caption)
    assert swapped == "a red circle moves right, a blue square moves down, a white triangle follows the actions"
    assert swap_directions(swapped) == caption


def test_direction_word_gap_is_zero_for_a_model_blind_to_text_and_not_for_one_that_reads_it(tmp_path):
    import torch

    from causal_rcm.eval.score import direction_word_gap

    model, world, _ = load_for_eval(make_checkpoint(tmp_path / "ckpt", steps=2), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    reads = direction_word_gap(model, world, n=8)
    with torch.no_grad():
        model.text_embedding[-1].weight.zero_()  # the context no longer reaches the blocks
        model.text_embedding[-1].bias.zero_()
    assert direction_word_gap(model, world, n=8) == 0.0
    assert reads != 0.0


def test_streams_are_scored_clip_by_clip_a_batch_at_a_time(tmp_path, monkeypatch):
    """A perfect render of each caption whose second half is blank: first clip 1, half the clips, second half 0."""
    import numpy as np

    import causal_rcm.eval.score as shapes
    from causal_rcm.data.shapes import Scene, Shape, render

    model, world, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt"), device="cpu")
    factor = shapes.stream_factor(world, 4.0)  # 8-frame clips at 8 fps: 4 of them
    calls = []

    def perfect_then_blank(model, world, captions, spec, *, num_frames, seed):
        calls.append((len(captions), num_frames, seed))
        frames = render(Scene((Shape("red", "square", 10, 0, 11, vx=1),), size=32), num_frames * world.data.codec_frames)
        frames[len(frames) // 2 :] = 0
        return np.stack([frames] * len(captions))

    monkeypatch.setattr(shapes, "sample_videos", perfect_then_blank)
    metrics = shapes.stream_metrics(model, world, spec, ["a red square moves right"] * 20, factor=factor, seed=5)
    assert factor == 4 and calls == [(16, 32, 5), (4, 32, 6)]  # two batches, each with its own seed
    # the fidelity of a perfect render (its blank half has no shape to judge), the clips' consistency half the time
    assert metrics == {"stream_first_caption_adherence": 1.0, "stream_caption_adherence": 0.5,
                       "stream_second_half_caption_adherence": 0.0, "stream_last_minute_caption_adherence": 0.5,
                       "stream_temporal_consistency": 0.5, "stream_count_stability": 0.5,
                       "stream_background_residual": 0.0, "stream_background_residual_p90": 0.0,
                       "stream_colour_error": 0.0, "stream_edge_sharpness": 1.0, "stream_seconds": 4.0}


def test_a_long_streams_last_minute_is_scored_apart(tmp_path, monkeypatch):
    """Three minutes, blank but for the last one: last minute 1, second half 2/3, all 1/3."""
    import numpy as np

    import causal_rcm.eval.score as shapes
    from causal_rcm.data.shapes import Scene, Shape, render

    model, world, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt"), device="cpu")

    def blank_then_perfect(model, world, captions, spec, *, num_frames, seed):
        frames = render(Scene((Shape("red", "square", 10, 0, 11, vx=1),), size=32), num_frames * world.data.codec_frames)
        frames[: len(frames) * 2 // 3] = 0
        return np.stack([frames] * len(captions))

    monkeypatch.setattr(shapes, "sample_videos", blank_then_perfect)
    metrics = shapes.stream_metrics(model, world, spec, ["a red square moves right"], factor=shapes.stream_factor(world, 180.0))
    assert metrics["stream_seconds"] == 180.0 and metrics["stream_last_minute_caption_adherence"] == 1.0
    assert abs(metrics["stream_second_half_caption_adherence"] - 2 / 3) < 1e-9
    assert abs(metrics["stream_caption_adherence"] - 1 / 3) < 1e-9


def test_evaluate_streams_causal_models_only(tmp_path):
    model, world, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt", steps=1), device="cpu")
    metrics = evaluate(model, world, spec, n=2, stream_seconds=3.0).metrics  # 3 clips of 8 frames at 8 fps
    assert metrics["stream_seconds"] == 3.0 and 0 <= metrics["stream_second_half_caption_adherence"] <= 1
    bidirectional = dataclasses.replace(spec, causal=False)
    assert "stream_seconds" not in evaluate(model, world, bidirectional, n=2, stream_seconds=3.0).metrics


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_counted_calls_match_calls_per_batch_with_a_noisy_context(tmp_path, guidance):
    path = make_checkpoint(tmp_path / "ckpt", causal=True, solver="consistency", steps=2, guidance=guidance)
    model, world, spec = load_for_eval(path, device="cpu")
    spec = dataclasses.replace(spec, context="noisy")
    with NetworkCalls(model) as calls:
        sample_videos(model, world, ["a red circle moves left"] * 2, spec, num_frames=8)
    assert calls.count == spec.calls_per_batch(8) == 4 * 2 * (1 if guidance == 1 else 2)  # 4 chunks, no refresh
