"""``causal-rcm bench attention``: masked attention forward / backward / JVP on one GPU.

At Wan2.1-1.3B's shape (B=1, H=12, D=128, 1560 tokens per latent frame) and
S in {4680, 32760, 65520} (3, 21, 42 frames), with the masks

* ``none``: full attention;
* ``block_causal``: chunks of 3 frames, chunk i sees chunks <= i;
* ``teacher_forcing``: [clean | noisy] over 2 x 21 frames in chunks of 3 (S = 65520 only,
  the only length that holds two halves of whole chunks),

it times SDPA forward (dense boolean mask where it fits), FlexAttention forward and
forward+backward (compiled, block mask from the same tile table), our Triton kernels forward,
forward+backward, the fused one-pass JVP, the tangents-only JVP kernel on a saved (O, LSE)
and ``torch.func.jvp`` through our op (forward, then the tangents-only kernel), and
``torch.func.jvp`` of math attention where its S x S fp32 tensors fit.
Times are medians of ``triton.testing.do_bench`` in ms; TFLOP/s count only allowed pairs
(forward 4 S^2 D H density, backward 2.5x, fused JVP 3x, tangents-only JVP 2.5x).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from causal_rcm.bench import environment

TOKENS_PER_FRAME = 1560  # Wan2.1 at 480x832: (60 / 2) * (104 / 2)
SEQ_LENS = (4680, 32760, 65520)
MASK_KINDS = ("none", "block_causal", "teacher_forcing")
FRAMES_PER_CHUNK = 3
# torch.func.jvp of math attention materialises a few fp32 (B, H, S, S) tensors.
MATH_JVP_MAX_SCORES = 12 * 4680 * 4680
# SDPA with a dense boolean mask: only where BlockSparseMask.dense() agrees to build one.
SDPA_MASK_MAX_ELEMENTS = 1 << 28


def build_mask(kind: str, seq_len: int, tokens_per_frame: int = TOKENS_PER_FRAME):
    """The benchmark mask of ``kind`` over ``seq_len`` tokens, None for ``none``, or "n/a"."""
    from causal_rcm.kernels import masks

    frames = seq_len // tokens_per_frame
    if kind == "none":
        return None
    if kind == "block_causal":
        return masks.block_causal(frames // FRAMES_PER_CHUNK, FRAMES_PER_CHUNK, tokens_per_frame)
    if kind == "teacher_forcing":
        if frames % (2 * FRAMES_PER_CHUNK):
            return "n/a"
        return masks.teacher_forcing(frames // (2 * FRAMES_PER_CHUNK), FRAMES_PER_CHUNK, tokens_per_frame)
    raise ValueError(f"unknown mask kind {kind!r}")


def _flops_fwd(batch, heads, seq_len, head_dim, density):
    return 4.0 * batch * heads * seq_len * seq_len * head_dim * density


def run_attention_bench(
    seq_lens=SEQ_LENS, mask_kinds=MASK_KINDS, batch=1, heads=12, head_dim=128, dtype_name="bf16", log=print
) -> dict:
    """Time every method on every (S, mask); returns the JSON-able record."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention
    from triton.testing import do_bench

    from causal_rcm.kernels import op as kernels
    from causal_rcm.kernels import flash
    from causal_rcm.kernels.dispatch import math_attention

    if not torch.cuda.is_available():
        raise click.UsageError("bench attention needs a CUDA GPU")
    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    # One compiled flex graph per (S, mask, direction): above dynamo's default limit of 8 it
    # would fall back to eager flex, which materialises S x S scores and runs out of memory.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 512)
    flex = torch.compile(flex_attention, dynamic=False)
    rows = []

    def timed(fn):
        torch.cuda.synchronize()
        try:
            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None

    for seq_len in seq_lens:
        g = torch.Generator(device=device).manual_seed(0)
        shape = (batch, heads, seq_len, head_dim)
        q, k, v, tq, tk, tv, do = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(7))
        for kind in mask_kinds:
            mask = build_mask(kind, seq_len)
            if isinstance(mask, str):
                continue
            mask = None if mask is None else mask.to(device)
            density = 1.0 if mask is None else mask.density()
            block_mask = None if mask is None else mask.to_flex(128)
            res: dict[str, float | None] = {}

            def fwd_bwd(f):
                leaves = [x.detach().requires_grad_() for x in (q, k, v)]

                def step():
                    for x in leaves:
                        x.grad = None
                    f(*leaves).backward(do)

                return step

            if mask is None or seq_len * seq_len <= SDPA_MASK_MAX_ELEMENTS:
                dense = None if mask is None else mask.dense()
                res["sdpa_fwd"] = timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense))
                del dense
            res["flex_fwd"] = timed(lambda: flex(q, k, v, block_mask=block_mask))
            res["flex_fwd_bwd"] = timed(fwd_bwd(lambda a, b, c: flex(a, b, c, block_mask=block_mask)))
            res["ours_fwd"] = timed(lambda: kernels.attention(q, k, v, mask))
            res["ours_fwd_bwd"] = timed(fwd_bwd(lambda a, b, c: kernels.attention(a, b, c, mask)))
            res["ours_jvp"] = timed(lambda: kernels.attention_jvp(q, k, v, tq, tk, tv, mask))
            o, lse = kernels.attention_with_lse(q, k, v, mask)
            mask_args = (None, 1) if mask is None else (mask.allowed, mask.tokens_per_frame)
            res["ours_jvp_tangents"] = timed(
                lambda: flash.jvp_tangents(q, k, v, o, lse, (tq, tk, tv), *mask_args, head_dim**-0.5))
            del o, lse
            res["ours_func_jvp"] = timed(
                lambda: torch.func.jvp(lambda a, b, c: kernels.attention(a, b, c, mask), (q, k, v), (tq, tk, tv))
            )
            if batch * heads * seq_len * seq_len <= MATH_JVP_MAX_SCORES:
                res["math_func_jvp"] = timed(
                    lambda: torch.func.jvp(lambda a, b, c: math_attention(a, b, c, mask), (q, k, v), (tq, tk, tv))
                )
            flops = _flops_fwd(batch, heads, seq_len, head_dim, density)
            tflops = {
                name: flops * mult / (res[name] * 1e-3) / 1e12
                for name, mult in (("ours_fwd", 1.0), ("ours_fwd_bwd", 3.5), ("ours_jvp", 3.0),
                                   ("ours_jvp_tangents", 2.5), ("flex_fwd", 1.0))
                if res.get(name)
            }
            row = {"seq_len": seq_len, "mask": kind, "density": density, "ms": res, "tflops": tflops}
            rows.append(row)
            log(_format_row(row))
        del q, k, v, tq, tk, tv, do
        torch.cuda.empty_cache()

    return {
        **environment("attention", device),
        "shape": {"batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype_name,
                  "tokens_per_frame": TOKENS_PER_FRAME},
        "rows": rows,
        "ratios": _ratios(rows),
    }


