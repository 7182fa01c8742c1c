"""Atari episodes from the real emulator (ale-py through gymnasium), recorded into shards for world models.

:func:`collect` plays ``episodes`` episodes of one game with one policy and writes them, ``episodes_per_shard``
to a shard, with :mod:`causal_rcm.data.shards` (format and manifest there). The last ``holdout`` fraction of
the episodes goes, whole, into separate ``heldout-*`` shards for evaluation. A shard depends only on ``seed``
and its episodes' indices: the emulator is reseeded before its first episode (a seeded reset reloads the ROM,
0.4 s, so later episodes continue the emulator's random stream) and each episode's policy is seeded from
``(seed, i)``. A collection killed and resumed therefore writes the same bytes as one that ran through: shards
the manifest lists are skipped, anything else is (re)written.

Policies: ``random`` (uniform), ``sticky`` (repeats its previous action with probability ``sticky_p``, else
uniform: long presses, as a player makes) and ``agent``, a scripted player that reads the emulator's RAM and
reaches game states a random player never sees (later walls of bricks, long rallies). Scripted players exist
for the games in :data:`AGENTS`; their RAM addresses were found by experiment (regressing each RAM byte on
the positions read from the screen during random play), see each class.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from causal_rcm.data.shards import Episode, EnvInfo, Manifest, sha256, write_shard
from causal_rcm.errors import UserError

try:
    import ale_py
    import gymnasium as gym
except ImportError:  # the optional `atari` extra
    ale_py = gym = None

__all__ = ["AGENTS", "POLICIES", "CollectArgs", "CollectSummary", "collect", "make_env", "make_policy", "record_episode"]

EMULATOR_FPS = 60.0  # the Atari 2600's NTSC frame rate; the agent sees one frame in `frameskip`
AGENT_EPSILON = 0.1  # scripted players press a uniformly random key this often: every action in every kind of state
SIZES = (16, 256)  # frame sizes collect accepts (the screen is 210 x 160)
POLICIES = ("random", "sticky", "agent")


# ----------------------------------------------------------------------------- environment
def make_env(env_id: str, repeat_action_probability: float | None = None):
    """The gymnasium environment ``env_id`` (an ALE game); one-line UserError for an unknown or non-Atari id."""
    if gym is None:
        raise UserError("collecting Atari episodes needs ale-py and gymnasium: pip install 'causal-rcm[atari]'")
    gym.register_envs(ale_py)
    kwargs = {} if repeat_action_probability is None else {"repeat_action_probability": repeat_action_probability}
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error:
        names = sorted(k for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
        near = difflib.get_close_matches(env_id, names, n=3, cutoff=0.8)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise UserError(f"unknown environment {env_id!r}: {hint}ale-py's {len(names)} games are named like "
                        "ALE/Breakout-v5, ALE/Pong-v5, ALE/SpaceInvaders-v5") from None
    if not hasattr(env.unwrapped, "ale"):
        env.close()
        raise UserError(f"{env_id} is not an Atari game: collect records ALE games, e.g. ALE/Breakout-v5")
    return env


def env_info(env, env_id: str) -> EnvInfo:
    """What a model trained on this environment's frames must know of it (frame rate, actions, versions)."""
    frameskip = env.spec.kwargs.get("frameskip", 1)
    if not isinstance(frameskip, int):
        raise UserError(f"{env_id} skips a random number of frames {frameskip}: its frame rate varies; use the -v5 games")
    meanings = tuple(env.unwrapped.get_action_meanings())
    return EnvInfo(
        id=env_id, num_actions=len(meanings), action_meanings=meanings, frameskip=frameskip,
        repeat_action_probability=float(env.spec.kwargs.get("repeat_action_probability", 0.0)), emulator_fps=EMULATOR_FPS,
        fps=EMULATOR_FPS / frameskip, ale_py=ale_py.__version__, gymnasium=gym.__version__,
    )


def game_of(env) -> str:
    """The ALE game name of ``env`` (``breakout`` for ``ALE/Breakout-v5``)."""
    return str(env.spec.kwargs.get("game", env.spec.name)).lower()


def resize(screen: np.ndarray, size: int) -> np.ndarray:
    """The (210, 160, 3) screen as a (size, size, 3) uint8 frame; each pixel the mean of the area it covers,
    so that a 2-pixel ball stays visible (dimmer) instead of falling between samples."""
    return np.asarray(Image.fromarray(screen).resize((size, size), Image.Resampling.BOX))


