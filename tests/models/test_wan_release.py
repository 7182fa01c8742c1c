"""Wan2.1 releases, diffusers' folder and the original layout, as pipelines, teachers and `convert` inputs, on tiny
random releases built offline (tests/wan_release.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from causal_rcm.cli import main  # noqa: E402
from causal_rcm.errors import UserError  # noqa: E402
from causal_rcm.models.adapters import load_checkpoint, load_model  # noqa: E402
from causal_rcm.models.release import find_release  # noqa: E402
from causal_rcm.pipeline import StreamingPipeline  # noqa: E402
from causal_rcm.spec import PipelineSpec  # noqa: E402
from tests.wan_release import make_diffusers_release, make_original_release, tiny_text_encoder, tiny_vae  # noqa: E402

# 32 x 32 frames (4 x 4 latents), 3 latent frames = 9 frames, 2 Euler steps; a causal variant of 1-frame chunks.
SMALL = {"resolution": 32, "width": 32, "num_frames": 3, "sampler": {"solver": "euler", "steps": 2, "shift": 3.0, "guidance": 2.0}}
CAUSAL = {**SMALL, "causal": True, "frames_per_chunk": 1, "stream": {"sink_frames": 1, "window_frames": 2}}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    diffusers = make_diffusers_release(root / "diffusers")
    return {"diffusers": diffusers, "wan": make_original_release(root / "wan", diffusers)}


def test_both_layouts_are_found_and_load_the_same_transformer(releases):
    d, w = find_release(releases["diffusers"]), find_release(releases["wan"])
    assert (d.layout, d.vae, d.text_encoder, d.tokenizer, d.flow_shift) == ("diffusers", "vae", "text_encoder", "tokenizer", 3.0)
    assert (w.layout, w.vae, w.tokenizer) == ("wan", "Wan2.1_VAE.pth", "google/umt5-xxl")
    # train.teacher= and train.init= read the transformer of either folder
    a, b = load_checkpoint(releases["diffusers"]), load_checkpoint(releases["wan"])
    assert (a[2], b[2]) == ("diffusers", "wan") and a[0].in_dim == b[0].in_dim == 16
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    spec = PipelineSpec.read_if_any(releases["diffusers"])  # a teacher's spec: bidirectional, Wan's own components
    assert not spec.causal and spec.codec.kind == "wan-vae" and spec.text.kind == "umt5" and spec.text.text_len == 512
    assert spec.sampler.shift == 3.0 and (spec.resolution, spec.width, spec.num_frames, spec.fps) == (480, 832, 21, 16.0)


def test_pipeline_from_a_diffusers_release_generates_and_streams_with_a_prompt_switch(releases):
    pipe = StreamingPipeline.from_pretrained(releases["diffusers"], pipeline=SMALL)
    video = pipe.generate("a red circle moves left")
    assert video.shape == (9, 32, 32, 3) and video.dtype == np.uint8 and pipe.video_frames == 9
    causal = StreamingPipeline.from_pretrained(releases["diffusers"], pipeline=CAUSAL)
    stream = causal.stream("a red circle moves left", num_frames=13)
    frames = []
    for frame in stream:
        frames.append(frame)
        if frame.index == 4:  # after the first two latent frames (1 + 4 frames)
            stream.switch_prompt("a blue square moves up")
    assert [f.image.shape for f in frames] == [(32, 32, 3)] * 13
    assert [f.chunk for f in frames] == [0] + [1] * 4 + [2] * 4 + [3] * 4
    assert {f.prompt for f in frames[:5]} == {"a red circle moves left"} and {f.prompt for f in frames[5:]} == {"a blue square moves up"}


def test_original_layout_gives_the_diffusers_release_frames(releases):
    a = StreamingPipeline.from_pretrained(releases["diffusers"], pipeline=CAUSAL).generate("a red circle", num_frames=9)
    b = StreamingPipeline.from_pretrained(releases["wan"], pipeline=CAUSAL).generate("a red circle", num_frames=9)
    assert a.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_convert_a_release_to_our_layout_and_back(releases, tmp_path):
    release = releases["diffusers"]
    main(["convert", str(release), str(tmp_path / "ours"), "--to", "causal-rcm"])
    section = json.loads((tmp_path / "ours" / "config.json").read_text())["pipeline"]
    assert section["codec"] == {"kind": "wan-vae", "path": str((release / "vae").resolve())}
    assert section["text"]["path"] == str((release / "text_encoder").resolve()) and section["text"]["text_len"] == 512
    ours = StreamingPipeline.from_pretrained(tmp_path / "ours", pipeline=SMALL).generate("a blue square", seed=3)
    theirs = StreamingPipeline.from_pretrained(release, pipeline=SMALL).generate("a blue square", seed=3)
    np.testing.assert_array_equal(ours, theirs)
    # ours -> ours elsewhere keeps finding the components; ours -> diffusers gives the release's transformer back
    main(["convert", str(tmp_path / "ours"), str(tmp_path / "moved" / "ours"), "--to", "causal-rcm"])
    assert PipelineSpec.read(tmp_path / "moved" / "ours") == PipelineSpec.read(tmp_path / "ours")
    main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "diffusers"])
    back, original = load_model(tmp_path / "back").state_dict(), load_model(release).state_dict()
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in back)


def _broken(releases, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(releases["diffusers"], folder)
    return folder


def test_a_missing_or_mismatched_component_is_named(releases, tmp_path, capsys):
    missing = _broken(releases, tmp_path, "no-vae")
    shutil.rmtree(missing / "vae")
    with pytest.raises(UserError, match=r"without its vae$"):
        StreamingPipeline.from_pretrained(missing)
    assert load_model(missing).config.in_dim == 16  # the transformer alone still trains as a teacher
    with pytest.raises(SystemExit):
        main(["convert", str(missing), str(tmp_path / "out"), "--to", "causal-rcm"])
    assert "without its vae" in capsys.readouterr().err

    wrong_vae = _broken(releases, tmp_path, "z4")
    tiny_vae(z_dim=4, latents_mean=[0.0] * 4, latents_std=[1.0] * 4).save_pretrained(wrong_vae / "vae")
    with pytest.raises(UserError, match=r"the model takes 16 latent channels but the codec \(wan-vae vae\) makes 4"):
        StreamingPipeline.from_pretrained(wrong_vae)
    with pytest.raises(SystemExit):
        main(["convert", str(wrong_vae), str(tmp_path / "out"), "--to", "causal-rcm"])
    assert "makes 4" in capsys.readouterr().err and not (tmp_path / "out").exists()

    wrong_text = _broken(releases, tmp_path, "d32")
    tiny_text_encoder(d_model=32).save_pretrained(wrong_text / "text_encoder")
    with pytest.raises(UserError, match=r"the model takes text_dim 16 but the text encoder \(umt5 text_encoder\) makes 32"):
        StreamingPipeline.from_pretrained(wrong_text)

    original = tmp_path / "wan-no-t5"
    shutil.copytree(releases["wan"], original)
    (original / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    with pytest.raises(UserError, match="wan layout.*without its models_t5_umt5-xxl-enc-bf16.pth"):
        StreamingPipeline.from_pretrained(original)
