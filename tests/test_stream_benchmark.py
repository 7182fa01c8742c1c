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

    def __init__(self, frames: np.ndarray, blank_from: int) -> None:
        self.frames, self.blank_from = frames, blank_from

    def __iter__(self):
        for i, image in enumerate(self.frames):
            image = np.zeros_like(image) if i >= self.blank_from else image
            yield StreamFrame(image, i, i, "", 0.001, 0.001 * i)

    def state_nbytes(self):
        return {"kv_cache": 100, "history": 10}


def test_oracle_scores_the_first_and_last_minute_separately():
    scene = Scene((Shape("red", "square", 10, 0, 11, vx=1),), size=32)  # bounces between the walls
    frames = render(scene, 2 * 8 * 60)  # two minutes at 8 fps
    pipe = SimpleNamespace(config=SimpleNamespace(fps=8, resolution=32),
                           stream=lambda *a, **k: RenderedStream(frames, blank_from=8 * 60))
    report = measure_stream(pipe, "a red square moves right", minutes=2)
    assert report["frames"] == 960
    assert report["oracle"]["first_minute"]["caption_adherence"] == 1.0
    assert report["oracle"]["last_minute"]["caption_adherence"] == 0.0  # nothing on screen


def test_tiny_checkpoint_stream_has_flat_state_and_a_trace(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "ckpt", sink_frames=1, window_frames=4))
    report = measure_stream(pipe, "a red circle moves left", minutes=0.25, samples=10)  # 120 frames
    memory = report["memory"]
    assert report["frames"] == 120 and len(report["trace"]) >= 10
    assert memory["state_constant_after_first_minute"] and memory["kv_cache_bytes_end"] == memory["kv_cache_bytes_max"] > 0
    assert report["frames_per_second"] > 0 and report["chunk_latency_ms"]["p50"] > 0
    assert set(report["oracle"]) == {"first_minute", "last_minute"}
    json.dumps(report)  # JSON-ready


def test_benchmark_script_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("stream_cpu", ROOT / "benchmarks" / "stream_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "result.json"
    assert module.main(["--checkpoint", str(checkpoint), "--minutes", "0.05", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 24 and report["checkpoint"] == str(checkpoint) and "rss_mb_end" in report["memory"]
