import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from causal_rcm.data.shapes import (
    AGENT_COLOUR,
    PALETTE,
    CaptionObject,
    Scene,
    Shape,
    ShapesConfig,
    ShapesDataset,
    _overlap,
    _simulate,
    caption,
    centroids,
    parse_caption,
    render,
    shape_mask,
    simulate_agent,
    trajectories,
)
from causal_rcm.errors import UserError


def _fold(p0, v, t, room):
    """Independent reference for one shape bouncing between walls: step by step."""
    p, out = p0, []
    for _ in range(t):
        out.append(p)
        p += v
        if p < 0 or p > room:
            p, v = (-p if p < 0 else 2 * room - p), -v
    return out


def test_single_shape_bounces_like_step_reference():
    scene = Scene((Shape("red", "circle", 10, 3, 7, vx=2),), 32)
    pos = trajectories(scene, 100)
    assert pos[:, 0, 0].tolist() == _fold(3, 2, 100, 22)
    assert (pos[:, 0, 1] == 7).all()


def test_shapes_bounce_off_each_other_and_never_overlap():
    # head-on: both reverse at contact and keep their speeds
    scene = Scene((Shape("red", "square", 8, 0, 10, vx=2), Shape("blue", "square", 8, 20, 10, vx=-1)), 32)
    pos = trajectories(scene, 12)[:, :, 0]
    gaps = pos[:, 1] - (pos[:, 0] + 8)
    assert gaps.min() >= 0 and (np.diff(gaps) > 0).any() and (np.diff(gaps) < 0).any()
    ds = ShapesDataset(ShapesConfig(max_shapes=3, agent=True), seed=4)
    rng = np.random.default_rng(0)
    for i in range(40):
        scene = ds.sample(i)["scene"]
        p = trajectories(scene, 300, rng.integers(0, 5, 300))
        for f in range(300):
            for a in range(len(scene.shapes)):
                for b in range(a):
                    assert not _overlap(p[f, a], scene.shapes[a].size, p[f, b], scene.shapes[b].size)


def test_render_draws_masks_at_trajectories():
    scene = Scene((Shape("green", "triangle", 9, 4, 5, vy=1), Shape("white", "square", 8, 20, 20, agent=True)), 32, 2)
    actions = [0, 1, 1, 3, 0]
    frames = render(scene, 5, actions)
    pos = trajectories(scene, 5, actions)
    assert pos[:, 1].tolist() == [[20, 20], [20, 18], [20, 16], [18, 16], [18, 16]]
    green = (frames == PALETTE["green"]).all(-1)
    for f in range(5):
        x, y = pos[f, 0]
        expected = np.zeros((32, 32), bool)
        expected[y : y + 9, x : x + 9] = shape_mask("triangle", 9)
        assert (green[f] == expected).all()
    # centroid ground truth is the mean pixel centre of the drawn mask
    ys, xs = np.nonzero((frames[3] == PALETTE["white"]).all(-1))
    assert np.allclose(centroids(scene, 5, actions)[3, 1], [xs.mean() + 0.5, ys.mean() + 0.5])


def test_shape_masks_fill_their_box():
    for kind, fill in [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)]:
        m = shape_mask(kind, 12)
        assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any()
        assert abs(m.mean() - fill) < 0.1  # discrete masks: triangle 0.58 at 12 px


def test_agent_is_clamped_and_blocked():
    pos = simulate_agent(0, 0, 8, [4, 3, 2, 2, 4, 4], speed=2, frame_size=16)
    assert pos.tolist() == [[0, 0], [0, 0], [0, 2], [0, 4], [2, 4], [4, 4]]  # actions[0] ignored, left clamped
    obstacles = [np.array([[12, 0, 20, 8]])] * 4  # touching is allowed, overlapping is not
    assert simulate_agent(0, 0, 8, [0, 4, 4, 4], 2, 32, obstacles).tolist() == [[0, 0], [2, 0], [4, 0], [4, 0]]
    with pytest.raises(UserError, match="one action per frame"):
        trajectories(Scene((Shape("white", "circle", 8, 0, 0, agent=True),), 32), 4, [0, 1])


def test_caption_round_trip_and_errors():
    scene = Scene((Shape("red", "circle", 10, 10, 3, vx=-1), Shape("white", "square", 8, 0, 20, agent=True)), 32)
    text = caption(scene)
    assert text == "a red circle moves left, a white square follows the actions"
    assert parse_caption(text) == scene.objects
    assert parse_caption("A blue triangle moves up and a red square moves down.") == [
        CaptionObject("blue", "triangle", "up"),
        CaptionObject("red", "square", "down"),
    ]
    assert parse_caption("") == []
    with pytest.raises(UserError, match="purple"):
        parse_caption("a purple circle moves left")


