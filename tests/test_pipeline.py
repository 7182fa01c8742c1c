"""StreamingPipeline on tiny random checkpoints: against the samplers and a masked full-sequence forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from causal_rcm import StreamingPipeline
from causal_rcm.diffusion import causal_sample, euler_sample, head_complement, make_kv_caches, sample_chunk
from causal_rcm.errors import UserError
from causal_rcm.kernels import masks
from causal_rcm.models.adapters import save_model

from .checkpoints import make_checkpoint, pipeline_section
from .conftest import random_model, small_config

PROMPT_A = "a red circle moves left"
PROMPT_B = "a blue square moves up , a green triangle moves right"


def load(tmp_path, name="ckpt", **kw) -> StreamingPipeline:
    return StreamingPipeline.from_pretrained(make_checkpoint(tmp_path / name, **kw))


def chunk_noise(pipe: StreamingPipeline, seed: int, sizes: list[int]) -> torch.Tensor:
    """The noise a stream draws: one randn per chunk from a generator seeded with ``seed`` -> (1, C, F, h, w)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn((1, *pipe.latent_shape(n)), generator=g) for n in sizes], dim=2)


def frames_of(stream) -> np.ndarray:
    return np.stack([f.image for f in stream])


def close_uint8(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_stream_equals_causal_sampler_beyond_the_window(tmp_path):
    """Euler, CFG (two caches), a sink frame and a window the stream outgrows: same frames as causal_sample."""
    pipe = load(tmp_path, solver="euler", steps=3, guidance=2.0, sink_frames=1, window_frames=4)
    got = frames_of(pipe.stream(PROMPT_A, seed=7, num_frames=12))
    assert got.shape == (12, 32, 32, 3) and got.dtype == np.uint8
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 7, [2] * 6), pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=3,
            shift=3.0, solver="euler", guidance=2.0, neg_context=pipe.encode_prompt(""), sink_frames=1, window_frames=4,
            complement=head_complement(pipe.model),
        )
    close_uint8(got, pipe.decode(latents))
    assert got.std() > 10  # a random model paints noise, not a flat frame


def test_a_wider_window_than_the_checkpoints_equals_the_sampler_with_it(tmp_path):
    """window_frames overrides the checkpoint's window: the frames of causal_sample with that window, not its own."""
    pipe = load(tmp_path, solver="euler", steps=2, sink_frames=0, window_frames=2)
    stream = pipe.stream(PROMPT_A, seed=3, num_frames=12, window_frames=6)
    assert stream.window_frames == 6
    got = frames_of(stream)
    with torch.no_grad():
        wide, own = (pipe.decode(causal_sample(
            pipe.model, chunk_noise(pipe, 3, [2] * 6), pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=2,
            shift=3.0, solver="euler", guidance=1.0, window_frames=w, complement=head_complement(pipe.model),
        )) for w in (6, 2))
    close_uint8(got, wide)
    assert np.abs(got.astype(int) - own.astype(int)).max() > 1  # the window matters past the checkpoint's
    close_uint8(pipe.generate(PROMPT_A, seed=3, num_frames=12, window_frames=6), wide)
    assert pipe.stream(PROMPT_A, num_frames=2).window_frames == 2  # the default stays the checkpoint's
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="window_frames must be a positive integer"):
            pipe.stream(PROMPT_A, window_frames=bad)
    with pytest.raises(UserError, match="window_frames must hold a chunk of 2 frames, got 1"):
        pipe.stream(PROMPT_A, window_frames=1)  # a chunk is 2 frames


