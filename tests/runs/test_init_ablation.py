"""`causal-rcm experiment init-ablation` at toy size: every arm trains, is scored at 1/2 steps and rolled out 4x."""

from __future__ import annotations

import json

from causal_rcm.cli import main
from tests.conftest import FAST


def _ablation(teachers, out, *args):
    main([
        "experiment", "init-ablation", "--teacher", str(teachers["causal-teacher"]), "--dmd-teacher", str(teachers["teacher"]),
        "--out", str(out), "--cm-steps", "1", "--dmd-steps", "1", "--dmd-lr", "3e-5", "--videos", "1", "--device", "cpu",
        *args, *FAST, "ode.steps=2", "dmd.critic_steps=1",
    ])


def test_init_ablation_runs_every_arm_and_writes_table_and_plot(teachers, tmp_path, capsys):
    out = tmp_path / "ablation"
    _ablation(teachers, out)
    result = json.loads((out / "init_ablation.json").read_text())
    expected = {f"{a} + sf-dmd" for a in ("tf-scm", "tf-meanflow", "tf-dcm", "ode-init", "causal-teacher", "no-init")}
    assert set(result["arms"]) == expected | {"tf-scm (no sf-dmd)"}
    for arm, data in result["arms"].items():
        for key in ("1step/caption_adherence", "2step/caption_adherence", "long_last_caption_adherence", "long_drift"):
            assert key in data["eval"], (arm, key)
    assert json.loads((out / "dmd-tf-meanflow" / "model" / "config.json").read_text())["pipeline"]["sampler"]["solver"] == "meanflow"
    lr = {run: json.loads((out / run / "config.json").read_text())["optim"]["lr"] for run in ("init-tf-scm", "dmd-no-init")}
    assert lr["dmd-no-init"] == 3e-5 and lr["init-tf-scm"] != 3e-5  # --dmd-lr reaches the SF-DMD arms only
    table = (out / "init_ablation.md").read_text()
    assert table.count("| ") >= 7 and "no-init + sf-dmd" in table
    assert (out / "init_ablation.png").stat().st_size > 10_000
    assert "init_ablation.json" in capsys.readouterr().out


def test_init_ablation_jobs_match_the_sequential_run(teachers, tmp_path):
    """--jobs 3 trains the runs in separate processes (arms after their inits) and measures what one process does."""
    _ablation(teachers, tmp_path / "one")
    _ablation(teachers, tmp_path / "three", "--jobs", "3")
    one, three = (json.loads((tmp_path / name / "init_ablation.json").read_text())["arms"] for name in ("one", "three"))
    assert set(one) == set(three)
    for arm in one:
        assert one[arm]["eval"] == three[arm]["eval"], arm
    assert "trained" in (tmp_path / "three" / "dmd-tf-dcm" / "log.txt").read_text()


def test_init_ablation_rejects_a_bad_override_or_jobs_before_training(teachers, tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "causal_rcm.cli", "experiment", "init-ablation", "--teacher", str(teachers["causal-teacher"]),
            "--dmd-teacher", str(teachers["teacher"]), "--out", str(tmp_path / "ablation"), "--device", "cpu"]
    bad_key = subprocess.run([*base, "--jobs", "2", "train.no_such_key=1"], capture_output=True, text=True)
    assert bad_key.returncode != 0 and "no_such_key" in bad_key.stderr and "Traceback" not in bad_key.stderr
    assert not list((tmp_path / "ablation").glob("*/log.txt"))  # no run was started
    bad_jobs = subprocess.run([*base, "--jobs", "0"], capture_output=True, text=True)
    assert bad_jobs.returncode != 0 and "'--jobs' / '-j': 0 is not in the range 1<=x<=64" in bad_jobs.stderr


def test_shared_overrides_reach_the_recipes_that_have_their_section():
    import pytest

    from causal_rcm.errors import UserError
    from causal_rcm.runs import overrides_for

    shared = overrides_for(("sf-dmd", "tf-scm", "ode-init"), ["ode.steps=2", "dmd.critic_steps=1", "train.seed=3"])
    assert shared == {"sf-dmd": ["dmd.critic_steps=1", "train.seed=3"], "tf-scm": ["train.seed=3"],
                      "ode-init": ["ode.steps=2", "train.seed=3"]}
    with pytest.raises(UserError, match="meanflow.ratio applies to none of sf-dmd, tf-scm"):
        overrides_for(("sf-dmd", "tf-scm"), ["meanflow.ratio=0.5"])
