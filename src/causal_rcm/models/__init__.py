"""Models: the Wan2.1-compatible causal video DiT, its RoPE, KV cache and checkpoint adapters."""

from causal_rcm.models.kv_cache import KVCache
from causal_rcm.models.adapters import load_model, save_model
from causal_rcm.models.wan import PRESETS, CausalWanConfig, CausalWanModel

__all__ = ["CausalWanModel", "CausalWanConfig", "PRESETS", "KVCache", "load_model", "save_model"]
