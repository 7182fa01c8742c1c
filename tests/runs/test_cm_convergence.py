"""`causal-rcm experiment cm-convergence` at toy size on the CPU: every method trains and is scored along training."""

from __future__ import annotations

import json

from causal_rcm.cli import main
from causal_rcm.runs import load_config
from causal_rcm.runs.cm_convergence import first_reaching, speedups
from causal_rcm.runs import train

TINY = [
    "model.dim=32", "model.num_heads=2", "model.num_layers=2", "model.ffn_dim=64", "train.batch_size=4",
    "train.log_every=1", "train.progress=false", "optim.warmup_steps=1", "data.num_frames=4", "data.frames_per_chunk=2",
]


def test_cm_convergence_writes_curves_table_and_plot(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    train(load_config("causal-teacher", None, TINY + ["train.steps=2", f"train.out_dir={teacher}", "train.eval_steps=1", "train.eval_videos=1", "train.eval_drift=0"]), restart=True)
    out = tmp_path / "exp"
    argv = [
        "experiment", "cm-convergence", "--teacher", str(teacher / "model"), "--out", str(out), "--steps", "2",
        "--eval-every", "1", "--videos", "2", "--device", "cpu", *TINY,
    ]
    main(argv)
    result = json.loads((out / "cm_convergence.json").read_text())
    assert set(result["methods"]) == {"tf-dcm", "tf-scm", "tf-meanflow"}
    for data in result["methods"].values():
        steps = [p["step"] for p in data["curve"]]
        assert steps == [0, 1, 2]  # the starting point, then along training, not only at the end
        assert all(0 <= p[k] <= 1 for p in data["curve"] for k in ("1", "2", "4"))
        assert data["curve"][0]["seconds"] == 0.0 and data["curve"][-1]["seconds"] > 0
    assert 0 <= result["threshold"] <= 1
    assert (out / "cm_convergence.png").stat().st_size > 10_000
    assert "| tf-scm |" in (out / "cm_convergence.md").read_text()
    assert "cm_convergence.json" in capsys.readouterr().out
    # a second call resumes: every run is complete, nothing is retrained
    before = (out / "tf-scm" / "checkpoint").stat().st_mtime
    main(argv)
    assert (out / "tf-scm" / "checkpoint").stat().st_mtime == before


def test_threshold_table_and_ratios():
    curve_fast = [{"step": 10, "seconds": 1.0, "1": 0.2}, {"step": 20, "seconds": 2.0, "1": 0.95}]
    curve_slow = [{"step": 10, "seconds": 1.0, "1": 0.1}, {"step": 200, "seconds": 20.0, "1": 0.91}]
    assert first_reaching(curve_fast, 1, 0.9) == {"step": 20, "seconds": 2.0}
    assert first_reaching(curve_fast, 2, 0.9) == {"step": None, "seconds": None}
    table = {"tf-dcm": {"1": first_reaching(curve_slow, 1, 0.9)}, "tf-scm": {"1": first_reaching(curve_fast, 1, 0.9)}}
    assert speedups(table, 300)["tf-scm"]["1"] == {"steps": 10.0, "seconds": 10.0, "lower_bound": False}
    table["tf-dcm"]["1"] = {"step": None, "seconds": None}
    assert speedups(table, 300)["tf-scm"]["1"] == {"steps": 15.0, "seconds": None, "lower_bound": True}
    table["tf-dcm"]["1"] = {"step": 0, "seconds": 0.0}  # the init already met the threshold
    assert speedups(table, 300)["tf-scm"]["1"]["at_start"] is True
