"""A live server on an ephemeral loopback port (uvicorn in a thread, or `causal-rcm serve`) and a WebSocket client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
websockets = pytest.importorskip("websockets")
uvicorn = pytest.importorskip("uvicorn")

import causal_rcm  # noqa: E402
from causal_rcm.pipeline import StreamingPipeline  # noqa: E402
from causal_rcm.serve import FRAME_HEADER, WS_MAX_BYTES, bind, create_app  # noqa: E402

from ..checkpoints import make_checkpoint  # noqa: E402


class LiveServer:
    """``create_app(pipeline, **kw)`` served by uvicorn on 127.0.0.1:<ephemeral> in a daemon thread."""

    def __init__(self, pipeline: StreamingPipeline, **kw) -> None:
        self.app = create_app(pipeline, **kw)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", ws_max_size=WS_MAX_BYTES))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def slots(self):
        return self.app.state.slots

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def serve_process(checkpoint: Path, *args: str, command: str = "serve") -> tuple[subprocess.Popen, str]:
    """`causal-rcm serve ARGS` (or `play`) on an ephemeral loopback port; returns the process and its URL (from its
    first line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(causal_rcm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "causal_rcm.cli", command, "--checkpoint", str(checkpoint), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise AssertionError(f"serve did not start: {line!r} {proc.stderr.read()}")
    return proc, line.split(" on ")[1].split()[0]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def decode_frame(data: bytes) -> tuple[int, int, int, bytes]:
    """Binary frame message -> (index, width, height, rgb bytes)."""
    index, width, height, _, _ = FRAME_HEADER.unpack_from(data)
    return index, width, height, data[FRAME_HEADER.size:]


async def recv_json(ws, timeout: float = 10.0, skip_frames: bool = True) -> dict:
    """The next JSON message (binary frames in between are skipped)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str):
            return json.loads(message)
        if not skip_frames:
            raise AssertionError("expected a JSON message, got a frame")


async def recv_frames(ws, n: int, timeout: float = 20.0) -> tuple[list[bytes], list[dict]]:
    """Collect ``n`` frames; returns (frames, JSON messages seen meanwhile)."""
    frames, others = [], []
    async def collect():
        while len(frames) < n:
            message = await ws.recv()
            (frames if isinstance(message, bytes) else others).append(message if isinstance(message, bytes) else json.loads(message))
    await asyncio.wait_for(collect(), timeout)
    return frames, others


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> StreamingPipeline:
    return StreamingPipeline.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt"))
