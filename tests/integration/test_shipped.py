"""The shipped shapes-world checkpoints: complete, made with the committed config files, and usable."""

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from causal_rcm.config import config_to_dict
from causal_rcm.runs import load_config
from causal_rcm.eval.score import load_for_eval, sample_videos
from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, STUDENTS, TEACHERS, _shipped_run

SHIPPED = [name for name in (*TEACHERS, *STUDENTS) if _shipped_run(SHIPPED_TEACHERS, name) is not None]
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "shapes"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_run_was_made_with_its_config_file(name):
    run = SHIPPED_TEACHERS / name
    words = shlex.split((run / "command.txt").read_text())
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "train_report.json").read_text())
    assert words[words.index("train") + 1] == config["recipe"] == report["recipe"] == name
    # The committed config file, read as `causal-rcm train NAME --config configs/shapes/NAME.json` reads it, resolves
    # to the config the shipped model was trained with, read back as a run's resolved config is (its old single
    # `objective` section moved to the recipe's own sections; keys added since at defaults that keep the old
    # behaviour). Paths aside (they named the device machine's folders), and the JVP backend, which a recipe
    # resolves from "auto" for the device it runs on: triton there, math here.
    resolved = config_to_dict(load_config(name, CONFIGS / f"{name}.json", []))
    recorded = config_to_dict(load_config(name, run / "config.json", []))
    for saved in (recorded, resolved):
        for key in ("out_dir", "init", "teacher"):
            saved["train"].pop(key)
        saved["objective"].pop("jvp_backend")
        if name == "sf-dmd":  # read by TF-sCM only: SF-DMD's regulariser takes the full tangent (r = 1)
            saved["scm"].pop("tangent_warmup")
    assert resolved == recorded
    # Every recorded value was read: none of the old bag's keys was dropped unless its recipe has no section for it.
    for section, values in config.items():
        if isinstance(values, dict) and section != "objective":
            for key, value in values.items():
                if key not in ("out_dir", "init", "teacher"):
                    assert recorded[section][key] == (list(value) if isinstance(value, tuple) else value), f"{section}.{key}"
    # made on a GPU, as the quickstart's table says of the shipped models
    assert report["device"].startswith("cuda") and report["steps"] > 0 and report["eval"]
    assert (run / "metrics.jsonl").read_text().strip()


def test_each_shipped_setting_has_one_home():
    """The values of configs/shapes/ are set nowhere else: neither the scripts that make the shipped chain nor the
    package override them again (an experiment, e.g. device_round.sh's init ablation, picks its own settings)."""
    settings = {}
    for path in CONFIGS.glob("*.json"):
        for section, values in json.loads(path.read_text()).items():
            if isinstance(values, dict):
                settings.update({f"{section}.{key}": value for key, value in values.items()})
    for how in ("train.progress", "train.log_every", "train.ckpt_every", "data.workers", "train.eval_every", "train.eval_videos",
                "train.eval_stream_seconds"):  # how a run reports, not what it learns
        settings.pop(how, None)
    assert "scm.tangent_warmup" in settings and "train.max_seconds" in settings
    # The quickstart's budgets are its own settings for minutes on a CPU (or a GPU), not the shipped chain's.
    runs = [p for p in ROOT.joinpath("src", "causal_rcm", "runs").glob("*.py") if p.name != "quickstart.py"]
    homes = [*ROOT.joinpath("scripts").glob("train_shapes_*.sh"), *runs]
    for key, value in settings.items():
        spellings = {f"{key}={value}", f"{key}={json.dumps(value)}"}
        if isinstance(value, float):
            spellings |= {f"{key}={value:g}", f"{key}={value:.0e}".replace("e-0", "e-")}
        for home in homes:
            assert not any(s in home.read_text() for s in spellings), f"{key}={value} of configs/shapes is set again in {home}"


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
                          (["-c", str(SHIPPED_TEACHERS / "teacher" / "model"), "--window", "8"], "need a causal checkpoint")):
        with pytest.raises(SystemExit) as exit_:
            main(["eval", *args, "-n", "1", "--device", "cpu"])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
