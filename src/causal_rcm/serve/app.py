"""FastAPI + WebSocket server: live streams of a :class:`~causal_rcm.pipeline.StreamingPipeline` to one page.

Routes: ``GET /`` the page, ``GET /app.js`` its script, ``GET /api/info`` the checkpoint and
server limits (JSON), ``POST /api/image`` a first frame (below), ``WS /ws`` the stream protocol. Every request must name an allowed host in its
``Host`` header, and in its ``Origin`` header when it has one (localhost, 127.0.0.1, ::1 and the
``allowed_hosts`` of :func:`create_app`, on any port): others get HTTP 403, a WebSocket is closed
before it opens (1008, policy violation). This keeps other sites' pages out, DNS rebinding included.

client -> server: JSON text, every message validated; a bad one gets an ``error`` reply and the
connection stays usable. Before parsing, a message must be at most ``MAX_MESSAGE_BYTES`` (4096) bytes
of UTF-8 and nest ``[]``/``{}`` at most ``MAX_DEPTH`` (4) deep (a valid one is a flat object); one over
``WS_MAX_BYTES`` (64 KiB) is not read at all: the connection is closed (1009, message too big)::

    {"type": "start", "prompt": str, "steps": 1..max_steps, "mode": "frame"|"chunk", "seed": 0..2**31-1,
     "image": str}                              image (optional): an upload's id, the stream's first frame
    {"type": "switch", "prompt": str}          while a stream runs: new prompt from the next chunk
    {"type": "action", "action": int}          world-model checkpoints: action for the next frames
    {"type": "stop"}

(a start's steps default to hello's ``default_steps``: the checkpoint's, at most ``max_steps``)

server -> client: JSON ``hello`` (on connect: checkpoint and limits), ``started``, ``prompt``
(the first frame under a new prompt follows), ``action`` {action, frame} (world models: the first
frame under a new action follows), ``stopped``, ``error`` {message}, ``busy``
{message, max_streams}; and one **binary** message per frame: a 16-byte little-endian header
(uint32 frame index, uint16 width, uint16 height, float32 chunk compute ms, float32 seconds
since start) followed by width * height * 3 RGB bytes.

Play mode (``create_app(play=...)``, :mod:`causal_rcm.serve.play`): hello's ``play`` names the game and its
actions; a start resets the emulator with its seed and the stream continues the emulator's first frames
(frame indices count them); side by side, a frame's image is the model's and the emulator's, width 2W. A start
with an uploaded image continues the image instead (under NOOP), without the emulator (not side by side).

Image upload (image-to-video): ``POST /api/image`` with the file's bytes as the body (any content type). The server
reads at most ``MAX_IMAGE_BYTES`` of it (a larger body, or a ``Content-Length`` that says so: 413) and accepts a
PNG, JPEG, GIF, WebP or BMP by its first bytes, not by its name or header (else 415), of at most
``MAX_IMAGE_SIDE`` px a side read from its header before decoding (else 400); errors are JSON ``{"error":
message}``, one line. An accepted image is fitted to the checkpoint's frames (centre-cropped to its aspect ratio,
resized) and kept under a random id, the ``images`` most recent of them (``4 * max_streams``): the reply is
``{"id", "width", "height", "warning"}`` (``warning``: the crop to another aspect ratio, or null). A start names the
id; the stream's first latent frame is the image, encoded and committed in the stream's worker
(``StreamingPipeline.given_frames``), and its frames are numbered after the image's.

Resources: at most ``max_streams`` streams run at once (beyond: ``busy``, sent only to a start that
is valid in every other way); each runs in its own worker thread, handing frames to the event loop
through a queue of ``queue_frames`` frames (a slow client blocks its own worker, nothing else); a
stop or a disconnect sets a flag the worker checks after every frame, and the stream's slot is
freed when its worker has exited. With ``realtime`` the frames are sent no faster than the
checkpoint's fps. Memory stays level over any number of clients: their reference cycles are
collected as each one leaves.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Iterable, Literal, Union

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError
from starlette.datastructures import Headers

from causal_rcm.data.video import fit_frames, read_image
from causal_rcm.errors import UserError
from causal_rcm.limits import MAX_IMAGE_BYTES, MAX_SEED
from causal_rcm.pipeline import MODES, StreamFrame, StreamingPipeline
from causal_rcm.serve.play import Play, Session

__all__ = ["create_app", "FRAME_HEADER"]

log = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct("<IHHff")  # index, width, height, chunk ms, seconds since start
MAX_PROMPT_CHARS = 300
MAX_MESSAGE_BYTES = 4096
MAX_DEPTH = 4  # [] / {} nesting; json.loads recurses once per level and would hit Python's recursion limit
WS_MAX_BYTES = 64 * 1024  # the WebSocket layer's own limit: larger messages close the connection unread
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # always allowed


# ------------------------------------------------------------------ messages
class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartMessage(_Message):
    type: Literal["start"]
    prompt: StrictStr = Field(max_length=MAX_PROMPT_CHARS)
    steps: StrictInt | None = Field(default=None, ge=1)
    mode: Literal["frame", "chunk"] = "chunk"
    seed: StrictInt = Field(default=0, ge=0, le=MAX_SEED)
    image: StrictStr | None = Field(default=None, max_length=64)


class SwitchMessage(_Message):
    type: Literal["switch"]
    prompt: StrictStr = Field(max_length=MAX_PROMPT_CHARS)


class ActionMessage(_Message):
    type: Literal["action"]
    action: StrictInt = Field(ge=0)


class StopMessage(_Message):
    type: Literal["stop"]


ClientMessage = TypeAdapter(
    Annotated[Union[StartMessage, SwitchMessage, ActionMessage, StopMessage], Field(discriminator="type")]
)
MESSAGE_TYPES = ("start", "switch", "action", "stop")


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)  # a string (taken whole) or a bracket


def _nesting(text: str) -> int:
    """Deepest ``[]``/``{}`` nesting in JSON ``text``, counted without parsing (brackets in strings ignored)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(text):
        if token in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in ("]", "}"):
            depth -= 1
    return deepest


