"""Browser tests: `causal-rcm serve` and `causal-rcm play` with tiny checkpoints, driven in headless Chromium through
Playwright.

Streaming: type a prompt, start, see frames arrive (the canvas changes), switch the prompt, stop. Play: keys
change the world model's frames, and different keys give different frames. Screenshots are saved to
test-artifacts/. Needs Debian's chromium (`.ci/run` installs it): skipped when it is missing, except under CI (the
CI variable set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ..checkpoints import make_checkpoint, make_world_checkpoint
from ..serve.conftest import serve_process

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found: CI must install it (apt-get install chromium; see .ci/run)")
        pytest.skip("chromium not found (apt-get install chromium)")
    return path


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed: it is a test dependency (pip install -e .[test])")
        pytest.skip("playwright is not installed")
    return sync_playwright


@contextlib.contextmanager
def _served_page(checkpoint: Path, *args: str, command: str = "serve", console_errors: bool = True):
    """Start ``causal-rcm COMMAND CHECKPOINT ARGS`` and open its page in headless Chromium, ready to start; yields
    the page and a list that collects the page's errors (and its console errors unless ``console_errors`` is off).
    The server is stopped on the way out, whatever happened."""
    executable = _chromium()
    sync_playwright = _sync_playwright()
    proc, url = serve_process(checkpoint, *args, command=command)
    assert url.startswith("http://127.0.0.1:")
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            if console_errors:
                page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
            page.goto(url)
            page.wait_for_selector("#start:enabled", timeout=15000)
            yield page, problems
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode is not None


def test_stream_in_headless_chromium(tmp_path):
    with _served_page(make_checkpoint(tmp_path / "ckpt")) as (page, problems):
        page.fill("#prompt", "a red circle moves right")
        page.select_option("#steps", "2")
        page.click("#start")
        page.wait_for_function("() => Number(document.getElementById('view').dataset.frame || -1) >= 2", timeout=20000)
        canvas = "document.getElementById('view').toDataURL()"
        first = page.evaluate(canvas)
        page.wait_for_function("() => Number(document.getElementById('view').dataset.frame) >= 6", timeout=20000)
        assert page.evaluate(canvas) != first  # new frames were drawn
        assert page.text_content("#state") == "streaming"
        assert page.text_content("#fps") != "-" and "ms" in page.text_content("#latency")
        assert page.text_content("#current") == "a red circle moves right"

        page.fill("#prompt", "a blue square moves up")
        page.click("#switch")
        page.wait_for_function("() => document.getElementById('current').textContent === 'a blue square moves up'", timeout=20000)
        page.wait_for_timeout(500)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_stream.png"))

        page.click("#stop")
        page.wait_for_function("() => document.getElementById('state').textContent === 'idle'", timeout=10000)
        assert "stopped after" in page.text_content("#status")
    assert not problems, problems
    assert (ARTIFACTS / "browser_stream.png").stat().st_size > 1000


def test_upload_a_first_frame_in_headless_chromium(tmp_path):
    """The page uploads a chosen image (the server checks it: a text file is refused with its message, an image of
    another aspect ratio is taken with a warning) and the stream starts from it, its frames numbered after it."""
    from PIL import Image

    first = np.zeros((48, 96, 3), dtype=np.uint8)
    first[16:32, 40:56] = (230, 40, 40)
    Image.fromarray(first).save(tmp_path / "first.png")
    (tmp_path / "notes.png").write_text("not pixels")
    with _served_page(make_checkpoint(tmp_path / "ckpt"), console_errors=False) as (page, problems):
        page.set_input_files("#image", str(tmp_path / "notes.png"))
        page.wait_for_function("() => document.getElementById('image-state').className === 'error'", timeout=10000)
        assert "is not an image" in page.text_content("#image-state")
        page.set_input_files("#image", str(tmp_path / "first.png"))
        page.wait_for_function("() => document.getElementById('image-state').textContent.includes('first frame')",
                               timeout=10000)
        assert "another aspect ratio" in page.text_content("#image-state")
        page.fill("#prompt", "a red square moves right")
        page.select_option("#steps", "1")
        page.click("#start")
        page.wait_for_function("() => Number(document.getElementById('view').dataset.frame || -1) >= 3", timeout=20000)
        assert "from the uploaded frame" in page.text_content("#status")
        assert page.is_disabled("#image") and page.is_disabled("#clear-image")  # fixed while streaming
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_upload.png"))
        page.click("#stop")
        page.wait_for_function("() => document.getElementById('state').textContent === 'idle'", timeout=10000)
        page.click("#clear-image")
        assert "starts from noise" in page.text_content("#image-state")
    assert not problems, problems


# The model's half of the side-by-side canvas, kept under a name, and the mean absolute difference of two such snapshots.
_SNAP = """name => { const c = document.getElementById('view');
  (window.snaps = window.snaps || {})[name] = c.getContext('2d').getImageData(0, 0, c.width / 2, c.height).data; }"""
_DIST = """([a, b]) => { const x = window.snaps[a], y = window.snaps[b]; let d = 0;
  for (let i = 0; i < x.length; i++) d += Math.abs(x[i] - y[i]); return d / x.length; }"""


def _frames_under(page, key: str | None, name: str) -> None:
    """Hold ``key`` (None: none), wait for the first frame under its action, then snapshot two frames two apart."""
    action = {"ArrowRight": "RIGHT", "ArrowLeft": "LEFT", None: "NOOP"}[key]
    if key is not None:
        page.keyboard.down(key)
    page.wait_for_function(f"() => document.getElementById('view').dataset.action === '{action}'", timeout=20000)
    start = int(page.evaluate("document.getElementById('view').dataset.frame"))
    for k, ahead in enumerate((2, 4), start=1):
        page.wait_for_function(f"() => Number(document.getElementById('view').dataset.frame) >= {start + ahead}", timeout=20000)
        page.evaluate(_SNAP, f"{name}{k}")
    if key is not None:
        page.keyboard.up(key)


def test_play_in_headless_chromium(tmp_path):
    """Keys reach the model: under one held key its frames barely change (its action embedding dominates them),
    while another key, or none, changes them many times as much."""
    with _served_page(make_world_checkpoint(tmp_path / "world"), "--side-by-side", command="play") as (page, problems):
        assert page.is_hidden("#prompt") and page.is_visible("#meanings")
        assert page.eval_on_selector_all("#meanings li", "items => items.map(li => li.textContent)") == ["NOOP", "FIRE", "RIGHT", "LEFT"]
        assert page.evaluate("document.getElementById('view').width") == 768  # model | emulator

        page.select_option("#steps", "1")
        page.click("#start")
        _frames_under(page, None, "noop")
        _frames_under(page, "ArrowRight", "right")
        _frames_under(page, "ArrowLeft", "left")
        assert "ms" in page.text_content("#keylatency") and page.text_content("#fps") != "-"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_play.png"))
        dist = {(a, b): page.evaluate(_DIST, [a, b]) for a, b in
                (("right1", "right2"), ("left1", "left2"), ("noop1", "noop2"), ("right2", "left1"), ("noop2", "right1"))}
        page.click("#stop")
        page.wait_for_function("() => document.getElementById('state').textContent === 'idle'", timeout=10000)
    assert not problems, problems
    same = max(dist[("right1", "right2")], dist[("left1", "left2")], dist[("noop1", "noop2")])
    assert dist[("right2", "left1")] > 5 * same and dist[("noop2", "right1")] > 5 * same, dist
