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


# ------------------------------------------------------------------ pixel fidelity and what students produce
FIDELITY = ("background_residual", "background_residual_p90", "colour_error", "edge_sharpness")


def _pixels(batch) -> torch.Tensor:
    """The batch's renders as float (B, F, H, W, 3) on the 0-255 scale."""
    return ((batch["video"] + 1) * 127.5).permute(0, 2, 3, 4, 1)


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return frames.round().clamp(0, 255).to(torch.uint8).numpy()


def _blurred(frames: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3 box blurs of (B, F, H, W, 3) frames, black beyond the frame."""
    B, F, H, W, C = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(-1, 1, H, W)
    for _ in range(passes):
        x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    return x.reshape(B, F, C, H, W).permute(0, 1, 3, 4, 2)


def _hue_rotated(frames: torch.Tensor, degrees: float) -> torch.Tensor:
    """(B, F, H, W, 3) frames with every colour turned by ``degrees`` about the grey axis (black stays black)."""
    a, k = np.deg2rad(degrees), np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross  # Rodrigues
    return frames @ torch.tensor(rotation.T, dtype=frames.dtype)


def _noise(shape, sigma: float, seed: int, blur: int = 0) -> torch.Tensor:
    """Gaussian noise of std ``sigma`` on the [-1, 1] scale, as 0-255 values; ``blur`` box passes correlate it
    spatially (renormalised to the same std)."""
    n = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if blur:
        n = _blurred(n, blur)
        n = n / n.std()
    return n * sigma * 127.5


def test_renders_have_perfect_fidelity(batch):
    for targets in (batch["caption"], batch["scene"]):
        m = ShapesOracle(CFG).evaluate(batch["video"], targets).metrics
        assert (m["background_residual"], m["background_residual_p90"], m["colour_error"], m["edge_sharpness"]) == (0, 0, 0, 1)


def test_background_residual_grows_with_noise(batch):
    oracle, frames = ShapesOracle(CFG), _pixels(batch)
    noise = _noise(frames.shape, 1.0, seed=4)
    rows = [oracle.evaluate(_uint8(frames + sigma * noise), batch["caption"]).metrics for sigma in (0.0, 0.05, 0.1, 0.2, 0.3)]
    for key in ("background_residual", "background_residual_p90"):
        values = [m[key] for m in rows]
        assert values[0] == 0 and all(b > a for a, b in zip(values, values[1:])), (key, values)
    assert all(m["caption_adherence"] >= 0.99 for m in rows)  # the shapes are still found: the residual is the noise


def test_edge_sharpness_drops_with_blur(batch):
    oracle, frames = ShapesOracle(CFG), _pixels(batch)
    values = [oracle.evaluate(_uint8(_blurred(frames, passes)), batch["caption"]).metrics["edge_sharpness"] for passes in range(4)]
    assert values[0] == 1 and values[1] < 0.5 and all(b < a for a, b in zip(values, values[1:])), values


def test_colour_error_grows_with_hue_shift(batch):
    oracle, frames = ShapesOracle(CFG), _pixels(batch)
    rows = [oracle.evaluate(_uint8(_hue_rotated(frames, degrees)), batch["caption"]).metrics for degrees in (0, 5, 10, 20)]
    values = [m["colour_error"] for m in rows]
    assert values[0] == 0 and all(b > a for a, b in zip(values, values[1:])), values
    assert all(m["caption_adherence"] >= 0.99 and m["background_residual"] == 0 for m in rows)


@pytest.mark.parametrize("sigma, blur", [(0.3, 0), (0.45, 0), (0.6, 0), (0.3, 1), (0.45, 1)])
def test_background_noise_alone_scores_absent(batch, sigma, blur):
    """Frames of black with the shipped models' speckle (independent per pixel, sigma about 0.3-0.37 on the [-1, 1]
    scale) and beyond, or spatially correlated, and no shape: nothing is found, the residual says what is there."""
    noise = _noise(_pixels(batch).shape, sigma, seed=5, blur=blur)
    report = ShapesOracle(CFG).evaluate(_uint8(noise), batch["caption"])
    m = report.metrics
    assert m["caption_adherence"] == 0 and m["colour_adherence"] == 0, m
    assert not any(v.detection.present.any() for v in report.videos)
    assert m["background_residual"] > 0.1 and np.isnan([m.get("colour_error", np.nan), m.get("edge_sharpness", np.nan)]).all()


@pytest.mark.parametrize("alpha", [0.2, 0.35, 0.5])
@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_faint_ghosts_score_absent(batch, alpha, sigma):
    """A shape drawn at ``alpha`` of its colour (what a fading student leaves), alone or in speckle, is not the shape."""
    frames = _pixels(batch)
    ghosts = alpha * frames + _noise(frames.shape, sigma, seed=6)
    m = ShapesOracle(CFG).evaluate(_uint8(ghosts), batch["caption"]).metrics
    assert m["caption_adherence"] <= 0.05, m


def test_shapes_in_the_shipped_models_speckle_are_found(batch):
    frames = _pixels(batch)
    m = ShapesOracle(CFG).evaluate(_uint8(frames + _noise(frames.shape, 0.35, seed=7)), batch["caption"]).metrics
    assert m["caption_adherence"] >= 0.95 and m["background_residual"] > 0.1


def test_fidelity_of_a_window_is_that_of_its_frames():
    ds = ShapesDataset(ShapesConfig(num_frames=16, min_shapes=2), seed=8)
    frames = ds.render_sample(0)["frames"].astype(np.float32)
    frames[8:] += np.random.default_rng(0).normal(size=frames[8:].shape) * 40  # noise in the second half only
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    det = ShapesOracle(CFG).detect(frames)
    assert det.window(0, 8).fidelity()["background_residual"] == 0
    assert det.window(8, 16).fidelity() == pytest.approx(ShapesOracle(CFG).detect(frames[8:]).fidelity())