# ----------------------------------------------------------------------------- policies
class Policy(Protocol):
    def act(self, ram: np.ndarray) -> int: ...


class RandomPolicy:
    """Uniform over the actions."""

    def __init__(self, meanings: tuple[str, ...], rng: np.random.Generator) -> None:
        self.n, self.rng = len(meanings), rng

    def act(self, ram: np.ndarray) -> int:
        return int(self.rng.integers(self.n))


class StickyPolicy(RandomPolicy):
    """Repeats its previous action with probability ``p``, else draws a uniform one: presses last ``1 / (1 - p)``
    steps on average, so the data shows what holding a key does."""

    def __init__(self, meanings: tuple[str, ...], rng: np.random.Generator, p: float) -> None:
        super().__init__(meanings, rng)
        self.p, self.previous = p, None

    def act(self, ram: np.ndarray) -> int:
        if self.previous is None or self.rng.random() >= self.p:
            self.previous = super().act(ram)
        return self.previous


class _Follower(RandomPolicy):
    """A scripted player moving its paddle towards the ball; a uniformly random action with probability ``AGENT_EPSILON``."""

    def __init__(self, meanings: tuple[str, ...], rng: np.random.Generator) -> None:
        super().__init__(meanings, rng)
        self.key = {name: meanings.index(name) for name in ("NOOP", "FIRE", "RIGHT", "LEFT")}

    def act(self, ram: np.ndarray) -> int:
        if self.rng.random() < AGENT_EPSILON:
            return super().act(ram)
        return self.key[self.follow(ram.astype(np.int64))]

    def follow(self, ram: np.ndarray) -> str:
        raise NotImplementedError


class BreakoutFollower(_Follower):
    """Breakout: serves, then keeps the paddle's centre under the ball's.

    RAM, in screen coordinates of the 210 x 160 frame (measured over 1,100 steps of random play: the ball's
    offsets held at every step, the paddle's at 97%, the rest with the paddle against a wall): ``ram[72] - 47``
    is the paddle's left edge (16 px wide), ``ram[99] - 49`` the ball's left edge (2 px), ``ram[101] + 9`` its
    top; ``ram[101]`` is 0 while no ball is in play, when FIRE serves."""

    DEADBAND = 3  # px: closer than this, stay (the paddle overshoots otherwise)

    def follow(self, ram: np.ndarray) -> str:
        if ram[101] == 0:
            return "FIRE"
        offset = (ram[99] - 49 + 1) - (ram[72] - 47 + 8)  # ball centre - paddle centre, px
        return "RIGHT" if offset > self.DEADBAND else "LEFT" if offset < -self.DEADBAND else "NOOP"


class PongFollower(_Follower):
    """Pong: keeps the right (green) paddle's centre level with the ball's.

    RAM, in screen coordinates (1,500 steps of random play): ``ram[51] - 13`` is the player's paddle top to a
    pixel (16 px tall, clipped at the walls), ``ram[54] - 14`` the ball's top to a pixel (4 px tall),
    ``ram[49] - 49`` its left edge (exact); ``ram[54]`` is 0 between points. In Pong's action names RIGHT moves
    the paddle up and LEFT down."""

    DEADBAND = 2

    def follow(self, ram: np.ndarray) -> str:
        if ram[54] == 0:
            return "NOOP"
        offset = (ram[54] - 14 + 2) - (ram[51] - 13 + 8)  # ball centre - paddle centre, px (down is positive)
        return "LEFT" if offset > self.DEADBAND else "RIGHT" if offset < -self.DEADBAND else "NOOP"


AGENTS: dict[str, type[_Follower]] = {"breakout": BreakoutFollower, "pong": PongFollower}


def make_policy(name: str, env, rng: np.random.Generator, sticky_p: float = 0.8) -> Policy:
    """Policy ``name`` (one of :data:`POLICIES`) for ``env``; UserError for ``agent`` on a game without a scripted player."""
    meanings = tuple(env.unwrapped.get_action_meanings())
    if name == "random":
        return RandomPolicy(meanings, rng)
    if name == "sticky":
        return StickyPolicy(meanings, rng, sticky_p)
    if name == "agent":
        game = game_of(env)
        if game not in AGENTS:
            raise UserError(
                f"--policy agent has a scripted player only for {', '.join(AGENTS)} "
                f"({', '.join(f'ALE/{g.capitalize()}-v5' for g in AGENTS)}); use --policy random or sticky for {env.spec.id}"
            )
        return AGENTS[game](meanings, rng)
    raise UserError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


