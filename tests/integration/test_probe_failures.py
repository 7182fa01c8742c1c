"""scripts/probe_failures.py on a shipped student: one row per kind of prompt, with counts that add up."""

import re
import runpy
from pathlib import Path

import pytest

from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, _shipped_run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_failures.py"


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "tf-scm") is None, reason="no shipped TF-sCM student in this checkout")
def test_probe_failures_groups_the_prompts_and_scores_each_group(capsys):
    probe = runpy.run_path(str(SCRIPT))
    probe["main"](6, [str(SHIPPED_TEACHERS / "tf-scm" / "model")])
    rows = {m[0]: (int(m[1]), float(m[2])) for m in re.findall(r"^\| ([^|]+?) \| (\d+) \| (\d\.\d{3}) \|$", capsys.readouterr().out, re.M)}
    assert rows["all"][0] == 6
    assert sum(count for name, (count, _) in rows.items() if name.endswith("object(s)")) == 6  # each prompt once
    assert all(0.0 <= score <= 1.0 for _, score in rows.values())
    assert any(name.startswith("shape ") for name in rows) and any(name.startswith("colour ") for name in rows)
