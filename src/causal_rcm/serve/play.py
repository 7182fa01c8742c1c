"""Play mode (``causal-rcm play``): a world model steered from the keyboard, continuing the real emulator's first frames.

A play stream starts as a recorded episode does: the emulator (ale-py) is reset with the client's seed, and its
first frames (the reset frame, then NOOPs, one chunk in all) are the model's context (:meth:`Stream.prefill`). From
there the model makes every frame under the action the client's keys set (no key: NOOP). With ``side_by_side`` the
emulator plays on with the same actions, one step per generated frame, and each frame message carries both images,
the model's on the left; when its game ends it shows its last frame. Play samples without CFG: the prompt is empty
and the actions reach both branches, which are therefore equal. A shapes-world model (agent mode) has no
emulator: it starts from its own first chunk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from causal_rcm.data.atari import env_info, make_env, resize
from causal_rcm.data.shapes import ACTIONS
from causal_rcm.data.shards import EnvInfo
from causal_rcm.errors import UserError
from causal_rcm.pipeline import Stream, StreamFrame
from causal_rcm.spec import PipelineSpec

__all__ = ["Play", "Session"]


@dataclass(frozen=True)
class Play:
    """What a play server knows of its game: the emulator (None: none), the actions' names, the context and layout."""

    env: EnvInfo | None
    action_meanings: tuple[str, ...]
    context_frames: int
    resolution: int
    side_by_side: bool = False

    @classmethod
    def of(cls, spec: PipelineSpec, name: str, *, env_id: str | None = None, side_by_side: bool = False) -> Play:
        """The play mode of checkpoint ``name`` (its ``spec``); ``env_id`` another emulator of the same game (same
        actions and frameskip). UserError for a model without actions, a bidirectional one, an unknown or other game."""
        if not spec.num_actions:
            raise UserError(f"{name} was trained without actions, so keys cannot steer it: play needs a world model "
                            "(trained on data.source=atari shards, or the shapes world with data.agent=true)")
        if not spec.causal:
            raise UserError(f"{name} is a bidirectional model: play streams frame by frame, which needs a causal one "
                            "(a causal teacher or a distilled student)")
        if spec.env is None:
            if env_id is not None or side_by_side:
                raise UserError(f"{name} is a {spec.source}-world model with no emulator: --env and --side-by-side "
                                "are for Atari world models")
            return cls(None, tuple(a.upper() for a in ACTIONS), spec.frames_per_chunk, spec.resolution)
        env = spec.env
        if env_id is not None and env_id != env.id:
            emulator = make_env(env_id, env.repeat_action_probability)  # an unknown id fails here, naming valid ones
            try:
                other = env_info(emulator, env_id)
            finally:
                emulator.close()
            if (other.action_meanings, other.frameskip) != (env.action_meanings, env.frameskip):
                raise UserError(f"{name} is a world model of {env.id} ({env.num_actions} actions, frameskip {env.frameskip}); "
                                f"--env {env_id} has {other.num_actions} actions and frameskip {other.frameskip}: "
                                f"play it with --env {env.id}")
            env = other
        else:
            make_env(env.id, env.repeat_action_probability).close()  # ale-py and the game are there: fail now, not per client
        return cls(env, env.action_meanings, spec.frames_per_chunk, spec.resolution, side_by_side)

    def info(self) -> dict:
        """What the page shows (the ``play`` entry of the server's hello)."""
        return {"env": None if self.env is None else self.env.id, "action_meanings": list(self.action_meanings),
                "side_by_side": self.side_by_side, "context_frames": self.context_frames if self.env else 0}

    def session(self, seed: int) -> Session:
        return Session(self, seed)


class Session:
    """One play stream's emulator: reset with the client's seed when the stream starts (in its worker thread: a
    seeded reset loads the ROM), then stepped with each generated frame's action when side by side."""

    def __init__(self, play: Play, seed: int) -> None:
        self.play, self.seed = play, seed
        self._env = None
        self._last: np.ndarray | None = None
        self._over = False

    def start(self, stream: Stream) -> None:
        """Prefill ``stream`` with the emulator's first frames (nothing without an emulator)."""
        play = self.play
        if play.env is None:
            return
        self._env = make_env(play.env.id, play.env.repeat_action_probability)
        noop = play.action_meanings.index("NOOP") if "NOOP" in play.action_meanings else 0
        screen, _ = self._env.reset(seed=self.seed)
        frames = [resize(screen, play.resolution)]
        while len(frames) < play.context_frames:
            frames.append(self._step(noop))
        self._last = frames[-1]
        stream.prefill(np.stack(frames), [noop] * len(frames))

    def _step(self, action: int) -> np.ndarray:
        screen, _, terminated, truncated, _ = self._env.step(action)
        self._over = terminated or truncated
        return resize(screen, self.play.resolution)

    def frame(self, frame: StreamFrame) -> StreamFrame:
        """``frame`` as sent: side by side, the model's image beside the emulator's after the same action."""
        if not self.play.side_by_side or self._env is None:
            return frame
        if not self._over and frame.action is not None:
            self._last = self._step(frame.action)
        return dataclasses.replace(frame, image=np.concatenate([frame.image, self._last], axis=1))  # (H, 2W, 3)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
