"""``causal-rcm bench stream``: streaming speed of a causal student at Wan2.1 scale.

Random weights (bf16 on CUDA) of the chosen architecture at 480x832 (latent 60 x 104), a video
of ``latent_frames`` latent frames (21 = 81 pixel frames with Wan's 4x temporal compression,
the first latent frame being one pixel frame). For every sampler step count and mode (``chunk``:
3 latent frames per chunk; ``frame``: 1) it streams the video with the few-step consistency
sampler and the KV cache (no CFG: it is distilled into students) and reports:

* throughput in pixel frames per second, and latency to the first frame, without and with VAE
  decoding (diffusers' ``AutoencoderKLWan`` with random weights, decoded chunk by chunk with its
  causal cache by :class:`~causal_rcm.data.wan_vae.StreamingWanDecoder`, to uint8 frames in host
  memory as a stream hands them out); with decoding twice: ``with_vae``, the decode of chunk k on a
  second CUDA stream while chunk k + 1 is generated (the pipeline's
  :class:`~causal_rcm.pipeline.DecodeQueue`), and ``with_vae_serial``, one after the other; the
  first frame counts as shown once the first latent frame is decoded (the rest of its chunk after
  it, as a player would show it); the VAE's convolution layout (contiguous or channels-last) is the
  faster of the two in a timed decode of one chunk (``--vae-format`` to fix it);
* a breakdown per chunk (denoising steps, cache refresh, decode; measured in a separate,
  synchronised pass) and peak GPU memory;
* in the same run, the bidirectional 50-step baseline for the same video: 50 steps x 2 (CFG)
  forwards over all frames (one forward measured, times 100) plus one whole-video decode.

``--profile`` also writes ``torch.profiler`` tables (top 30 ops by self CUDA time and by CPU time)
for the last chunk of a stream in each mode, one denoising forward, one cache refresh and its VAE decode, to
``stream_<size>_profile.txt`` in the output folder: where a streamed forward's fixed cost goes.

``--count-ops`` only counts the aten ops of one streamed forward, per layer, in fp32 and bf16, on
any device (a CPU is enough): see :mod:`causal_rcm.bench.stream_ops`.

``--compile`` compiles each block's pure tensor math first (``CausalWanModel.compile_blocks``;
the warm-up pass of each mode compiles) and the VAE decoder's per-frame forward
(:meth:`~causal_rcm.data.wan_vae.StreamingWanDecoder.compile`, kept only if a timed chunk
decodes faster than eagerly); its JSON is written as ``stream_<size>_compiled_...``.

Stream options, each measured by a run of its own (its JSON name says which): ``--context noisy``
commits the last denoising step's keys and values instead of a clean re-run (no refresh pass);
``--kv-int8`` keeps the KV cache in int8; ``--vae-tiling`` decodes in spatial tiles;
``--low-memory`` is the last two, the pipeline's preset. ``--profile`` also writes a Chrome trace of
one overlapped chunk-mode stream (``stream_<size>_overlap_trace.json``, open in Perfetto), where
the DiT's kernels and the VAE's show on their two CUDA streams.

``--device cpu --size tiny`` runs the same code at toy size (the tests); its numbers mean little.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

FRAMES_PER_CHUNK = 3


def _frames_per_chunk(mode: str) -> int:
    """Latent frames a chunk of ``mode`` (chunk or frame) holds."""
    return FRAMES_PER_CHUNK if mode == "chunk" else 1


def _pixel_frames(latent_frames: int) -> int:
    return 1 + 4 * (latent_frames - 1)


class _Clock:
    """Wall-clock on the CPU; CUDA events on a GPU (no host sync inside the timed loop)."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        self.torch = torch

    def mark(self, stream=None):
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def ms(self, start, end) -> float:
        if not self.cuda:
            return (end - start) * 1000
        end.synchronize()
        return start.elapsed_time(end)


