"""Play mode: a world model steered over the WebSocket from the real emulator's first frames, side by side with it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from causal_rcm.data.atari import make_env, resize
from causal_rcm.errors import UserError
from causal_rcm.pipeline import StreamingPipeline
from causal_rcm.serve import Play
from causal_rcm.spec import PipelineSpec

from ..checkpoints import make_checkpoint, make_world_checkpoint
from .conftest import LiveServer, decode_frame, recv_json, websockets


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world_checkpoint(tmp_path_factory.mktemp("play") / "world")


def _frames_until(ws, n: int, action: int | None = None, timeout: float = 30.0):
    """Read ``n`` frames; returns them as (index, image), each one's action (``action`` until an ``action`` message
    names another) and the error messages seen."""
    async def read():
        nonlocal action
        frames, actions, errors = [], {}, []
        while len(frames) < n:
            message = await ws.recv()
            if isinstance(message, str):
                msg = json.loads(message)
                if msg["type"] == "action":
                    action = msg["action"]
                elif msg["type"] == "error":
                    errors.append(msg["message"])
                continue
            index, width, height, rgb = decode_frame(message)
            frames.append((index, np.frombuffer(rgb, np.uint8).reshape(height, width, 3)))
            actions[index] = action
        return frames, actions, errors
    return asyncio.wait_for(read(), timeout)


def test_keys_steer_the_model_beside_the_emulator_and_bad_actions_are_refused(world):
    pipe = StreamingPipeline.from_pretrained(world)
    play = Play.of(pipe.config, str(world), side_by_side=True)

    async def scenario(url):
        async with websockets.connect(url) as ws:
            hello = await recv_json(ws)
            assert hello["play"] == {"env": "ALE/Breakout-v5", "action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT"],
                                     "side_by_side": True, "context_frames": 2}
            await ws.send(json.dumps({"type": "start", "prompt": "", "steps": 1, "seed": 3}))
            assert (await recv_json(ws))["type"] == "started"
            noop, acts, _ = await _frames_until(ws, 4)
            await ws.send(json.dumps({"type": "action", "action": 2}))
            await ws.send(json.dumps({"type": "action", "action": 9}))
            await ws.send(json.dumps({"type": "action", "action": -1}))
            right, more, errors = await _frames_until(ws, 8, acts[5])
            await ws.send(json.dumps({"type": "stop"}))
            return noop + right, {**acts, **more}, errors

    with LiveServer(pipe, play=play, realtime=False, queue_frames=2) as server:
        frames, actions, errors = asyncio.run(scenario(server.ws_url))
    assert errors[0] == "action must be in 0..3, got 9" and errors[1].startswith("action: ")  # the stream went on
    assert [i for i, _ in frames] == list(range(2, 14))  # numbered after the emulator's two context frames
    assert all(image.shape == (32, 64, 3) for _, image in frames)  # model | emulator
    assert actions[2] == 0 and actions[13] == 2
    model = {i: image[:, :32].astype(int) for i, image in frames}
    first_right = min(i for i in actions if actions[i] == 2)
    same = np.abs(model[first_right + 2] - model[first_right + 4]).mean()
    changed = np.abs(model[first_right - 1] - model[first_right + 2]).mean()
    assert changed > 5 * same  # the key, not the passing frames, changed what the model draws

    env = make_env("ALE/Breakout-v5", 0.25)  # the emulator with the same seed and the actions the frames were made with
    screen, _ = env.reset(seed=3)
    env.step(0)
    for i, image in frames:
        screen = env.step(actions[i])[0]
        np.testing.assert_array_equal(image[:, 32:], resize(screen, 32))
    env.close()


def test_play_refuses_what_cannot_be_played(world, tmp_path):
    spec = PipelineSpec.read(world)
    no_actions = make_world_checkpoint(tmp_path / "no-actions", num_actions=0)
    with pytest.raises(UserError, match="was trained without actions, so keys cannot steer it"):
        Play.of(PipelineSpec.read(no_actions), "no-actions")
    bidirectional = make_world_checkpoint(tmp_path / "bidirectional", causal=False)
    with pytest.raises(UserError, match="bidirectional model: play streams frame by frame"):
        Play.of(PipelineSpec.read(bidirectional), "bidirectional")
    with pytest.raises(UserError, match="unknown environment 'ALE/Breakout-v9'.*ALE/Breakout-v5"):
        Play.of(spec, "world", env_id="ALE/Breakout-v9")
    with pytest.raises(UserError, match="world model of ALE/Breakout-v5 .* --env ALE/Pong-v5 has 6 actions"):
        Play.of(spec, "world", env_id="ALE/Pong-v5")
    shapes = PipelineSpec.read(make_checkpoint(tmp_path / "shapes", num_actions=5))
    assert Play.of(shapes, "shapes").action_meanings == ("NOOP", "UP", "DOWN", "LEFT", "RIGHT")
    with pytest.raises(UserError, match="shapes-world model with no emulator"):
        Play.of(shapes, "shapes", side_by_side=True)
    result = subprocess.run([sys.executable, "-m", "causal_rcm.cli", "play", "-c", str(no_actions), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "trained without actions" in result.stderr
