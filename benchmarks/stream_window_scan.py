"""Long-stream quality against the KV-cache window: oracle caption adherence along a minute of streaming.

    python benchmarks/stream_window_scan.py --checkpoint CKPT [CKPT ...] --windows 4,6,8,12,16 --seconds 60

For each checkpoint and window (latent frames attended, the chunk included), streams each prompt for ``--seconds``
of video and scores every consecutive training-length clip with the shapes-world oracle; reports the mean caption
adherence of the first clip, of clips 1-3, of the rest of the first half and of the second half. Writes JSON to
benchmarks/results/stream_window_scan.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from causal_rcm.data.oracle import ShapesOracle
from causal_rcm.data.shapes import ShapesConfig
from causal_rcm.pipeline import StreamingPipeline

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = (
    "a red circle moves right", "a blue square moves left", "a green triangle moves up", "a yellow circle moves down",
    "a red square moves left", "a blue circle moves up", "a green square moves right", "a yellow triangle moves left",
)


def scan(pipe: StreamingPipeline, windows: list[int], prompts, *, seconds: float, seed: int) -> list[dict]:
    """One row per window: caption adherence by stretch of the stream, averaged over the prompts."""
    oracle = ShapesOracle(ShapesConfig(size=pipe.config.resolution))
    clip = pipe.video_frames
    frames = max(4 * clip, round(seconds * pipe.config.fps) // clip * clip)
    rows = []
    for window in windows:
        started = time.perf_counter()
        per_prompt = []
        for prompt in prompts:
            video = np.stack([f.image for f in pipe.stream(prompt, seed=seed, num_frames=frames, window_frames=window)])
            clips = video.reshape(-1, clip, *video.shape[1:])
            per_prompt.append([v.metrics["caption_adherence"] for v in oracle.evaluate(clips, [prompt] * len(clips)).videos])
        scores = np.array(per_prompt)  # (prompts, clips)
        half = scores.shape[1] // 2
        rows.append({
            "window_frames": window,
            "caption_first_clip": float(scores[:, 0].mean()), "caption_clips_1_3": float(scores[:, 1:4].mean()),
            "caption_rest_of_first_half": float(scores[:, 4:half].mean()) if half > 4 else float("nan"),
            "caption_second_half": float(scores[:, half:].mean()),
            "per_prompt_second_half": [round(float(s), 3) for s in scores[:, half:].mean(1)],
            "seconds": round(time.perf_counter() - started, 1),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="Causal checkpoint folders.")
    parser.add_argument("--windows", default="4,6,8,12,16", help="Comma-separated windows in latent frames.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Seconds of video a stream (at the checkpoint's fps).")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"How many of the {len(PROMPTS)} prompts.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "stream_window_scan.json")
    args = parser.parse_args(argv)
    try:
        windows = [int(w) for w in args.windows.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--windows must be comma-separated integers, got {args.windows!r}")
    results = []
    for checkpoint in args.checkpoint:
        pipe = StreamingPipeline.from_pretrained(checkpoint)
        rows = scan(pipe, windows, PROMPTS[: args.prompts], seconds=args.seconds, seed=args.seed)
        results.append({"checkpoint": str(checkpoint), "checkpoint_window_frames": pipe.config.stream.window_frames,
                        "clip_frames": pipe.video_frames, "rows": rows})
        for row in rows:
            print(f"{checkpoint}  window {row['window_frames']:>3}: caption first clip {row['caption_first_clip']:.2f}, "
                  f"clips 1-3 {row['caption_clips_1_3']:.2f}, rest of first half {row['caption_rest_of_first_half']:.2f}, "
                  f"second half {row['caption_second_half']:.2f} ({row['seconds']} s)")
    report = {
        "benchmark": "stream_window_scan", "device": "cpu", "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds, "seed": args.seed, "prompts": list(PROMPTS[: args.prompts]), "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
