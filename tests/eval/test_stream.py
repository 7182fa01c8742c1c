"""measure_stream (what the long-stream benchmark reports): memory trace, speed, and oracle adherence by minute."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from causal_rcm.data.shapes import Scene, Shape, render
from causal_rcm.eval.stream import measure_stream
from causal_rcm.pipeline import StreamFrame, StreamingPipeline

from ..checkpoints import make_checkpoint

class RenderedStream:
    """Stands in for a perfect model: the shapes world's own render of the prompt, then a blank screen."""

    steps = 1
    window_frames = 4

    def __init__(self, frames: np.ndarray, blank=lambda i: False) -> None:
        self.frames, self.blank = frames, blank

    def __iter__(self):
        for i, image in enumerate(self.frames):
            image = np.zeros_like(image) if self.blank(i) else image
            yield StreamFrame(image, i, i, "", 0.001, 0.001 * i)

    def state_nbytes(self):
        return {"kv_cache": 100, "history": 10}


def test_oracle_scores_the_first_and_last_minute_separately():
    scene = Scene((Shape("red", "square", 10, 0, 11, vx=1),), size=32)  # bounces between the walls
    frames = render(scene, 2 * 8 * 60)  # two minutes at 8 fps
    pipe = SimpleNamespace(config=SimpleNamespace(fps=8, resolution=32), video_frames=8,
                           stream=lambda *a, **k: RenderedStream(frames, blank=lambda i: i >= 8 * 60))
    report = measure_stream(pipe, "a red square moves right", minutes=2)
    assert report["frames"] == 960 and report["oracle_clip_frames"] == 8 and report["window_frames"] == 4
    assert report["oracle"]["first_minute"]["caption_adherence"] == 1.0
    assert report["oracle"]["last_minute"]["caption_adherence"] == 0.0  # nothing on screen


def test_a_minute_is_scored_clip_by_clip():
    """The shape gone for the second half of each minute: half the training-length clips adhere, not none."""
    scene = Scene((Shape("red", "square", 10, 0, 11, vx=1),), size=32)
    frames = render(scene, 2 * 8 * 60)
    pipe = SimpleNamespace(config=SimpleNamespace(fps=8, resolution=32), video_frames=8,
                           stream=lambda *a, **k: RenderedStream(frames, blank=lambda i: i % 480 >= 240))
    report = measure_stream(pipe, "a red square moves right", minutes=2)
    for minute in ("first_minute", "last_minute"):
        assert report["oracle"][minute]["caption_adherence"] == 0.5


def test_tiny_checkpoint_stream_has_flat_state_and_a_trace(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "ckpt", sink_frames=1, window_frames=4))
    report = measure_stream(pipe, "a red circle moves left", minutes=0.25, samples=10)  # 120 frames
    memory = report["memory"]
    assert report["frames"] == 120 and len(report["trace"]) >= 10
    assert memory["state_constant_after_first_minute"] and memory["kv_cache_bytes_end"] == memory["kv_cache_bytes_max"] > 0
    assert report["frames_per_second"] > 0 and report["chunk_latency_ms"]["p50"] > 0
    assert set(report["oracle"]) == {"first_minute", "last_minute"}
    json.dumps(report)  # JSON-ready


def test_a_shape_drawn_twice_lowers_the_clips_count_stability():
    """What a viewer sees as a duplicated shape: the clips where a second copy appears keep their caption adherence
    (the right colour and shape are there) but lose count stability; the true clips keep 1."""
    from causal_rcm.data.oracle import ShapesOracle
    from causal_rcm.data.shapes import ShapesConfig
    from causal_rcm.eval.stream import score_clips

    one = Scene((Shape("blue", "square", 8, 2, 2, vy=1),), size=32)
    twice = Scene((Shape("blue", "square", 8, 2, 2, vy=1), Shape("blue", "square", 8, 20, 2, vy=1)), size=32)
    video = np.concatenate([render(one, 16), render(twice, 16)])  # 4 clips of 8: the last two hold two squares
    clips = score_clips(ShapesOracle(ShapesConfig(size=32)), video[None], "a blue square moves down", 8)
    assert list(clips["count_stability"]) == [1.0, 1.0, 0.0, 0.0]
    assert list(clips["caption_adherence"]) == [1.0, 1.0, 1.0, 1.0]
    assert clips["temporal_consistency"][2] < clips["temporal_consistency"][0]