def parse_message(text: str) -> StartMessage | SwitchMessage | ActionMessage | StopMessage:
    """Validate one client message; UserError with a one-line reason otherwise (size and depth before parsing)."""
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        raise UserError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
    if _nesting(text) > MAX_DEPTH:
        raise UserError(f"message nested deeper than {MAX_DEPTH} levels of [] or {{}}; send one flat JSON object")
    try:
        data = json.loads(text)
    except ValueError:  # JSONDecodeError, or a number past int's digit limit
        raise UserError("message is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError("message must be a JSON object with a 'type'")
    if data.get("type") not in MESSAGE_TYPES:
        raise UserError(f"unknown message type {data.get('type')!r}; expected one of {', '.join(MESSAGE_TYPES)}")
    try:
        return ClientMessage.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        raise UserError(f"{where}: {err['msg']}") from None


# --------------------------------------------------------------------- hosts
_NETLOC = re.compile(r"(?P<host>[a-z0-9._-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def _host_of(netloc: str) -> str | None:
    """The host of a ``Host`` header or URL authority, lower case, IPv6 unbracketed ('[::1]:80' -> '::1');
    None for anything else (user info, a path, odd characters)."""
    match = _NETLOC.fullmatch(netloc.lower())
    return None if match is None else match["host"].strip("[]")


def _allowed_host(name: str) -> str:
    """``name`` as the allow-list keeps it (see ``_host_of``); UserError unless a bare host name or IP address."""
    bare = name.strip().lower().removeprefix("[").removesuffix("]")
    if not bare or _host_of(f"[{bare}]" if ":" in bare else bare) != bare:
        raise UserError(f"allowed host {name!r} is not a host name or IP address without scheme or port "
                        "(e.g. example.com, 192.168.1.5, ::1)")
    return bare


class _HostGuard:
    """ASGI middleware: refuse requests whose ``Host``, or ``Origin`` when present, names no allowed host.

    A page on another site can reach a loopback server through the user's browser: directly (its
    requests then carry its ``Origin``) or by DNS rebinding, its own name resolving to 127.0.0.1 (its
    requests then carry its name in ``Host``). One check of both headers keeps out either.
    """

    # Names no allowed host: a page that rebound its own name to this server could read them here.
    REFUSAL = ("host not allowed: this server answers to localhost and the names given with "
               "`causal-rcm serve --allowed-host`")

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    def permits(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        # An Origin is "scheme://host[:port]" or "null"; urlsplit would raise on some malformed ones.
        hosts = [headers.get("host", "")] + ([] if origin is None else [origin.partition("://")[2]])
        return all(_host_of(h) in self.allowed for h in hosts)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.permits(Headers(scope=scope)):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await PlainTextResponse(self.REFUSAL, status_code=403)(scope, receive, send)
        else:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})


# ------------------------------------------------------------------- limits
@dataclass
class Settings:
    """Server limits (see the module docstring)."""

    max_streams: int = 2
    max_steps: int = 4
    default_steps: int = 4  # a start without steps: the checkpoint's, at most max_steps
    queue_frames: int = 4
    realtime: bool = True
    window_frames: int | None = None  # the streams' KV-cache window (None: the checkpoint's)


@dataclass
class Slots:
    """Running-stream counter with a limit; ``peak`` records the most ever held at once."""

    limit: int
    active: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            self.peak = max(self.peak, self.active)
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


class Images:
    """Uploaded first frames, fitted to the checkpoint's size, under random ids: the ``limit`` most recent kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: np.ndarray) -> str:
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._images[key] = image
            while len(self._images) > self.limit:
                self._images.popitem(last=False)
        return key

    def get(self, key: str) -> np.ndarray:
        with self._lock:
            image = self._images.get(key)
        if image is None:
            raise UserError("image: no upload with this id (uploads are kept a while only): upload the image again")
        return image


async def _read_upload(request: Request) -> bytes:
    """The request body, refused (UserError) as soon as it is known to exceed ``MAX_IMAGE_BYTES``."""
    too_big = f"the upload is over the {MAX_IMAGE_BYTES / 2**20:g} MiB limit of an image"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
        raise UserError(too_big)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_IMAGE_BYTES:
            raise UserError(too_big)
    return bytes(body)


class _Channel:
    """Bounded hand-off from a worker thread to the event loop (the worker blocks while it is full)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._room = threading.Semaphore(size)
        self._queue: asyncio.Queue = asyncio.Queue()  # bounded by _room

    def put(self, item: Any, stop: threading.Event) -> bool:
        """Hand over ``item``; False if ``stop`` was set (or the loop closed) while waiting for room."""
        while not self._room.acquire(timeout=0.05):
            if stop.is_set():
                return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed
            return False
        return True

    async def get(self) -> Any:
        item = await self._queue.get()
        self._room.release()
        return item


_END = object()


class _Steering:
    """The action a world-model stream applies from its next frame on (the client's latest ``action``).

    The stream holds this, not a closure over its job: the job holds the stream, and a reference
    cycle would keep the stream's tensors until the next full garbage collection.
    """

    def __init__(self) -> None:
        self.action = 0

    def __call__(self, frame: int) -> int:
        return self.action


class _Job:
    """One running stream: the pipeline's Stream, its worker thread and the task sending its frames; in play mode
    its emulator ``session``, started and stepped in the worker."""

    def __init__(self, stream, steering: _Steering, loop: asyncio.AbstractEventLoop, settings: Settings,
                 slots: Slots, session: Session | None = None, given: np.ndarray | None = None) -> None:
        self.stream, self.steering, self.session, self.given = stream, steering, session, given
        self.channel = _Channel(loop, settings.queue_frames)
        self.stop = threading.Event()
        self.done = loop.create_future()
        self.sent = 0
        self.sender: asyncio.Task | None = None
        self._loop, self._slots = loop, slots
        self.thread = threading.Thread(target=self._work, name="causal-rcm-stream", daemon=True)

    def _work(self) -> None:
        try:
            if self.given is not None:  # an uploaded first frame: encoded and committed here, off the event loop
                self.stream.prefill(self.given)
            elif self.session is not None:
                self.session.start(self.stream)
            for frame in self.stream:
                if self.session is not None:
                    frame = self.session.frame(frame)
                if self.stop.is_set() or not self.channel.put(frame, self.stop):
                    break
        except UserError as exc:
            self.channel.put(f"stream stopped: {exc}", self.stop)
        except Exception as exc:  # a failing stream must not take the server down
            log.exception("stream worker failed")
            self.channel.put(f"stream stopped by an internal error: {type(exc).__name__}", self.stop)
        finally:
            if self.session is not None:
                self.session.close()
            self.channel.put(_END, self.stop)
            self._slots.release()
            try:
                self._loop.call_soon_threadsafe(lambda: self.done.done() or self.done.set_result(None))
            except RuntimeError:
                pass

    def halt(self) -> None:
        self.stop.set()
        self.stream.close()


def _encode_frame(frame: StreamFrame) -> bytes:
    H, W, _ = frame.image.shape
    header = FRAME_HEADER.pack(frame.index, W, H, frame.chunk_seconds * 1000.0, frame.time)
    return header + frame.image.tobytes()


# --------------------------------------------------------------- connection
class _Connection:
    """The protocol for one WebSocket client."""

    def __init__(self, ws: WebSocket, pipe: StreamingPipeline, settings: Settings, slots: Slots, play: Play | None,
                 images: Images) -> None:
        self.ws, self.pipe, self.settings, self.slots, self.play, self.images = ws, pipe, settings, slots, play, images
        self.job: _Job | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict | bytes) -> None:
        async with self._send_lock:
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_text(json.dumps(message))

    async def run(self, hello: dict) -> None:
        await self.ws.accept()
        try:
            await self.send(hello)
            while True:
                raw = await self.ws.receive()
                if raw["type"] == "websocket.disconnect":
                    break
                if raw.get("text") is None:
                    await self.send({"type": "error", "message": "binary messages are not accepted; send JSON text"})
                    continue
                try:
                    await self.handle(parse_message(raw["text"]))
                except UserError as exc:
                    await self.send({"type": "error", "message": str(exc)})
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: sending on a closed socket
            pass
        finally:
            await self.end_job(notify=False)

    async def handle(self, msg: StartMessage | SwitchMessage | ActionMessage | StopMessage) -> None:
        if isinstance(msg, StartMessage):
            await self.start(msg)
        elif isinstance(msg, SwitchMessage):
            if self.job is None:
                raise UserError("no stream is running: send start first")
            self.job.stream.switch_prompt(msg.prompt)
        elif isinstance(msg, ActionMessage):
            n = self.pipe.config.num_actions
            if n == 0:
                raise UserError("this checkpoint takes no actions")
            if msg.action >= n:
                raise UserError(f"action must be in 0..{n - 1}, got {msg.action}")
            if self.job is None:
                raise UserError("no stream is running: send start first")
            self.job.steering.action = msg.action
        else:
            if self.job is None:
                raise UserError("no stream is running")
            await self.end_job(notify=True)

    async def start(self, msg: StartMessage) -> None:
        if self.job is not None:
            raise UserError("a stream is already running on this connection: send stop first")
        if msg.steps is not None and msg.steps > self.settings.max_steps:
            raise UserError(f"steps: at most {self.settings.max_steps} on this server, got {msg.steps}")
        # The pipeline checks the whole start (prompt, steps, mode, seed) before a slot is sought, so a bad
        # one gets its own error even when the server is full. Cheap: the KV cache comes with the first chunk.
        steering = _Steering()
        steps = self.settings.default_steps if msg.steps is None else msg.steps
        given = None
        if msg.image is not None:
            if self.play is not None and self.play.side_by_side:
                raise UserError("image: side by side, the emulator plays beside the model from its own reset; "
                                "start from an uploaded frame without --side-by-side")
            given = self.pipe.given_frames(image=self.images.get(msg.image))
        # Play: the actions are the only condition, the empty prompt's two CFG branches equal: one branch, half the work;
        # and no overlapped decoding, which would act on a key a chunk later.
        stream = self.pipe.stream(msg.prompt, steps=steps, mode=msg.mode, seed=msg.seed,
                                  actions=steering if self.pipe.config.num_actions else None,
                                  window_frames=self.settings.window_frames, guidance=None if self.play is None else 1.0,
                                  overlap=None if self.play is None else False)
        if not self.slots.acquire():
            n = self.slots.limit
            await self.send({"type": "busy", "max_streams": n,
                             "message": f"busy: the server already runs its limit of {n} stream(s); try again later"})
            return
        session = None if self.play is None or given is not None else self.play.session(msg.seed)
        job = _Job(stream, steering, asyncio.get_running_loop(), self.settings, self.slots, session, given)
        self.job = job
        job.thread.start()  # before any await: end_job relies on the worker resolving job.done
        await self.send({"type": "started", "prompt": msg.prompt, "steps": stream.steps, "mode": msg.mode,
                         "seed": msg.seed, "frames_per_chunk": stream.frames_per_chunk, "image": msg.image is not None})
        job.sender = asyncio.create_task(self._send_frames(job))

    async def _send_frames(self, job: _Job) -> None:
        fps, prompt, action, first_sent = self.pipe.config.fps, None, None, None
        while True:
            item = await job.channel.get()
            if item is _END:
                break
            if isinstance(item, str):
                await self.send({"type": "error", "message": item})
                continue
            if self.settings.realtime:
                if first_sent is None:
                    first_sent = time.perf_counter() - item.index / fps
                delay = first_sent + item.index / fps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if item.prompt != prompt:
                prompt = item.prompt
                await self.send({"type": "prompt", "prompt": prompt, "frame": item.index})
            if item.action != action:  # the page measures a key's latency to its first frame
                action = item.action
                await self.send({"type": "action", "action": action, "frame": item.index})
            await self.send(_encode_frame(item))
            job.sent += 1
        if self.job is job:  # the stream ended by itself (an error): report it
            self.job = None
            await self.send({"type": "stopped", "frames": job.sent, "reason": "error"})

    async def end_job(self, notify: bool) -> None:
        """Stop the running stream, wait for its worker to exit (freeing its slot), optionally tell the client."""
        job, self.job = self.job, None
        if job is None:
            return
        job.halt()
        if job.sender is not None and job.sender is not asyncio.current_task():
            job.sender.cancel()
            await asyncio.gather(job.sender, return_exceptions=True)
        job.sender = None  # its CancelledError's traceback holds this job: a cycle keeping the stream alive
        await job.done
        if notify:
            await self.send({"type": "stopped", "frames": job.sent, "reason": "stop"})


