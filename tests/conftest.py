"""Shared test helpers: small model configs and a randomiser (Wan's init zeroes the output layer)."""

from __future__ import annotations

import pytest
import torch

from causal_rcm.models.wan import CausalWanConfig, CausalWanModel


def small_config(**overrides) -> CausalWanConfig:
    base = dict(in_dim=4, out_dim=4, dim=32, ffn_dim=48, freq_dim=32, text_dim=24, text_len=8, num_heads=2, num_layers=2)
    return CausalWanConfig(**{**base, **overrides})


def random_model(config: CausalWanConfig | None = None, seed: int = 0, backend: str = "math", std: float = 0.2) -> CausalWanModel:
    """A model whose every parameter is random (so no output is trivially zero), in eval mode."""
    torch.manual_seed(seed)
    model = CausalWanModel(config or small_config(), attn_backend=backend)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


@pytest.fixture
def model() -> CausalWanModel:
    return random_model()
