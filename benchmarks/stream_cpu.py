"""Long CPU stream: bounded memory and first/last-minute oracle adherence of any causal checkpoint.

    python benchmarks/stream_cpu.py --checkpoint CKPT --minutes 10
    python benchmarks/stream_cpu.py --untrained-shapes --minutes 10     # plumbing only: an untrained model

Writes JSON to benchmarks/results/ (see causal_rcm.eval.stream.measure_stream for the fields).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from causal_rcm.eval.stream import measure_stream
from causal_rcm.pipeline import StreamingPipeline
from causal_rcm.models.adapters import save_model

RESULTS = Path(__file__).resolve().parent / "results"

# The shapes world at 32 px (pixel codec factor 4 -> 48 x 8 x 8 latents): what `causal-rcm train` writes for
# a 1-4 step causal student, with the codec normalisation of the shapes world.
UNTRAINED_PIPELINE = {
    "source": "shapes", "resolution": 32, "num_frames": 8, "frames_per_chunk": 2, "causal": True,
    "codec": {"kind": "pixel", "factor": 4, "shift": -0.81, "scale": 1.92},
    "text": {"kind": "toy", "dim": 64, "text_len": 16, "seed": 0},
    "sampler": {"solver": "consistency", "steps": 2, "shift": 3.0, "guidance": 1.0},
    "stream": {"sink_frames": 1, "window_frames": 8}, "fps": 8, "num_actions": 0,
}


def untrained_shapes_checkpoint(folder: Path) -> Path:
    """A randomly initialised `shapes`-preset CausalWanModel (head re-randomised so frames are not flat)."""
    from causal_rcm.models.wan import CausalWanModel

    torch.manual_seed(0)
    model = CausalWanModel.from_preset("shapes")
    with torch.no_grad():
        torch.nn.init.normal_(model.head.head.weight, std=0.02)
    return save_model(model, folder / "untrained-shapes", pipeline=UNTRAINED_PIPELINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="A causal checkpoint folder.")
    source.add_argument("--untrained-shapes", action="store_true", help="An untrained shapes-preset model (memory and speed only).")
    parser.add_argument("--minutes", type=float, default=10.0, help="Minutes of video (at the checkpoint's fps).")
    parser.add_argument("--prompt", default="a red circle moves right")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--mode", choices=["chunk", "frame"], default="chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="KV-cache window in latent frames (default: the checkpoint's).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/stream_cpu_<name>.json).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = untrained_shapes_checkpoint(Path(tmp)) if args.untrained_shapes else args.checkpoint
        pipe = StreamingPipeline.from_pretrained(checkpoint)
        report = measure_stream(pipe, args.prompt, minutes=args.minutes, steps=args.steps, mode=args.mode, seed=args.seed,
                               window_frames=args.window)
    # a checkpoint's name: its folder, or the run folder above a train output's model/
    name = "untrained-shapes" if args.untrained_shapes else (
        args.checkpoint.parent.name if args.checkpoint.name == "model" else args.checkpoint.name)
    if args.window is not None:
        name += f"_window{args.window}"
    report = {
        "checkpoint": "untrained shapes preset (random weights)" if args.untrained_shapes else str(args.checkpoint),
        "parameters_m": round(pipe.model.num_parameters() / 1e6, 3), "device": "cpu", "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
        **report,
    }
    out = args.out or RESULTS / f"stream_cpu_{name}_{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("frames", "wall_seconds", "frames_per_second", "chunk_latency_ms", "memory", "oracle")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