def _choose_vae_format(decoder, choice: str, shape: tuple, device, dtype, clock: _Clock, log, compile: bool = False) -> dict:
    """Set the decoder's memory format: ``contiguous``, ``channels_last``, or ``auto``, which times one
    steady-state chunk's decode in both and keeps the faster; with ``compile``, then times the compiled
    decoder in that layout and keeps it if it is faster. Returns the timings and the choices."""
    import torch

    if choice not in ("auto", "contiguous", "channels_last"):
        raise ValueError(f"vae format must be auto, contiguous or channels_last, got {choice!r}")
    z = torch.randn(shape, device=device, dtype=dtype)

    def chunk_ms() -> float:
        """One chunk's decode on a warm cache: the first frame and a warm-up chunk (cuDNN autotuning at these
        shapes, compiles) first, so that the timed one is a stream's steady state."""
        with torch.inference_mode():
            decoder.reset()
            decoder.decode(z[:, :, :1])
            decoder.decode(z)
            start = clock.mark()
            decoder.decode(z)
            return clock.ms(start, clock.mark())

    timings = {}
    for name in ("contiguous", "channels_last") if choice == "auto" else (choice,):
        decoder.use_channels_last(name == "channels_last")
        timings[f"{name}_ms"] = chunk_ms()
    chosen = min(("contiguous", "channels_last"), key=lambda n: timings.get(f"{n}_ms", float("inf")))
    decoder.use_channels_last(chosen == "channels_last")
    if compile:
        decoder.compile()
        timings["compiled_ms"] = chunk_ms()
        if timings["compiled_ms"] >= timings[f"{chosen}_ms"]:
            decoder.compile(False)
    decoder.reset()
    log(f"VAE decode of {shape[2]} latent frames: " + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in timings.items())
        + f"; using {chosen}" + (", compiled" if decoder.compiled else ""))
    return {**timings, "chosen": chosen, "compiled": decoder.compiled}


