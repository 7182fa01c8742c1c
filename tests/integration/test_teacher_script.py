"""scripts/train_shapes_teachers.sh: STAGES picks the stages, TEACHER_INIT the causal teacher's start (CPU, 1 step)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, SOURCE_KEYS, _shipped_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "teacher") is None, reason="no shipped teacher in this checkout")
def test_the_teacher_script_runs_the_causal_stage_alone_from_a_given_teacher(tmp_path):
    teacher = SHIPPED_TEACHERS / "teacher" / "model"
    quick = ("train.steps=1 train.compile=false data.workers=0 train.batch_size=2 train.eval_videos=2 "
             "train.eval_steps=2 train.eval_drift=0 train.export_dtype=float32")
    data = json.loads((teacher.parent / "config.json").read_text())["data"]  # its world (the shipped one packs frames)
    world = " ".join(f"data.{key}={data[key]}" for key in SOURCE_KEYS if key in data)
    env = {**os.environ, "STAGES": "causal-teacher", "TEACHER_INIT": str(teacher), "EXTRA": f"{quick} {world}",
           "CAUSAL_RCM": f"{shlex.quote(sys.executable)} -m causal_rcm.cli"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_shapes_teachers.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["causal-teacher"]  # the teacher stage did not run
    command = (tmp_path / "causal-teacher" / "command.txt").read_text()
    assert f"train.init={teacher}" in command and "train causal-teacher" in command
    assert (tmp_path / "causal-teacher" / "model" / "model.safetensors").exists()
