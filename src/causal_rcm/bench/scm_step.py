"""``causal-rcm bench scm-step``: one TF-sCM training step against one plain TF diffusion step.

Both steps are the recipes' own ``losses`` (:class:`~causal_rcm.distill.tf_scm.TFSCMRecipe`
and :class:`~causal_rcm.distill.flow.CausalTeacherRecipe`) followed by ``backward`` and an
AdamW step, run as the trainer runs them (fp32 master weights under bf16 autocast on CUDA), on
random weights of the chosen architecture with [clean | noisy] teacher-forcing sequences
(Wan2.1-1.3B at 480x832: 2 x 21 latent frames in chunks of 3, S = 65520). The sCM step adds
the teacher's two CFG forwards and the network JVP (Triton backend) to the student's forward
and backward. Reports ms per step (mean after a warm-up), peak memory, and the ratio.

``--size tiny --device cpu`` runs the same code at toy size on the CPU (the math backend for
the JVP), which the tests use; its timings mean little.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import click

LATENT_CHANNELS = 16
FRAMES = 21
FRAMES_PER_CHUNK = 3


class _NoSource:
    """The bits of a data world the recipes' ``losses`` read, for random inputs of a given size."""

    def __init__(self, text_dim: int, text_len: int, latent: tuple[int, int, int, int], device) -> None:
        import torch

        self.latent = latent
        self.text = SimpleNamespace(dim=text_dim)
        self._empty = torch.zeros(1, text_len, text_dim, device=device)

    def latent_shape(self, num_frames=None):
        return self.latent

    def tokens_per_frame(self, patch):
        _, _, h, w = self.latent
        return (h // patch[1]) * (w // patch[2])

    def empty_context(self, batch: int):
        return self._empty.expand(batch, -1, -1)


def run_scm_step_bench(
    size: str = "wan2.1-1.3b", height: int = 480, width: int = 832, frames: int = FRAMES, frames_per_chunk: int = FRAMES_PER_CHUNK,
    repeats: int = 3, device_name: str = "cuda", log=print,
) -> dict:
    import torch

    from causal_rcm.config import Config, ScmConfig
    from causal_rcm.distill.flow import CausalTeacherRecipe
    from causal_rcm.distill.tf_scm import TFSCMRecipe
    from causal_rcm.models.wan import CausalWanConfig, CausalWanModel
    from causal_rcm.train.parallel import StepRandom, DistEnv
    from causal_rcm.bench import environment

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    overrides = {} if size != "tiny" else {"in_dim": LATENT_CHANNELS, "out_dim": LATENT_CHANNELS}
    model_config = CausalWanConfig.preset(size, **overrides)
    config = Config(recipe="tf-scm", model=model_config, attn_backend="triton" if cuda else "sdpa")
    config.data.num_frames, config.data.frames_per_chunk = frames, frames_per_chunk
    config.objective.jvp_backend = "triton" if cuda else "math"
    config.scm = ScmConfig(tangent_warmup=0)
    latent = (model_config.in_dim, frames, height // 8, width // 8)
    world = _NoSource(model_config.text_dim, model_config.text_len, latent, device)
    torch.manual_seed(0)
    student = CausalWanModel(model_config, attn_backend=config.attn_backend).to(device)
    teacher = CausalWanModel(model_config, attn_backend=config.attn_backend).to(device).eval().requires_grad_(False)
    with torch.no_grad():  # random weights: Wan's init zeroes the head, which would make every output 0
        for model in (student, teacher):
            model.head.head.weight.normal_(0, 0.02)
    scm, diffusion = TFSCMRecipe(config, world), CausalTeacherRecipe(config, world)
    for recipe in (scm, diffusion):
        recipe.student, recipe.teacher, recipe.device = student, teacher, device
    # Without recomputation the backward at S = 65520 would keep ~6 GB of activations per block.
    student.activation_checkpointing = size != "tiny"
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    batch = {
        "latents": torch.randn(1, *latent, device=device),
        "context": torch.randn(1, model_config.text_len, model_config.text_dim, device=device),
    }
    run_world = DistEnv(0, 1, device)
    log(f"model {size}: {student.num_parameters() / 1e6:.0f} M parameters; latents {latent}, "
        f"S = {scm.tf_mask().seq_len_q} tokens, device {device}")

    def step(recipe):
        def run():
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False):
                loss, _ = recipe.losses(batch, StepRandom(0, 1, run_world), 1)["student"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    results = {}
    for name, recipe in (("tf_diffusion_step", diffusion), ("tf_scm_step", scm)):
        ms, peak = _measure(step(recipe), repeats, cuda)
        results[name] = {"ms": ms, "peak_gib": peak}
        memory = "" if peak is None else f"   peak {peak:6.2f} GiB"
        log(f"{name:>18}: {ms:9.1f} ms{memory}")
    ratio = results["tf_scm_step"]["ms"] / results["tf_diffusion_step"]["ms"]
    log(f"TF-sCM step / TF diffusion step: {ratio:.2f}x")
    return {
        **environment("scm_step", device),
        "setup": {"size": size, "height": height, "width": width, "frames": 2 * frames, "seq_len": scm.tf_mask().seq_len_q,
                  "precision": "bf16 autocast, fp32 weights" if cuda else "fp32", "weights": "random",
                  "jvp_backend": config.objective.jvp_backend, "optimizer": "AdamW",
                  "activation_checkpointing": student.activation_checkpointing},
        "results": results,
        "scm_over_diffusion": ratio,
    }


def _measure(fn, repeats: int, cuda: bool) -> tuple[float, float | None]:
    import torch

    fn()  # warm-up (kernel compilation, allocator)
    if not cuda:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1000 / repeats, None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / repeats, torch.cuda.max_memory_allocated() / 2**30


@click.command("scm-step")
@click.option("--size", type=click.Choice(["tiny", "wan2.1-1.3b", "wan2.1-14b"]), default="wan2.1-1.3b", show_default=True)
@click.option("--height", type=click.IntRange(min=1), default=480, show_default=True,
              help="video height in pixels (latent = /8)")
@click.option("--width", type=click.IntRange(min=1), default=832, show_default=True,
              help="video width in pixels (latent = /8)")
@click.option("--frames", type=click.IntRange(min=1), default=FRAMES, show_default=True,
              help="latent frames per half of the TF sequence")
@click.option("--frames-per-chunk", type=click.IntRange(min=1), default=FRAMES_PER_CHUNK, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--device", "device_name", default="cuda", show_default=True, help="cuda, or cpu for a toy-size check")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
def scm_step_command(size, height, width, frames, frames_per_chunk, repeats, device_name, out_dir) -> None:
    """A TF-sCM training step vs a plain TF diffusion step (same model, mask and batch)."""
    import torch

    from causal_rcm.bench import check_video_size
    from causal_rcm.bench.attention import write_result

    if device_name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("bench scm-step needs a CUDA GPU (or --device cpu --size tiny for a toy-size check)")
    check_video_size(height, width)
    if frames % frames_per_chunk:
        raise click.BadParameter("--frames must be a multiple of --frames-per-chunk")
    record = run_scm_step_bench(size, height, width, frames, frames_per_chunk, repeats, device_name, log=click.echo)
    if device_name == "cuda":
        click.echo(f"wrote {write_result(record, out_dir, f'scm_step_{size}')}")