@pytest.mark.parametrize("mode", ["chunk", "frame"])
def test_packed_codec_streams_its_frames_in_order_and_cuts_the_last(tmp_path, mode):
    """Two frames per latent frame: 7 frames = 4 latent frames decoded and cut, the same as causal_sample's."""
    pipe = load(tmp_path, codec_frames=2, solver="euler", steps=2, sink_frames=1, window_frames=2)
    assert pipe.video_frames == 16 and pipe.latent_shape(3) == (96, 3, 8, 8)
    stream = list(pipe.stream(PROMPT_A, seed=5, num_frames=7, mode=mode))
    assert [f.index for f in stream] == list(range(7))
    assert [f.chunk for f in stream] == ([0, 0, 0, 0, 1, 1, 1] if mode == "chunk" else [0, 0, 1, 1, 2, 2, 3])
    fc = 2 if mode == "chunk" else 1
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 5, [fc] * (4 // fc)), pipe.encode_prompt(PROMPT_A), frames_per_chunk=fc,
            steps=2, shift=3.0, solver="euler", guidance=1.0, sink_frames=1, window_frames=2,
            complement=head_complement(pipe.model),
        )
    close_uint8(frames_of(stream), pipe.decode(latents)[:7])
    assert pipe.generate(PROMPT_A).shape == (16, 32, 32, 3)  # the training length: 8 latent frames


def test_packed_codec_with_actions_is_refused(tmp_path):
    with pytest.raises(UserError, match="one frame per latent frame"):
        load(tmp_path, codec_frames=2, num_actions=5)


def test_modes_seeds_and_lengths(tmp_path):
    pipe = load(tmp_path)
    frame_mode = list(pipe.stream(PROMPT_A, mode="frame", num_frames=5))
    assert [f.chunk for f in frame_mode] == [0, 1, 2, 3, 4]
    chunk_mode = list(pipe.stream(PROMPT_A, mode="chunk", num_frames=5))
    assert [f.chunk for f in chunk_mode] == [0, 0, 1, 1, 2]  # the last chunk is cut to fit
    assert [f.index for f in chunk_mode] == [0, 1, 2, 3, 4]
    assert all(f.chunk_seconds > 0 and f.time >= f.chunk_seconds for f in chunk_mode)
    same = frames_of(pipe.stream(PROMPT_A, seed=3, num_frames=4))
    np.testing.assert_array_equal(same, frames_of(pipe.stream(PROMPT_A, seed=3, num_frames=4)))
    assert not np.array_equal(same, frames_of(pipe.stream(PROMPT_A, seed=4, num_frames=4)))
    with pytest.raises(UserError, match="mode"):
        pipe.stream(PROMPT_A, mode="video")
    with pytest.raises(UserError, match="steps"):
        pipe.stream(PROMPT_A, steps=0)
    with pytest.raises(UserError, match="seed"):
        pipe.stream(PROMPT_A, seed=-1)


def test_unbounded_stream_holds_bounded_state(tmp_path):
    pipe = load(tmp_path, sink_frames=1, window_frames=4)
    stream = pipe.stream(PROMPT_A, mode="frame")  # no num_frames: never ends by itself
    sizes = []
    for frame in stream:
        sizes.append(stream.state_nbytes())
        if frame.index == 59:
            stream.close()
    assert len(sizes) == 60
    assert sizes[10] == sizes[-1]  # constant once the window is full
    per_frame = 2 * 2 * 16 * 32 * 4  # 2 layers x (keys, values) x 16 tokens x 32 dims, fp32
    assert sizes[-1]["kv_cache"] == (1 + 4) * per_frame + 1 * per_frame // 2  # + the sink frame's keys before RoPE
    assert sizes[-1]["history"] == 5 * 48 * 8 * 8 * 4  # the sink frame's chunk + the window's 4 frames


def test_prompt_switch_rebuilds_the_cache_under_the_new_prompt(tmp_path):
    """With no eviction, the chunk after a switch equals a block-causal forward over [history under B | new chunk]."""
    pipe = load(tmp_path, solver="euler", steps=1, sink_frames=0, window_frames=16)
    stream = pipe.stream(PROMPT_A, seed=5, num_frames=8)
    frames = []
    for frame in stream:
        frames.append(frame.image)
        if frame.index == 5:
            stream.switch_prompt(PROMPT_B)
            assert stream.prompt == PROMPT_A  # takes effect at the next chunk
    assert stream.prompt == PROMPT_B
    unswitched = frames_of(pipe.stream(PROMPT_A, seed=5, num_frames=8))
    np.testing.assert_array_equal(np.stack(frames[:6]), unswitched[:6])
    assert not np.array_equal(np.stack(frames[6:]), unswitched[6:])

    noise = chunk_noise(pipe, 5, [2] * 4)
    with torch.no_grad():
        complement = head_complement(pipe.model)
        history = causal_sample(pipe.model, noise[:, :, :6], pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=1,
                                complement=complement)
        x = torch.cat([history, noise[:, :, 6:]], dim=2)  # (1, C, 8, h, w): clean history | new chunk at s = 1
        t = torch.tensor([[0.0] * 6 + [1000.0] * 2])
        v = pipe.model(x, t, pipe.encode_prompt(PROMPT_B), mask=masks.block_causal(4, 2, 16))[:, :, 6:]
        x0 = noise[:, :, 6:] - v  # x0 = x_s - s v at s = 1
        x0 = x0 - complement(x0 + v)  # completed where the head cannot reach (diffusion.samplers)
    close_uint8(np.stack(frames[6:]), pipe.decode(x0))


