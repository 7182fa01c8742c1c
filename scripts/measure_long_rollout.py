"""Memory of SF-DMD's long self-forcing rollout against its length N, on the CPU.

    python scripts/measure_long_rollout.py MODEL N [N...] [--batch 4] [--sink 2] [--window 4] [--whole]

Rolls a causal student (e.g. checkpoints/shapes/sf-dmd/model) out N times its training length as ``sf-dmd`` does
(``distill.self_forcing.self_forcing_rollout``: 2 steps, exit at the last, the stream's sink and window, gradient
only through the last training-length window), backpropagates a loss on the window, and prints per N the tensors
autograd saved for backward (count and MiB, through ``torch.autograd.graph.saved_tensors_hooks``), the frames
returned, the time and the process's peak RSS. Run each N in its own process for a clean peak RSS. ``--whole``
grades the whole rollout instead (what the memory would be without the scored window).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from causal_rcm.diffusion.schedules import flow_time_grid
from causal_rcm.distill.self_forcing import self_forcing_rollout
from causal_rcm.models.adapters import load_model
from causal_rcm.spec import PipelineSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("lengths", type=int, nargs="+", metavar="N")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sink", type=int, default=2)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--whole", action="store_true", help="grade the whole rollout (no scored window)")
    args = parser.parse_args()
    spec = PipelineSpec.read(args.model)
    model = load_model(args.model, dtype=torch.float32).train()
    F, fpc, cfg = spec.num_frames, spec.frames_per_chunk, model.config
    h = spec.resolution // spec.codec.factor
    context = torch.randn(args.batch, cfg.text_len, cfg.text_dim)
    for N in args.lengths:
        count = total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count, total
            count, total = count + 1, total + t.numel() * t.element_size()
            return t

        noise = torch.randn(args.batch, cfg.in_dim, N * F, h, h, generator=torch.Generator().manual_seed(N))
        started = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            video = self_forcing_rollout(
                model, noise, context, grid=flow_time_grid(2, spec.sampler.shift), exit_step=1, frames_per_chunk=fpc,
                window_frames=args.window, sink_frames=args.sink, score_from_chunk=0 if args.whole else (N * F - F) // fpc,
                complement=model.head_complement(),
            )
        video.square().mean().backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"N={N}: saved for backward {count} tensors, {total / 2**20:.2f} MiB; frames returned {video.shape[2]}; "
              f"{time.perf_counter() - started:.1f} s; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
