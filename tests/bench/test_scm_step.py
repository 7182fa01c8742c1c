"""`causal-rcm bench scm-step` is `bench train` for the TF diffusion and TF-sCM steps with checkpointing on: at toy
size on the CPU it reports both and their ratio, in its own JSON."""

from __future__ import annotations

import json

from click.testing import CliRunner

from causal_rcm.cli import cli


def test_scm_step_bench_times_both_recipe_steps_on_cpu(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "scm-step", "--size", "tiny", "--device", "cpu", "--height", "64",
                                      "--width", "64", "--frames", "4", "--frames-per-chunk", "2", "--repeats", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [path] = tmp_path.glob("scm_step_tiny_cpu_*.json")
    record = json.loads(path.read_text())
    steps = record["results"]
    assert record["benchmark"] == "scm_step" and set(steps) == {"tf_diffusion", "tf_scm"}
    assert all(set(settings) == {"checkpointing_on"} for settings in steps.values())
    scm, diffusion = steps["tf_scm"]["checkpointing_on"], steps["tf_diffusion"]["checkpointing_on"]
    assert scm["ms"] > 0 and diffusion["ms"] > 0
    assert record["scm_over_diffusion"] == {"checkpointing_on": scm["ms"] / diffusion["ms"]}
    assert record["setup"]["jvp_backend"] == "math" and record["setup"]["tf_seq_len"] == 2 * 4 * 16
    assert "TF-sCM step / TF diffusion step (checkpointing on)" in result.output
