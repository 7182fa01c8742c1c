"""The WebSocket protocol end to end on a live loopback server: validation, limits, disconnects, pacing."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.request

import pytest

from causal_rcm.errors import UserError
from causal_rcm.pipeline import StreamingPipeline
from causal_rcm.serve import WS_MAX_BYTES, create_app

from ..checkpoints import make_checkpoint
from .conftest import LiveServer, decode_frame, recv_frames, recv_json, serve_process, wait_until, websockets

START = {"type": "start", "prompt": "a red circle moves left", "steps": 1, "mode": "chunk", "seed": 1}

BAD_MESSAGES = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"type": "dance"}), "unknown message type 'dance'"),
    (json.dumps({"prompt": "a red circle"}), "unknown message type None"),
    (json.dumps({"type": "start"}), "prompt: Field required"),
    (json.dumps({**START, "steps": 9}), "steps: at most 4"),
    (json.dumps({**START, "steps": 0}), "steps: Input should be greater than or equal to 1"),
    (json.dumps({**START, "steps": "2"}), "steps: Input should be a valid integer"),
    (json.dumps({**START, "seed": -1}), "seed: Input should be greater than or equal to 0"),
    (json.dumps({**START, "seed": 2**40}), "seed: Input should be less than or equal to"),
    (json.dumps({**START, "mode": "video"}), "mode: Input should be 'frame' or 'chunk'"),
    (json.dumps({**START, "colour": "red"}), "colour: Extra inputs are not permitted"),
    (json.dumps({**START, "prompt": "a red dragon"}), "'dragon'"),
    (json.dumps({**START, "prompt": "a " * 400}), "prompt: String should have at most 300 characters"),
    (json.dumps({"type": "switch", "prompt": "a blue square"}), "no stream is running"),
    (json.dumps({"type": "stop"}), "no stream is running"),
    (json.dumps({"type": "action", "action": 1}), "takes no actions"),
    ("x" * 5000, "longer than 4096 bytes"),
]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_every_bad_message_gets_an_error_and_the_connection_stays_usable(pipeline):
    async def client(url):
        async with websockets.connect(url) as ws:
            hello = await recv_json(ws)
            assert hello["type"] == "hello" and hello["resolution"] == 32 and hello["max_steps"] == 4
            for text, expected in BAD_MESSAGES:
                await ws.send(text)
                reply = await recv_json(ws)
                assert reply["type"] == "error" and expected in reply["message"], (text[:40], reply)
            await ws.send(b"\x00\x01")
            assert "binary messages" in (await recv_json(ws))["message"]

            await ws.send(json.dumps(START))
            assert (await recv_json(ws))["type"] == "started"
            frames, others = await recv_frames(ws, 6)
            decoded = [decode_frame(f) for f in frames]
            assert [d[0] for d in decoded] == list(range(6))
            assert all(d[1:3] == (32, 32) and len(d[3]) == 32 * 32 * 3 for d in decoded)
            assert others[0] == {"type": "prompt", "prompt": START["prompt"], "frame": 0}
            assert len({d[3] for d in decoded}) > 1  # the frames change

            await ws.send(json.dumps({**START}))  # a second start on the same connection
            await ws.send(json.dumps({"type": "switch", "prompt": "a purple square"}))
            await ws.send(json.dumps({"type": "switch", "prompt": "a blue square moves up"}))
            errors, switched = [], None
            while switched is None:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, str):
                    reply = json.loads(message)
                    if reply["type"] == "error":
                        errors.append(reply["message"])
                    elif reply["type"] == "prompt":
                        switched = reply
            assert "already running" in errors[0] and "'purple'" in errors[1]
            assert switched["prompt"] == "a blue square moves up" and switched["frame"] > 0

            await ws.send(json.dumps({"type": "stop"}))
            while (reply := await recv_json(ws))["type"] != "stopped":
                pass
            assert reply["reason"] == "stop" and reply["frames"] >= 6

    with LiveServer(pipeline, realtime=False) as server:
        run(client(server.ws_url))
        assert wait_until(lambda: server.slots.active == 0)


def test_deep_and_oversized_messages_are_refused_before_parsing(pipeline):
    """Each gets an error reply, not a recursion error and a dropped connection; the connection then streams."""
    refused = [
        ("[" * 10000, "longer than 4096 bytes"),
        ("{" * 60000, "longer than 4096 bytes"),
        ("[" * 2000 + "]" * 2000, "nested deeper than 4 levels"),
        ('{"type": "start", "prompt": ' * 5 + '"a"' + "}" * 5, "nested deeper than 4 levels"),
        (json.dumps({**START, "prompt": "a [[[[[[ circle"}), "'[[[[[['"),  # brackets in a string are text
    ]

    async def client(url):
        async with websockets.connect(url) as ws:
            await recv_json(ws)
            for text, expected in refused:
                await ws.send(text)
                reply = await recv_json(ws)
                assert reply["type"] == "error" and expected in reply["message"], (text[:40], reply)
            await ws.send(json.dumps(START))
            assert (await recv_json(ws))["type"] == "started"
            await recv_frames(ws, 2)
            await ws.send("x" * (WS_MAX_BYTES + 1))  # past the WebSocket layer's limit: not read at all
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1009

    with LiveServer(pipeline, realtime=False) as server:
        run(client(server.ws_url))
        assert wait_until(lambda: server.slots.active == 0)


def test_busy_beyond_max_streams(pipeline):
    async def clients(url):
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await recv_json(a), await recv_json(b)
            await a.send(json.dumps(START))
            assert (await recv_json(a))["type"] == "started"
            await b.send(json.dumps(START))
            busy = await recv_json(b)
            assert busy["type"] == "busy" and busy["max_streams"] == 1 and "limit of 1 stream" in busy["message"]
            await a.send(json.dumps({"type": "stop"}))
            while (await recv_json(a))["type"] != "stopped":
                pass
            await b.send(json.dumps(START))  # the slot is free again, on the same connection
            assert (await recv_json(b))["type"] == "started"
            await recv_frames(b, 2)

    with LiveServer(pipeline, max_streams=1, realtime=False) as server:
        run(clients(server.ws_url))
        assert server.slots.peak == 1


def test_a_bad_start_gets_its_error_even_when_the_server_is_full(pipeline):
    bad_starts = [
        ({**START, "prompt": "a red dragon"}, "'dragon'"),
        ({**START, "prompt": "a red circle " * 20}, "more than the text length 16"),
        ({**START, "steps": 9}, "steps: at most 4"),
        ({**START, "seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({**START, "mode": "video"}, "mode: Input should be 'frame' or 'chunk'"),
    ]

    async def clients(url):
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await recv_json(a), await recv_json(b)
            await a.send(json.dumps(START))
            assert (await recv_json(a))["type"] == "started"
            for start, expected in bad_starts:
                await b.send(json.dumps(start))
                reply = await recv_json(b)
                assert reply["type"] == "error" and expected in reply["message"], (start, reply)
            await b.send(json.dumps(START))
            assert (await recv_json(b))["type"] == "busy"

    with LiveServer(pipeline, max_streams=1, realtime=False) as server:
        run(clients(server.ws_url))
        assert server.slots.peak == 1


def test_a_start_without_steps_gets_the_advertised_default(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "six", steps=6))

    async def client(url):
        async with websockets.connect(url) as ws:
            hello = await recv_json(ws)
            await ws.send(json.dumps({"type": "start", "prompt": START["prompt"]}))
            return hello["default_steps"], (await recv_json(ws))["steps"]

    with LiveServer(pipe, max_steps=4, realtime=False) as server:
        assert run(client(server.ws_url)) == (4, 4)  # the checkpoint's 6 steps, capped at max_steps


def test_a_client_that_disconnects_mid_stream_frees_its_stream(pipeline):
    def workers():
        return [t for t in threading.enumerate() if t.name == "causal-rcm-stream"]

    async def vanish(url, abrupt):
        ws = await websockets.connect(url)
        await recv_json(ws)
        await ws.send(json.dumps(START))
        await recv_frames(ws, 3)
        if abrupt:
            ws.transport.abort()  # no closing handshake
        else:
            await ws.close()

    with LiveServer(pipeline, max_streams=1, queue_frames=2, realtime=False) as server:
        for abrupt in (False, True):
            run(vanish(server.ws_url, abrupt))
            assert wait_until(lambda: server.slots.active == 0 and not workers()), (abrupt, server.slots.active)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/info", timeout=5) as reply:
            assert json.load(reply)["active_streams"] == 0


def test_realtime_sends_at_the_checkpoint_fps(pipeline):
    async def client(url):
        async with websockets.connect(url) as ws:
            await recv_json(ws)
            await ws.send(json.dumps(START))
            await recv_frames(ws, 1)
            started = time.perf_counter()
            await recv_frames(ws, 4)
            return time.perf_counter() - started

    with LiveServer(pipeline, realtime=True) as server:
        elapsed = run(client(server.ws_url))
    assert 4 / 8 - 0.05 <= elapsed < 2.0  # 8 fps: four more frames take half a second


def http_status(port: int, path: str, headers: dict[str, str]) -> int:
    """GET ``path`` from 127.0.0.1:``port`` with ``headers`` (a Host given here replaces the real one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


async def ws_status(port: int, host: str, origin: str | None = None) -> int:
    """Open /ws on 127.0.0.1:``port`` naming ``host`` in Host: 101 if it opens (and says hello), else the HTTP status."""
    try:
        async with websockets.connect(f"ws://{host}/ws", host="127.0.0.1", port=port, origin=origin, proxy=None) as ws:
            assert (await recv_json(ws))["type"] == "hello"
            return 101
    except websockets.exceptions.InvalidStatus as exc:
        return exc.response.status_code


def test_only_allowed_hosts_and_origins_are_served(pipeline):
    """Localhost names and the allowed ones, on any port; DNS-rebound and cross-site requests are refused."""
    with LiveServer(pipeline, allowed_hosts=["studio.example"]) as server:
        port = server.port
        allowed = [f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]:8000", "studio.example:443"]
        refused = ["evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "evil.example@localhost",
                   "localhost/x", "[::2]", ""]
        for path in ("/", "/api/info"):
            assert [http_status(port, path, {"Host": h}) for h in allowed] == [200] * len(allowed), path
            assert [http_status(port, path, {"Host": h}) for h in refused] == [403] * len(refused), path
        assert http_status(port, "/api/info", {"Host": "localhost", "Origin": "http://evil.example"}) == 403
        for origin in ("null", "http://[evil", "http://localhost.evil.example", "http://localhost/x"):
            assert http_status(port, "/api/info", {"Host": "localhost", "Origin": origin}) == 403, origin
        assert http_status(port, "/nowhere", {"Host": "evil.example"}) == 403

        async def sockets():
            return [
                await ws_status(port, f"localhost:{port}"),
                await ws_status(port, "studio.example", origin="https://studio.example"),
                await ws_status(port, f"127.0.0.1:{port}", origin=f"http://localhost:{port}"),
                await ws_status(port, f"evil.example:{port}"),  # DNS rebinding
                await ws_status(port, f"127.0.0.1:{port}", origin="http://evil.example"),  # another site's page
                await ws_status(port, f"127.0.0.1:{port}", origin="null"),
            ]

        assert run(sockets()) == [101, 101, 101, 403, 403, 403]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as reply:
            assert reply.status == 200  # the test's other clients name 127.0.0.1
    with pytest.raises(UserError, match="not a host name or IP address"):
        create_app(pipeline, allowed_hosts=["http://studio.example"])


def test_serve_answers_to_its_allowed_hosts(tmp_path):
    proc, url = serve_process(make_checkpoint(tmp_path / "ckpt"), "--allowed-host", "Studio.Example")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        assert http_status(port, "/api/info", {"Host": "studio.example"}) == 200
        assert http_status(port, "/api/info", {"Host": "evil.example"}) == 403
    finally:
        proc.terminate()
        proc.wait(10)


def test_world_model_actions_over_the_socket(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "wm", num_actions=5))

    async def client(url):
        async with websockets.connect(url) as ws:
            assert (await recv_json(ws))["num_actions"] == 5
            await ws.send(json.dumps(START))
            await recv_json(ws)
            await ws.send(json.dumps({"type": "action", "action": 9}))
            _, others = await recv_frames(ws, 2)
            while not any(o["type"] == "error" for o in others):
                others.append(await recv_json(ws))
            assert any("0..4" in o.get("message", "") for o in others)
            await ws.send(json.dumps({"type": "action", "action": 3}))
            await recv_frames(ws, 4)

    with LiveServer(pipe, realtime=False) as server:
        run(client(server.ws_url))


def test_bidirectional_checkpoints_are_not_served(tmp_path):
    pipe = StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / "bi", causal=False))
    with pytest.raises(UserError, match="causal checkpoint"):
        create_app(pipe)


def test_a_server_window_reaches_every_stream(pipeline, monkeypatch):
    windows = []
    stream = pipeline.stream

    def spy(*args, **kw):
        windows.append(kw.get("window_frames"))
        return stream(*args, **kw)

    async def client(url):
        async with websockets.connect(url) as ws:
            hello = await recv_json(ws)
            await ws.send(json.dumps(START))
            frames, _ = await recv_frames(ws, 3)
            return hello, frames

    with pytest.raises(UserError, match="window_frames must hold a chunk of 2 frames, got 1"):
        create_app(pipeline, window_frames=1)
    monkeypatch.setattr(pipeline, "stream", spy)
    with LiveServer(pipeline, window_frames=6, realtime=False) as server:
        hello, frames = run(client(server.ws_url))
    assert hello["window_frames"] == 6 and len(frames) == 3 and windows[-1] == 6
