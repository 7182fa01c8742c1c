"""The shapes world: a procedural video world with captions, an agent mode and exact ground truth.

A scene is 1-3 shapes (circle, square, triangle) of distinct palette colours on a black
background. Every shape moves along one axis at a constant integer speed and bounces off the
walls and off other shapes (both reverse); in agent mode one shape, always ``white``, moves
by discrete actions instead, blocked by walls and shapes.
Positions are integers and shapes are drawn without anti-aliasing, so a render is exact and
the oracle (``causal_rcm.data.oracle``) can measure a video against the simulator.

Conventions (the oracle relies on them):

* **Caption direction** is the shape's *initial* direction. The scene sampler guarantees
  that no shape bounces within the first ``min(num_frames, direction_frames)`` frames, so
  the direction stated in the caption is what those frames show. Later a shape may bounce.
* **No overlap, ever**: shapes start at least 1 px apart and the simulator resolves every
  collision, so no shape hides another at any rollout length (see ``_simulate``).
* **Actions** ``0..4 = noop, up, down, left, right``. ``actions[t]`` moves the agent from
  frame ``t - 1`` to frame ``t`` by ``agent_speed`` px, clamped at the walls;
  ``actions[0]`` has no effect and the dataset always sets it to noop.
* **Caption grammar**: clauses ``"a <colour> <shape> moves <left|right|up|down>"`` and, for
  the agent, ``"a white <shape> follows the actions"``, joined by ``", "``. The parser also
  accepts ``" and "`` between clauses and a final ``"."``.

Videos: uint8 ``[F, H, W, 3]`` from ``render``; the dataset yields float ``[3, F, H, W]``
in ``[-1, 1]`` (see ``causal_rcm.data.video`` for the conversions).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from causal_rcm.errors import UserError

__all__ = [
    "PALETTE",
    "BACKGROUND",
    "AGENT_COLOUR",
    "KINDS",
    "DIRECTIONS",
    "ACTIONS",
    "ShapesConfig",
    "Shape",
    "Scene",
    "CaptionObject",
    "shape_mask",
    "trajectories",
    "centroids",
    "simulate_agent",
    "render",
    "scene_at",
    "caption",
    "parse_caption",
    "sample_actions",
    "sample_scene",
    "ShapesDataset",
    "collate",
]

# Well separated in RGB: the closest pair (blue, cyan) is 162 apart, every colour is > 200
# from the background. The oracle segments by nearest palette entry.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 255),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
AGENT_COLOUR = "white"
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
# Unit (dx, dy) in image coordinates: y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ACTIONS: tuple[str, ...] = ("noop", "up", "down", "left", "right")
_ACTION_MOVES = np.array([(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)], dtype=np.int64)  # (dx, dy)
_GAP = 1  # px kept free between shapes within the sampled clip


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"shapes config: {name} must be two integers (min, max), got {value!r}") from None
    if not 1 <= lo <= hi:
        raise UserError(f"shapes config: {name} must satisfy 1 <= min <= max, got ({lo}, {hi})")
    return lo, hi


@dataclass
class ShapesConfig:
    """Configuration of the shapes world. ``None`` fields resolve from ``size`` on creation.

    Defaults at ``size=32``: shapes 8-12 px, speed 1-2 px/frame, agent speed 2 px/frame;
    at ``size=64`` all of them double.
    """

    size: int = 32  # frame height = width, px
    num_frames: int = 16
    min_shapes: int = 1
    max_shapes: int = 3  # counts the agent in agent mode
    shape_size: tuple[int, int] | None = None  # side of a shape's bounding box, px (min, max)
    speed: tuple[int, int] | None = None  # px per frame (min, max)
    agent: bool = False
    agent_speed: int | None = None  # px per frame
    direction_frames: int = 8  # no bounce in the first min(num_frames, direction_frames) frames
    action_repeat: float = 0.75  # probability that a sampled action repeats the previous one

    def __post_init__(self) -> None:
        unit = max(1, self.size // 32)
        if self.shape_size is None:
            self.shape_size = (self.size // 4, 3 * self.size // 8)
        if self.speed is None:
            self.speed = (unit, 2 * unit)
        if self.agent_speed is None:
            self.agent_speed = 2 * unit
        self.shape_size = _pair(self.shape_size, "shape_size")
        self.speed = _pair(self.speed, "speed")
        if self.size < 16:
            raise UserError(f"shapes config: size must be at least 16 px, got {self.size}")
        if self.num_frames < 1:
            raise UserError(f"shapes config: num_frames must be at least 1, got {self.num_frames}")
        if self.direction_frames < 2:
            raise UserError(f"shapes config: direction_frames must be at least 2, got {self.direction_frames}")
        most = len(PALETTE)  # distinct colours; in agent mode white is the agent's
        if not 1 <= self.min_shapes <= self.max_shapes <= most:
            raise UserError(
                f"shapes config: need 1 <= min_shapes <= max_shapes <= {most}, got ({self.min_shapes}, {self.max_shapes})"
            )
        if self.agent_speed < 1:
            raise UserError(f"shapes config: agent_speed must be at least 1, got {self.agent_speed}")
        if not 0.0 <= self.action_repeat <= 1.0:
            raise UserError(f"shapes config: action_repeat must lie in [0, 1], got {self.action_repeat}")
        room = self.size - self.shape_size[1]
        need = self.speed[1] * (min(self.num_frames, self.direction_frames) - 1)
        if room < max(need, self.speed[1]):
            raise UserError(
                f"shapes config: shapes of {self.shape_size[1]} px moving {self.speed[1]} px/frame do not fit a "
                f"{self.size} px frame for {min(self.num_frames, self.direction_frames)} frames without bouncing; "
                "use smaller shape_size or speed, a larger size, or fewer direction_frames"
            )

    @property
    def max_speed(self) -> int:
        """Fastest motion in the world, px per frame (shapes or agent)."""
        return max(self.speed[1], self.agent_speed if self.agent else 0)


@dataclass(frozen=True)
class Shape:
    """One shape: bounding box ``[x, x + size) x [y, y + size)`` at frame 0, velocity in px/frame.

    Non-agent shapes move along one axis (exactly one of ``vx, vy`` is non-zero); the agent
    has ``vx = vy = 0`` and moves by actions.
    """

    colour: str
    kind: str
    size: int
    x: int
    y: int
    vx: int = 0
    vy: int = 0
    agent: bool = False

    @property
    def direction(self) -> str | None:
        """Initial direction word (``None`` for the agent)."""
        if self.agent:
            return None
        return next(d for d, (dx, dy) in DIRECTIONS.items() if (dx, dy) == (np.sign(self.vx), np.sign(self.vy)))


@dataclass(frozen=True)
class Scene:
    """A world state at frame 0: the shapes (drawing order) on a ``size x size`` frame."""

    shapes: tuple[Shape, ...]
    size: int
    agent_speed: int = 2

    @property
    def agent_index(self) -> int | None:
        return next((i for i, s in enumerate(self.shapes) if s.agent), None)

    @property
    def objects(self) -> list[CaptionObject]:
        return [CaptionObject(s.colour, s.kind, s.direction, s.agent) for s in self.shapes]

    @property
    def caption(self) -> str:
        return caption(self)


class CaptionObject(NamedTuple):
    """What a caption says about one shape. ``direction`` is ``None`` for the agent."""

    colour: str
    kind: str
    direction: str | None
    agent: bool = False


# --------------------------------------------------------------------------------------
# geometry and simulation


@lru_cache(maxsize=512)
def _shape_mask(kind: str, height: int, width: int) -> np.ndarray:
    y = np.arange(height)[:, None] + 0.5
    x = np.arange(width)[None, :] + 0.5
    if kind == "square":
        mask = np.ones((height, width), dtype=bool)
    elif kind == "circle":
        mask = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2 <= 1.0
    elif kind == "triangle":
        # apex at the top centre, base on the bottom row; the first row holds 1-2 pixels so
        # the bounding box is the full height x width.
        mask = np.abs(x - width / 2) <= (y + 0.5) * width / (2 * height)
    else:
        raise UserError(f"unknown shape kind {kind!r} (known: {', '.join(KINDS)})")
    mask = np.broadcast_to(mask, (height, width)).copy()
    mask.flags.writeable = False
    return mask


def shape_mask(kind: str, height: int, width: int | None = None) -> np.ndarray:
    """Pixel mask of a shape filling a ``height x width`` box: bool ``[height, width]``, read-only.

    Square: the whole box. Circle: the inscribed ellipse (pixel centres inside). Triangle:
    isosceles, apex up, base on the bottom row.
    """
    return _shape_mask(kind, int(height), int(width if width is not None else height))


@lru_cache(maxsize=512)
def _mask_centroid(kind: str, size: int) -> tuple[float, float]:
    ys, xs = np.nonzero(shape_mask(kind, size))
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5)


def _overlap(a: Sequence[int], sa: int, b: Sequence[int], sb: int, gap: int = 0) -> bool:
    """Whether boxes ``[x, x + s) x [y, y + s)`` at top-lefts ``a, b`` come closer than ``gap`` px."""
    return a[0] < b[0] + sb + gap and b[0] < a[0] + sa + gap and a[1] < b[1] + sb + gap and b[1] < a[1] + sa + gap


def _check_actions(actions: Sequence[int] | np.ndarray, num_frames: int) -> list[int]:
    a = np.asarray(actions).reshape(-1)
    if len(a) != num_frames:
        raise UserError(f"got {len(a)} actions for {num_frames} frames: give one action per frame")
    if a.size and (a.min() < 0 or a.max() >= len(ACTIONS)):
        raise UserError(f"actions must be integers in 0..{len(ACTIONS) - 1} ({', '.join(ACTIONS)}), got {a.min()}..{a.max()}")
    return [int(v) for v in a]


def _agent_step(p: list[int], size: int, action: int, speed: int, frame_size: int, obstacles) -> list[int]:
    """One agent move: clamp at the walls; stay put if the new box would overlap an obstacle box."""
    dx, dy = _ACTION_MOVES[action]
    room = frame_size - size
    q = [min(max(p[0] + speed * int(dx), 0), room), min(max(p[1] + speed * int(dy), 0), room)]
    if any(_overlap(q, size, (x0, y0), max(x1 - x0, y1 - y0)) for x0, y0, x1, y1 in obstacles):
        return p
    return q


def simulate_agent(
    x0: int,
    y0: int,
    size: int,
    actions: Sequence[int] | np.ndarray,
    speed: int,
    frame_size: int,
    obstacles: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Top-left corners of the agent under ``actions``: int64 ``[F, 2]`` (x, y), ``F = len(actions)``.

    ``pos[0] = (x0, y0)``; ``pos[t]`` is ``pos[t-1]`` moved ``speed`` px by ``actions[t]``,
    clamped at the walls, and left at ``pos[t-1]`` if the moved box would overlap one of the
    boxes ``obstacles[t-1]`` (int ``[M, 4]`` as ``x0, y0, x1, y1``, end-exclusive, square).
    ``actions[0]`` has no effect. This is the agent rule of ``trajectories``, usable with
    obstacles detected in a video.
    """
    acts = _check_actions(actions, len(actions))
    pos = np.empty((len(acts), 2), dtype=np.int64)
    p = [int(x0), int(y0)]
    for t, action in enumerate(acts):
        if t > 0:
            obs = [] if obstacles is None else [tuple(int(v) for v in box) for box in obstacles[t - 1]]
            p = _agent_step(p, size, action, speed, frame_size, obs)
        pos[t] = p
    return pos


