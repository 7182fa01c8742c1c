"""Image upload (POST /api/image) and streams that start from an uploaded frame, on a live loopback server."""

from __future__ import annotations

import asyncio
import http.client
import io
import json

import numpy as np
import pytest

from causal_rcm.limits import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE
from causal_rcm.pipeline import StreamingPipeline
from causal_rcm.serve import Play

from ..checkpoints import make_checkpoint
from .conftest import LiveServer, decode_frame, recv_json, websockets

START = {"type": "start", "prompt": "a red square moves right", "steps": 1, "mode": "chunk", "seed": 3}


def png(height: int, width: int) -> bytes:
    from PIL import Image

    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[height // 3 : height // 2, width // 3 : width // 2] = (230, 40, 40)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(port: int, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/image", body=body, headers={"Content-Type": "application/octet-stream", **(headers or {})})
        response = conn.getresponse()
        text = response.read().decode()
        return response.status, (json.loads(text) if text.startswith("{") else {"text": text})
    finally:
        conn.close()


async def frames_of(url: str, start: dict, n: int) -> tuple[list[int], list[np.ndarray], dict]:
    async with websockets.connect(url) as ws:
        await recv_json(ws)
        await ws.send(json.dumps(start))
        started = await recv_json(ws)
        indices, images = [], []
        while len(images) < n:
            message = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(message, str):
                assert json.loads(message)["type"] in ("prompt", "action"), message  # the first frame's prompt
                continue
            index, width, height, rgb = decode_frame(message)
            indices.append(index)
            images.append(np.frombuffer(rgb, np.uint8).reshape(height, width, 3))
        return indices, images, started


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> StreamingPipeline:
    """Two frames a latent frame: the image fills one, the first chunk makes one more."""
    return StreamingPipeline.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("upload") / "ckpt", codec_frames=2))


def test_uploads_are_checked_by_content_size_and_dimensions(packed):
    with LiveServer(packed, realtime=False) as server:
        status, reply = upload(server.port, png(32, 32))
        assert status == 200 and reply["width"] == 32 and reply["height"] == 32 and reply["warning"] is None
        assert len(reply["id"]) >= 16
        status, reply = upload(server.port, png(40, 80))
        assert status == 200 and "80x40 px, another aspect ratio than the model's 32x32" in reply["warning"]
        status, reply = upload(server.port, b"GIF89a? no, a text file with a lying name", {"Content-Type": "image/png"})
        assert status == 400 and "cannot be read as an image" in reply["error"]
        status, reply = upload(server.port, b"%PDF-1.4 a document", {"Content-Type": "image/png"})
        assert status == 415 and reply["error"] == "the upload is not an image: give a PNG, JPEG, GIF, WebP or BMP file"
        status, reply = upload(server.port, png(1, MAX_IMAGE_SIDE + 8))
        assert status == 400 and f"at most {MAX_IMAGE_SIDE} px a side" in reply["error"]
        status, reply = upload(server.port, b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES))
        assert status == 413 and "over the 16 MiB limit" in reply["error"]
        status, _ = upload(server.port, png(32, 32), {"Origin": "http://evil.example"})
        assert status == 403  # another site's page cannot upload through the user's browser
        assert len(server.app.state.images._images) == 2  # the two accepted uploads only


def test_a_stream_starts_from_an_uploaded_frame(packed):
    with LiveServer(packed, realtime=False) as server:
        _, reply = upload(server.port, png(96, 96))
        indices, images, started = asyncio.run(frames_of(server.ws_url, {**START, "image": reply["id"]}, 6))
        assert started["image"] is True
        assert indices == list(range(2, 8))  # after the image's latent frame: its two frames
        image = np.asarray(packed.given_frames(image=server.app.state.images.get(reply["id"]))[0])
        expected = [f.image for f in packed.stream(START["prompt"], steps=1, seed=3, num_frames=6, image=image)]
        np.testing.assert_array_equal(np.stack(images), np.stack(expected))
        _, plain, _ = asyncio.run(frames_of(server.ws_url, START, 6))
        assert np.abs(np.stack(plain).astype(int) - np.stack(images).astype(int)).max() > 10

        async def unknown():
            async with websockets.connect(server.ws_url) as ws:
                await recv_json(ws)
                await ws.send(json.dumps({**START, "image": "no-such-upload"}))
                return await recv_json(ws)

        reply = asyncio.run(unknown())
        assert reply["type"] == "error" and "no upload with this id" in reply["message"]


def test_a_world_model_streams_from_an_uploaded_frame_and_side_by_side_refuses_it(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "agent", num_actions=5))
    play = Play(None, ("NOOP", "UP", "DOWN", "LEFT", "RIGHT"), 2, 32)
    with LiveServer(pipe, realtime=False, play=play) as server:
        _, reply = upload(server.port, png(32, 32))
        indices, images, _ = asyncio.run(frames_of(server.ws_url, {**START, "prompt": "", "image": reply["id"]}, 4))
        assert indices == [1, 2, 3, 4]  # after the uploaded frame (one frame a latent frame)
        expected = [f.image for f in pipe.stream("", steps=1, seed=3, num_frames=5, guidance=1.0, actions=lambda i: 0,
                                                 image=server.app.state.images.get(reply["id"]))][:4]  # whole chunks
        np.testing.assert_array_equal(np.stack(images), np.stack(expected))
    side = Play(None, ("NOOP", "UP", "DOWN", "LEFT", "RIGHT"), 2, 32, side_by_side=True)
    with LiveServer(pipe, realtime=False, play=side) as server:
        _, reply = upload(server.port, png(32, 32))

        async def refused():
            async with websockets.connect(server.ws_url) as ws:
                await recv_json(ws)
                await ws.send(json.dumps({**START, "prompt": "", "image": reply["id"]}))
                return await recv_json(ws)

        reply = asyncio.run(refused())
        assert reply["type"] == "error" and "without --side-by-side" in reply["message"]
