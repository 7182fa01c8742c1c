"""The whole recipe under torchrun: 2 gloo processes (FSDP2) give the 1-process losses of TF-sCM and SF-DMD."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import FAST


def _losses(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.startswith("loss/"):
                out.setdefault(key, []).append(value)
    return out


def test_two_processes_match_one_through_both_stages(teachers, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    args = [
        "train", "causal-rcm", *FAST, "train.eval_videos=1", "train.eval_drift=0", "objective.student_steps=1",
        "stages.cm_steps=2", "stages.dmd_steps=2", "dmd.critic_steps=1",
        f"train.teacher={teachers['causal-teacher']}", f"train.dmd_teacher={teachers['teacher']}",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "causal_rcm.cli", *args, f"train.out_dir={one}"], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "causal_rcm.cli"]
    double = subprocess.run(torchrun + args + [f"train.out_dir={two}"], env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    for stage in ("stage1-tf-scm", "stage2-sf-dmd"):
        a, b = _losses(one / stage / "metrics.jsonl"), _losses(two / stage / "metrics.jsonl")
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), rtol=1e-4, atol=1e-9)
    assert json.loads((two / "stage2-sf-dmd" / "train_report.json").read_text())["processes"] == 2