_COLUMNS = ("sdpa_fwd", "flex_fwd", "flex_fwd_bwd", "ours_fwd", "ours_fwd_bwd", "ours_jvp", "ours_jvp_tangents",
            "ours_func_jvp", "math_func_jvp")


def _width(column: str) -> int:
    return max(13, len(column))


def _header() -> str:
    return f"{'S':>6} {'mask':<16} {'dens':>5} " + " ".join(f"{c:>{_width(c)}}" for c in _COLUMNS)


def _format_row(row: dict) -> str:
    cells = []
    for c in _COLUMNS:
        value = row["ms"].get(c, "-")
        cells.append(f"{'-' if value == '-' else ('OOM' if value is None else f'{value:.2f}'):>{_width(c)}}")
    return f"{row['seq_len']:>6} {row['mask']:<16} {row['density']:>5.2f} " + " ".join(cells)


def _ratios(rows: list[dict]) -> dict:
    """DESIGN targets: JVP / flex forward on teacher forcing at the longest S; forward vs flex;
    forward time against mask density at each S."""
    out = {}
    for row in rows:
        ms = row["ms"]
        key = f"{row['mask']}@{row['seq_len']}"
        if ms.get("ours_fwd") and ms.get("flex_fwd"):
            out[f"ours_fwd/flex_fwd {key}"] = ms["ours_fwd"] / ms["flex_fwd"]
        if ms.get("ours_jvp") and ms.get("flex_fwd"):
            out[f"ours_jvp/flex_fwd {key}"] = ms["ours_jvp"] / ms["flex_fwd"]
        if ms.get("ours_fwd") and ms.get("ours_jvp_tangents") and ms.get("ours_jvp"):
            fwd_then_tangents = ms["ours_fwd"] + ms["ours_jvp_tangents"]
            out[f"(ours_fwd+ours_jvp_tangents)/ours_jvp {key}"] = fwd_then_tangents / ms["ours_jvp"]
        if ms.get("ours_fwd_bwd") and ms.get("flex_fwd_bwd"):
            out[f"ours_fwd_bwd/flex_fwd_bwd {key}"] = ms["ours_fwd_bwd"] / ms["flex_fwd_bwd"]
    for seq_len in sorted({r["seq_len"] for r in rows}):
        dense = next((r for r in rows if r["seq_len"] == seq_len and r["mask"] == "none"), None)
        if not dense or not dense["ms"].get("ours_fwd"):
            continue
        for r in rows:
            if r["seq_len"] == seq_len and r["mask"] != "none" and r["ms"].get("ours_fwd"):
                out[f"time/dense_time vs density {r['mask']}@{seq_len}"] = (
                    r["ms"]["ours_fwd"] / dense["ms"]["ours_fwd"], r["density"])
    return out