def run_stream_bench(
    size: str = "wan2.1-1.3b", height: int = 480, width: int = 832, latent_frames: int = 21,
    steps: tuple[int, ...] = (1, 2, 4), modes: tuple[str, ...] = ("chunk", "frame"), device_name: str = "cuda",
    vae_config: dict | None = None, log=print, profile_dir: Path | None = None, compile: bool = False,
    vae_format: str = "auto", context: str = "clean", kv_int8: bool = False, vae_tiling: bool = False,
) -> dict:
    import torch

    from causal_rcm.diffusion.samplers import CONTEXTS, flow_time_grid, make_kv_caches, refresh_kv_caches, sample_chunk
    from causal_rcm.data.wan_vae import StreamingWanDecoder
    from causal_rcm.models.wan import CausalWanConfig, CausalWanModel
    from causal_rcm.pipeline import DecodeQueue
    from causal_rcm.bench import environment

    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    if cuda:  # the VAE's 3D convolutions run at a few fixed shapes: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if cuda else torch.float32
    overrides = {} if size != "tiny" else {"in_dim": 16, "out_dim": 16}
    torch.manual_seed(0)
    model = CausalWanModel(CausalWanConfig.preset(size, **overrides), attn_backend="sdpa").to(device, dtype).eval()
    model.time_embedding.float()  # modulation in fp32, as Wan computes it
    model.time_projection.float()
    model.requires_grad_(False)
    if compile:
        model.compile_blocks()
    cfg = model.config
    h, w = height // 8, width // 8
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**(vae_config or {})).to(device, dtype).eval().requires_grad_(False)
    decoder = StreamingWanDecoder(vae, tiled=vae_tiling)
    clock = _Clock(cuda)
    vae_formats = _choose_vae_format(decoder, vae_format, (1, vae.config.z_dim, FRAMES_PER_CHUNK, h, w), device, dtype, clock, log,
                                     compile=compile)
    pixels = _pixel_frames(latent_frames)
    log(f"model {size}: {model.num_parameters() / 1e6:.0f} M parameters; {latent_frames} latent frames "
        f"({pixels} pixel frames) at {height}x{width}, device {device}")

    def video_caches():
        """Caches whose window is the whole video: nothing is evicted, and the buffers never grow."""
        return make_kv_caches(model, guidance=1.0, window_frames=latent_frames, kv_int8=kv_int8)

    cache_bytes = [0]  # the KV cache's size at the end of the last stream
    text = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)

    def stream(num_steps: int, fpc: int, decode: bool, overlap: bool = True, profile: dict | None = None) -> tuple[float, float]:
        """One streamed video: (total ms, ms to the first frame). ``overlap``: decode on a second CUDA stream;
        ``profile`` collects per-phase ms (synchronised, decoding serial)."""
        grid = flow_time_grid(num_steps, 3.0)
        generator = torch.Generator(device).manual_seed(0)
        caches = video_caches()
        decoder.reset()
        queue = DecodeQueue(decoder, device, overlap=overlap and profile is None)
        start, first = clock.mark(), None
        sizes = [fpc] * (latent_frames // fpc) + ([latent_frames % fpc] if latent_frames % fpc else [])
        with torch.inference_mode():
            for k, n in enumerate(sizes):
                noise = torch.randn((1, cfg.in_dim, n, h, w), generator=generator, device=device, dtype=dtype)
                commit = k + 1 < len(sizes)
                t0 = clock.mark() if profile is not None else None
                x0 = sample_chunk(model, noise, text, caches, steps=grid, solver="consistency", generator=generator,
                                  refresh=commit and context == "noisy", context_mode=context)
                t1 = clock.mark() if profile is not None else None
                if commit and context == "clean":
                    refresh_kv_caches(model, x0, text, caches)
                t2 = clock.mark() if profile is not None else None
                if decode:
                    if first is None and n > 1:  # the first frame is shown once its latent frame is decoded
                        queue.put(x0[:, :, :1])
                        first = clock.mark(queue.stream)
                        queue.put(x0[:, :, 1:])
                    else:
                        queue.put(x0)
                    done = clock.mark(queue.stream)
                    while len(queue) > queue.lag:  # a consumer takes each chunk's frames once the next is queued
                        queue.get()
                else:
                    done = clock.mark()
                if profile is not None:
                    t3 = clock.mark()
                    profile.setdefault("denoise_ms", []).append(clock.ms(t0, t1))
                    profile.setdefault("refresh_ms", []).append(clock.ms(t1, t2) if context == "clean" else 0.0)  # noisy: none
                    profile.setdefault("decode_ms", []).append(clock.ms(t2, t3) if decode else 0.0)
                first = first or done
            while len(queue):
                queue.get()
        end = clock.mark()
        if cuda:
            torch.cuda.synchronize()
        cache_bytes[0] = caches[0].nbytes()
        return clock.ms(start, end), clock.ms(start, first)

    def profile_last_chunk(fpc: int) -> str:
        """torch.profiler tables for the stream's last chunk: one denoising forward, one cache refresh, one VAE decode."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        generator = torch.Generator(device).manual_seed(0)
        caches = video_caches()
        cached = (latent_frames - 1) // fpc * fpc
        sections = []

        def chunk():
            return torch.randn((1, cfg.in_dim, fpc, h, w), generator=generator, device=device, dtype=dtype)

        with torch.inference_mode():
            for _ in range(cached // fpc):
                refresh_kv_caches(model, chunk(), text, caches)
            x = chunk()

            def denoise():
                sample_chunk(model, x, text, caches, steps=flow_time_grid(1, 3.0), solver="consistency", refresh=False)

            def refresh():
                refresh_kv_caches(model, x, text, caches)

            z = torch.randn((1, vae.config.z_dim, fpc, h, w), generator=generator, device=device, dtype=dtype)

            def decode():
                decoder.decode(z)

            denoise()  # warm-up at these shapes (the refresh runs the same kernels)
            decoder.reset()
            decoder.decode(z[:, :, :1])
            decode()  # the VAE's warm-up: a steady-state cache, cuDNN autotuned at these shapes
            for name, step in (("denoising forward", denoise), ("cache refresh", refresh), ("VAE decode", decode)):
                with profile(activities=activities) as prof:
                    step()
                    if cuda:
                        torch.cuda.synchronize()
                table = prof.key_averages()
                sections.append(f"=== {fpc} frame(s) a chunk on {cached} cached frames: {name} ===")
                if cuda:
                    sections += ["--- top 30 by self CUDA time ---", table.table(sort_by="self_cuda_time_total", row_limit=30)]
                sections += ["--- top 30 by CPU time ---", table.table(sort_by="cpu_time_total", row_limit=30)]
        return "\n".join(sections) + "\n"

    results = []
    for mode in modes:
        fpc = _frames_per_chunk(mode)
        for num_steps in steps:
            row = {"mode": mode, "steps": num_steps, "frames_per_chunk": fpc}
            for key, decode, overlap in (("without_vae", False, False), ("with_vae", True, True), ("with_vae_serial", True, False)):
                stream(num_steps, fpc, decode, overlap)  # warm-up (allocator, kernels)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                total, first = stream(num_steps, fpc, decode, overlap)
                row[key] = {"fps": pixels / (total / 1000), "first_frame_ms": first, "total_ms": total}
                row[key]["kv_cache_gib"] = cache_bytes[0] / 2**30  # of the peak: the cache, the rest is weights and work
                if cuda:
                    row[key]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            profile: dict = {}
            stream(num_steps, fpc, True, profile=profile)
            row["breakdown_ms_per_chunk"] = {k: sum(v) / len(v) for k, v in profile.items()}
            results.append(row)
            a, b, c = row["without_vae"], row["with_vae"], row["with_vae_serial"]
            log(f"{mode:>5} {num_steps} step: {a['fps']:7.1f} FPS, first frame {a['first_frame_ms']:7.1f} ms | with VAE "
                f"{b['fps']:7.1f} FPS, first frame {b['first_frame_ms']:7.1f} ms (serial {c['fps']:.1f} FPS) | per chunk "
                + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in row["breakdown_ms_per_chunk"].items()))

    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        path = profile_dir / f"stream_{size}{'_compiled' if compile else ''}_profile.txt"
        path.write_text("\n".join(profile_last_chunk(_frames_per_chunk(m)) for m in modes))
        log(f"wrote {path}")
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=activities) as prof:
            stream(steps[0], _frames_per_chunk(modes[0]), True, overlap=True)
        trace = profile_dir / f"stream_{size}{'_compiled' if compile else ''}_overlap_trace.json"
        prof.export_chrome_trace(str(trace))
        log(f"wrote {trace} (one overlapped {modes[0]}-mode stream: the DiT and the VAE on their CUDA streams)")

    # The bidirectional 50-step baseline for the same video: one forward over all frames, x 100 (CFG), + one decode.
    with torch.inference_mode():
        x = torch.randn(1, cfg.in_dim, latent_frames, h, w, device=device, dtype=dtype)
        t = torch.full((1, latent_frames), 500.0, device=device)
        model(x, t, text)
        s = clock.mark()
        model(x, t, text)
        forward_ms = clock.ms(s, clock.mark())
        vae.decode(x)
        s = clock.mark()
        vae.decode(x)
        decode_ms = clock.ms(s, clock.mark())
    baseline_ms = 100 * forward_ms + decode_ms
    baseline = {"forward_ms": forward_ms, "decode_ms": decode_ms, "total_ms": baseline_ms, "fps": pixels / (baseline_ms / 1000)}
    log(f"bidirectional 50 steps x CFG: forward {forward_ms:.1f} ms x 100 + decode {decode_ms:.1f} ms = "
        f"{baseline_ms / 1000:.2f} s ({baseline['fps']:.2f} FPS)")
    return {
        **environment("stream", device),
        "setup": {"size": size, "height": height, "width": width, "latent_frames": latent_frames, "pixel_frames": pixels,
                  "dtype": str(dtype).replace("torch.", ""), "weights": "random", "attention": "sdpa with KV cache",
                  "sampler": "consistency, shift 3, no CFG", "vae": "diffusers AutoencoderKLWan, random weights, streamed",
                  "compile": "torch.compile of each block's pure stages (compile_blocks) and of the VAE decoder's "
                             "steady-state frame (kept where it decodes faster)" if compile else "none",
                  "vae_memory_format": vae_formats,
                  "context": context, "kv_cache": "int8" if kv_int8 else str(dtype).replace("torch.", ""),
                  "vae_tiling": vae_tiling,
                  "decode": "with_vae: on a second CUDA stream while the next chunk is generated (DecodeQueue); "
                            "with_vae_serial: after it on the same stream; both to uint8 frames in host memory",
                  "first_frame": "the first latent frame decoded alone (the rest of its chunk after it)"},
        "results": results,
        "bidirectional_baseline": baseline,
    }


@click.command("stream")
@click.option("--size", type=click.Choice(["tiny", "wan2.1-1.3b", "wan2.1-14b"]), default="wan2.1-1.3b", show_default=True)
@click.option("--height", type=click.IntRange(min=1), default=480, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=832, show_default=True)
@click.option("--latent-frames", type=click.IntRange(min=1), default=21, show_default=True,
              help="latent frames (21 = 81 pixel frames)")
@click.option("--steps", default="1,2,4", show_default=True)
@click.option("--modes", default="chunk,frame", show_default=True)
@click.option("--device", "device_name", default="cuda", show_default=True, help="cuda, or cpu with --size tiny for a toy check")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--profile", is_flag=True, help="also write torch.profiler tables of one streamed chunk step to --out")
@click.option("--count-ops", is_flag=True,
              help="only count the aten ops of a streamed forward per layer, fp32 and bf16, any --device (stream_ops.py)")
@click.option("--compile", "compile_blocks", is_flag=True,
              help="torch.compile each block's pure tensor math and the VAE decoder (not CUDA graphs); the warm-up passes compile")
@click.option("--vae-format", type=click.Choice(["auto", "contiguous", "channels_last"]), default="auto", show_default=True,
              help="the VAE's 3D convolution layout; auto times one chunk's decode in both and keeps the faster")
@click.option("--context", type=click.Choice(["clean", "noisy"]), default="clean", show_default=True,
              help="commit each chunk by a clean re-run at t = 0, or keep the last step's keys and values (no refresh)")
@click.option("--kv-int8", is_flag=True, help="keep the KV cache in int8 (per-token, per-head scales)")
@click.option("--vae-tiling", is_flag=True, help="decode in spatial tiles (the VAE's 256 px tiles, stride 192)")
@click.option("--low-memory", is_flag=True, help="the pipeline's preset: --kv-int8 --vae-tiling")
def stream_command(
    size, height, width, latent_frames, steps, modes, device_name, out_dir, profile, count_ops, compile_blocks, vae_format,
    context, kv_int8, vae_tiling, low_memory,
) -> None:
    """Streaming throughput and first-frame latency, with and without VAE decoding, vs the bidirectional baseline."""
    import torch

    from causal_rcm.bench import check_video_size
    from causal_rcm.bench.attention import write_result

    if count_ops and compile_blocks:
        raise click.UsageError("--count-ops counts the eager aten ops; leave out --compile")
    if count_ops:
        from causal_rcm.bench.stream_ops import count_stream_ops, format_counts

        for mode in (m for m in modes.split(",") if m):
            fpc = _frames_per_chunk(mode)
            for dtype in ("float32", "bfloat16"):
                click.echo(format_counts(count_stream_ops(size, frames_per_chunk=fpc, cached_frames=latent_frames - fpc,
                                                          dtype=dtype, device_name=device_name)))
        return
    if device_name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("bench stream needs a CUDA GPU (or --device cpu --size tiny for a toy-size check)")
    check_video_size(height, width)
    step_counts = tuple(int(x) for x in steps.split(",") if x)
    mode_names = tuple(m for m in modes.split(",") if m)
    if not set(mode_names) <= {"chunk", "frame"} or not step_counts or min(step_counts) < 1:
        raise click.BadParameter("--modes takes chunk,frame and --steps positive integers")
    kv_int8, vae_tiling = kv_int8 or low_memory, vae_tiling or low_memory
    record = run_stream_bench(size, height, width, latent_frames, step_counts, mode_names, device_name, log=click.echo,
                              profile_dir=out_dir if profile else None, compile=compile_blocks, vae_format=vae_format,
                              context=context, kv_int8=kv_int8, vae_tiling=vae_tiling)
    options = [name for name, on in (("compiled", compile_blocks), ("noisy", context == "noisy"), ("int8", kv_int8),
                                     ("tiled", vae_tiling)) if on]
    if device_name == "cuda":
        click.echo(f"wrote {write_result(record, out_dir, '_'.join([f'stream_{size}', *options]))}")
