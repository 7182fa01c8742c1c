"""Models: the Wan2.1-compatible causal video DiT, its masks, attention dispatch and KV cache."""

from . import masks
from .attention import attention, available_backends, register_backend
from .kv_cache import KVCache
from .masks import BlockSparseMask
from .wan import PRESETS, CausalWanConfig, CausalWanModel

__all__ = [
    "CausalWanModel",
    "CausalWanConfig",
    "PRESETS",
    "KVCache",
    "BlockSparseMask",
    "masks",
    "attention",
    "available_backends",
    "register_backend",
]
