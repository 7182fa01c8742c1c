"""``causal-rcm bench jvp``: whole-model forward vs whole-model JVP under the teacher-forcing mask.

CausalWanModel with random weights in bf16 at 480x832 (latent 60 x 104, 1560 tokens per
frame), [clean | noisy] over 2 x 21 frames in chunks of 3 (S = 65520). Times:

* forward with FlexAttention and with our Triton kernels (``no_grad``);
* the network JVP along (dx, dt) = (random, 1) as sCM takes it (``no_grad``), with the
  Triton backend: ``torch.func.jvp`` of the whole model, attention through the kernels'
  ``jvp`` rule (DESIGN section 6, ``docs/architecture.md``).

Reports ms (mean of a few runs after one warm-up) and peak GPU memory of each.
"""

from __future__ import annotations

from pathlib import Path

import click

from causal_rcm.bench import check_video_size, environment

from causal_rcm.bench.attention import write_result

LATENT_CHANNELS = 16
FRAMES_PER_HALF = 21
FRAMES_PER_CHUNK = 3


def _measure(fn, repeats: int) -> tuple[float, float]:
    """(mean ms over ``repeats`` after one warm-up, peak GiB allocated during one run)."""
    import torch

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats, peak


def run_jvp_bench(size: str = "wan2.1-1.3b", height: int = 480, width: int = 832, repeats: int = 3, log=print) -> dict:
    import torch

    from causal_rcm.kernels import masks
    from causal_rcm.models.wan import CausalWanModel

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = CausalWanModel.from_preset(size, attn_backend="triton").to(device, torch.bfloat16).eval()
    # The time embedding and its projection take fp32 inputs (modulation is computed in fp32, as Wan does).
    model.time_embedding.float()
    model.time_projection.float()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.config
    gh, gw = height // 8 // cfg.patch_size[1], width // 8 // cfg.patch_size[2]
    tpf = gh * gw
    mask = masks.teacher_forcing(FRAMES_PER_HALF // FRAMES_PER_CHUNK, FRAMES_PER_CHUNK, tpf).to(device)
    frames = mask.num_frames_q
    x = torch.randn(1, cfg.in_dim, frames, height // 8, width // 8, device=device, dtype=torch.bfloat16)
    t = torch.cat([torch.zeros(FRAMES_PER_HALF), torch.full((FRAMES_PER_HALF,), 500.0)])[None].to(device)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=torch.bfloat16)
    tx, tt = torch.randn_like(x), torch.ones_like(t)
    log(f"model {size}: {model.num_parameters() / 1e6:.0f} M parameters; x {tuple(x.shape)}, S = {mask.seq_len_q}, "
        f"mask density {mask.density():.3f}")

    def forward(backend):
        def run():
            model.attn_backend = backend
            with torch.no_grad():
                model(x, t, context, mask=mask)
        return run

    def jvp():
        model.attn_backend = "triton"
        with torch.no_grad():
            torch.func.jvp(lambda x_, t_: model(x_, t_, context, mask=mask), (x, t), (tx, tt))

    results = {}
    for name, fn in (("forward_flex", forward("flex")), ("forward_triton", forward("triton")), ("jvp_triton", jvp)):
        ms, peak = _measure(fn, repeats)
        results[name] = {"ms": ms, "peak_gib": peak}
        log(f"{name:>16}: {ms:9.1f} ms   peak {peak:6.2f} GiB (above weights and inputs)")
    ratio = results["jvp_triton"]["ms"] / results["forward_triton"]["ms"]
    log(f"JVP / forward (triton): {ratio:.2f}x")
    return {
        **environment("jvp", device),
        "setup": {"size": size, "height": height, "width": width, "frames": frames, "seq_len": mask.seq_len_q,
                  "mask": "teacher_forcing", "density": mask.density(), "dtype": "bf16", "weights": "random"},
        "results": results,
        "jvp_over_forward": ratio,
    }


@click.command("jvp")
@click.option("--size", type=click.Choice(["tiny", "wan2.1-1.3b", "wan2.1-14b"]), default="wan2.1-1.3b",
              show_default=True)
@click.option("--height", type=click.IntRange(min=1), default=480, show_default=True,
              help="video height in pixels (latent = /8)")
@click.option("--width", type=click.IntRange(min=1), default=832, show_default=True,
              help="video width in pixels (latent = /8)")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"),
              show_default=True, help="folder for the JSON result")
def jvp_command(size: str, height: int, width: int, repeats: int, out_dir: Path) -> None:
    """Whole-model forward vs whole-model JVP (teacher-forcing mask, bf16, random weights) on a GPU."""
    import torch

    if not torch.cuda.is_available():
        raise click.UsageError("bench jvp needs a CUDA GPU")
    check_video_size(height, width)
    click.echo(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    record = run_jvp_bench(size, height, width, repeats, log=click.echo)
    click.echo(f"wrote {write_result(record, out_dir, f'jvp_{size}')}")