def _simulate(scene: Scene, num_frames: int, actions: Sequence[int] | np.ndarray | None):
    """Step the world: top-lefts int64 ``[F, K, 2]`` and velocities int64 ``[F, K, 2]``.

    Per step: (1) the agent moves (``_agent_step``, blocked by the shapes' current boxes);
    (2) every other shape moves by its velocity and reflects off the walls; (3) shapes whose
    new boxes overlap another new box (or the agent's) stay where they were and reverse
    their velocity, repeated until nothing overlaps. Current boxes never overlap, so (3) ends
    with no overlap: shapes never overlap, at any length.
    """
    shapes = scene.shapes
    K, S = len(shapes), scene.size
    a = scene.agent_index
    acts = _check_actions(actions, num_frames) if actions is not None else [0] * num_frames
    sizes = [s.size for s in shapes]
    P = [[s.x, s.y] for s in shapes]
    V = [[s.vx, s.vy] for s in shapes]
    pos = np.empty((num_frames, K, 2), dtype=np.int64)
    vel = np.empty((num_frames, K, 2), dtype=np.int64)
    for t in range(num_frames):
        if t > 0:
            Q = [list(p) for p in P]
            W = [list(v) for v in V]
            for k in range(K):
                if k == a:
                    boxes = [(*P[j], P[j][0] + sizes[j], P[j][1] + sizes[j]) for j in range(K) if j != a]
                    Q[k] = _agent_step(P[k], sizes[k], acts[t], scene.agent_speed, S, boxes)
                    continue
                room = S - sizes[k]
                for d in range(2):
                    q = P[k][d] + V[k][d]
                    if q < 0 or q > room:
                        q, W[k][d] = (-q if q < 0 else 2 * room - q), -V[k][d]
                    Q[k][d] = q
            reverted = [k == a for k in range(K)]
            while True:
                hit = [
                    k
                    for k in range(K)
                    if not reverted[k] and any(j != k and _overlap(Q[k], sizes[k], Q[j], sizes[j]) for j in range(K))
                ]
                if not hit:
                    break
                for k in hit:
                    Q[k], W[k], reverted[k] = list(P[k]), [-V[k][0], -V[k][1]], True
            P, V = Q, W
        pos[t], vel[t] = P, V
    return pos, vel


