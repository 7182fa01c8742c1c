"""Rounds of clients on a loopback server: threads, streams and memory must level off, not grow per client.

The soak (25 rounds of 20 clients, ~25 s on 2 CPU cores) reads this process's RSS after each round,
server and clients together. Before the fix it rose ~2 MB a round until a full collection came, some 20
rounds in (every connection left reference cycles holding its stream); after it, the last 10 of 25
rounds added 0.5-0.7 MB in all (five runs, Python 3.11, torch on CPU). The bound, 3 MB over 10 rounds,
leaves a margin of four.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import weakref

from .conftest import LiveServer, recv_frames, recv_json, wait_until, websockets

START = {"type": "start", "prompt": "a red circle moves left", "steps": 1, "mode": "chunk"}
LEVEL_ROUNDS, LEVEL_MB = 10, 3.0


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def track_streams(pipeline, monkeypatch) -> list[weakref.ref]:
    """Weak references to every stream the server makes from now on."""
    made, stream = [], pipeline.stream

    def spy(*args, **kw):
        made.append(weakref.ref(s := stream(*args, **kw)))
        return s

    monkeypatch.setattr(pipeline, "stream", spy)
    return made


def stream_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "causal-rcm-stream"]


async def short_visit(url: str, k: int) -> None:
    """Start a stream, read two frames, leave: odd clients abruptly (no closing handshake)."""
    ws = await websockets.connect(url)
    await recv_json(ws)
    await ws.send(json.dumps({**START, "seed": k}))
    assert (await recv_json(ws))["type"] == "started"
    await recv_frames(ws, 2)
    if k % 2:
        ws.transport.abort()
    else:
        await ws.close()


def run_rounds(server: LiveServer, made: list[weakref.ref], rounds: int, clients: int) -> list[float]:
    """RSS (MB) after each round, once the server has freed every stream and worker of the round."""
    async def one_round():
        await asyncio.wait_for(asyncio.gather(*(short_visit(server.ws_url, k) for k in range(clients))), 60)

    sizes = []
    for _ in range(rounds):
        asyncio.run(one_round())
        assert wait_until(lambda: server.slots.active == 0 and not stream_workers() and all(r() is None for r in made))
        sizes.append(rss_mb())
    return sizes


def test_rounds_of_clients_leave_no_threads_streams_or_slots(pipeline, monkeypatch):
    made = track_streams(pipeline, monkeypatch)
    with LiveServer(pipeline, max_streams=5, realtime=False) as server:
        threads = threading.active_count()
        run_rounds(server, made, rounds=5, clients=5)
        assert len(made) == 25 and server.slots.peak <= 5
        assert threading.active_count() == threads

        async def stop_and_stay(url):
            async with websockets.connect(url) as ws:
                await recv_json(ws)
                await ws.send(json.dumps(START))
                await recv_frames(ws, 2)
                await ws.send(json.dumps({"type": "stop"}))
                while (await recv_json(ws))["type"] != "stopped":
                    pass
                # Still connected: the stopped stream is freed by reference counting, no collection needed.
                assert wait_until(lambda: made[-1]() is None, timeout=5)

        gc.disable()
        try:
            asyncio.run(asyncio.wait_for(stop_and_stay(server.ws_url), 30))
        finally:
            gc.enable()


def test_memory_levels_off_over_rounds_of_twenty_clients(pipeline, monkeypatch):
    made = track_streams(pipeline, monkeypatch)
    with LiveServer(pipeline, max_streams=20, realtime=False) as server:
        sizes = run_rounds(server, made, rounds=25, clients=20)
    print("RSS MB per round:", " ".join(f"{s:.1f}" for s in sizes))
    growth = sizes[-1] - sizes[-1 - LEVEL_ROUNDS]
    assert growth < LEVEL_MB, f"RSS grew {growth:.2f} MB over the last {LEVEL_ROUNDS} rounds: {sizes}"
