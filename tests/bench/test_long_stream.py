"""`causal-rcm bench long-stream` and `bench stream-window` on a tiny checkpoint: the JSON they write."""

from __future__ import annotations

import json

from click.testing import CliRunner

from causal_rcm.cli import cli

from ..checkpoints import make_checkpoint


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_long_stream_writes_json(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "result.json"
    run("long-stream", "-c", str(checkpoint), "--minutes", "0.05", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["frames"] == 24 and report["checkpoint"] == str(checkpoint) and "rss_mb_end" in report["memory"]
    assert report["benchmark"] == "long_stream" and report["device"] == "cpu" and report["date"]
    run("long-stream", "-c", str(checkpoint), "--minutes", "0.05", "--window", "6", "--out", str(out))
    assert json.loads(out.read_text())["window_frames"] == 6


def test_long_stream_needs_exactly_one_model(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "long-stream", "--minutes", "0.05"])
    assert result.exit_code == 2 and "exactly one of --checkpoint and --untrained-shapes" in result.output


def test_stream_window_writes_a_row_per_window(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "scan.json"
    output = run("stream-window", "-c", str(checkpoint), "--windows", "2,6", "--seconds", "3", "--prompts", "1", "--out", str(out))
    (result,) = json.loads(out.read_text())["results"]
    assert [row["window_frames"] for row in result["rows"]] == [2, 6] and result["clip_frames"] == 8
    assert all(0.0 <= row["caption_second_half"] <= 1.0 and len(row["per_prompt_second_half"]) == 1 for row in result["rows"])
    assert "window   6" in output


def test_stream_window_refuses_bad_windows(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "stream-window", "-c", str(tmp_path), "--windows", "0,x"])
    assert result.exit_code == 2 and "--windows" in result.output
