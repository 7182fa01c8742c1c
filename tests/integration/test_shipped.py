"""The shipped shapes-world checkpoints: complete, made by the committed script, and usable."""

import dataclasses
import json
import shlex

import pytest
import torch
from safetensors.torch import load_file

from causal_rcm.config import config_to_dict
from causal_rcm.runs import load_config
from causal_rcm.eval.score import load_for_eval, sample_videos
from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, STUDENTS, TEACHERS, _shipped_run

SHIPPED = [name for name in (*TEACHERS, *STUDENTS) if _shipped_run(SHIPPED_TEACHERS, name) is not None]
SCRIPT = {"teacher": "train_shapes_teachers.sh", "causal-teacher": "train_shapes_teachers.sh",
          "tf-scm": "train_shapes_students.sh", "sf-dmd": "train_shapes_students.sh"}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_run_records_its_command_and_config(name):
    run = SHIPPED_TEACHERS / name
    words = shlex.split((run / "command.txt").read_text())
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "train_report.json").read_text())
    assert words[words.index("train") + 1] == config["recipe"] == report["recipe"] == name
    # The committed defaults and the command's overrides still resolve to the config it ran with
    # (paths aside: they named the device machine's folders; and the JVP backend, which a recipe
    # resolves from "auto" for the device it runs on: triton there, math here).
    resolved = config_to_dict(load_config(name, None, [w for w in words if "=" in w]))
    defaults = config_to_dict(load_config(name, None, []))
    for section, values in resolved.items():  # keys added after the run, at defaults that keep the old behaviour
        if isinstance(values, dict):
            for key in set(values) - set(config[section]):
                assert values.pop(key) == defaults[section][key], f"{section}.{key}"
    for saved in (config, resolved):
        for key in ("out_dir", "init", "teacher"):
            saved["train"].pop(key)
        saved["objective"].pop("jvp_backend")
    assert resolved == config
    # The command ran the committed script's settings for this stage: its common overrides and the stage's own
    # (the time guard and the paths aside), the last one of each key winning as in the trainer.
    ran = dict(w.split("=", 1) for w in words if "=" in w)
    for key, value in _script_settings(name).items():
        if key not in ("train.max_seconds", "train.out_dir", "train.init", "train.teacher"):
            assert ran.get(key) == value, f"{name}: {key}={ran.get(key)}, the script says {value}"
    # made on a GPU, as the quickstart's table says of the shipped models
    assert report["device"].startswith("cuda") and report["steps"] > 0 and report["eval"]
    assert (run / "metrics.jsonl").read_text().strip()


def _script_settings(name):
    """The overrides scripts/<script> gives stage ``name``: ``common`` and the stage line, as key -> value."""
    text = (SHIPPED_TEACHERS.parents[1] / "scripts" / SCRIPT[name]).read_text().replace("\\\n", " ")
    lines = text.splitlines()
    common = next(line for line in lines if line.startswith("common="))
    stage = next(line for line in lines if line.strip().startswith(f"stage {name} "))
    words = shlex.split(shlex.split(common.split("=", 1)[1])[0]) + shlex.split(stage)
    settings = dict(w.split("=", 1) for w in words if "=" in w and "$" not in w)
    assert "train.export_dtype" in settings and "train.steps" in settings, settings
    return settings


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_is_float16_and_samples_on_the_cpu(name):
    run = SHIPPED_TEACHERS / name
    weights = load_file(run / "model" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    model, world, spec = load_for_eval(run / "model", device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    videos = sample_videos(model, world, ["a red circle moves left"], dataclasses.replace(spec, steps=2), seed=0)
    assert videos.shape[:3] == (1, 3, world.data.num_frames * world.data.codec_frames) and torch.isfinite(videos).all()


@pytest.mark.skipif("sf-dmd" not in SHIPPED, reason="the SF-DMD student is not shipped")
def test_eval_window_widens_only_the_rollouts_past_the_checkpoints_window(capsys):
    from causal_rcm.cli import main
    from causal_rcm.eval.score import evaluate_checkpoint

    student = SHIPPED_TEACHERS / "sf-dmd" / "model"
    own = evaluate_checkpoint(student, n=2, drift_factor=2, device="cpu")
    wide = evaluate_checkpoint(student, n=2, drift_factor=2, device="cpu", window_frames=8)
    assert wide["caption_adherence"] == own["caption_adherence"]  # a training-length video fits either window
    assert wide["long_drift"] != own["long_drift"]  # 2x rollouts outgrow the checkpoint's 4 frames, not 8
    for args, message in ((["-c", str(student), "--window", "1"], "must hold a chunk of 2 frames"),
                          (["-c", str(SHIPPED_TEACHERS / "teacher" / "model"), "--window", "8"], "needs a causal checkpoint")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", *args, "-n", "1", "--device", "cpu"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
