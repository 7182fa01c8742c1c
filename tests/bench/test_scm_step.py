"""`causal-rcm bench scm-step` runs the recipes' own steps; at toy size on the CPU it reports both and their ratio."""

from __future__ import annotations

from causal_rcm.bench.scm_step import run_scm_step_bench


def test_scm_step_bench_times_both_recipe_steps_on_cpu():
    lines = []
    record = run_scm_step_bench("tiny", 64, 64, frames=4, frames_per_chunk=2, repeats=1, device_name="cpu", log=lines.append)
    steps = record["results"]
    assert steps["tf_scm_step"]["ms"] > 0 and steps["tf_diffusion_step"]["ms"] > 0
    assert record["scm_over_diffusion"] == steps["tf_scm_step"]["ms"] / steps["tf_diffusion_step"]["ms"]
    assert record["setup"]["jvp_backend"] == "math" and record["setup"]["seq_len"] == 2 * 4 * 16
    assert any("TF-sCM step / TF diffusion step" in line for line in lines)