def test_bad_prompts_fail_clearly_and_the_stream_goes_on(tmp_path):
    pipe = load(tmp_path)
    with pytest.raises(UserError, match="'dragon'"):
        pipe.stream("a red dragon")
    stream = pipe.stream(PROMPT_A, num_frames=4)
    next(stream)
    with pytest.raises(UserError, match="'purple'"):
        stream.switch_prompt("a purple circle")
    assert [f.prompt for f in stream] == [PROMPT_A] * 3


def test_world_model_actions(tmp_path):
    pipe = load(tmp_path, num_actions=5)
    up = frames_of(pipe.stream(PROMPT_A, num_frames=4, actions=lambda i: 1))
    down = frames_of(pipe.stream(PROMPT_A, num_frames=4, actions=[2, 2, 2, 2]))
    noop = frames_of(pipe.stream(PROMPT_A, num_frames=4))
    np.testing.assert_array_equal(noop, frames_of(pipe.stream(PROMPT_A, num_frames=4, actions=[0] * 4)))
    assert not np.array_equal(up, down) and not np.array_equal(up, noop)
    with pytest.raises(UserError, match="action 7"):
        list(pipe.stream(PROMPT_A, num_frames=2, actions=lambda i: 7))
    with pytest.raises(UserError, match="ended at frame 2"):
        list(pipe.stream(PROMPT_A, num_frames=4, actions=[1, 1]))
    plain = load(tmp_path, name="plain")
    with pytest.raises(UserError, match="not action-conditioned"):
        plain.stream(PROMPT_A, actions=[1])


def test_bidirectional_checkpoint_generates_its_training_length(tmp_path):
    pipe = load(tmp_path, causal=False, solver="euler", steps=4, guidance=3.0)
    video = pipe.generate(PROMPT_A, seed=2)
    assert video.shape == (8, 32, 32, 3)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn((1, *pipe.latent_shape(8)), generator=g)
    with torch.no_grad():
        ref = euler_sample(pipe.model, noise, pipe.encode_prompt(PROMPT_A), steps=4, shift=3.0, guidance=3.0,
                           neg_context=pipe.encode_prompt(""), complement=head_complement(pipe.model))
    close_uint8(video, pipe.decode(ref))
    with pytest.raises(UserError, match="cannot stream"):
        pipe.stream(PROMPT_A)
    with pytest.raises(UserError, match="exactly its training length"):
        pipe.generate(PROMPT_A, num_frames=16)
    with pytest.raises(UserError, match="causal"):
        pipe.generate(PROMPT_A, switches=[(4, PROMPT_B)])


def test_generate_with_a_prompt_schedule(tmp_path):
    pipe = load(tmp_path)
    plain = pipe.generate(PROMPT_A, num_frames=10)
    switched = pipe.generate(PROMPT_A, num_frames=10, switches=[(3, PROMPT_B)])  # from the chunk at frame 4
    assert switched.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(switched[:4], plain[:4])
    assert not np.array_equal(switched[4:], plain[4:])
    with pytest.raises(UserError, match="'dragon'"):
        pipe.generate(PROMPT_A, switches=[(3, "a dragon")])