# ----------------------------------------------------------------------- app
def _static(name: str) -> str:
    return resources.files("causal_rcm.serve").joinpath("static", name).read_text(encoding="utf-8")


def _freeze_heap() -> None:
    """Exempt the objects alive now (the pipeline, torch's modules) from garbage collection.

    Every connection leaves reference cycles behind (asyncio's transports; a stream's KV cache and its
    layers), which only a full collection frees. Over the ~300k objects torch leaves after import a full
    collection takes ~0.2 s, and Python runs one only once a quarter as many objects again have survived,
    so the cycles of dozens of rounds of clients piled up (~1 MB of memory per round of 20). Frozen,
    those objects are skipped: collecting costs milliseconds and the server collects when a client leaves.
    """
    gc.collect()  # garbage frozen now would never be freed
    gc.freeze()
    gc.collect()  # restarts the full-collection count from the (now few) unfrozen survivors


_CSP = "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def create_app(
    pipeline: StreamingPipeline, *, max_streams: int = 2, max_steps: int = 4, queue_frames: int = 4, realtime: bool = True,
    window_frames: int | None = None, allowed_hosts: Iterable[str] = (), play: Play | None = None,
) -> FastAPI:
    """The FastAPI app serving ``pipeline`` (a causal checkpoint); ``app.state.slots`` counts running streams.

    ``play``: the page in play mode for a world model (:mod:`causal_rcm.serve.play`; module docstring).

    ``window_frames``: every stream's KV-cache window in latent frames (default: the checkpoint's; see
    ``StreamingPipeline.stream``). ``allowed_hosts``: host names or addresses, besides ``LOCAL_HOSTS``,
    that requests may name in ``Host`` and ``Origin`` (module docstring): the names clients reach the
    server by when it listens beyond localhost. Freezes the process's heap for the garbage collector
    (``_freeze_heap``).
    """
    if not pipeline.config.causal:
        raise UserError("serve needs a causal checkpoint; this one is bidirectional (use `causal-rcm generate`)")
    if play is not None and not pipeline.config.num_actions:
        raise UserError("play mode needs a world model (a checkpoint trained with actions)")
    if max_streams < 1 or max_steps < 1 or queue_frames < 1:
        raise UserError("max_streams, max_steps and queue_frames must be >= 1")
    if window_frames is not None:
        pipeline.check_window(window_frames)  # refused now, not per client
    allowed = frozenset(_allowed_host(name) for name in (*LOCAL_HOSTS, *allowed_hosts))
    cfg = pipeline.config
    settings = Settings(max_streams=max_streams, max_steps=max_steps,
                        default_steps=min(cfg.sampler.steps, max_steps), queue_frames=queue_frames,
                        realtime=realtime, window_frames=window_frames)
    slots = Slots(max_streams)
    images = Images(4 * max_streams)
    info = {
        "resolution": cfg.resolution, "fps": cfg.fps, "frames_per_chunk": cfg.frames_per_chunk,
        "default_steps": settings.default_steps, "max_steps": max_steps, "modes": list(MODES),
        "num_actions": cfg.num_actions, "max_streams": max_streams, "max_seed": MAX_SEED,
        "window_frames": cfg.stream.window_frames if window_frames is None else window_frames,
        "max_prompt_chars": MAX_PROMPT_CHARS, "play": None if play is None else play.info(),
        "max_image_bytes": MAX_IMAGE_BYTES,
    }
    page, script = _static("index.html"), _static("app.js")
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

    _freeze_heap()
    app = FastAPI(title="causal-rcm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.slots = slots
    app.state.settings = settings
    app.state.images = images
    app.add_middleware(_HostGuard, allowed=allowed)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    @app.get("/app.js")
    async def app_js() -> Response:
        return Response(script, media_type="text/javascript", headers=headers)

    @app.get("/api/info")
    async def api_info() -> JSONResponse:
        return JSONResponse({**info, "active_streams": slots.active})

    @app.post("/api/image")
    async def api_image(request: Request) -> JSONResponse:
        try:
            data = await _read_upload(request)
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=413, headers=headers)
        notes: list[str] = []

        def decode() -> np.ndarray:  # off the event loop: decoding and resizing take a while for a large image
            return fit_frames(read_image(data, what="the upload")[None], *pipeline.frame_size, warn=notes.append)[0]

        try:
            image = await asyncio.to_thread(decode)
        except UserError as exc:
            code = 415 if "is not an image" in str(exc) else 400
            return JSONResponse({"error": str(exc)}, status_code=code, headers=headers)
        H, W = pipeline.frame_size
        return JSONResponse({"id": images.add(image), "width": W, "height": H, "warning": notes[0] if notes else None},
                            headers=headers)

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket) -> None:
        await _Connection(ws, pipeline, settings, slots, play, images).run({"type": "hello", **info})
        gc.collect()  # this connection's reference cycles (see _freeze_heap): cheap, the heap being frozen

    return app
