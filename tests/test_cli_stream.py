"""`causal-rcm generate` and `causal-rcm serve` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import causal_rcm
from causal_rcm.cli import cli as cli_group
from causal_rcm.cli import main

from .checkpoints import make_checkpoint


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(causal_rcm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "causal_rcm.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def run_main(*args: str) -> int:
    """The console entry point in this process (fast): its exit code."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


def read_video(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"causal": make_checkpoint(root / "causal"), "bidirectional": make_checkpoint(root / "bi", causal=False, steps=3, solver="euler", guidance=3.0)}


def test_help_lists_generate_and_serve():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli_group, ["--help"])
    assert result.exit_code == 0 and "generate" in result.output and "serve" in result.output


def test_generate_causal_with_seconds_mode_and_a_prompt_schedule(checkpoints, tmp_path):
    out = tmp_path / "out" / "video.mp4"
    result = cli("generate", "-c", str(checkpoints["causal"]), "--prompt", "a red circle moves left", "--seconds", "3",
                 "--mode", "frame", "--steps", "1", "--switch", "1s", "a blue square moves up", "--switch", "16f",
                 "a green triangle moves down", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "24 frames (3 s at 8 fps)" in result.stdout
    video = read_video(out)
    assert video.shape == (24, 32, 32, 3) and video.std() > 10


def test_generate_with_a_noisy_context_and_low_memory(checkpoints, tmp_path):
    out = tmp_path / "video.mp4"
    main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red circle moves left", "--seconds", "2",
          "--context", "noisy", "--low-memory", "--no-overlap", "-o", str(out)])
    assert read_video(out).shape == (16, 32, 32, 3)


def test_generate_with_compiled_blocks(checkpoints, tmp_path):
    out = tmp_path / "video.gif"
    result = cli("generate", "-c", str(checkpoints["causal"]), "-p", "a red circle moves left", "--seconds", "1.5",
                 "--compile", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "12 frames (1.5 s at 8 fps)" in result.stdout and out.stat().st_size > 0


def test_generate_bidirectional_over_its_training_length(checkpoints, tmp_path, capsys):
    out = tmp_path / "bi.gif"
    result = cli("generate", "-c", str(checkpoints["bidirectional"]), "-p", "a red circle moves left", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "8 frames" in result.stdout and out.stat().st_size > 0
    assert run_main("generate", "-c", str(checkpoints["bidirectional"]), "-p", "a red circle", "--seconds", "5", "-o", str(out)) == 2
    assert "exactly its training length, 8 frames" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "{missing}", "-p", "a red circle"], "does not exist"),
        (["-c", "{causal}", "-p", "a red dragon"], "'dragon'"),
        (["-c", "{causal}", "-p", "a red circle", "--switch", "0.5s", "a tiny circle"], "'tiny'"),
        (["-c", "{causal}", "-p", "a red circle", "--switch", "2s", "a blue square"], "past the end of the video (8 frames, 1 s)"),
        (["-c", "{causal}", "-p", "a red circle", "--switch", "soon", "a blue square"], "--switch time 'soon'"),
        (["-c", "{causal}", "-p", "a red circle", "--seconds", "-1"], "'--seconds': -1.0 is not in the range x>0"),
        (["-c", "{causal}", "-p", "a red circle", "--steps", "0"], "'--steps': 0 is not in the range 1<=x<=1000"),
        (["-c", "{causal}", "-p", "a red circle", "-o", "{file}/video.mp4"], "is a file, not a folder"),
        (["-c", "{causal}", "-p", "a red circle", "-o", "{tmp}/video.avi"], "must end with .mp4 or .gif"),
        (["-c", "{causal}", "-p", "a red circle", "--context", "dirty"], "'--context': 'dirty' is not one of"),
        (["-c", "{bidirectional}", "-p", "a red circle", "--context", "noisy"], "--context is for causal checkpoints"),
        (["-c", "{bidirectional}", "-p", "a red circle", "--sink", "2"], "an attention sink is for causal checkpoints"),
        (["-c", "{causal}", "-p", "a red circle", "--sink", "-1"], "'--sink': -1 is not in the range 0<=x<=1024"),
    ],
)
def test_generate_user_errors_are_one_line(checkpoints, tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("x")
    fill = {"missing": str(tmp_path / "nowhere"), "causal": str(checkpoints["causal"]), "file": str(tmp_path / "afile"),
            "tmp": str(tmp_path), "bidirectional": str(checkpoints["bidirectional"])}
    args = [a.format(**fill) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "v.mp4")]
    assert run_main("generate", *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "v.mp4").exists()