def test_loading_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        StreamingPipeline.from_pretrained(tmp_path / "nowhere")
    save_model(random_model(small_config(in_dim=48, out_dim=48, text_dim=16, text_len=16)), tmp_path / "bare")
    with pytest.raises(UserError, match="no 'pipeline' section"):
        StreamingPipeline.from_pretrained(tmp_path / "bare")
    save_model(random_model(small_config(text_dim=16, text_len=16)), 
        tmp_path / "mismatch", pipeline=pipeline_section())
    with pytest.raises(UserError, match="latent channels"):
        StreamingPipeline.from_pretrained(tmp_path / "mismatch")


@pytest.mark.parametrize("mode", ["frame", "chunk"])
def test_compiled_stream_gives_the_eager_frames(tmp_path, mode):
    """compile=True: the same frames (fp32) past the window with a sink, the last chunk cut to fit."""
    torch._dynamo.reset()
    eager = frames_of(load(tmp_path).stream(PROMPT_A, mode=mode, seed=3, num_frames=11))
    pipe = StreamingPipeline.from_pretrained(tmp_path / "ckpt", compile=True)
    assert all(block.stages is not None for block in pipe.model.blocks)
    compiled = frames_of(pipe.stream(PROMPT_A, mode=mode, seed=3, num_frames=11))
    close_uint8(compiled, eager)
    assert (compiled == eager).mean() > 0.999
    torch._dynamo.reset()


def test_a_prefilled_stream_continues_given_frames_as_the_sampler_does(tmp_path):
    """prefill commits real frames (with their actions) as context: the frames of causal_sample with that prefix."""
    pipe = load(tmp_path, num_actions=3, solver="euler", steps=2, sink_frames=1, window_frames=4)
    given = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    stream = pipe.stream("", seed=5, num_frames=6, actions=lambda i: i % 3)
    stream.prefill(given, [0, 2, 1, 1])
    frames = list(stream)
    assert [f.index for f in frames] == [4, 5, 6, 7, 8, 9] and [f.action for f in frames] == [1, 2, 0, 1, 2, 0]
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 5, [2] * 3), pipe.encode_prompt(""), frames_per_chunk=2, steps=2, shift=3.0,
            solver="euler", sink_frames=1, window_frames=4, prefix=pipe.encode(given),
            actions=torch.tensor([[0, 2, 1, 1, 1, 2, 0, 1, 2, 0]]), complement=head_complement(pipe.model),
        )
    close_uint8(np.stack([f.image for f in frames]), pipe.decode(latents))
    other = pipe.stream("", seed=5, num_frames=2)
    other.prefill(255 - given)
    assert np.abs(frames_of(other).astype(int) - frames[0].image[None].astype(int)).max() > 10  # the context matters

    with pytest.raises(UserError, match=r"\(P, 32, 32, 3\)"):
        pipe.stream("", num_frames=2).prefill(given[:, :16])
    with pytest.raises(UserError, match="one action per frame: 4 frames, 2 actions"):
        pipe.stream("", num_frames=2).prefill(given, [0, 1])
    with pytest.raises(UserError, match=r"action 3 at frame 1 is not an integer in 0..2"):
        pipe.stream("", num_frames=2).prefill(given, [0, 3, 0, 0])
    with pytest.raises(UserError, match="before its first frame"):
        stream.prefill(given)


def test_switches_and_re_caching_in_the_sampler_make_the_streams_frames(tmp_path):
    """One prompt switch and a re-cache every 2 chunks, with CFG (both caches), a sink and a window the stream
    outgrows: the stream's frames are causal_sample's with the same switch and re-caching (what evaluation uses).
    That re-caching changes frames is tested in tests/diffusion (this 2-layer model's rebuilt cache equals its old one)."""
    pipe = load(tmp_path, solver="euler", steps=2, guidance=2.0, sink_frames=1, window_frames=4)
    got = pipe.generate(PROMPT_A, seed=4, num_frames=16, switches=[(6, PROMPT_B)], recache_every=2)
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 4, [2] * 8), pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=2,
            shift=3.0, solver="euler", guidance=2.0, neg_context=pipe.encode_prompt(""), sink_frames=1, window_frames=4,
            complement=head_complement(pipe.model), switches={3: pipe.encode_prompt(PROMPT_B)}, recache_every=2,
        )
    close_uint8(got, pipe.decode(latents))
    with pytest.raises(UserError, match="recache_every must be a non-negative integer"):
        pipe.stream(PROMPT_A, recache_every=-1)


