import numpy as np
import pytest
import torch

from causal_rcm.data.oracle import ShapesOracle, _components
from causal_rcm.data.shapes import Scene, Shape, ShapesConfig, ShapesDataset, render
from causal_rcm.errors import UserError

CFG = ShapesConfig(num_frames=16)
AGENT_CFG = ShapesConfig(num_frames=16, agent=True)


@pytest.fixture(scope="module")
def batch():
    return ShapesDataset(CFG, seed=11).batch(24)


@pytest.fixture(scope="module")
def agent_batch():
    return ShapesDataset(AGENT_CFG, seed=12).batch(16)


def test_components_against_flood_fill():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 20, 20)) < 0.45
    lab = _components(mask)
    for p in range(3):
        seen = np.zeros((20, 20), bool)
        for y, x in zip(*np.nonzero(mask[p])):
            if seen[y, x]:
                continue
            stack, comp = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                comp.append((cy, cx))
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < 20 and 0 <= nx < 20 and mask[p, ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            labels = {lab[p, cy, cx] for cy, cx in comp}
            assert len(labels) == 1 and labels.pop() > 0
            assert (lab[p] == lab[p, y, x]).sum() == len(comp)


def test_real_renders_score_perfect(batch):
    oracle = ShapesOracle(CFG)
    for targets in (batch["caption"], batch["scene"]):
        m = oracle.evaluate(batch["video"], targets).metrics
        for key in ("colour_adherence", "shape_adherence", "caption_adherence", "direction_accuracy", "temporal_consistency"):
            assert m[key] >= 0.99, (key, m[key])


def test_uint8_and_float_inputs_agree(batch):
    oracle = ShapesOracle(CFG)
    frames = ((batch["video"] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    a = oracle.evaluate(frames.numpy(), batch["caption"]).metrics
    b = oracle.evaluate(batch["video"], batch["caption"]).metrics
    assert a == b


def test_detector_robust_to_mild_noise(batch):
    oracle = ShapesOracle(CFG)
    g = torch.Generator().manual_seed(0)
    noisy = (batch["video"] + 0.15 * torch.randn(batch["video"].shape, generator=g)).clamp(-1, 1)
    m = oracle.evaluate(noisy, batch["caption"]).metrics
    assert m["caption_adherence"] >= 0.95 and m["direction_accuracy"] >= 0.95 and m["temporal_consistency"] >= 0.9


def test_pure_noise_scores_zero(batch):
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(batch["video"].shape, generator=g) * 2 - 1
    m = ShapesOracle(CFG).evaluate(noise, batch["caption"]).metrics
    assert m["caption_adherence"] <= 0.05 and m["temporal_consistency"] <= 0.05 and m["direction_accuracy"] <= 0.05


def test_shuffled_frames_lose_consistency_not_content(batch):
    g = torch.Generator().manual_seed(2)
    shuffled = batch["video"][:, :, torch.randperm(CFG.num_frames, generator=g)]
    m = ShapesOracle(CFG).evaluate(shuffled, batch["caption"]).metrics
    assert m["temporal_consistency"] <= 0.4 and m["smoothness"] <= 0.4
    assert m["caption_adherence"] >= 0.99  # same colours and shapes, only the order is wrong


def test_reversed_motion_has_wrong_directions(batch):
    video = batch["video"].clone()
    k = CFG.direction_frames
    video[:, :, :k] = video[:, :, :k].flip(2)  # the caption's motion window played backwards
    m = ShapesOracle(CFG).evaluate(video, batch["caption"]).metrics
    assert m["direction_accuracy"] <= 0.05


def test_wrong_captions_score_low(batch):
    wrong = batch["caption"][1:] + batch["caption"][:1]
    m = ShapesOracle(CFG).evaluate(batch["video"], wrong).metrics
    assert m["caption_adherence"] <= 0.3 and m["temporal_consistency"] >= 0.99


def test_action_following(agent_batch):
    oracle = ShapesOracle(AGENT_CFG)
    video, actions = agent_batch["video"], agent_batch["actions"]
    for targets in (agent_batch["scene"], agent_batch["caption"]):
        m = oracle.evaluate(video, targets, actions).metrics
        assert m["action_error_px"] < 1e-9 and m["action_score"] == 1.0
        assert m["caption_adherence"] >= 0.99 and m["temporal_consistency"] >= 0.99
    # the same videos judged against other action sequences
    g = torch.Generator().manual_seed(3)
    other = torch.randint(0, 5, actions.shape, generator=g)
    m = oracle.evaluate(video, agent_batch["scene"], other).metrics
    assert m["action_error_px"] > 3.0 and m["action_score"] < 0.7
    with pytest.raises(UserError, match="actions must be"):
        oracle.evaluate(video, agent_batch["scene"], actions[:, :5])


def test_detected_objects_and_shape_errors():
    scene = Scene((Shape("yellow", "triangle", 11, 2, 4, vx=1), Shape("cyan", "circle", 10, 20, 18, vy=-2)), 32)
    oracle = ShapesOracle(CFG)
    report = oracle.evaluate(render(scene, 16), [scene.caption])
    assert {(o.colour, o.kind, o.direction) for o in report.videos[0].detected} == {
        ("yellow", "triangle", "right"),
        ("cyan", "circle", "up"),
    }
    m = oracle.evaluate(render(scene, 16), ["a yellow square moves right, a cyan circle moves up"]).metrics
    assert m["colour_adherence"] == 1.0 and m["shape_adherence"] == 0.5 and m["caption_adherence"] == pytest.approx(1 / 2)
    with pytest.raises(UserError, match="64"):
        ShapesOracle(ShapesConfig(size=64)).evaluate(render(scene, 16), [scene.caption])
    with pytest.raises(UserError, match="one per video"):
        oracle.evaluate(render(scene, 16), [scene.caption, scene.caption])


def test_drift_on_long_rollouts():
    ds = ShapesDataset(ShapesConfig(num_frames=16, min_shapes=3), seed=6)
    scene = ds.sample(0)["scene"]
    frames = render(scene, 160)  # 10x the training length: bounces off walls and shapes
    oracle = ShapesOracle(CFG)
    clean = oracle.drift(frames, scene.caption, window=16)
    assert clean.quality.min() >= 0.99 and clean.drift == 0.0 and len(clean.starts) == 10
    sigma = np.linspace(0, 200, 160)[:, None, None, None]
    degraded = np.clip(frames + np.random.default_rng(0).normal(size=frames.shape) * sigma, 0, 255).astype(np.uint8)
    report = oracle.drift(degraded, scene.caption, window=16)
    assert report.quality[0] >= 0.95 and report.quality[-1] <= 0.1 and report.drift >= 0.85
