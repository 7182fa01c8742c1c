"""scripts/probe_direction.py: it prints its probes for a one-frame-per-latent-frame teacher, and on the shipped
packed-codec teacher it finds what docs/results/shapes_attempt9.md reports: the teacher reads a direction word's
sign, and is far from time-reversal equivariant (the teacher shipped before 2026-12-03 was near equivariant and
blind to the sign: docs/results/shapes_attempt5.md)."""

import re
import runpy
from pathlib import Path

import pytest

from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, _shipped_run

from ..checkpoints import make_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_direction.py"


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
def test_the_shipped_teacher_reads_the_direction_words_sign(capsys):
    probe = runpy.run_path(str(SCRIPT))
    probe["main"](str(SHIPPED_TEACHERS / "teacher" / "model"), samples=4)
    out = capsys.readouterr().out
    assert len(re.findall(r"centroid x per frame:( +\d+\.\d\d){8}", out)) == 4  # 8 rendered frames, 2 per latent frame
    drift = {w: (float(x), float(y)) for w, x, y in re.findall(r"s=1.0 (\w+) +drift x ([+-]\d\.\d+), y ([+-]\d\.\d+)", out)}
    assert drift["left"][0] < -0.1 < 0.1 < drift["right"][0] and drift["up"][1] < -0.1 < 0.1 < drift["down"][1]
    errors = {k: float(v) for k, v in re.findall(r"(reversal|shuffle|h-flip) (\d+\.\d+)", out)}
    assert errors["reversal"] > 0.5 * errors["shuffle"]  # the old direction-blind teacher: below 0.25x
    pairs = re.findall(r"on the same 4 draws: follows the word (\d) / (\d), the same motion for both on (\d)", out)
    assert len(pairs) == 2 and all(int(a) >= 3 and int(b) >= 3 and int(same) <= 1 for a, b, same in pairs)
