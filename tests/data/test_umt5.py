"""UMT5, Wan2.1's text encoder: the same context as diffusers' ``WanPipeline``, from a transformers folder or Wan's
original file, on tiny random models built offline."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from causal_rcm.data.components import make_text_encoder, spec_dict, text_spec  # noqa: E402
from causal_rcm.data.umt5 import (  # noqa: E402
    UMT5Spec, UMT5TextEncoder, clean_prompt, read_umt5_config, transformers_to_wan_t5, wan_t5_to_transformers,
)
from causal_rcm.errors import CheckpointError, UserError  # noqa: E402
from causal_rcm.spec import PipelineSpec  # noqa: E402
from tests.wan_release import PROMPTS, tiny_pipeline  # noqa: E402

TEXT_LEN = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny diffusers Wan folder and its WanPipeline."""
    pipe = tiny_pipeline()
    path = tmp_path_factory.mktemp("release")
    pipe.save_pretrained(path)
    return path, pipe


def test_context_equals_wanpipeline_encode_prompt(folder):
    path, pipe = folder
    spec = UMT5Spec(path="text_encoder", tokenizer="tokenizer", text_len=TEXT_LEN)
    encoder = make_text_encoder(spec, path, dtype=torch.float32)
    context, mask = encoder(PROMPTS)
    reference, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN,
                                      device=torch.device("cpu"), dtype=torch.float32)
    assert context.shape == (3, TEXT_LEN, 16) and context.dtype == torch.float32 and encoder.dim == 16
    torch.testing.assert_close(context, reference, rtol=1e-6, atol=1e-6)
    lengths = mask.sum(1).tolist()
    assert lengths[1] == 1 and lengths[0] == 6  # "" is </s> alone; 5 words + </s>
    assert mask[:, :1].all() and not context[~mask].any() and context[mask].abs().sum(-1).gt(0).all()


def test_long_prompts_are_cut_to_text_len_as_wan_does(folder):
    path, pipe = folder
    encoder = UMT5TextEncoder.from_pretrained(path / "text_encoder", path / "tokenizer", text_len=4)
    long = "a red circle moves left and a blue square moves up"
    context, mask = encoder([long])
    reference, _ = pipe.encode_prompt(long, do_classifier_free_guidance=False, max_sequence_length=4,
                                      device=torch.device("cpu"), dtype=torch.float32)
    assert mask.all() and context.shape == (1, 4, 16)
    torch.testing.assert_close(context, reference, rtol=1e-6, atol=1e-6)


def test_prompts_are_cleaned_as_wan_cleans_them():
    assert clean_prompt("  a  red\n circle &amp;amp; a  square ") == "a red circle & a square"


def test_original_wan_t5_file_loads_the_same_encoder(folder, tmp_path):
    path, pipe = folder
    hf = pipe.text_encoder.state_dict()
    wan = transformers_to_wan_t5(hf)
    # Wan's own module names (wan/modules/t5.py: T5Encoder, T5SelfAttention, T5FeedForward, T5RelativeEmbedding)
    assert {"token_embedding.weight", "norm.weight", "blocks.1.attn.o.weight", "blocks.0.ffn.gate.0.weight",
            "blocks.0.ffn.fc1.weight", "blocks.0.ffn.fc2.weight", "blocks.1.pos_embedding.embedding.weight",
            "blocks.0.norm1.weight", "blocks.0.norm2.weight"} <= wan.keys()
    back = wan_t5_to_transformers(wan)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)
    torch.save(wan, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    inferred = read_umt5_config(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    expected = pipe.text_encoder.config
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "relative_attention_num_buckets",
                "relative_attention_max_distance", "feed_forward_proj"):
        assert inferred[key] == getattr(expected, key), key
    encoder = UMT5TextEncoder.from_pretrained(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", path / "tokenizer", text_len=TEXT_LEN)
    reference = UMT5TextEncoder(pipe.text_encoder, pipe.tokenizer, TEXT_LEN)
    torch.testing.assert_close(encoder(PROMPTS)[0], reference(PROMPTS)[0], rtol=0, atol=0)


def test_spec_reads_back_and_errors_name_the_problem(folder, tmp_path):
    path, _ = folder
    spec = text_spec({"kind": "umt5", "path": "te", "tokenizer": "tok", "text_len": 8, "newer_key": 1})
    assert spec == UMT5Spec("te", "tok", 8) and text_spec(spec_dict(spec)) == spec
    with pytest.raises(UserError, match="text encoder kind 'bert' is not supported"):
        text_spec({"kind": "bert"})
    section = {"resolution": 32, "num_frames": 3, "frames_per_chunk": 1, "causal": True, "codec": {"kind": "wan-vae"}}
    with pytest.raises(UserError, match=r"pipeline.text.text_len must be in \[1, 4096\], got 0"):
        PipelineSpec.from_dict({**section, "text": {"kind": "umt5", "text_len": 0}})
    with pytest.raises(CheckpointError, match="UMT5 text encoder not found"):
        make_text_encoder(UMT5Spec(path="nope"), tmp_path)
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        make_text_encoder(UMT5Spec(tokenizer="nope"), path)
    with pytest.raises(CheckpointError, match="not a UMT5 text encoder"):
        read_umt5_config(path / "vae")  # an AutoencoderKLWan config
