"""`eval --image-cond`: the position error against the simulator, the continuation sampler and the metrics' keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import Scene, ShapesConfig, ShapesDataset, render
from causal_rcm.data.video import from_uint8
from causal_rcm.diffusion import causal_sample, head_complement
from causal_rcm.eval.given import continue_videos, given_metrics, position_error
from causal_rcm.eval.score import load_for_eval

from ..checkpoints import make_checkpoint


def test_position_error_is_the_distance_from_the_simulators_centroids():
    config = ShapesConfig(size=32, num_frames=8, max_shapes=1, min_shapes=1)
    oracle = ShapesOracle(config)
    batch = ShapesDataset(config, seed=3).batch(4)
    scenes = batch["scene"]
    assert position_error(oracle, batch["video"], scenes) == pytest.approx(0.0, abs=1e-9)  # renders: exact

    shifted = torch.zeros_like(batch["video"]) - 1  # each shape drawn 3 px further right (and clipped at the wall)
    for i, scene in enumerate(scenes):
        s = scene.shapes[0]
        moved = Scene((dataclasses.replace(s, x=min(s.x + 3, 32 - s.size)),), 32)
        shifted[i] = from_uint8(render(moved, 8))
    got = position_error(oracle, shifted, scenes)
    assert 0 < got <= 3.0 + 1e-6

    blank = torch.full_like(batch["video"], -1.0)  # no shape at all: every frame counts the frame size
    assert position_error(oracle, blank, scenes) == pytest.approx(32.0)


def test_continuing_given_latents_is_the_causal_sampler_with_that_prefix(tmp_path):
    model, source, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt", codec_frames=2, solver="euler", steps=2),
                                        device="cpu")
    ref = source.eval_set(3)
    given = source.image_latents(ref["video"])  # (3, C, 1, h, w)
    got = continue_videos(model, source, ref["caption"], spec, given, num_frames=3, seed=5)
    assert got.shape == (3, 3, 6, 32, 32)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn((3, *source.latent_shape(3)), generator=generator)
    with torch.no_grad():
        latents = causal_sample(model, noise, source.encode_text(ref["caption"]), frames_per_chunk=2, steps=2, shift=3.0,
                                solver="euler", window_frames=spec.window_frames, sink_frames=spec.sink_frames,
                                prefix=given, complement=head_complement(model), generator=generator)
    torch.testing.assert_close(got, source.codec.decode(latents).clamp(-1, 1))


def test_given_metrics_report_every_row_and_the_truths_ceiling(tmp_path):
    model, source, spec = load_for_eval(make_checkpoint(tmp_path / "ckpt", codec_frames=2, num_frames=4), device="cpu")
    metrics = given_metrics(model, source, spec, n=2)
    for row in ("image_cond", "text_only", "truth"):
        assert {f"{row}/{k}" for k in ("caption_adherence", "direction_accuracy", "temporal_consistency", "position_error_px")} <= set(metrics)
    for row in ("extend", "cut", "extend_truth"):
        assert {f"{row}/{k}" for k in ("direction_accuracy", "position_error_px", "seam_consistency")} <= set(metrics)
    assert metrics["truth/caption_adherence"] == 1.0 and metrics["truth/position_error_px"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["extend_truth/seam_consistency"] == 1.0 and metrics["extend/clip_consistency"] == 1.0  # renders
    assert metrics["extend_truth/position_error_px"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["image_cond/position_error_px"] > 1.0  # a random model keeps nothing


def test_eval_image_cond_from_the_cli_and_its_errors(tmp_path, capsys):
    causal = make_checkpoint(tmp_path / "causal", codec_frames=2, num_frames=4)
    main(["eval", "-c", str(causal), "--image-cond", "-n", "2", "--device", "cpu", "--json", str(tmp_path / "m.json")])
    assert "image_cond/position_error_px" in capsys.readouterr().out
    assert "cut/seam_consistency" in (tmp_path / "m.json").read_text()
    bidirectional = make_checkpoint(tmp_path / "bi", causal=False, solver="euler", steps=2)
    for args, message in (([str(bidirectional), "--image-cond"], "needs a causal checkpoint"),
                          ([str(causal), "--image-cond", "--drift", "2"], "--image-cond scores given frames alone")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "-c", *args, "-n", "2", "--device", "cpu"])
        assert exit_.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_straight_frames_end_at_the_first_bounce():
    from causal_rcm.data.shapes import Shape
    from causal_rcm.eval.given import straight_frames

    free = Scene((Shape("red", "square", 8, 10, 10, 1, 0),), 32)  # 14 px of room ahead at 1 px a frame
    assert straight_frames(free, 8) == 8
    wall = Scene((Shape("red", "square", 8, 20, 10, 2, 0),), 32)  # x = 20, 22, 24, then bounces
    assert straight_frames(wall, 8) == 3
    oracle = ShapesOracle(ShapesConfig(size=32, num_frames=8))
    from causal_rcm.eval.given import _direction

    frames = from_uint8(render(wall, 8))[None]
    assert oracle.evaluate(frames, [wall]).metrics["direction_accuracy"] == 0.0  # over 8 frames it went back
    accuracy, videos = _direction(oracle, frames, [wall])
    assert accuracy == 1.0 and videos == 1  # over its 3 straight frames the truth moves as its scene says
    assert _direction(oracle, frames, [Scene((Shape("red", "square", 8, 23, 10, 2, 0),), 32)])[1] == 0  # 2 frames
