"""Bounds on what a user may ask for: one home for the numbers the CLI, the server and the configs check.

No torch here: the CLI reads these when it declares its options, before any command imports torch.
"""

from __future__ import annotations

from causal_rcm.errors import UserError

__all__ = [
    "MAX_DRIFT", "MAX_EVAL_VIDEOS", "MAX_SEED", "MAX_STEPS", "MAX_STREAM_SECONDS", "MAX_VIDEO_BYTES", "check_video_bytes",
]

MAX_STEPS = 1000  # sampler steps: a teacher's Euler sampler takes 50, a distilled student 1-4
MAX_SEED = 2**31 - 1  # seeds: torch, numpy and a browser's JSON numbers all hold it exactly
MAX_VIDEO_BYTES = 4 * 2**30  # decoded video that one command holds in memory at once
MAX_EVAL_VIDEOS = 1024  # prompts of one evaluation (16 make the shapes world's usual estimate)
MAX_DRIFT = 32  # an evaluation's long rollouts: this many times the training length at most
MAX_STREAM_SECONDS = 3600.0  # an evaluation's streams: an hour of video each at most


def check_video_bytes(nbytes: int, what: str, fix: str) -> None:
    """UserError when ``what`` (e.g. "24000000 frames of 32x32 px") would take ``nbytes`` > MAX_VIDEO_BYTES."""
    if nbytes > MAX_VIDEO_BYTES:
        raise UserError(f"{what} would take {nbytes / 2**30:.1f} GiB of memory, more than the "
                        f"{MAX_VIDEO_BYTES / 2**30:g} GiB bound; {fix}")
