"""eval/report.py on stage results made up here: the table and the plot carry the oracle's pixel fidelity."""

import json
import time

from causal_rcm.eval.report import write_report

FIDELITY = {"background_residual": 0.131, "background_residual_p90": 0.285, "colour_error": 0.221, "edge_sharpness": 0.402}


def _stage(name: str, **metrics) -> dict:
    base = {"colour_adherence": 1.0, "shape_adherence": 0.9, "caption_adherence": 0.9, "direction_accuracy": 0.8,
            "temporal_consistency": 0.7}
    return {"name": name, "label": name, "source": "shipped", "about": f"the {name}.", "seconds": 1.0,
            "metrics": {**base, **metrics}}


def test_the_report_shows_pixel_fidelity_in_its_table_and_plot(tmp_path):
    report = {
        "mode": {"test_mode": False, "label": "made up"}, "command": "causal-rcm quickstart", "device": "cpu",
        "environment": {"cpu_count": 2, "torch_threads": 2, "causal_rcm": "0", "torch": "0", "python": "3"},
        "stage_seconds": 2.0, "shipped_teachers_folder": None,
        "budget": {"eval_videos": 16, "eval_steps": 50, "drift_factor": 4, "stream_seconds": 0},
        "stages": [_stage("ground-truth", background_residual=0.0, background_residual_p90=0.0, colour_error=0.0,
                          edge_sharpness=1.0), _stage("tf-scm", **FIDELITY), _stage("older-run")],  # one without them
    }
    files = write_report(tmp_path, report, started=time.perf_counter())
    markdown = (tmp_path / files["report_md"]).read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| stage |"))
    assert "| background mean / p90 | colour error | sharpness |" in header
    rows = {line.split(" | ")[0][2:]: line for line in markdown.splitlines() if line.startswith("| ")}
    assert "| 0.000 / 0.000 | 0.000 | 1.000 |" in rows["ground-truth"]
    assert "| 0.131 / 0.285 | 0.221 | 0.402 |" in rows["tf-scm"]
    assert "| — / — | — | — |" in rows["older-run"]
    assert (tmp_path / files["oracle_png"]).stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["stages"][1]["metrics"]["edge_sharpness"] == 0.402


def test_a_stage_with_image_cond_metrics_gets_a_row_of_the_image_to_video_table(tmp_path):
    given = {"image_cond/caption_adherence": 0.99, "text_only/caption_adherence": 0.95, "image_cond/direction_accuracy": 0.96,
             "text_only/direction_accuracy": 0.91, "image_cond/position_error_px": 3.01, "text_only/position_error_px": 12.7,
             "extend/direction_accuracy": 0.9, "extend/position_error_px": 3.9, "extend/seam_consistency": 0.889,
             "cut/seam_consistency": 0.525}
    report = {
        "mode": {"test_mode": False, "label": "made up"}, "command": "causal-rcm quickstart", "device": "cpu",
        "environment": {"cpu_count": 2, "torch_threads": 2, "causal_rcm": "0", "torch": "0", "python": "3"},
        "stage_seconds": 2.0, "shipped_teachers_folder": None,
        "budget": {"eval_videos": 16, "eval_steps": 50, "drift_factor": 4, "stream_seconds": 0},
        "stages": [_stage("tf-scm"), {**_stage("sf-dmd"), "image_cond": given}],
    }
    files = write_report(tmp_path, report, started=time.perf_counter())
    markdown = (tmp_path / files["report_md"]).read_text()
    section = markdown.split("## Image-to-video and extension")[1].split("## Stages")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert rows == ["| sf-dmd | 0.990 / 0.950 | 0.960 / 0.910 | 3.0 / 12.7 | 0.900 | 3.9 | 0.889 / 0.525 |"]