# ------------------------------------------------------------------ given frames: image-to-video, continuing a clip
def scene_frames(n: int, size: int = 32) -> np.ndarray:
    """A red square moving right over ``n`` frames (uint8 (n, size, size, 3)): frames a test can recognise."""
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, 10:18, 2 + i : 10 + i] = (230, 40, 40)
    return frames


@pytest.mark.parametrize("codec_frames", [1, 2])
def test_an_image_is_the_clean_first_latent_frame_of_the_stream(tmp_path, codec_frames):
    """The image, repeated over one latent frame's frames, opens the first chunk at t = 0: the frames of
    causal_sample with that prefix; generate returns the image's frames, then the continuation."""
    pipe = load(tmp_path, codec_frames=codec_frames, solver="euler", steps=2, sink_frames=0, window_frames=4)
    image = scene_frames(1)[0]
    stream = pipe.stream(PROMPT_A, seed=2, num_frames=5 * codec_frames, image=image)
    frames = list(stream)
    assert [f.index for f in frames] == list(range(codec_frames, 6 * codec_frames))
    assert [f.chunk for f in frames][:: codec_frames] == [0, 1, 1, 2, 2]  # the first chunk holds the image
    with torch.no_grad():
        given = pipe.encode(np.repeat(image[None], codec_frames, axis=0))  # (1, C, 1, h, w)
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 2, [1, 2, 2]), pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=2,
            shift=3.0, solver="euler", window_frames=4, prefix=given, complement=head_complement(pipe.model),
        )
    close_uint8(frames_of(frames), pipe.decode(latents))
    plain = frames_of(pipe.stream(PROMPT_A, seed=2, num_frames=5 * codec_frames))
    assert np.abs(plain.astype(int) - frames_of(frames).astype(int)).max() > 10  # the image matters

    video = pipe.generate(PROMPT_A, seed=2, num_frames=5 * codec_frames, image=image)
    assert video.shape == (6 * codec_frames, 32, 32, 3)
    np.testing.assert_array_equal(video[:codec_frames], np.repeat(image[None], codec_frames, axis=0))
    close_uint8(video[codec_frames:], frames_of(frames))
    assert len(pipe.generate(PROMPT_A, image=image)) == pipe.video_frames  # default: the training length in all


def test_frame_mode_commits_the_image_as_a_whole_chunk(tmp_path):
    pipe = load(tmp_path, solver="euler", steps=2, sink_frames=0, window_frames=4)
    image = scene_frames(1)[0]
    frames = frames_of(pipe.stream(PROMPT_A, seed=1, num_frames=3, image=image, mode="frame"))
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 1, [1, 1, 1]), pipe.encode_prompt(PROMPT_A), frames_per_chunk=1, steps=2,
            shift=3.0, solver="euler", window_frames=4, prefix=pipe.encode(image[None]), complement=head_complement(pipe.model),
        )
    close_uint8(frames, pipe.decode(latents))


def test_an_image_of_any_size_is_fitted_with_a_warning_for_another_aspect(tmp_path):
    from causal_rcm.errors import InputWarning

    pipe = load(tmp_path)
    big = np.repeat(np.repeat(scene_frames(1)[0], 4, axis=0), 4, axis=1)  # 128 x 128: same aspect, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        fitted = pipe.given_frames(image=big)
    error = np.abs(fitted[0].astype(int) - scene_frames(1)[0].astype(int))
    assert error.mean() < 2 and error[11:17, 3:9].max() <= 8  # the scene again (bicubic rings a little at edges)
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, 16:48] = scene_frames(1)[0]  # the centre crop is the scene
    with pytest.warns(InputWarning, match=r"64x32 px, another aspect ratio than the model's 32x32"):
        fitted = pipe.given_frames(image=wide)
    np.testing.assert_array_equal(fitted[0], scene_frames(1)[0])
    for bad, match in ((np.zeros((8, 8), np.uint8), "uint8 RGB"), (np.zeros((8, 8, 3), np.float32), "uint8 RGB")):
        with pytest.raises(UserError, match=match):
            pipe.stream(PROMPT_A, image=bad)
    with pytest.raises(UserError, match="an image or a video to continue, not both"):
        pipe.stream(PROMPT_A, image=wide, video=scene_frames(4))


