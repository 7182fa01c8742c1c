"""The paper's recipe on a Wan2.1 release, start to finish, at tiny size on the CPU: the teacher's own samples
(`causal-rcm synth`) -> latent shards -> a causal teacher -> `causal-rcm train causal-rcm` (TF-sCM, then SF-DMD
matching the release) -> `causal-rcm generate` -> an mp4 of the right frames and size; from a diffusers folder
and from Wan's original layout, both built offline (tests/wan_release.py). And videos of your own
(`causal-rcm data prepare`) encoded with the release's VAE and UMT5."""

from __future__ import annotations

import av
import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from causal_rcm.cli import main  # noqa: E402
from causal_rcm.data.latents import LatentShards  # noqa: E402
from causal_rcm.data.video import write_mp4  # noqa: E402
from causal_rcm.pipeline import StreamingPipeline  # noqa: E402
from causal_rcm.spec import PipelineSpec  # noqa: E402
from tests.wan_release import PROMPTS, make_diffusers_release, make_original_release  # noqa: E402

# 32 x 32 frames (4 x 4 latents, 2 x 2 tokens), 3 latent frames = 9 frames at 16 fps, chunks of one latent frame.
FRAMES = ["--resolution", "32", "--width", "32", "--num-frames", "3"]
TRAIN = ["train.steps=1", "train.batch_size=2", "train.eval_videos=0", "train.progress=false", "optim.warmup_steps=0",
         "data.source=latents", "data.resolution=32", "data.num_frames=3", "data.frames_per_chunk=1"]


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    diffusers = make_diffusers_release(root / "diffusers")
    return {"diffusers": diffusers, "wan": make_original_release(root / "wan", diffusers)}


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_synth_then_the_whole_recipe_then_generate(releases, layout, tmp_path, capsys):
    release = releases[layout]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for p in PROMPTS if p) + "\n")
    shards = tmp_path / "shards"
    main(["synth", "-t", str(release), "-p", str(prompts), "-o", str(shards), "--steps", "2", "--per-shard", "2",
          "--device", "cpu", "--no-progress", *FRAMES])
    store = LatentShards(shards)
    assert len(store) == 2 and store.header.latent_shape == (16, 3, 4, 4) and store.header.text_len == 512
    assert store.header.codec["kind"] == "wan-vae" and store.header.world == "latents"
    data = [f"data.shards={shards}"]
    main(["train", "causal-teacher", *TRAIN, *data, f"train.init={release}", f"train.out_dir={tmp_path / 'ct'}"])
    main(["train", "causal-rcm", *TRAIN, *data, "stages.cm_steps=1", "stages.dmd_steps=1", "dmd.critic_steps=1",
          f"train.teacher={tmp_path / 'ct' / 'model'}", f"train.dmd_teacher={release}", f"train.out_dir={tmp_path / 'student'}"])
    student = tmp_path / "student" / "model"
    spec = PipelineSpec.read(student)
    assert spec.causal and spec.codec.kind == "wan-vae" and spec.text.kind == "umt5" and spec.recipe == "sf-dmd"
    main(["generate", "-c", str(student), "-p", "a red circle moves left", "-o", str(tmp_path / "out.mp4"), "--steps", "2"])
    assert "9 frames (0.5625 s at 16 fps), 32x32 px" in capsys.readouterr().out
    assert _frames(tmp_path / "out.mp4").shape == (9, 32, 32, 3)
    stream = StreamingPipeline.from_pretrained(student).stream("a red circle moves left", num_frames=9)
    frames = []
    for frame in stream:
        frames.append(frame)
        if frame.index == 0:
            stream.switch_prompt("a blue square moves up")
    assert [f.image.shape for f in frames] == [(32, 32, 3)] * 9
    assert frames[0].prompt == "a red circle moves left" and {f.prompt for f in frames[1:]} == {"a blue square moves up"}


def test_prepare_encodes_videos_with_the_release_vae_and_umt5(releases, tmp_path, capsys):
    videos = tmp_path / "videos"
    rng = np.random.default_rng(0)
    write_mp4(videos / "a.mp4", rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8), fps=30)
    write_mp4(videos / "b.mp4", rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), fps=30)  # 0.13 s: too short
    (tmp_path / "captions.jsonl").write_text('{"file": "a.mp4", "caption": "a red circle"}\n{"file": "b.mp4", "caption": "a"}\n')
    main(["data", "prepare", str(videos), "--captions", str(tmp_path / "captions.jsonl"), "-c", str(releases["diffusers"]),
          "-o", str(tmp_path / "shards"), "--device", "cpu", "--no-progress", *FRAMES])
    assert "b.mp4: too short" in capsys.readouterr().out
    store = LatentShards(tmp_path / "shards")
    item = store.item(0)
    assert len(store) == 1 and item["latents"].shape == (16, 3, 4, 4) and item["meta"]["caption"] == "a red circle"
    assert item["context"].shape == (512, 16) and item["context"][:4].any() and not item["context"][4:].any()