# ----------------------------------------------------------------------------- episodes
def record_episode(env, policy_name: str, *, index: int, seed: int, size: int, max_steps: int | None,
                   sticky_p: float = 0.8, emulator_seed: int | None = None) -> Episode:
    """Episode ``index`` of a collection seeded ``seed``, its policy seeded from ``(seed, index)``; the emulator is
    reset with ``emulator_seed``, or (None) goes on from its state.

    Frames ``[T, size, size, 3]`` from the reset frame on, ``T = steps + 1``; it ends at game over, at the
    environment's own time limit, or after ``max_steps`` steps."""
    policy = make_policy(policy_name, env, np.random.default_rng(np.random.SeedSequence([seed, index])), sticky_p)
    screen, _ = env.reset(seed=emulator_seed)
    ale = env.unwrapped.ale
    frames, actions, rewards = [resize(screen, size)], [tuple(env.unwrapped.get_action_meanings()).index("NOOP")], [0.0]
    terminated = truncated = False
    while not (terminated or truncated) and (max_steps is None or len(actions) <= max_steps):
        action = policy.act(ale.getRAM())
        screen, reward, terminated, truncated, _ = env.step(action)
        frames.append(resize(screen, size))
        actions.append(action)
        rewards.append(float(reward))
    meta = {"episode": index, "seed": seed, "policy": policy_name, "steps": len(actions) - 1,
            "return": float(sum(rewards)), "terminated": bool(terminated), "truncated": bool(truncated)}
    return Episode(np.stack(frames), np.array(actions, dtype=np.int64), np.array(rewards, dtype=np.float32), meta)


# ----------------------------------------------------------------------------- collection
@dataclass(frozen=True)
class CollectArgs:
    """The arguments of ``causal-rcm collect`` that decide what is written (the manifest keeps them)."""

    env: str
    policy: str
    episodes: int
    size: int = 64
    episodes_per_shard: int = 10
    max_steps: int | None = None
    seed: int = 0
    holdout: float = 0.1
    sticky_p: float = 0.8
    repeat_action_probability: float | None = None  # the emulator's sticky actions; None: the game's default

    def check(self) -> None:
        """One-line UserError for each impossible value (before the emulator starts)."""
        if self.policy not in POLICIES:
            raise UserError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.episodes < 1:
            raise UserError(f"--episodes must be at least 1, got {self.episodes}")
        if not SIZES[0] <= self.size <= SIZES[1]:
            raise UserError(f"--size must lie in {SIZES[0]}..{SIZES[1]} pixels, got {self.size}")
        if self.episodes_per_shard < 1:
            raise UserError(f"--episodes-per-shard must be at least 1, got {self.episodes_per_shard}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be at least 1 (leave it out for whole games), got {self.max_steps}")
        if not 0.0 <= self.holdout < 1.0:
            raise UserError(f"--holdout is the fraction of episodes held out, in [0, 1), got {self.holdout:g}")
        if not 0.0 <= self.sticky_p <= 1.0:
            raise UserError(f"--sticky-p is a probability in [0, 1], got {self.sticky_p:g}")
        if self.repeat_action_probability is not None and not 0.0 <= self.repeat_action_probability <= 1.0:
            raise UserError(f"--repeat-action-probability is a probability in [0, 1], got {self.repeat_action_probability:g}")
        if self.heldout_episodes() >= self.episodes:
            raise UserError(f"--holdout {self.holdout:g} of {self.episodes} episode(s) leaves none to train on: "
                            "collect more episodes or use --holdout 0")

    def heldout_episodes(self) -> int:
        """How many episodes are held out: ``holdout`` of them, rounded, and at least one when ``holdout > 0``."""
        return max(1, round(self.holdout * self.episodes)) if self.holdout > 0 else 0

    def plan(self) -> list[tuple[str, str, list[int]]]:
        """Every shard of the collection: (file, split, episode indices); the held-out episodes are the last ones."""
        train = self.episodes - self.heldout_episodes()
        shards = []
        for split, indices in (("train", range(train)), ("heldout", range(train, self.episodes))):
            for k, start in enumerate(range(0, len(indices), self.episodes_per_shard)):
                shards.append((f"{split}-{k:06d}.tar", split, list(indices[start : start + self.episodes_per_shard])))
        return shards


