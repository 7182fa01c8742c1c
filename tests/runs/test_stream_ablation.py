"""The stream ablation: one knob at a time from a checkpoint's defaults, one table, resumable."""

from __future__ import annotations

import json

import pytest

import causal_rcm.runs.stream_ablation as ablation
from tests.checkpoints import make_checkpoint


def test_each_knob_alone_then_trained_checkpoints_in_one_table_and_a_rerun_keeps_them(tmp_path, monkeypatch):
    base = make_checkpoint(tmp_path / "base", text_len=24)  # sink 1, window 4, no re-cache
    other = make_checkpoint(tmp_path / "other", seed=1, text_len=24, sink_frames=2, window_frames=6)
    out = tmp_path / "abl"
    result = ablation.run_stream_ablation(base, out, windows=(4, 6), sinks=(0, 1), recaches=(2,), trained={"N=8": other},
                                          seconds=2.0, videos=1, steps=1, device="cpu", say=lambda line: None)
    rows = [(r["row"]["name"], r["row"]["window"], r["row"]["sink"], r["row"]["recache"]) for r in result["rows"]]
    assert rows == [("defaults", 4, 1, 0), ("window 6", 6, 1, 0), ("sink 0", 4, 0, 0), ("recache 2", 4, 1, 2), ("N=8", 6, 2, 0)]
    for r in result["rows"]:
        assert 0 <= r["metrics"]["stream_second_half_caption_adherence"] <= 1 and r["metrics"]["stream_seconds"] == 2.0
    table = (out / "stream_ablation.md").read_text()
    assert table.count("\n| ") == 1 + 5 and "| recache 2 |" in table and "| N=8 |" in table
    # as JSON text: a metric with nothing to measure (colour error without a shape) is NaN, which equals no NaN
    assert json.dumps(json.loads((out / "stream_ablation.json").read_text())["rows"]) == json.dumps(result["rows"])

    def fail(*args, **kwargs):
        raise AssertionError("a measured row was measured again")

    monkeypatch.setattr(ablation, "evaluate_checkpoint", fail)
    again = ablation.run_stream_ablation(base, out, windows=(6,), sinks=(0,), recaches=(2,), trained={"N=8": other},
                                         seconds=2.0, videos=1, steps=1, device="cpu", say=lambda line: None)
    assert json.dumps(again["rows"]) == json.dumps(result["rows"])
    with pytest.raises(AssertionError, match="measured again"):  # other settings: measured anew
        ablation.run_stream_ablation(base, out, seconds=3.0, videos=1, steps=1, device="cpu", say=lambda line: None)
