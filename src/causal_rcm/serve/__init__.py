"""Web server: FastAPI + WebSocket streaming of a StreamingPipeline to one static page (``static/``).

``create_app(pipeline, ...)`` builds the app (protocol in :mod:`causal_rcm.serve.app`);
``run(pipeline, host, port, ...)`` serves it with uvicorn, bound to localhost by default and answering
requests that name localhost or the bound host (more with ``allowed_hosts``).
"""

from __future__ import annotations

import socket
from typing import Callable, Iterable

from causal_rcm.errors import UserError
from causal_rcm.serve.app import FRAME_HEADER, WS_MAX_BYTES, create_app
from causal_rcm.serve.play import Play

__all__ = ["FRAME_HEADER", "WS_MAX_BYTES", "Play", "create_app", "run", "bind"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: an ephemeral port; read it with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def run(
    pipeline, *, host: str = "127.0.0.1", port: int = 8000, max_streams: int = 2, max_steps: int = 4,
    realtime: bool = True, log_level: str = "warning", on_ready: Callable[[str], None] | None = None,
    window_frames: int | None = None, allowed_hosts: Iterable[str] = (), play: Play | None = None, queue_frames: int = 4,
) -> None:
    """Serve ``pipeline`` until interrupted (in play mode with ``play``); ``on_ready(url)`` is called once the
    socket is bound.

    Requests may name ``host`` and ``allowed_hosts`` besides the localhost names (see ``create_app``).
    """
    import uvicorn

    app = create_app(pipeline, max_streams=max_streams, max_steps=max_steps, realtime=realtime, queue_frames=queue_frames,
                     window_frames=window_frames, allowed_hosts=(host, *allowed_hosts), play=play)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level=log_level, ws_max_size=WS_MAX_BYTES, ws_ping_interval=20, ws_ping_timeout=20)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(f"http://{shown}:{bound}/")
    server.run(sockets=[sock])