def write_result(record: dict, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = record["device"].replace(" ", "_").replace("/", "_")
    path = out_dir / f"{name}_{gpu}_{record['date'][:10]}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _csv(value: str, cast=str):
    return tuple(cast(x) for x in value.split(",") if x)


@click.command("attention")
@click.option("--seq-lens", default=",".join(map(str, SEQ_LENS)), show_default=True, help="comma-separated S")
@click.option("--masks", "mask_kinds", default=",".join(MASK_KINDS), show_default=True,
              help="comma-separated: none, block_causal, teacher_forcing")
@click.option("--dtype", "dtype_name", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("benchmarks/results"),
              show_default=True, help="folder for the JSON result")
def attention_command(seq_lens: str, mask_kinds: str, dtype_name: str, out_dir: Path) -> None:
    """Masked attention: SDPA / FlexAttention / our Triton kernels (forward, backward, JVP) on a GPU."""
    kinds = _csv(mask_kinds)
    for kind in kinds:
        if kind not in MASK_KINDS:
            raise click.BadParameter(f"unknown mask {kind!r}; choose from {', '.join(MASK_KINDS)}", param_hint="--masks")
    lens = _csv(seq_lens, int)
    bad = [s for s in lens if s % (TOKENS_PER_FRAME * FRAMES_PER_CHUNK)]
    if bad:
        raise click.BadParameter(f"S must be a multiple of {TOKENS_PER_FRAME * FRAMES_PER_CHUNK} (whole chunks of "
                                 f"3 frames of {TOKENS_PER_FRAME} tokens), got {bad}", param_hint="--seq-lens")
    import torch

    if not torch.cuda.is_available():
        raise click.UsageError("bench attention needs a CUDA GPU")
    click.echo(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | B=1 H=12 D=128 {dtype_name}; ms")
    click.echo(_header())
    record = run_attention_bench(lens, kinds, dtype_name=dtype_name, log=click.echo)
    for name, value in record["ratios"].items():
        click.echo(f"{name}: {value if isinstance(value, float) else value[0]:.3f}"
                   + ("" if isinstance(value, float) else f" (density {value[1]:.3f})"))
    path = write_result(record, out_dir, "attention")
    click.echo(f"wrote {path}")
