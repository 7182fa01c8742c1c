"""measure_stream (the long-stream benchmark): memory trace, speed, and oracle adherence wiring."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from causal_rcm.data.shapes import Scene, Shape, render
from causal_rcm.eval.stream import measure_stream
from causal_rcm.pipeline import StreamFrame, StreamingPipeline

from .checkpoints import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]


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


def load_script(name: str):
    """A benchmark script of benchmarks/ as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_writes_json(tmp_path):
    module = load_script("stream_cpu")
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "result.json"
    assert module.main(["--checkpoint", str(checkpoint), "--minutes", "0.05", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 24 and report["checkpoint"] == str(checkpoint) and "rss_mb_end" in report["memory"]
    assert module.main(["--checkpoint", str(checkpoint), "--minutes", "0.05", "--window", "6", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["window_frames"] == 6


def test_window_scan_script_writes_a_row_per_window(tmp_path):
    module = load_script("stream_window_scan")
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "scan.json"
    assert module.main(["--checkpoint", str(checkpoint), "--windows", "2,6", "--seconds", "3", "--prompts", "1", "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert [row["window_frames"] for row in result["rows"]] == [2, 6] and result["clip_frames"] == 8
    assert all(0.0 <= row["caption_second_half"] <= 1.0 and len(row["per_prompt_second_half"]) == 1 for row in result["rows"])
