"""`causal-rcm data prepare`: a folder of videos of any size, frame rate and length into latent shards; videos that
cannot be used are skipped and listed, never fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.data.latents import LatentShards
from causal_rcm.data.video import VideoTooShort, read_clip, to_uint8, write_mp4
from causal_rcm.errors import UserError
from causal_rcm.runs import load_config, train
from causal_rcm.spec import PipelineSpec
from causal_rcm.data.components import make_codec
from tests.conftest import FAST


def _ramp(frames: int, height: int, width: int, border: int = 0) -> np.ndarray:
    """Frame i is grey level 8 i, with ``border`` red columns on each side."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[:] = (8 * np.arange(frames, dtype=np.uint8))[:, None, None, None]
    if border:
        video[:, :, :border] = video[:, :, -border:] = (255, 0, 0)
    return video


def test_read_clip_resamples_in_time_and_centre_crops(tmp_path):
    write_mp4(tmp_path / "a.mp4", _ramp(30, 40, 64, border=12), fps=24)
    clip = read_clip(tmp_path / "a.mp4", fps=8, count=9, size=(32, 32))
    assert clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8
    # frame k at time k / 8 s is source frame 3k (24 fps); the red borders are cropped away
    np.testing.assert_allclose(clip.reshape(9, -1).mean(axis=1), 8 * 3 * np.arange(9), atol=3)
    assert np.abs(clip[..., 0].astype(int) - clip[..., 2]).max() <= 6
    slow = tmp_path / "slow.mp4"
    write_mp4(slow, _ramp(3, 32, 32), fps=4)  # 0.75 s: at 8 fps each source frame shows twice
    np.testing.assert_allclose(read_clip(slow, fps=8, count=6, size=(16, 16)).reshape(6, -1).mean(axis=1), [0, 0, 8, 8, 16, 16], atol=3)
    with pytest.raises(VideoTooShort, match=r"too short: 0.75 s, and 7 frames at 8 fps need more than 0.75 s"):
        read_clip(slow, fps=8, count=7, size=(16, 16))


def test_prepare_encodes_what_it_can_and_lists_the_rest(teachers, tmp_path, capsys):
    videos = tmp_path / "videos"
    write_mp4(videos / "wide.mp4", _ramp(30, 40, 64, border=12), fps=24)
    write_mp4(videos / "sub" / "slow.mp4", _ramp(3, 48, 48), fps=4)
    write_mp4(videos / "short.mp4", _ramp(2, 32, 32), fps=8)
    write_mp4(videos / "nocaption.mp4", _ramp(8, 32, 32), fps=8)
    (videos / "broken.mp4").write_bytes(b"not a video" * 100)
    captions = tmp_path / "captions.jsonl"
    lines = [{"file": name, "caption": f"a red circle moves {d}"} for name, d in
             (("wide.mp4", "left"), ("sub/slow.mp4", "up"), ("short.mp4", "down"), ("broken.mp4", "right"))]
    captions.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "shards"
    main(["data", "prepare", str(videos), "--captions", str(captions), "-c", str(teachers["teacher"]), "-o", str(out),
          "--per-shard", "2", "--device", "cpu", "--no-progress", "--dtype", "float32"])
    printed = capsys.readouterr().out
    assert "2 samples in 3 shards" in printed and "skipped 3 (not fatal):" in printed
    assert "broken.mp4: unreadable (Invalid data found when processing input)" in printed and "nocaption.mp4: no caption in" in printed
    assert "short.mp4: too short: 0.25 s, and 4 frames at 8 fps need more than 0.38 s" in printed
    store = LatentShards(out)
    assert len(store) == 2 and store.header.kind == "videos" and store.header.world == "latents"
    codec = make_codec(PipelineSpec.read(teachers["teacher"]).codec)
    by_file = {store.item(i)["meta"]["file"]: store.item(i) for i in range(2)}
    slow = to_uint8(codec.decode(torch.from_numpy(np.array(by_file["sub/slow.mp4"]["latents"]))[None]))[0]
    np.testing.assert_allclose(slow.reshape(4, -1).mean(axis=1), [0, 0, 8, 8], atol=3)  # 4 fps -> 8 fps
    assert by_file["wide.mp4"]["meta"]["caption"] == "a red circle moves left"
    # a recipe trains on them (evaluated on the first stored videos, by pixels)
    config = load_config("causal-teacher", None, [*FAST, "train.steps=1", "train.eval_videos=2", "train.eval_steps=1",
                                                   "train.eval_drift=0", "data.source=latents", f"data.shards={out}",
                                                   f"train.init={teachers['teacher']}", f"train.out_dir={tmp_path / 'run'}"])
    report = train(config)
    assert report["steps"] == 1 and {"psnr", "pixel_mse"} <= report["eval"].keys()
    assert PipelineSpec.read(tmp_path / "run" / "model").source == "latents"


def test_bad_folders_and_captions_are_one_line(teachers, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "one").mkdir()
    write_mp4(tmp_path / "one" / "a.mp4", _ramp(8, 32, 32), fps=8)
    (tmp_path / "bad.jsonl").write_text('{"file": "a.mp4"}\n')
    (tmp_path / "ok.jsonl").write_text('{"file": "a.mp4", "caption": "a red circle"}\n')
    cases = [
        ("empty", "ok.jsonl", "holds no videos"),
        ("nowhere", "ok.jsonl", "is not a folder"),
        ("one", "bad.jsonl", "bad.jsonl:1 is not a JSON object"),
        ("one", "none.jsonl", "captions file not found"),
    ]
    for folder, captions, message in cases:
        with pytest.raises(SystemExit):
            main(["data", "prepare", str(tmp_path / folder), "--captions", str(tmp_path / captions), "-c", str(teachers["teacher"]),
                  "-o", str(tmp_path / "out"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    main(["data", "prepare", str(tmp_path / "one"), "--captions", str(tmp_path / "ok.jsonl"), "-c", str(teachers["teacher"]),
          "-o", str(tmp_path / "skipped"), "--device", "cpu", "--num-frames", "9", "--no-progress"])
    assert "a.mp4: too short" in capsys.readouterr().out
    with pytest.raises(UserError, match="holds no samples"):
        LatentShards(tmp_path / "skipped")
