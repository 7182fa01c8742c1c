"""A regular (non-editable) install works away from the source tree: `pip install .` into a fresh folder, then
the installed `causal-rcm quickstart --fast` run from the repository's root finds the shipped models there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_non_editable_install_runs_the_quickstart(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "causal_rcm" / "runs" / "quickstart.py").is_file() and not list(target.glob("__editable__*"))
    # Dependencies come from this environment; the package itself only from the install (not the checkout's src/).
    env = {k: v for k, v in os.environ.items() if k != "CAUSAL_RCM_CHECKPOINTS"}
    env["PYTHONPATH"] = str(target)
    where = subprocess.run([sys.executable, "-c", "import causal_rcm; print(causal_rcm.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    out = tmp_path / "qs"
    run = subprocess.run([sys.executable, str(target / "bin" / "causal-rcm"), "quickstart", "--fast", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    sources = {stage["name"]: stage.get("source") for stage in report["stages"]}
    assert sources.get("teacher") == "shipped", sources  # found ./checkpoints/shapes from the installed package
