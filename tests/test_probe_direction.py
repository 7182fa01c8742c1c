"""scripts/probe_direction.py: it prints its probes for a one-frame-per-latent-frame teacher, and refuses the
shipped packed-codec teacher with a clear message. (The near time-reversal equivariance of the teacher shipped
before 2026-12-03, docs/results/shapes_attempt5.md, was checked here on that teacher; it is in git history.)"""

import re
import runpy
from pathlib import Path

import pytest

from causal_rcm.quickstart import SHIPPED_TEACHERS, _shipped_run

from .checkpoints import make_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_direction.py"


def test_probe_direction_prints_centroids_drifts_and_equivariance(tmp_path, capsys):
    model = make_checkpoint(tmp_path / "teacher", causal=False, solver="euler", steps=2, guidance=3.0)
    probe = runpy.run_path(str(SCRIPT))
    probe["main"](str(model), samples=4)
    out = capsys.readouterr().out
    assert len(re.findall(r"centroid x per frame:( +\d+\.\d\d){8}", out)) == 4
    assert len(re.findall(r"drift x [+-]\d\.\d{3}, y [+-]\d\.\d{3} px/frame", out)) == 4
    errors = {k: float(v) for k, v in re.findall(r"(reversal|shuffle|h-flip) (\d+\.\d+)", out)}
    assert set(errors) == {"reversal", "shuffle", "h-flip"}
    pairs = re.findall(r"on the same 4 draws: follows the word (\d) / (\d), the same motion for both on (\d)", out)
    assert len(pairs) == 2 and all(0 <= int(n) <= 4 for pair in pairs for n in pair)


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "teacher") is None, reason="no shipped teacher in this checkout")
def test_probe_direction_refuses_a_packed_codec_teacher():
    probe = runpy.run_path(str(SCRIPT))
    with pytest.raises(SystemExit, match="one frame per latent frame; its codec packs 2"):
        probe["main"](str(SHIPPED_TEACHERS / "teacher" / "model"), samples=4)