def test_a_clip_is_continued_from_its_last_frames(tmp_path):
    """generate(video=...) returns the clip, then frames that continue its last latent frames the window holds."""
    pipe = load(tmp_path, codec_frames=2, solver="euler", steps=2, sink_frames=0, window_frames=4)
    clip = scene_frames(11)  # 5 whole latent frames (the first frame left over), the window holds 4: the last 8
    video = pipe.generate(PROMPT_A, seed=4, num_frames=6, video=clip)
    assert video.shape == (17, 32, 32, 3)
    np.testing.assert_array_equal(video[:11], clip)
    with torch.no_grad():
        latents = causal_sample(
            pipe.model, chunk_noise(pipe, 4, [2, 1]), pipe.encode_prompt(PROMPT_A), frames_per_chunk=2, steps=2,
            shift=3.0, solver="euler", window_frames=4, prefix=pipe.encode(clip[3:]), complement=head_complement(pipe.model),
        )
    close_uint8(video[11:], pipe.decode(latents)[:6])
    one = pipe.generate(PROMPT_A, seed=4, num_frames=2, video=clip[:1])  # shorter than a latent frame: an image
    np.testing.assert_array_equal(one[:1], clip[:1])
    assert len(one) == 3


def test_prompt_switching_goes_on_after_a_given_image(tmp_path):
    pipe = load(tmp_path, solver="euler", steps=2, sink_frames=1, window_frames=4)
    image = scene_frames(1)[0]
    switched = pipe.generate(PROMPT_A, seed=0, num_frames=7, image=image, switches=[(3, PROMPT_B)])
    same = pipe.generate(PROMPT_A, seed=0, num_frames=7, image=image)
    np.testing.assert_array_equal(switched[:3], same[:3])  # the image and the first chunk's new frame
    assert np.abs(switched[3:].astype(int) - same[3:].astype(int)).max() > 10


def test_a_bidirectional_checkpoint_refuses_given_frames(tmp_path):
    pipe = load(tmp_path, causal=False)
    with pytest.raises(UserError, match="continuing an image or a video needs a causal checkpoint"):
        pipe.generate(PROMPT_A, image=scene_frames(1)[0])
    with pytest.raises(UserError, match="needs a causal checkpoint"):
        pipe.stream(PROMPT_A, video=scene_frames(4))


# ------------------------------------------------------------------ speed and memory options
def _forwards(pipe, run) -> int:
    calls = []
    hook = pipe.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        run()
    finally:
        hook.remove()
    return len(calls)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_noisy_context_stream_runs_one_forward_a_chunk_fewer_and_is_the_noisy_sampler(tmp_path, guidance):
    pipe = load(tmp_path, solver="consistency", steps=2, guidance=guidance, sink_frames=1, window_frames=4)
    frames = {}
    counts = {mode: _forwards(pipe, lambda m=mode: frames.setdefault(m, frames_of(pipe.stream(PROMPT_A, seed=3, num_frames=12, context=m))))
              for mode in ("clean", "noisy")}
    branches = 1 if guidance == 1 else 2
    assert counts["clean"] - counts["noisy"] == 6 * branches  # one refresh per chunk (a stream commits its last one too)
    assert counts["noisy"] == 6 * 2 * branches
    again = frames_of(pipe.stream(PROMPT_A, seed=3, num_frames=12, context="noisy"))
    np.testing.assert_array_equal(again, frames["noisy"])
    np.testing.assert_array_equal(frames["noisy"][:2], frames["clean"][:2])  # the first chunk sees no context
    assert np.abs(frames["noisy"][2:].astype(int) - frames["clean"][2:].astype(int)).mean() > 1
    g = torch.Generator().manual_seed(3)  # a stream draws each chunk's noise and the fresh noise between steps from one
    caches = make_kv_caches(pipe.model, guidance=guidance, sink_frames=1, window_frames=4)
    with torch.no_grad():
        latents = torch.cat([sample_chunk(
            pipe.model, torch.randn((1, *pipe.latent_shape(2)), generator=g), pipe.encode_prompt(PROMPT_A), caches, steps=2,
            shift=3.0, solver="consistency", guidance=guidance, neg_context=pipe.encode_prompt(""), generator=g,
            complement=head_complement(pipe.model), context_mode="noisy") for _ in range(6)], dim=2)
    close_uint8(frames["noisy"], pipe.decode(latents))


