"""`causal-rcm bench play` on a tiny world model: frames per second of the play loop, in JSON with its environment."""

from __future__ import annotations

import json

from click.testing import CliRunner

from causal_rcm.cli import cli

from ..checkpoints import make_world_checkpoint


def test_bench_play_writes_frames_per_second_by_step_count(tmp_path):
    checkpoint = make_world_checkpoint(tmp_path / "world")
    out = tmp_path / "play.json"
    result = CliRunner().invoke(cli, ["bench", "play", "-c", str(checkpoint), "--steps", "1,2", "--frames", "4", "--warmup", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["benchmark"], report["device"], report["env"], report["resolution"]) == ("play", "cpu", "ALE/Breakout-v5", 32)
    assert report["torch"] and report["date"] and report["torch_threads"] >= 1 and report["game_fps"] == 15.0
    assert [r["steps"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["frames"] == 4 and r["frames_per_second"] > 0 and r["process_cpu_seconds"] > 0 and r["chunk_latency_ms"]["p90"] >= r["chunk_latency_ms"]["p50"] > 0
    assert "1 step(s):" in result.output and "frames/s" in result.output
    bad = CliRunner().invoke(cli, ["bench", "play", "-c", str(checkpoint), "--steps", "0"])
    assert bad.exit_code == 2 and "one or more step counts >= 1" in bad.output
