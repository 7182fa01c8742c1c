"""Bounded load test: 20 concurrent WebSocket clients on loopback, malformed ones among them."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from .conftest import LiveServer, recv_json, wait_until, websockets

CLIENTS, BAD_EVERY, FRAMES, MAX_STREAMS = 20, 3, 6, 6

MALFORMED = [
    "{", "null", "[]", json.dumps({"type": 7}), json.dumps({"type": "start", "prompt": 5}),
    json.dumps({"type": "start", "prompt": "a red circle", "steps": 10**9}), json.dumps({"type": "switch"}),
    "y" * 20000, json.dumps({"type": "start", "prompt": "a red circle", "seed": "zero"}),
]


async def good_client(url: str, k: int) -> dict:
    """Start a stream (retrying while busy), read FRAMES frames, switch once, stop."""
    result = {"frames": 0, "busy": 0}
    async with websockets.connect(url) as ws:
        await recv_json(ws)
        while True:
            await ws.send(json.dumps({"type": "start", "prompt": "a green square moves down", "steps": 1 + k % 2,
                                      "mode": ("frame", "chunk")[k % 2], "seed": k}))
            reply = await recv_json(ws)
            if reply["type"] == "started":
                break
            assert reply["type"] == "busy", reply
            result["busy"] += 1
            await asyncio.sleep(0.05)
        while result["frames"] < FRAMES:
            message = await ws.recv()
            if isinstance(message, bytes):
                result["frames"] += 1
                if result["frames"] == 2:
                    await ws.send(json.dumps({"type": "switch", "prompt": "a cyan circle moves up"}))
        await ws.send(json.dumps({"type": "stop"}))
        while (await recv_json(ws))["type"] != "stopped":
            pass
    return result


async def bad_client(url: str, k: int) -> dict:
    """Malformed messages (each must get an error reply), binary junk, then a stream abandoned abruptly."""
    errors = 0
    ws = await websockets.connect(url)
    await recv_json(ws)
    for text in MALFORMED:
        await ws.send(text)
        reply = await recv_json(ws)
        errors += reply["type"] == "error"
    await ws.send(bytes(range(256)))
    errors += (await recv_json(ws))["type"] == "error"
    await ws.send(json.dumps({"type": "start", "prompt": "a red circle", "steps": 1, "seed": k}))
    await recv_json(ws)  # started or busy
    ws.transport.abort()
    return {"errors": errors}


def test_twenty_concurrent_clients_with_malformed_ones(pipeline):
    async def load(url):
        jobs = [bad_client(url, k) if k % BAD_EVERY == 0 else good_client(url, k) for k in range(CLIENTS)]
        return await asyncio.wait_for(asyncio.gather(*jobs), 120)

    with LiveServer(pipeline, max_streams=MAX_STREAMS, realtime=False) as server:
        results = asyncio.run(load(server.ws_url))
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/info", timeout=5) as reply:
            assert reply.status == 200  # still up
        assert wait_until(lambda: server.slots.active == 0)
        assert server.slots.peak <= MAX_STREAMS
    good = [r for k, r in enumerate(results) if k % BAD_EVERY]
    bad = [r for k, r in enumerate(results) if not k % BAD_EVERY]
    assert len(good) == 13 and all(r["frames"] == FRAMES for r in good)
    assert all(r["errors"] == len(MALFORMED) + 1 for r in bad)
    assert sum(r["busy"] for r in good) > 0  # 13 streams wanted, 6 slots: some had to wait