def trajectories(scene: Scene, num_frames: int, actions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Top-left corner of every shape in every frame: int64 ``[F, K, 2]`` (x, y).

    Shapes bounce off the walls and off each other (both reverse); the agent follows
    ``actions`` ``[F]`` (all noop when ``None``), blocked by walls and shapes. Runs for any
    ``num_frames``; see ``_simulate`` for the exact rule.
    """
    return _simulate(scene, num_frames, actions)[0]


def centroids(scene: Scene, num_frames: int, actions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Pixel-mask centroid of every shape in every frame: float64 ``[F, K, 2]`` (x, y), in px.

    Pixel ``(i, j)`` has centre ``(j + 0.5, i + 0.5)``; this is what the oracle measures on
    an unoccluded render.
    """
    pos = trajectories(scene, num_frames, actions).astype(np.float64)
    offsets = np.array([_mask_centroid(s.kind, s.size) for s in scene.shapes]).reshape(1, -1, 2)
    return pos + offsets


def scene_at(scene: Scene, frame: int) -> Scene:
    """The world at ``frame`` as a scene that starts there: the shapes where they are and moving as they move then
    (rendering it renders ``scene`` from ``frame`` on; its caption names the directions from that frame). Scenes
    without an agent: the agent's moves are actions, not part of a scene.

    A shape that has just reached a wall still holds the velocity that took it there, and reflects on its next step;
    it is given the reflected velocity, which moves it the same way (from the wall, ``P + V' = -(P + V)`` at
    ``P = 0``), so that its caption says where it goes."""
    if scene.agent_index is not None:
        raise UserError("scene_at takes a scene without an agent (the agent moves by actions)")
    pos, vel = _simulate(scene, frame + 1, None)
    shapes = []
    for k, s in enumerate(scene.shapes):
        p, v = pos[frame, k].tolist(), vel[frame, k].tolist()
        room = scene.size - s.size
        v = [-v[d] if (p[d] == 0 and v[d] < 0) or (p[d] == room and v[d] > 0) else v[d] for d in range(2)]
        shapes.append(dataclasses.replace(s, x=p[0], y=p[1], vx=v[0], vy=v[1]))
    return Scene(tuple(shapes), scene.size, scene.agent_speed)


def render(scene: Scene, num_frames: int, actions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Draw a scene: uint8 ``[F, H, W, 3]`` with ``H = W = scene.size``, shapes in scene order."""
    pos = trajectories(scene, num_frames, actions)
    frames = np.empty((num_frames, scene.size, scene.size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for k, s in enumerate(scene.shapes):
        mask = shape_mask(s.kind, s.size)
        colour = np.array(PALETTE[s.colour], dtype=np.uint8)
        for f in range(num_frames):
            x, y = pos[f, k]
            frames[f, y : y + s.size, x : x + s.size][mask] = colour
    return frames


# --------------------------------------------------------------------------------------
# captions


def caption(scene: Scene) -> str:
    """Caption of a scene, e.g. ``"a red circle moves left, a white square follows the actions"``."""
    clauses = []
    for o in scene.objects:
        tail = "follows the actions" if o.agent else f"moves {o.direction}"
        clauses.append(f"a {o.colour} {o.kind} {tail}")
    return ", ".join(clauses)


_CLAUSE = re.compile(
    r"^a (?P<colour>\w+) (?P<kind>\w+) (?:moves (?P<direction>\w+)|(?P<agent>follows the actions))$"
)


def parse_caption(text: str) -> list[CaptionObject]:
    """Objects named by a caption of this world's grammar (see module docstring).

    The empty caption gives ``[]``. Raises ``UserError`` naming the clause it cannot read.
    """
    body = " ".join(text.lower().replace(",", " , ").split()).rstrip(". ").strip()
    if not body:
        return []
    objects = []
    for clause in re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", body):
        m = _CLAUSE.match(clause.strip())
        ok = m is not None and m["colour"] in PALETTE and m["kind"] in KINDS
        ok = ok and (m["agent"] is not None or m["direction"] in DIRECTIONS)
        if not ok:
            raise UserError(
                f"cannot read caption clause {clause!r}: expected 'a <colour> <shape> moves <direction>' or "
                f"'a white <shape> follows the actions' (colours: {', '.join(PALETTE)}; shapes: {', '.join(KINDS)}; "
                f"directions: {', '.join(DIRECTIONS)})"
            )
        agent = m["agent"] is not None
        objects.append(CaptionObject(m["colour"], m["kind"], None if agent else m["direction"], agent))
    return objects


# --------------------------------------------------------------------------------------
# sampling


def sample_actions(rng: np.random.Generator, num_frames: int, repeat: float = 0.75) -> np.ndarray:
    """Sticky random actions: int64 ``[F]``; ``actions[0] = 0`` (noop); each later action repeats
    the previous one with probability ``repeat``, else is uniform over the five actions."""
    actions = np.zeros(num_frames, dtype=np.int64)
    fresh = rng.integers(0, len(ACTIONS), size=num_frames)
    keep = rng.random(num_frames) < repeat
    for t in range(1, num_frames):
        actions[t] = actions[t - 1] if keep[t] else fresh[t]
    return actions


def sample_scene(rng: np.random.Generator, config: ShapesConfig) -> tuple[Scene, np.ndarray | None]:
    """Sample a scene (and, in agent mode, its actions ``[F]``) under the world's guarantees.

    Distinct colours; shapes start at least 1 px apart; no shape changes velocity (wall or
    shape bounce) in the first ``min(num_frames, direction_frames)`` frames. Shapes are placed
    one by one by rejection; the agent (if any) first.
    """
    F, S = config.num_frames, config.size
    k_free = min(F, config.direction_frames)
    n = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    actions = sample_actions(rng, F, config.action_repeat) if config.agent else None
    head = None if actions is None else actions[:k_free]
    for _ in range(100):
        shapes: list[Shape] = []
        if config.agent:
            size = int(rng.integers(config.shape_size[0], config.shape_size[1] + 1))
            x, y = (int(v) for v in rng.integers(0, S - size + 1, size=2))
            shapes.append(Shape(AGENT_COLOUR, KINDS[rng.integers(len(KINDS))], size, x, y, agent=True))
            pool = [c for c in PALETTE if c != AGENT_COLOUR]
        else:
            pool = list(PALETTE)
        colours = [pool[i] for i in rng.permutation(len(pool))[: n - len(shapes)]]
        for colour in colours:
            kind = KINDS[rng.integers(len(KINDS))]
            for _ in range(100):
                size = int(rng.integers(config.shape_size[0], config.shape_size[1] + 1))
                speed = int(rng.integers(config.speed[0], config.speed[1] + 1))
                dx, dy = list(DIRECTIONS.values())[rng.integers(len(DIRECTIONS))]
                room = S - size
                travel = speed * (k_free - 1)
                # start far enough from the wall ahead to travel k_free - 1 steps unbounced
                along = int(rng.integers(0, room - travel + 1)) + (travel if dx + dy < 0 else 0)
                across = int(rng.integers(0, room + 1))
                x, y = (along, across) if dx else (across, along)
                cand = Shape(colour, kind, size, x, y, dx * speed, dy * speed)
                if any(_overlap((x, y), size, (s.x, s.y), s.size, gap=_GAP) for s in shapes):
                    continue
                trial = Scene((*shapes, cand), S, config.agent_speed)
                _, vel = _simulate(trial, k_free, head)
                if all((vel[:, k] == vel[0, k]).all() for k, s in enumerate(trial.shapes) if not s.agent):
                    shapes.append(cand)
                    break
            else:
                break  # no room for this colour: start the scene again
        else:
            shapes.sort(key=lambda s: s.agent)  # the agent is listed (and captioned) last
            return Scene(tuple(shapes), S, config.agent_speed), actions
    raise RuntimeError(f"could not place {n} shapes in 100 attempts; config: {config}")


# --------------------------------------------------------------------------------------
# dataset


def _to_video(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)  # (3, F, H, W)


class ShapesDataset(IterableDataset):
    """Infinite, seeded stream of shapes-world samples with exact resume and rank sharding.

    Sample ``i`` of the global stream depends only on ``(seed, i)``. Rank ``r`` of
    ``world_size`` reads global samples ``r, r + W, r + 2W, ...``, so the k-th batches of
    ``n`` of all ranks together are exactly global samples ``[k W n, (k + 1) W n)``: the global
    batch of one rank reading ``W n``. DataLoader workers split a rank's stream the same way
    (worker w of N takes every N-th sample); iterate with ``batch_size=None`` to keep the
    order, or call ``batch(n)`` directly, which is fast enough for the trainer.

    ``state_dict()`` stores the number of global samples consumed (``position * world_size``)
    and the seed; after ``load_state_dict`` the stream continues exactly, also under another
    world size that divides that number. The position advances in the process that
    iterates (``__iter__`` without workers, or ``batch``).

    Each sample is a dict: ``video`` float32 ``[3, F, H, W]`` in ``[-1, 1]``, ``caption`` str,
    ``scene`` ``Scene`` (ground truth for the oracle), ``index`` int (global), and in agent
    mode ``actions`` int64 ``[F]``. Collate lists of samples with ``collate``.
    """

    def __init__(self, config: ShapesConfig | None = None, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.config = config if config is not None else ShapesConfig()
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.position = 0  # samples consumed by this rank

    def global_index(self, position: int) -> int:
        return self.rank + self.world_size * position

    def render_sample(self, index: int) -> dict[str, Any]:
        """Global sample ``index`` as rendered (pure function of seed and index): ``frames`` uint8
        ``[F, H, W, 3]`` and ``actions`` int64 ``[F]`` as numpy arrays, cheap to send between processes."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        scene, actions = sample_scene(rng, self.config)
        out: dict[str, Any] = {"frames": render(scene, self.config.num_frames, actions), "caption": caption(scene), "scene": scene, "index": index}
        if actions is not None:
            out["actions"] = actions
        return out

    def sample(self, index: int) -> dict[str, Any]:
        """Global sample ``index`` (pure function of seed and index)."""
        out = self.render_sample(index)
        out["video"] = _to_video(out.pop("frames"))
        if "actions" in out:
            out["actions"] = torch.from_numpy(out["actions"])
        return out

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            while True:
                item = self.sample(self.global_index(self.position))
                self.position += 1
                yield item
        position = self.position + info.id
        while True:
            yield self.sample(self.global_index(position))
            position += info.num_workers

    def batch(self, n: int) -> dict[str, Any]:
        """The next ``n`` samples of this rank, collated (see ``collate``); advances the position."""
        items = [self.sample(self.global_index(self.position + i)) for i in range(n)]
        self.position += n
        return collate(items)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "samples_seen": self.position * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise UserError(
                f"data state was saved with seed {state['seed']} but this dataset has seed {self.seed}: "
                "resume with the original seed"
            )
        seen = int(state["samples_seen"])
        if seen % self.world_size:
            raise UserError(
                f"cannot resume a data stream at {seen} samples on {self.world_size} ranks: "
                "use a world size that divides it"
            )
        self.position = seen // self.world_size


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: ``video`` ``[B, 3, F, H, W]``, ``index`` ``[B]``, ``actions`` ``[B, F]``;
    ``caption`` and ``scene`` become lists."""
    out: dict[str, Any] = {
        "video": torch.stack([it["video"] for it in items]),
        "caption": [it["caption"] for it in items],
        "scene": [it["scene"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
    if "actions" in items[0]:
        out["actions"] = torch.stack([it["actions"] for it in items])
    return out
