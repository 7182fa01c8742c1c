"""Tiny random Wan2.1 releases, built offline in the layouts a user downloads (nothing comes from the hub).

* :func:`make_diffusers_release`: ``WanPipeline(...).save_pretrained``: ``model_index.json`` with ``transformer/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``, the real classes at tiny sizes.
* :func:`make_original_release`: the same weights in Wan2.1's original folder (``config.json`` of a ``WanModel``,
  ``diffusion_pytorch_model.safetensors``, ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, the
  tokenizer in ``google/umt5-xxl/``), its names converted from diffusers' by the package's tables.

The tokenizer is a small Unigram model (as UMT5's is) over :data:`WORDS`, wrapped as ``T5TokenizerFast``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

WORDS = "a red green blue white circle square triangle moves left right up down the and , .".split()
PROMPTS = ["a red circle moves left", "", "  a blue   square &amp; a white triangle moves up ."]
Z_DIM = 16  # an original VAE file carries no latent statistics: only Wan2.1's 16 channels have them
TEXT_DIM = 16


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(f"\u2581{w}", -1.0) for w in WORDS]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def tiny_text_encoder(d_model: int = TEXT_DIM, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=4 + len(WORDS), d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8)
    return UMT5EncoderModel(config).eval()


def tiny_vae(z_dim: int = Z_DIM, seed: int = 0, **stats):
    """A 4-resolution Wan VAE (x8 in space, x4 in time) with 8 base channels; ``stats``: latents_mean / latents_std."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True], **stats).eval()


def tiny_transformer(in_dim: int = Z_DIM, text_dim: int = TEXT_DIM, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_dim, out_channels=in_dim,
        text_dim=text_dim, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


def tiny_pipeline(**sizes):
    """diffusers' ``WanPipeline`` of tiny random components (``sizes``: z_dim, text_dim)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    z_dim, text_dim = sizes.get("z_dim", Z_DIM), sizes.get("text_dim", TEXT_DIM)
    return WanPipeline(
        tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(text_dim), vae=tiny_vae(z_dim),
        transformer=tiny_transformer(z_dim, text_dim),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


def make_diffusers_release(path: Path, **sizes) -> Path:
    tiny_pipeline(**sizes).save_pretrained(path)
    return path


def make_original_release(path: Path, diffusers_release: Path) -> Path:
    """Wan2.1's original layout of the weights of ``diffusers_release``."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    from causal_rcm.data.umt5 import transformers_to_wan_t5
    from causal_rcm.data.wan_vae import diffusers_vae_to_wan
    from causal_rcm.models.adapters import load_checkpoint, save_checkpoint
    from causal_rcm.models.release import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE

    config, state, _ = load_checkpoint(diffusers_release)
    save_checkpoint(config, state, path, "wan")
    vae = AutoencoderKLWan.from_pretrained(diffusers_release / "vae")
    torch.save(diffusers_vae_to_wan(vae.state_dict(), vae.config), path / ORIGINAL_VAE)
    encoder = UMT5EncoderModel.from_pretrained(diffusers_release / "text_encoder")
    torch.save(transformers_to_wan_t5(encoder.state_dict()), path / ORIGINAL_T5)
    shutil.copytree(diffusers_release / "tokenizer", path / ORIGINAL_TOKENIZER)
    return path
