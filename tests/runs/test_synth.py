"""`causal-rcm synth`: a teacher's own samples into latent shards, read back by `data.source=latents`, resumed after
kill -9, and trained on by the recipes (the shapes world's miniature of the paper's synthetic-data-only recipe)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from causal_rcm.cli import main
from causal_rcm.config import DataConfig
from causal_rcm.data.latents import LatentManifest, LatentShards
from causal_rcm.data.source import LatentSource
from causal_rcm.diffusion.samplers import sample
from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.errors import UserError
from causal_rcm.models.adapters import load_model
from causal_rcm.runs import load_config, train
from causal_rcm.runs.latents import SynthArgs, shapes_prompts, synth
from causal_rcm.spec import PipelineSpec
from causal_rcm.data.components import make_text_encoder
from tests.conftest import FAST

PROMPTS = ["a red circle moves left", "a blue square moves up, a green triangle moves down", "a white circle moves right"]


def _prompts(tmp_path: Path, prompts=PROMPTS, name: str = "prompts.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(prompts) + "\n\n")
    return path


def _synth(tmp_path: Path, teacher: Path, out: str = "shards", **kwargs):
    args = SynthArgs(teacher=str(teacher), prompts=str(_prompts(tmp_path)), **{"steps": 2, "per_shard": 2, "batch_size": 2, **kwargs})
    return synth(tmp_path / out, args, device="cpu", progress=False, say=lambda line: None)


def test_shards_hold_the_teachers_own_samples_and_its_ode_states(teachers, tmp_path):
    manifest, made = _synth(tmp_path, teachers["teacher"], ode_pairs=2, videos_per_prompt=2, dtype="float32")
    assert made == 6 and [r.samples for r in manifest.shards] == [(0, 1), (2, 3), (4, 5)]
    store = LatentShards(tmp_path / "shards")
    spec = PipelineSpec.read(teachers["teacher"])
    model = load_model(teachers["teacher"], dtype=torch.float32).eval()
    text = make_text_encoder(spec.text)
    assert store.header.ode_times == tuple(float(s) for s in flow_time_grid(2, spec.sampler.shift)[:-1])
    empty = text([""])[0]
    np.testing.assert_array_equal(store.negative, empty[0].numpy())
    for i in range(len(store)):
        item = store.item(i)
        caption = PROMPTS[item["index"] // 2]
        assert item["meta"]["caption"] == caption and item["latents"].shape == (48, 4, 8, 8)
        context = text([caption])[0]
        np.testing.assert_allclose(item["context"], context[0].numpy(), atol=1e-5)  # trimmed to the prompt, padded back
        assert not item["context"][len(caption.split()) + 2 :].any()
        # An independent reference: the pipeline's sampler from the stored noise (the ODE's first state).
        noise = torch.from_numpy(np.array(item["ode"][0]))[None]
        states = []
        with torch.no_grad():
            x0 = sample(model, noise, context, spec.sampler_spec(steps=2), neg_context=empty,
                        callback=lambda info: states.append(info["x"]))
        torch.testing.assert_close(torch.from_numpy(np.array(item["latents"])), x0[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(np.array(item["ode"][1])), states[1][0], rtol=1e-5, atol=1e-5)
    # Noise depends on (seed, index) only: video 1 of a prompt is not video 0
    assert not np.allclose(store.item(0)["ode"][0], store.item(1)["ode"][0])


def test_the_loader_streams_every_sample_once_an_epoch_split_over_ranks(teachers, tmp_path):
    _synth(tmp_path, teachers["teacher"], ode_pairs=1)
    data = DataConfig(source="latents", shards=str(tmp_path / "shards"), num_frames=4, seed=3)
    one = LatentSource(data, 0, local_batch=3)
    batch = one.next_batch()
    D = one.store.header.text_dim
    assert batch["latents"].shape == (3, 48, 4, 8, 8) and batch["context"].shape == (3, 24, D)
    assert batch["ode_states"].shape == (3, 1, 48, 4, 8, 8) and batch["ode_times"].tolist() == [1.0]
    assert sorted(batch["caption"]) == sorted(PROMPTS) and one.name == "shapes" and one.oracle is not None
    second = one.next_batch()  # the next epoch: another order of the same samples
    assert sorted(second["caption"]) == sorted(PROMPTS)
    ranks = [LatentSource(data, 0, rank=r, world_size=3, local_batch=1) for r in range(3)]
    split = [ranks[r].next_batch()["latents"][0] for r in range(3)]
    torch.testing.assert_close(torch.stack(split), batch["latents"])
    state = one.state_dict()
    expected = one.next_batch()["latents"]
    resumed = LatentSource(data, 0, local_batch=3)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.next_batch()["latents"], expected)
    assert one.empty_context(2).shape == (2, 24, D) and one.eval_set(2)["video"].shape == (2, 3, 4, 32, 32)
    with pytest.raises(UserError, match=r"holds 32x32 videos of 4 latent frames: set data.resolution=32"):
        LatentSource(DataConfig(source="latents", shards=data.shards, resolution=64), 0)
    with pytest.raises(UserError, match="set data.shards=PATH"):
        LatentSource(DataConfig(source="latents"), 0)


def test_a_rerun_keeps_whole_shards_and_rewrites_half_written_ones(teachers, tmp_path):
    clean, _ = _synth(tmp_path, teachers["teacher"], out="clean")
    out = tmp_path / "broken"
    _synth(tmp_path, teachers["teacher"], out="broken")
    (out / "manifest.json").unlink()
    (out / "records" / "shard-000001.json").unlink()  # killed between the tar and its record
    tar = out / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])  # a record whose shard is not the one it describes
    lines = []
    manifest, made = synth(out, SynthArgs(teacher=str(teachers["teacher"]), prompts=str(tmp_path / "prompts.txt"), steps=2,
                                          per_shard=2, batch_size=2), device="cpu", progress=False, say=lines.append)
    assert made == 3 and lines == ["shard-000000.tar has no record of being finished (left by a killed run): writing it again",
                                   "shard-000001.tar has no record of being finished (left by a killed run): writing it again"]
    assert [(r.file, r.sha256) for r in manifest.shards] == [(r.file, r.sha256) for r in clean.shards]
    assert synth(out, SynthArgs(teacher=str(teachers["teacher"]), prompts=str(tmp_path / "prompts.txt"), steps=2, per_shard=2,
                                batch_size=2), device="cpu", progress=False, say=lines.append)[1] == 0
    with pytest.raises(UserError, match=r"holds another job \(.*steps=2 \(now 3\)"):
        synth(out, SynthArgs(teacher=str(teachers["teacher"]), prompts=str(tmp_path / "prompts.txt"), steps=3, per_shard=2,
                             batch_size=2), device="cpu", progress=False)


def test_kill_9_mid_job_then_rerun_gives_the_shards_of_an_uninterrupted_run(teachers, tmp_path):
    prompts = _prompts(tmp_path, PROMPTS * 4)
    args = ["synth", "-t", str(teachers["teacher"]), "-p", str(prompts), "--steps", "4", "--per-shard", "1",
            "--batch-size", "1", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "causal_rcm.cli", *args, "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "records" / "shard-000001.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "synth finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="its job has not finished; run the same command again"):
        LatentManifest.read(out)
    main([*args, "-o", str(out)])
    main([*args, "-o", str(tmp_path / "whole")])
    shas = [[r.sha256 for r in LatentManifest.read(p).shards] for p in (out, tmp_path / "whole")]
    assert shas[0] == shas[1] and len(shas[0]) == 12


def test_bad_inputs_are_one_line(teachers, tmp_path, capsys):
    cases = [
        (["-t", str(teachers["causal-teacher"])], "is a causal model: synth samples a bidirectional teacher"),
        (["-t", str(teachers["teacher"]), "-p", str(tmp_path / "none.txt")], "prompts file not found"),
        (["-t", str(teachers["teacher"]), "-p", str(_prompts(tmp_path, ["a purple elephant"], "bad.txt"))], "outside the shapes-world vocabulary"),
        (["-t", str(teachers["teacher"]), "--steps", "2", "--ode-pairs", "3"], "--ode-pairs must lie in 0..--steps (2), got 3"),
    ]
    for extra, message in cases:
        argv = ["synth", "-p", str(_prompts(tmp_path)), "-o", str(tmp_path / "x"), "--device", "cpu", *extra]
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_shapes_prompts_are_the_training_streams_captions(teachers):
    from causal_rcm.data.source import ShapesSource

    prompts = shapes_prompts(str(teachers["teacher"]), 5, seed=2)
    data = PipelineSpec.read(teachers["teacher"]).data_config()
    data.seed = 2
    source = ShapesSource(data, 64, local_batch=5)
    assert prompts == source.next_batch()["caption"]


def test_recipes_train_on_synthetic_shards(teachers, tmp_path):
    """causal-teacher, then the staged causal-rcm (TF-sCM, SF-DMD), and ode-init on stored pairs, from shards."""
    _synth(tmp_path, teachers["teacher"], ode_pairs=2, steps=4)
    common = [*FAST, "train.steps=1", "train.eval_videos=1", "train.eval_steps=1", "train.eval_drift=0",
              "data.source=latents", f"data.shards={tmp_path / 'shards'}"]
    train(load_config("causal-teacher", None, [*common, "train.eval_videos=0", f"train.init={teachers['teacher']}",
                                               f"train.out_dir={tmp_path / 'ct'}"]))
    config = load_config("causal-rcm", None, [*common, "stages.cm_steps=1", "stages.dmd_steps=1", "dmd.critic_steps=1",
                                               "objective.student_steps=1", f"train.teacher={tmp_path / 'ct' / 'model'}",
                                               f"train.dmd_teacher={teachers['teacher']}", f"train.out_dir={tmp_path / 'student'}"])
    report = train(config)
    assert report["steps"] == 2 and "caption_adherence" in report["eval"]
    assert PipelineSpec.read(tmp_path / "student" / "model").source == "shapes"  # `causal-rcm eval` scores it
    ode = load_config("ode-init", None, [*common, "train.eval_videos=0", f"train.teacher={teachers['teacher']}", f"train.out_dir={tmp_path / 'ode'}",
                                          "objective.sample_steps=2", f"objective.shift={PipelineSpec.read(teachers['teacher']).sampler.shift}"])
    assert json.loads(json.dumps(train(ode)))["steps"] == 1
    wrong = load_config("ode-init", None, [*common, "train.eval_videos=0", f"train.teacher={teachers['teacher']}", f"train.out_dir={tmp_path / 'ode2'}",
                                            "objective.sample_steps=2", "objective.shift=1.5"])
    with pytest.raises(UserError, match=r"the shards' ODE pairs are at flow times \[1.0, .*set objective.sample_steps=2"):
        train(wrong)
