"""Models: the Wan2.1-compatible causal video DiT, its masks, attention dispatch and KV cache."""