def test_generate_refuses_a_read_only_folder(checkpoints, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    result = cli("generate", "-c", str(checkpoints["causal"]), "-p", "a red circle", "-o", str(folder / "v.mp4"))
    assert result.returncode == 2 and "not writable" in result.stderr


def test_serve_binds_localhost_and_serves_the_page(checkpoints, capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(causal_rcm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "causal_rcm.cli", "serve", "-c", str(checkpoints["causal"]), "--port", "0",
                             "--max-streams", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert "causal-rcm" in page.read().decode() and "Content-Security-Policy" in page.headers
        with urllib.request.urlopen(url + "api/info", timeout=10) as info:
            assert json.load(info)["max_streams"] == 3
    finally:
        proc.terminate()
        proc.wait(10)
    assert run_main("serve", "-c", str(checkpoints["bidirectional"]), "--port", "0") == 2
    assert "causal checkpoint" in capsys.readouterr().err


def test_generate_with_a_wider_stream_window(checkpoints, tmp_path, capsys):
    out = tmp_path / "wide.gif"
    main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red circle moves left", "--seconds", "3", "--window", "6",
          "-o", str(out)])
    assert "24 frames" in capsys.readouterr().out and out.stat().st_size > 0
    assert run_main("generate", "-c", str(checkpoints["causal"]), "-p", "a red circle", "--window", "1", "-o", str(out)) == 2
    assert "--window must hold a chunk of 2 frames, got 1" in capsys.readouterr().err


def test_generate_with_an_attention_sink(checkpoints, tmp_path):
    """--sink replaces the checkpoint's sink (1 latent frame here, of a window of 4 in chunks of 2): the first two
    chunks fit the window and are the same whatever the sink; from the third on, a stream that keeps its first two
    frames differs from one that keeps none."""
    from PIL import Image, ImageSequence

    def video(sink: str) -> np.ndarray:
        out = tmp_path / f"sink{sink}.gif"
        main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red circle moves left", "--seconds", "2",
              "--sink", sink, "-o", str(out)])
        with Image.open(out) as gif:
            return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])

    none, two = video("0"), video("2")
    assert none.shape == two.shape and len(none) == 16
    gap = np.abs(none.astype(int) - two).reshape(16, -1).mean(axis=1)  # mean |difference| of each frame, 0-255
    assert gap[:4].max() < 0.5 and gap[4:].min() > 2, gap  # the same up to rounding (caches of other sizes, GIF palettes)


# ------------------------------------------------------------------ --image, --video --extend
def write_png(path: Path, height: int, width: int) -> Path:
    from PIL import Image

    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[height // 3 : height // 2, width // 3 : width // 2] = (230, 40, 40)
    Image.fromarray(image).save(path)
    return path


def test_generate_from_an_image_and_extending_a_clip(checkpoints, tmp_path, capsys):
    out = tmp_path / "i2v.gif"
    main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red square moves right", "--image",
          str(write_png(tmp_path / "first.png", 32, 32)), "--seconds", "2", "-o", str(out)])
    captured = capsys.readouterr()
    assert "16 frames" in captured.out and "warning" not in captured.err

    main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red square moves right", "--image",
          str(write_png(tmp_path / "wide.png", 48, 96)), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the image: the given frames are 96x48 px, another aspect ratio")

    clip = tmp_path / "clip.mp4"
    from causal_rcm.data.video import write_mp4

    frames = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    frames[:, 10:18, 10:18] = 200
    write_mp4(clip, frames, fps=8)
    out = tmp_path / "extended.mp4"
    main(["generate", "-c", str(checkpoints["causal"]), "-p", "a red square moves right", "--video", str(clip),
          "--extend", "1s", "-o", str(out)])
    assert "14 frames" in capsys.readouterr().out  # the clip's 6, then 8
    video = read_video(out)
    assert video.shape == (14, 32, 32, 3)
    assert np.abs(video[:6].astype(int) - read_video(clip).astype(int)).mean() < 3  # the clip, through H.264 twice


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "{text}"], "is not an image: give a PNG, JPEG, GIF, WebP or BMP file"),
        (["--image", "{huge}"], "over the 16 MiB limit of an image"),
        (["--image", "{nowhere}"], "no such file"),
        (["--video", "{empty}", "--extend", "2s"], "has no frames"),
        (["--video", "{junk}", "--extend", "2s"], "cannot be read as a video"),
        (["--video", "{clip}"], "--video CLIP and --extend TIME go together"),
        (["--video", "{clip}", "--extend", "soon"], "--extend 'soon' is not like '10s'"),
        (["--video", "{clip}", "--extend", "0f"], "must be at least one frame"),
        (["--image", "{png}", "--video", "{clip}", "--extend", "1s"], "give one of them"),
        (["--image", "{png}", "-c", "{bidirectional}"], "needs a causal checkpoint"),
        (["--video", "{clip}", "--extend", "1s", "-c", "{bidirectional}"], "needs a causal checkpoint"),
    ],
)
def test_bad_given_frames_are_one_line_errors(checkpoints, tmp_path, capsys, args, message):
    from causal_rcm.data.video import write_mp4

    (tmp_path / "notes.png").write_text("these are words, not pixels")
    with open(tmp_path / "huge.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(17 * 2**20)
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 20)
    import av

    container = av.open(str(tmp_path / "empty.mp4"), mode="w")  # an mp4 without a frame
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()  # writes the header: a file that holds a container and no frame
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    write_mp4(tmp_path / "clip.mp4", np.zeros((4, 32, 32, 3), dtype=np.uint8))
    fill = {"text": tmp_path / "notes.png", "huge": tmp_path / "huge.png", "nowhere": tmp_path / "nowhere.png",
            "empty": tmp_path / "empty.mp4", "junk": tmp_path / "junk.mp4", "clip": tmp_path / "clip.mp4",
            "png": write_png(tmp_path / "ok.png", 32, 32), "bidirectional": checkpoints["bidirectional"]}
    args = [a.format(**{k: str(v) for k, v in fill.items()}) for a in args]
    if "-c" not in args:
        args = ["-c", str(checkpoints["causal"]), *args]
    assert run_main("generate", "-p", "a red circle moves left", *args, "-o", str(tmp_path / "v.mp4")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "v.mp4").exists()
