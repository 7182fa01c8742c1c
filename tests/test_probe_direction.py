"""scripts/probe_direction.py on the shipped teacher: it prints its probes, and the teacher's near time-reversal
equivariance that docs/results/shapes_attempt5.md reports holds."""

import re
import runpy
from pathlib import Path

import pytest

from causal_rcm.quickstart import SHIPPED_TEACHERS, _shipped_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_direction.py"


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "teacher") is None, reason="no shipped teacher in this checkout")
def test_probe_direction_reports_centroids_drifts_and_equivariance(capsys):
    probe = runpy.run_path(str(SCRIPT))
    probe["main"](str(SHIPPED_TEACHERS / "teacher" / "model"), samples=4)
    out = capsys.readouterr().out
    assert len(re.findall(r"centroid x per frame:( +\d+\.\d\d){8}", out)) == 4
    assert len(re.findall(r"drift x [+-]\d\.\d{3}, y [+-]\d\.\d{3} px/frame", out)) == 4
    errors = {k: float(v) for k, v in re.findall(r"(reversal|shuffle|h-flip) (\d+\.\d+)", out)}
    assert set(errors) == {"reversal", "shuffle", "h-flip"}
    assert errors["reversal"] < 0.25 * min(errors["shuffle"], errors["h-flip"])
    pairs = re.findall(r"on the same 4 draws: follows the word (\d) / (\d), the same motion for both on (\d)", out)
    assert len(pairs) == 2 and all(0 <= int(n) <= 4 for pair in pairs for n in pair)
