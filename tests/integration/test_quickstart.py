"""`causal-rcm quickstart` as a user runs it, in its fast (test) mode on the CPU."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import causal_rcm
from causal_rcm.cli import main
from causal_rcm.cli import quickstart as quickstart_command

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(causal_rcm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "causal_rcm.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def run_main(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One fast from-scratch run (the teachers trained here): its folder and the CompletedProcess."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    result = cli("quickstart", "--fast", "--from-scratch", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _stages(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["stages"]}


def test_fast_run_is_small_and_says_what_it_does(fast_run):
    """Fast mode is a few steps a stage (its wall time is the machine's business, not a test's: no timed asserts)."""
    out, result = fast_run
    assert max(_report(out)["budget"]["steps"].values()) <= 10
    assert "--from-scratch: training the teachers here on cpu" in result.stdout
    assert "fast mode" in result.stdout and "report:" in result.stdout
    for name in ("ground-truth", "untrained", "teacher", "causal-teacher", "causal-teacher-here", "tf-scm", "sf-dmd"):
        assert f"] {name}" in result.stdout


def test_every_promised_file_exists(fast_run):
    out, _ = fast_run
    report = _report(out)
    expected = {"report_md", "report_json", "loss_png", "oracle_png", "compare_gif", "compare_mp4", "long_gif", "long_mp4"}
    assert expected <= set(report["files"])
    for path in report["files"].values():
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
    markdown = (out / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", markdown):
        assert (out / link).is_file(), link
    for stage in report["stages"]:
        if "skipped" in stage:
            continue
        assert (out / stage["videos"]).is_file()
        assert (out / stage["name"] / "stage.json").is_file()
        if "model_path" in stage:
            assert (Path(stage["model_path"]) / "model.safetensors").is_file()


def test_report_has_every_stage_with_metrics_in_range(fast_run):
    out, _ = fast_run
    report = _report(out)
    assert report["mode"]["test_mode"] is True
    assert "test mode" in (out / "report.md").read_text()
    stages = _stages(report)
    assert list(stages) == ["ground-truth", "untrained", "teacher", "causal-teacher", "causal-teacher-here", "tf-scm", "sf-dmd"]
    for name in ("tf-scm", "sf-dmd"):  # distilled students: their own 2-step sampler without CFG, and 1 step
        assert stages[name]["sampler"]["steps"] == 2 and stages[name]["sampler"]["guidance"] == 1.0
        assert 0.0 <= stages[name]["one_step"]["caption_adherence"] <= 1.0
        assert "long_drift" in stages[name]["metrics"]
        assert stages[name]["metrics"]["stream_seconds"] == report["budget"]["stream_seconds"]  # and streamed
        given = stages[name]["image_cond"]  # and started from images, and extending clips
        assert given["truth/position_error_px"] == 0.0 and 0.0 <= given["image_cond/caption_adherence"] <= 1.0
        assert 0.0 <= given["extend/seam_consistency"] <= 1.0 and given["cut/position_error_px"] > 0
    assert "stream_seconds" not in stages["causal-teacher"]["metrics"]  # 50 steps with CFG: too long to stream here
    assert "stream caption first → 2nd half" in (out / "report.md").read_text()
    assert "## Image-to-video and extension" in (out / "report.md").read_text()
    assert stages["sf-dmd"]["training"]["init"].endswith("tf-scm/model")
    assert "skipped" in stages["causal-teacher-here"]  # the causal teacher was trained here
    for name, stage in stages.items():
        if "skipped" in stage:
            continue
        metrics = stage["metrics"]
        for key in ("colour_adherence", "shape_adherence", "caption_adherence", "direction_accuracy", "temporal_consistency"):
            assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, (name, key, metrics[key])
    assert stages["ground-truth"]["metrics"]["caption_adherence"] > 0.9
    truth = stages["ground-truth"]["metrics"]  # the renders' pixel fidelity is perfect, a model's is measured
    assert (truth["background_residual"], truth["colour_error"], truth["edge_sharpness"]) == (0.0, 0.0, 1.0)
    assert 0.0 <= stages["teacher"]["metrics"]["background_residual"] <= 1.0
    assert "background mean / p90" in (out / "report.md").read_text()
    assert stages["ground-truth"]["metrics"]["long_last_caption_adherence"] > 0.9
    assert stages["untrained"]["metrics"]["caption_adherence"] < 0.1
    for name in ("teacher", "causal-teacher"):
        stage = stages[name]
        assert stage["source"] == "trained here"
        assert stage["training"]["steps"] == report["budget"]["steps"][name] and stage["training"]["seconds"] > 0
        assert stage["cost"]["seconds_per_video"] > 0
    assert "long_drift" in stages["causal-teacher"]["metrics"] and 0 <= stages["causal-teacher"]["metrics"]["long_drift"] <= 1
    steps = report["budget"]["eval_steps"]
    assert stages["teacher"]["cost"]["nfe_per_video"] == 2 * steps  # CFG: two calls a step
    assert stages["causal-teacher"]["cost"]["nfe_per_video"] == 2 * (4 * steps + 3)  # 4 chunks, 3 cache commits
    assert stages["tf-scm"]["cost"]["nfe_per_video"] == 4 * 2 + 3  # 2 steps a chunk, no CFG


def test_a_rerun_skips_finished_stages_and_a_lost_stage_is_redone(fast_run):
    out, _ = fast_run
    again = cli("quickstart", "--fast", "--from-scratch", "--device", "cpu", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done in an earlier run, skipped") == 7

    (out / "causal-teacher" / "stage.json").unlink()  # as if killed after training, before its evaluation
    before = json.loads((out / "causal-teacher" / "train_report.json").read_text())
    again = cli("quickstart", "--fast", "--from-scratch", "--device", "cpu", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done in an earlier run, skipped") == 6
    assert "resumed from" in again.stdout + again.stderr  # the trainer continued from its checkpoint: no step is redone
    after = json.loads((out / "causal-teacher" / "train_report.json").read_text())
    assert after["steps"] == before["steps"]
    assert (out / "causal-teacher" / "stage.json").is_file()


def test_given_teachers_are_used_and_a_short_causal_run_is_trained_here(fast_run, tmp_path):
    teachers, _ = fast_run
    out = tmp_path / "given"
    result = cli("quickstart", "--fast", "--teachers", str(teachers), "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    stages = _stages(_report(out))
    assert stages["teacher"]["source"] == stages["causal-teacher"]["source"] == "given"
    assert stages["teacher"]["model_path"] == str(teachers / "teacher" / "model")
    assert not (out / "teacher" / "model").exists()  # nothing trained for it
    assert stages["teacher"]["training"]["command"] == (teachers / "teacher" / "command.txt").read_text().strip()
    assert stages["teacher"]["training"]["command"].startswith("causal-rcm train teacher ")
    here = stages["causal-teacher-here"]
    assert here["source"] == "trained here" and here["training"]["init"] == str(teachers / "teacher" / "model")
    assert "caption_adherence" in here["metrics"] and "long_drift" not in here["metrics"]  # no 4x rollout for the short run
    assert "**teacher: given** (`--teachers`)" in (out / "report.md").read_text()


def test_given_teachers_in_another_world_train_the_stages_here_in_it(tmp_path):
    """Teachers of the packed codec (two frames per latent frame, four latent frames): the runs here take their world."""
    from causal_rcm.runs import load_config
    from causal_rcm.runs import train

    teachers = tmp_path / "teachers"
    tiny = ["model.dim=32", "model.num_heads=2", "model.num_layers=2", "model.ffn_dim=64", "train.batch_size=2", "train.steps=1",
            "train.eval_videos=0", "train.progress=false", "train.device=cpu",
            "data.codec_frames=2", "data.num_frames=4", "model.in_dim=96", "model.out_dim=96"]
    train(load_config("teacher", None, tiny + [f"train.out_dir={teachers / 'teacher'}"]), restart=True)
    train(load_config("causal-teacher", None, tiny + [f"train.out_dir={teachers / 'causal-teacher'}",
                                                      f"train.init={teachers / 'teacher' / 'model'}"]), restart=True)
    # a shipped TF-sCM student that streams at a window of 6 latent frames with a sink of 2: the one trained here takes both
    train(load_config("tf-scm", None, tiny + [f"train.out_dir={teachers / 'tf-scm'}", "data.stream_window=6", "data.stream_sink=2",
                                              f"train.teacher={teachers / 'causal-teacher' / 'model'}"]), restart=True)
    out = tmp_path / "packed"
    result = cli("quickstart", "--fast", "--teachers", str(teachers), "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("causal-teacher-here", "tf-scm", "sf-dmd"):
        data = json.loads((out / stage / "config.json").read_text())["data"]
        assert (data["codec_frames"], data["num_frames"]) == (2, 4), stage
        assert data["stream_window"] == (6 if stage == "tf-scm" else 0), stage
        assert data["stream_sink"] == (2 if stage == "tf-scm" else -1), stage
    stream = json.loads((out / "tf-scm" / "model" / "config.json").read_text())["pipeline"]["stream"]
    assert (stream["window_frames"], stream["sink_frames"]) == (6, 2)
    stages = _stages(_report(out))
    assert stages["tf-scm"]["shipped"]["metrics"]["caption_adherence"] >= 0 and "shipped" not in stages["sf-dmd"]


def test_other_options_in_the_same_folder_are_refused(fast_run, capsys):
    out, _ = fast_run
    assert run_main("quickstart", "--fast", "--from-scratch", "--device", "cpu", "--minutes", "1", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a quickstart run with other options (minutes differ)" in err[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{file}"], "is a file"),
        (["--out", "{file}/run"], "is a file, not a folder"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--minutes", "0"], "--minutes': 0.0 is not in the range 0<x"),
        (["--from-scratch", "--teachers", "{tmp}"], "leave out --teachers"),
        (["--teachers", "{tmp}"], "holds neither teacher/model nor causal-teacher/model"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("x")
    args = [a.format(file=tmp_path / "afile", tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert run_main("quickstart", "--fast", *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert run_main("quickstart", "--fast", "--device", "cuda", "--out", str(tmp_path / "out")) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_the_readme_quickstart_command_is_what_the_cli_accepts():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if "causal-rcm quickstart" in line and "&&" in line]
    assert len(lines) == 1, "the README's fresh-machine section shows one quickstart command line"
    setup, command = (part.strip() for part in lines[0].strip().strip("`").split("&&"))
    assert setup == "bash scripts/setup.sh" and (REPO / "scripts" / "setup.sh").is_file()
    words = shlex.split(command)
    assert words[0] == ".venv/bin/causal-rcm" and words[1] == "quickstart"
    context = quickstart_command.make_context("quickstart", words[2:])  # parses the README's options
    assert context.params["out"] == Path("runs/quickstart") or "--out" in words
    from click.testing import CliRunner

    from causal_rcm.cli import cli as cli_group

    shown = CliRunner().invoke(cli_group, [*words[1:], "--help"])
    assert shown.exit_code == 0 and "--from-scratch" in shown.output


def test_restart_clears_only_what_the_quickstart_wrote(tmp_path):
    from causal_rcm.runs.quickstart import STAGES, _clear

    for stage in STAGES:
        (tmp_path / stage.name).mkdir()
        (tmp_path / stage.name / "stage.json").write_text("{}")
    for name in ("report.md", "report.json", "quickstart.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_text("x")
    _clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_minutes_rescale_the_time_guards_of_the_stages_that_train():
    from causal_rcm.runs.quickstart import BUDGETS

    cpu = BUDGETS["cpu"]
    scaled = cpu.scaled(7.5, ["teacher", "causal-teacher"])
    assert scaled.seconds["teacher"] + scaled.seconds["causal-teacher"] == pytest.approx(450)
    assert scaled.seconds["teacher"] / scaled.seconds["causal-teacher"] == pytest.approx(cpu.seconds["teacher"] / cpu.seconds["causal-teacher"])
    assert cpu.scaled(None, ["teacher"]) is cpu