def test_sampled_scenes_keep_caption_direction_and_distinct_colours():
    cfg = ShapesConfig(num_frames=32)
    ds = ShapesDataset(cfg, seed=1)
    for i in range(60):
        s = ds.sample(i)
        scene = s["scene"]
        colours = [sh.colour for sh in scene.shapes]
        assert len(set(colours)) == len(colours) and 1 <= len(colours) <= 3
        _, vel = _simulate(scene, cfg.direction_frames, None)
        assert (vel == vel[:1]).all()  # no bounce while the caption's direction must be visible
        assert all(1 <= abs(sh.vx + sh.vy) <= 2 and (sh.vx == 0) != (sh.vy == 0) for sh in scene.shapes)
        assert all(8 <= sh.size <= 12 for sh in scene.shapes)
        assert s["video"].shape == (3, 32, 32, 32) and s["video"].min() >= -1 and s["video"].max() <= 1


def test_agent_mode_samples():
    ds = ShapesDataset(ShapesConfig(agent=True, num_frames=12), seed=2)
    b = ds.batch(6)
    assert b["actions"].shape == (6, 12) and b["actions"].dtype == torch.long and (b["actions"][:, 0] == 0).all()
    for scene, text in zip(b["scene"], b["caption"]):
        assert scene.shapes[-1].agent and scene.shapes[-1].colour == AGENT_COLOUR
        assert AGENT_COLOUR not in [s.colour for s in scene.shapes[:-1]]
        assert text.endswith("follows the actions")


def test_dataset_deterministic_and_exact_resume():
    cfg = ShapesConfig(num_frames=8)
    a = ShapesDataset(cfg, seed=7)
    first = a.batch(4)
    state = a.state_dict()
    after = a.batch(5)
    b = ShapesDataset(cfg, seed=7)
    b.load_state_dict(state)
    resumed = b.batch(5)
    assert torch.equal(after["video"], resumed["video"]) and after["caption"] == resumed["caption"]
    assert not torch.equal(first["video"][:4], after["video"][:4])
    it = iter(ShapesDataset(cfg, seed=7))
    stream = [next(it)["index"] for _ in range(9)]
    assert stream == list(range(9))
    with pytest.raises(UserError, match="seed"):
        ShapesDataset(cfg, seed=8).load_state_dict(state)


def test_two_ranks_see_the_global_batch_of_one():
    cfg = ShapesConfig(num_frames=8)
    one = ShapesDataset(cfg, seed=3)
    ranks = [ShapesDataset(cfg, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(2):
        g = one.batch(8)
        parts = [r.batch(4) for r in ranks]
        got = sorted(i for p in parts for i in p["index"].tolist())
        assert got == sorted(g["index"].tolist())
        by_index = {i: v for p in parts for i, v in zip(p["index"].tolist(), p["video"])}
        for i, v in zip(g["index"].tolist(), g["video"]):
            assert torch.equal(by_index[i], v)
    # a 2-rank state resumes on 1 rank at the same global position
    solo = ShapesDataset(cfg, seed=3)
    solo.load_state_dict(ranks[0].state_dict())
    assert solo.batch(1)["index"].tolist() == [one.batch(1)["index"].item()]


def test_dataloader_workers_keep_the_stream_order():
    ds = ShapesDataset(ShapesConfig(num_frames=4), seed=5, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    got = []
    for item in loader:
        got.append(item["index"])
        if len(got) == 6:
            break
    assert got == [1, 3, 5, 7, 9, 11]


def test_config_errors():
    with pytest.raises(UserError, match="do not fit"):
        ShapesConfig(size=16, shape_size=(8, 12), speed=(2, 2))
    with pytest.raises(UserError, match="max_shapes"):
        ShapesConfig(max_shapes=9)
    cfg = ShapesConfig(size=64)
    assert cfg.shape_size == (16, 24) and cfg.speed == (2, 4) and cfg.agent_speed == 4


def test_scene_at_continues_the_render_from_that_frame():
    from causal_rcm.data.shapes import sample_scene, scene_at

    config = ShapesConfig(size=32, num_frames=24, max_shapes=3)
    for seed in range(6):
        scene, _ = sample_scene(np.random.default_rng(seed), config)
        frames = render(scene, 24)
        for frame in (0, 5, 17):  # 17: past most bounces
            later = scene_at(scene, frame)
            np.testing.assert_array_equal(render(later, 24 - frame), frames[frame:])
    at_wall = Scene((Shape("blue", "circle", 8, 9, 2, 0, -2),), 32)  # reaches y = 0 at frame 1, then reflects
    later = scene_at(at_wall, 1)
    assert (later.shapes[0].y, later.shapes[0].vy) == (0, 2) and later.caption == "a blue circle moves down"
    np.testing.assert_array_equal(render(later, 6), render(at_wall, 7)[1:])
    agent_scene, _ = sample_scene(np.random.default_rng(0), ShapesConfig(agent=True))
    with pytest.raises(UserError, match="without an agent"):
        scene_at(agent_scene, 3)
