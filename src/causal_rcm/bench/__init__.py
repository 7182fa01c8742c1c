"""Benchmarks (`causal-rcm bench ...`): GPU timings written as JSON under benchmarks/results/."""