@dataclass
class CollectSummary:
    """What a run of :func:`collect` did: episodes and frames it recorded now, and in the whole folder."""

    manifest: Manifest
    episodes: int  # recorded by this run
    frames: int
    seconds: float
    skipped_shards: int  # whole shards found in the manifest
    returns: list[float]  # of this run's episodes


def collect(out: Path, args: CollectArgs, *, progress: bool = True, say: Callable[[str], None] = print) -> CollectSummary:
    """Record the collection ``args`` into the folder ``out``, resuming what its manifest lists (see the module)."""
    args.check()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the shards")
    env = make_env(args.env, args.repeat_action_probability)
    try:
        info = env_info(env, args.env)
        if args.policy == "agent":
            make_policy("agent", env, np.random.default_rng(0))  # refuses a game without a scripted player now
        manifest = _resume(out, args, info, say)
        return _record(env, out, args, manifest, progress=progress, say=say)
    finally:
        env.close()


def _resume(out: Path, args: CollectArgs, info: EnvInfo, say: Callable[[str], None]) -> Manifest:
    """The manifest to extend: the folder's own when it was collected with the same arguments (its shards that are
    no longer whole dropped), else a new one; UserError for a folder of another collection."""
    wanted = asdict(args)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    if not (out / "manifest.json").exists():
        return Manifest(env=info, frame_size=args.size, collection=wanted)
    manifest = Manifest.read(out)
    differ = [f"{k}={manifest.collection.get(k)!r} (now {v!r})" for k, v in wanted.items() if manifest.collection.get(k) != v]
    if manifest.env != info:
        differ.append(f"env {manifest.env} (now {info})")
    if differ:
        raise UserError(f"{out} holds another collection ({'; '.join(differ)}): rerun with its arguments to resume it, "
                        "or collect into a new folder")
    whole = []
    for entry in manifest.shards:
        path = out / entry.file
        if path.is_file() and path.stat().st_size == entry.bytes and sha256(path) == entry.sha256:
            whole.append(entry)
        else:
            say(f"{entry.file} is missing or changed since it was written: recording it again")
    manifest.shards = whole
    return manifest


def _record(env, out: Path, args: CollectArgs, manifest: Manifest, *, progress: bool, say: Callable[[str], None]) -> CollectSummary:
    from tqdm.auto import tqdm

    done = {entry.file for entry in manifest.shards}
    plan = args.plan()
    todo = [shard for shard in plan if shard[0] not in done]
    started, frames, returns = time.perf_counter(), 0, []
    order = [s[0] for s in plan]
    bar = tqdm(total=args.episodes, initial=args.episodes - sum(len(s[2]) for s in todo), desc=f"collect {args.env}",
               unit="episode", dynamic_ncols=True, disable=not progress)
    try:
        for file, split, indices in todo:
            if (out / file).exists():
                say(f"{file} is on disk but not in the manifest (left by a killed run): recording it again")
            episodes = []
            emulator_seed = int(np.random.SeedSequence([args.seed, indices[0], 1]).generate_state(1)[0] >> 1)
            for index in indices:
                episode = record_episode(env, args.policy, index=index, seed=args.seed, size=args.size, max_steps=args.max_steps,
                                         sticky_p=args.sticky_p, emulator_seed=emulator_seed if index == indices[0] else None)
                episodes.append((index, episode))
                frames += len(episode.frames)
                returns.append(episode.meta["return"])
                bar.update(1)
                bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - started):.0f}", mean_return=f"{np.mean(returns):.1f}")
            try:
                entry = write_shard(out / file, episodes, split, emulator_seed)
            except OSError as exc:
                raise UserError(f"cannot write {out / file}: {exc.strerror or exc}") from None
            manifest.shards = sorted([*manifest.shards, entry], key=lambda e: order.index(e.file))
            manifest.write(out)
    finally:
        bar.close()
    return CollectSummary(manifest, len(returns), frames, time.perf_counter() - started, len(plan) - len(todo), returns)