@pytest.mark.parametrize("context", ["clean", "noisy"])
def test_switching_to_the_same_prompt_rebuilds_the_same_cache(tmp_path, context):
    """The kept history re-run under the prompt it was made with gives the cache back (a noisy context keeps each
    chunk's last-step input and time, a clean one the chunk at t = 0), past the window's first eviction."""
    pipe = load(tmp_path, solver="consistency", steps=2, sink_frames=1, window_frames=5)
    plain = frames_of(pipe.stream(PROMPT_A, seed=4, num_frames=14, context=context))
    stream = pipe.stream(PROMPT_A, seed=4, num_frames=14, context=context)
    frames = []
    for frame in stream:
        frames.append(frame.image)
        if frame.index in (5, 9):
            stream.switch_prompt(PROMPT_A)
    close_uint8(np.stack(frames), plain)


def test_overlapped_decoding_hands_out_the_same_frames_and_schedules_switches_alike(tmp_path):
    """On the CPU the queue holds one chunk back as on a GPU: the same frames, indices and chunks; a scheduled switch
    acts on the same chunk; closing hands out the chunk already made."""
    pipe = load(tmp_path, codec_frames=2)
    runs = {o: list(pipe.stream(PROMPT_A, seed=2, num_frames=11, overlap=o)) for o in (False, True)}
    for a, b in zip(*runs.values(), strict=True):
        assert (a.index, a.chunk, a.prompt) == (b.index, b.chunk, b.prompt)
        np.testing.assert_array_equal(a.image, b.image)
    switched = [pipe.generate(PROMPT_A, num_frames=10, switches=[(3, PROMPT_B)], overlap=o) for o in (False, True)]
    np.testing.assert_array_equal(*switched)
    stream = pipe.stream(PROMPT_A, seed=2, overlap=True)
    first = next(stream)
    assert stream._made_chunks == 2  # the next chunk was made before the first one's frames came out
    stream.close()
    assert first.index == 0 and [f.index for f in stream] == list(range(1, 8))  # chunk 0's other frames, then chunk 1's


def test_low_memory_streams_keep_an_int8_cache_close_to_the_float_ones(tmp_path):
    path = make_checkpoint(tmp_path / "ckpt", solver="consistency", steps=2, sink_frames=0, window_frames=4)
    plain, small = (StreamingPipeline.from_pretrained(path, low_memory=low) for low in (False, True))
    a, b = plain.stream(PROMPT_A, seed=1, num_frames=10), small.stream(PROMPT_A, seed=1, num_frames=10)
    fa, fb = frames_of(a), frames_of(b)
    assert b.state_nbytes()["kv_cache"] / a.state_nbytes()["kv_cache"] == (16 + 4) / (4 * 16)  # head dim 16, fp32
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() < 2 and not np.array_equal(fa, fb)
    np.testing.assert_array_equal(frames_of(small.stream(PROMPT_A, seed=1, num_frames=10, kv_int8=False)), fa)


@pytest.mark.gpu
def test_overlapped_decoding_on_a_gpu_gives_the_serial_frames_gpu(tmp_path):
    """The second CUDA stream waits for each chunk and keeps it alive: the frames of a serial stream, in order."""
    path = make_checkpoint(tmp_path / "ckpt", solver="consistency", steps=2, sink_frames=1, window_frames=4)
    pipe = StreamingPipeline.from_pretrained(path, device="cuda", dtype=torch.float32)
    serial, overlapped = (list(pipe.stream(PROMPT_A, seed=6, num_frames=24, overlap=o)) for o in (False, True))
    assert [f.index for f in overlapped] == list(range(24))
    close_uint8(np.stack([f.image for f in overlapped]), np.stack([f.image for f in serial]))
