"""Prompt-switch scoring on rendered videos (the oracle's own world as the reference) and the eval end to end."""

from __future__ import annotations

import numpy as np
import pytest

from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.errors import UserError
from causal_rcm.eval.score import swap_directions
from causal_rcm.eval.switch import score_switches, summarise, switch_captions, switch_frames

CLIP, K = 8, 12  # a training length of 8 frames; the switch acts at frame 12


@pytest.fixture(scope="module")
def renders():
    """Six 24-frame renders of one-shape scenes (moving shapes never bounce in the frames measured)."""
    world = ShapesDataset(ShapesConfig(size=32, num_frames=24, max_shapes=1), seed=3)
    samples = [world.render_sample(i) for i in range(6)]
    return np.stack([s["frames"] for s in samples]), [s["caption"] for s in samples]


def test_a_stream_that_turns_back_holds_the_reversed_caption_at_once_and_keeps_its_motion(renders):
    """The video played backwards from the switch: the same shape retraces its path, i.e. the reversed caption,
    continuously. It holds within a second on every switch and its consistency across the switch stays near the
    clips' around it; cutting to another video, or to black, does not."""
    frames, captions = renders
    oracle = ShapesOracle(ShapesConfig(size=32))
    turned, cut, black = [], [], []
    for i, caption in enumerate(captions):
        if swap_directions(caption) == caption:
            continue  # a static shape cannot turn
        back = np.concatenate([frames[i, :K], frames[i, K - 1 :: -1]])[:24]
        turned += score_switches(oracle, back, [caption, swap_directions(caption)], [K], fps=8, clip=CLIP)
        j = (i + 1) % len(captions)
        other = np.concatenate([frames[i, :K], frames[j, : 24 - K]])
        cut += score_switches(oracle, other, [caption, captions[j]], [K], fps=8, clip=CLIP)
        dark = np.concatenate([frames[i, :K], np.zeros_like(frames[i, K:])])
        black += score_switches(oracle, dark, [caption, swap_directions(caption)], [K], fps=8, clip=CLIP)
    assert len(turned) >= 3
    t, c, b = summarise(turned), summarise(cut), summarise(black)
    assert t["switch_hold_within_1s"] == 1.0 and t["switch_frames_to_hold"] <= 2
    assert t["switch_consistency_ratio"] > 0.75
    assert c["switch_hold_within_1s"] == 1.0  # the other video holds its own caption at once ...
    assert c["switch_consistency_ratio"] < t["switch_consistency_ratio"] - 0.2  # ... but the cut shows
    assert b["switch_held"] == 0.0 and b["switch_hold_within_1s"] == 0.0 and b["switch_frames_to_hold"] != b["switch_frames_to_hold"]


def test_switch_captions_and_frames():
    captions = ["a red circle moves left", "a blue square moves up", "a green triangle moves right"]
    assert switch_captions(captions, 2, "direction")[0] == ["a red circle moves left", "a red circle moves right", "a red circle moves left"]
    scene = switch_captions(captions, 2, "scene")
    assert all(a != b for seq in scene for a, b in zip(seq, seq[1:]))
    assert switch_frames([4.0, 8.0], 8.0, 4, 8) == [32, 64]
    assert switch_frames([1.1], 8.0, 4, 8) == [12]  # frame 9 acts at the next chunk, frame 12
    with pytest.raises(UserError, match="at least one training length"):
        switch_frames([4.0, 4.5], 8.0, 4, 8)
    with pytest.raises(UserError, match="--switch-to must be one of"):
        switch_captions(captions, 1, "colour")
