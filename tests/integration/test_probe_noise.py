"""scripts/probe_noise.py: one row per sampler variant, and on the shipped SF-DMD student the finding of
docs/results/fidelity_2026-12-07.md: half of every token's noise is out of its head's reach and survives sampling,
and completing x0 there removes most of the speckle."""

import re
import runpy
from pathlib import Path

import pytest

from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, _shipped_run

from ..checkpoints import make_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_noise.py"
ROW = re.compile(r"^\| (\S+) \| ([^|]+) \|((?: [0-9.nan]+ \|){6})$", re.M)


def _rows(out: str) -> dict[str, list[float]]:
    return {label.strip(): [float(v) for v in values.split("|")[:-1]] for _, label, values in ROW.findall(out)}


def test_probe_noise_prints_a_row_per_variant_and_the_head_test(tmp_path, capsys):
    model = make_checkpoint(tmp_path / "student", solver="consistency", steps=2)  # a head of 32 features for 192 values
    rows = runpy.run_path(str(SCRIPT))["main"](2, [str(model)], png=tmp_path / "png")
    out = capsys.readouterr().out
    labels = list(_rows(out))
    assert labels == [r["variant"] for r in rows] == [
        "shipped (2 consistency, shift 3)", "shift 8", "1 steps", "4 steps", "extra last step from s = 0.01",
        "weights rounded to bf16", "complete_x0", "complete_x0, 1 steps", "complete_x0, 4 steps",
        "ground truth within the head's reach",
    ]
    assert re.search(r"0\.8\d of the noise's energy lies where the head cannot reach", out)  # 160 of 192 values
    assert len(list((tmp_path / "png").glob("student_*.png"))) == len(labels)


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "sf-dmd") is None, reason="no shipped SF-DMD student in this checkout")
def test_the_shipped_students_speckle_is_the_noise_its_head_cannot_reach(capsys):
    runpy.run_path(str(SCRIPT))["main"](4, [str(SHIPPED_TEACHERS / "sf-dmd" / "model")])
    out = capsys.readouterr().out
    # 192 of 384 values; two consistency steps (s = 1, 0.75) leave sqrt(0.25^2 + 0.75^2) = 0.79 of the noise's RMS there
    assert re.search(r"0\.(49|50|51) of the noise's energy lies where the head cannot reach; there the samples have 0\.(7[89]|80)x", out)
    rows = _rows(out)
    shipped, completed = rows["shipped (2 consistency, shift 3)"], rows["complete_x0"]
    assert shipped[0] > 0.1 and completed[0] < shipped[0] / 2  # background residual
    assert completed[4] >= shipped[4] - 0.25  # caption adherence on 4 prompts: one video moves it by 0.25
