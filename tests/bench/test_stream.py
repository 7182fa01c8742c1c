"""`causal-rcm bench stream` at toy size on the CPU: every mode and step count is timed with and without the VAE."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from causal_rcm.bench.stream import run_stream_bench  # noqa: E402

TINY_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True])


def test_stream_bench_reports_every_mode_and_step_count_on_cpu(tmp_path):
    lines = []
    record = run_stream_bench("tiny", 64, 64, latent_frames=5, steps=(1, 2), modes=("chunk", "frame"), device_name="cpu",
                              vae_config=TINY_VAE, log=lines.append, profile_dir=tmp_path)
    rows = {(r["mode"], r["steps"]): r for r in record["results"]}
    assert set(rows) == {("chunk", 1), ("chunk", 2), ("frame", 1), ("frame", 2)}
    for row in rows.values():
        for key in ("without_vae", "with_vae", "with_vae_serial"):
            assert row[key]["fps"] > 0 and 0 < row[key]["first_frame_ms"] <= row[key]["total_ms"]
            assert row[key]["kv_cache_gib"] > 0
        assert set(row["breakdown_ms_per_chunk"]) == {"denoise_ms", "refresh_ms", "decode_ms"}
        assert row["breakdown_ms_per_chunk"]["decode_ms"] > 0
    assert record["setup"]["pixel_frames"] == 17
    formats = record["setup"]["vae_memory_format"]
    assert formats["contiguous_ms"] > 0 and formats["channels_last_ms"] > 0
    assert formats["chosen"] == min(("contiguous", "channels_last"), key=lambda n: formats[f"{n}_ms"])
    assert any(line.startswith("VAE decode of 3 latent frames") for line in lines)
    assert record["bidirectional_baseline"]["total_ms"] > 100 * record["bidirectional_baseline"]["forward_ms"] * 0.99
    assert any("bidirectional 50 steps" in line for line in lines)
    profile = (tmp_path / "stream_tiny_profile.txt").read_text()
    assert profile.count("top 30 by CPU time") == 6 and "aten::" in profile  # 2 modes x (denoising, refresh, decode)
    assert "VAE decode ===" in profile and "3 frame(s) a chunk on 3 cached frames" in profile and "1 frame(s) a chunk on 4 cached frames" in profile
    assert '"traceEvents"' in (tmp_path / "stream_tiny_overlap_trace.json").read_text()


def test_stream_bench_options_noisy_context_and_low_memory(tmp_path):
    """A noisy context has no refresh pass; an int8 cache holds (D + 4) / (4 D) of the fp32 cache's bytes (CPU: fp32)."""
    rows = {}
    for name, options in (("plain", {}), ("fast", dict(context="noisy", kv_int8=True, vae_tiling=True))):
        record = run_stream_bench("tiny", 32, 32, latent_frames=4, steps=(2,), modes=("chunk",), device_name="cpu",
                                  vae_config=TINY_VAE, log=lambda line: None, **options)
        rows[name] = record["results"][0]
        assert record["setup"]["context"] == options.get("context", "clean")
    assert rows["plain"]["breakdown_ms_per_chunk"]["refresh_ms"] > 0 == rows["fast"]["breakdown_ms_per_chunk"]["refresh_ms"]
    D = 64  # tiny: 256 dims, 4 heads
    assert rows["fast"]["without_vae"]["kv_cache_gib"] / rows["plain"]["without_vae"]["kv_cache_gib"] == (D + 4) / (4 * D)


def test_count_stream_ops_counts_per_layer_and_extrapolates_to_the_preset():
    from causal_rcm.bench.stream_ops import count_stream_ops, format_counts

    result = count_stream_ops("tiny", num_layers=1, height=32, width=32, cached_frames=2)
    for name in ("denoising forward", "cache refresh"):
        p = result["passes"][name]
        assert p["per_layer"] > 10 and "aten::linear" in p["top_per_layer"]
        assert p["per_forward"] == p["per_layer"] * 4 + p["model_outside_layers"] + p["sampler"]  # tiny: 4 layers
    assert "ops per forward" in format_counts(result)


def test_stream_bench_compiles_the_blocks_when_asked(tmp_path):
    import torch
    from click.testing import CliRunner
    from torch._dynamo.utils import counters

    from causal_rcm.bench.stream import stream_command

    torch._dynamo.reset()
    counters.clear()
    record = run_stream_bench("tiny", 32, 32, latent_frames=4, steps=(1,), modes=("chunk", "frame"), device_name="cpu",
                              vae_config=TINY_VAE, log=lambda line: None, compile=True)
    assert record["setup"]["compile"] != "none" and all(r["with_vae"]["fps"] > 0 for r in record["results"])
    formats = record["setup"]["vae_memory_format"]
    assert formats["compiled_ms"] > 0 and formats["compiled"] == (formats["compiled_ms"] < formats[f"{formats['chosen']}_ms"])
    # the blocks: 2 stages x (3 frames, 1 frame, the baseline's 4), one pair per chunk size over ~30 streamed
    # chunks; the VAE decoder's steady-state frame: 2 (see tests/data/test_wan_vae.py)
    assert counters["stats"]["unique_graphs"] == 6 + 2
    torch._dynamo.reset()
    result = CliRunner().invoke(stream_command, ["--count-ops", "--compile", "--device", "cpu", "--size", "tiny"])
    assert result.exit_code != 0 and "leave out --compile" in result.output
    result = CliRunner().invoke(stream_command, ["--vae-format", "nchw", "--device", "cpu", "--size", "tiny"])
    assert result.exit_code == 2 and "--vae-format" in result.output


@pytest.mark.gpu
def test_stream_bench_overlaps_the_decode_on_a_gpu_gpu(tmp_path):
    """At toy size on a GPU: overlapped and serial decoding both run and report; the trace holds two CUDA streams."""
    import json

    record = run_stream_bench("tiny", 64, 64, latent_frames=7, steps=(1,), modes=("chunk",), device_name="cuda",
                              vae_config=TINY_VAE, log=lambda line: None, profile_dir=tmp_path, context="noisy",
                              kv_int8=True, vae_tiling=True)
    row = record["results"][0]
    assert row["with_vae"]["fps"] > 0 and row["with_vae_serial"]["fps"] > 0 and row["with_vae"]["peak_gib"] > 0
    events = json.loads((tmp_path / "stream_tiny_overlap_trace.json").read_text())["traceEvents"]
    streams = {e.get("args", {}).get("stream") for e in events if e.get("cat") == "kernel"}
    assert len(streams - {None}) >= 2
