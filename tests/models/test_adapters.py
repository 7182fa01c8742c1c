import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from causal_rcm.cli import main
from causal_rcm.errors import CheckpointError
from causal_rcm.spec import PipelineSpec
from causal_rcm.models.adapters import detect_layout, diffusers_to_wan, load_checkpoint, load_model, save_model, wan_to_diffusers

from ..conftest import random_model, small_config


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def ours(tmp_path):
    model = random_model(small_config(num_layers=3))
    path = save_model(model, tmp_path / "ours")
    return model, path


@pytest.mark.parametrize("via", ["wan", "diffusers", "wan.safetensors", "wan.pth"])
def test_round_trips_are_exact(tmp_path, via):
    layout, _, suffix = via.partition(".")
    # Configs each layout can express: diffusers has no text_len (Wan's 512 is assumed) and a bare
    # .pth carries no config at all (heads of 128 channels, as in every Wan2.1 model, are assumed).
    overrides = dict(text_len=512) if layout == "diffusers" else {}
    if suffix == "pth":
        overrides = dict(text_len=512, dim=256, num_heads=2, ffn_dim=64)
    model = random_model(small_config(num_layers=3, **overrides))
    path = save_model(model, tmp_path / "ours")
    target = tmp_path / (f"converted.{suffix}" if suffix else "converted")
    main(["convert", str(path), str(target), "--to", layout])
    assert detect_layout(target) == layout
    main(["convert", str(target), str(tmp_path / "back"), "--to", "causal-rcm"])
    back = load_model(tmp_path / "back")
    assert back.config == model.config
    assert_same_state(back.state_dict(), model.state_dict())


def test_diffusers_folder_loads_in_diffusers(tmp_path, ours):
    diffusers = pytest.importorskip("diffusers")
    model, path = ours
    save_model(model, tmp_path / "d", layout="diffusers")
    # Build diffusers' model from our config.json and load our weights strictly (diffusers' own
    # from_pretrained needs `accelerate` for this model class).
    config = {k: v for k, v in json.loads((tmp_path / "d" / "config.json").read_text()).items() if not k.startswith("_")}
    ref = diffusers.WanTransformer3DModel(**config).eval()
    ref.load_state_dict(load_file(tmp_path / "d" / "diffusion_pytorch_model.safetensors"), strict=True)
    x, t, ctx = torch.randn(1, 4, 2, 4, 4), torch.tensor([400.0]), torch.randn(1, 3, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), ref(x, t, ctx, return_dict=False)[0], atol=1e-4, rtol=0)


def test_key_maps_are_inverse():
    state = random_model().state_dict()
    renamed = wan_to_diffusers(state)
    assert "condition_embedder.time_proj.weight" in renamed and "blocks.1.attn2.to_out.0.bias" in renamed
    assert "blocks.0.norm2.weight" in renamed  # Wan's norm3 (cross-attention norm) is diffusers' norm2
    assert_same_state(diffusers_to_wan(renamed), state)


def _expect_cli_error(args, pattern, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pattern in err, err
    return err


def test_missing_and_unexpected_keys_and_wrong_shapes(tmp_path, ours, capsys):
    _, path = ours
    weights = path / "model.safetensors"
    state = load_file(weights)
    broken = {k: v for k, v in state.items() if k != "blocks.1.ffn.0.weight"}
    broken["blocks.1.extra.weight"] = torch.zeros(2)
    broken["head.head.bias"] = torch.zeros(3)
    save_file(broken, weights)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert "1 missing keys: blocks.1.ffn.0.weight" in msg
    assert "1 unexpected keys: blocks.1.extra.weight" in msg
    assert "head.head.bias (3,) != (16,)" in msg
    _expect_cli_error(["convert", str(path), str(tmp_path / "out"), "--to", "wan"], "missing keys", capsys)


@pytest.mark.parametrize("name", ["model.safetensors", "w.pth"])
def test_truncated_files(tmp_path, ours, capsys, name):
    model, path = ours
    if name.endswith(".pth"):
        target = tmp_path / name
        save_model(model, target, layout="wan")
    else:
        target = path
    file = target if target.is_file() else target / name
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    _expect_cli_error(["convert", str(target), str(tmp_path / "out"), "--to", "wan"], "truncated", capsys)


def test_not_a_checkpoint(tmp_path, capsys):
    _expect_cli_error(["convert", str(tmp_path / "nope"), str(tmp_path / "o"), "--to", "wan"], "not found", capsys)
    (tmp_path / "empty").mkdir()
    _expect_cli_error(["convert", str(tmp_path / "empty"), str(tmp_path / "o"), "--to", "wan"], "no config.json", capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    _expect_cli_error(["convert", str(tmp_path / "other"), str(tmp_path / "o"), "--to", "wan"], "UNet2DModel", capsys)


def test_action_weights_cannot_go_to_foreign_layouts(tmp_path, capsys):
    path = save_model(random_model(small_config(num_actions=5)), tmp_path / "wm")
    _expect_cli_error(["convert", str(path), str(tmp_path / "o"), "--to", "diffusers"], "action-conditioning", capsys)


def test_console_script_reports_one_line_and_nonzero_exit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "causal_rcm.cli", "convert", str(tmp_path / "missing"), str(tmp_path / "o"), "--to", "wan"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'missing'}"]
    version = subprocess.run([sys.executable, "-m", "causal_rcm.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "causal-rcm, version" in version.stdout


SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes"


@pytest.mark.skipif(not (SHIPPED / "sf-dmd" / "model").is_dir(), reason="the SF-DMD student is not shipped")
def test_our_layout_to_ours_keeps_the_pipeline_and_window_sets_its_stream_window(tmp_path, capsys):
    from causal_rcm import StreamingPipeline

    src = SHIPPED / "sf-dmd" / "model"
    before = json.loads((src / "config.json").read_text())
    # written through the pipeline spec: the shipped section's old "world" key comes back as "source", nothing else changes
    before["pipeline"] = PipelineSpec.from_dict(before["pipeline"]).to_dict()
    assert before["pipeline"]["source"] == "shapes"
    main(["convert", str(src), str(tmp_path / "copy"), "--to", "causal-rcm"])
    assert json.loads((tmp_path / "copy" / "config.json").read_text()) == before
    main(["convert", str(src), str(tmp_path / "wide"), "--to", "causal-rcm", "--window", "8"])
    assert "streams attend 8 latent frames" in capsys.readouterr().out
    wide = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert wide["pipeline"].pop("stream") == {**before["pipeline"].pop("stream"), "window_frames": 8}
    assert wide == before  # nothing else changed: the weights neither
    assert_same_state(load_file(tmp_path / "wide" / "model.safetensors"), load_file(src / "model.safetensors"))
    assert StreamingPipeline.from_pretrained(tmp_path / "wide").stream("a red circle moves right", steps=1).window_frames == 8
    main(["convert", str(src), str(tmp_path / "d"), "--to", "diffusers"])
    assert "does not hold IN's pipeline section" in capsys.readouterr().out
    for source, layout, window, message in ((src, "wan", 8, "use --to causal-rcm"), (src, "causal-rcm", 1, "hold a chunk of 2"),
                                            (SHIPPED / "teacher" / "model", "causal-rcm", 8, "needs a causal checkpoint")):
        _expect_cli_error(["convert", str(source), str(tmp_path / "o"), "--to", layout, "--window", str(window)], message, capsys)
