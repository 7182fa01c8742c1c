"""Bounds on what a user may ask for: one home for the numbers the CLI, the server and the configs check, and the
rule beside every config field (:func:`ranged`) with the one check that reads them all (:func:`field_problems`).

No torch here: the CLI reads these when it declares its options, before any command imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

from causal_rcm.errors import UserError, shorten

__all__ = [
    "MAX_DRIFT", "MAX_EVAL_VIDEOS", "MAX_IMAGE_BYTES", "MAX_IMAGE_SIDE", "MAX_SEED", "MAX_STEPS", "MAX_STREAM_SECONDS",
    "MAX_VIDEO_BYTES",
    "Range", "check_video_bytes", "field_problems", "ranged", "show",
]

MAX_STEPS = 1000  # sampler steps: a teacher's Euler sampler takes 50, a distilled student 1-4
MAX_SEED = 2**31 - 1  # seeds: torch, numpy and a browser's JSON numbers all hold it exactly
MAX_VIDEO_BYTES = 4 * 2**30  # decoded video that one command holds in memory at once
MAX_EVAL_VIDEOS = 1024  # prompts of one evaluation (16 make the shapes world's usual estimate)
MAX_DRIFT = 32  # an evaluation's long rollouts: this many times the training length at most
MAX_STREAM_SECONDS = 3600.0  # an evaluation's streams: an hour of video each at most
MAX_IMAGE_BYTES = 16 * 2**20  # a first frame given to image-to-video (a file or an upload to the server)
MAX_IMAGE_SIDE = 8192  # px, either side of such an image (checked from its header, before it is decoded)


def check_video_bytes(nbytes: int, what: str, fix: str) -> None:
    """UserError when ``what`` (e.g. "24000000 frames of 32x32 px") would take ``nbytes`` > MAX_VIDEO_BYTES."""
    if nbytes > MAX_VIDEO_BYTES:
        raise UserError(f"{what} would take {nbytes / 2**30:.1f} GiB of memory, more than the "
                        f"{MAX_VIDEO_BYTES / 2**30:g} GiB bound; {fix}")


@dataclass(frozen=True)
class Range:
    """The values a field may take: numbers in [lo, hi] (an end None: unbounded; ``above``: lo itself excluded),
    or one of ``choices``. A tuple field's range holds for each of its items."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()

    def __contains__(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if self.lo is not None and (value <= self.lo if self.above else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    def __str__(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "-inf" if self.lo is None else _number(self.lo)
        hi = "inf)" if self.hi is None else _number(self.hi) + "]"
        return f"{'(' if self.above or self.lo is None else '['}{lo}, {hi}"


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *, above: bool = False,
           choices: Sequence[str] = ()) -> Any:
    """A dataclass field with its default and the values it may take (a :class:`Range`), e.g.
    ``lr: float = ranged(3e-4, 0, 1, above=True)`` (``default`` MISSING: none); :func:`field_problems` checks them."""
    return field(default=default, metadata={"range": Range(lo, hi, above, tuple(choices))})


def field_problems(obj: Any, prefix: str = "") -> list[str]:
    """What is wrong with the fields of dataclass ``obj`` and of the dataclasses in it, one line each naming the key
    (``prefix`` + name), the value and what is allowed: a value of another type than its annotation, a float that is
    not finite, a value outside its field's :class:`Range`."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            problems += field_problems(value, key + ".")
            continue
        allowed = f.metadata.get("range")
        problem = _problem(value, hints[f.name], allowed)
        if problem:
            problems.append(f"{key} {problem}")
    return problems


def _problem(value: Any, annotation: Any, allowed: Range | None) -> str | None:
    """Why ``value`` is not of ``annotation`` or not in ``allowed``, or None."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, tuple):
            return f"must be a list, got {show(value)}"
        if len(args) != 2 or args[1] is not Ellipsis:  # tuple[int, int, int]: that many items
            if len(value) != len(args):
                return f"must have {len(args)} items, got {len(value)}"
        for item in value:
            problem = _problem(item, args[0], allowed)
            if problem:
                return f"items {problem}"
        return None
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in kinds:
        ok = isinstance(value, str) if annotation is str else (
            isinstance(value, bool) if annotation is bool else
            isinstance(value, (int, float) if annotation is float else int) and not isinstance(value, bool))
        if not ok:
            return f"must be {kinds[annotation]}, got {show(value)}"
        if annotation is float and not math.isfinite(value):
            return f"must be a finite number, got {value}"
    if allowed is not None and value not in allowed:
        return f"must be {'' if allowed.choices else 'in '}{allowed}, got {show(value)}"
    return None


def show(value: Any) -> str:
    """How a message quotes a value: a string shortened, a number as it is, anything else with its type."""
    if isinstance(value, str):
        return shorten(value)
    text = repr(value) if len(repr(value)) <= 80 else repr(value)[:80] + "..."
    return text if isinstance(value, (bool, int, float)) else f"{text} ({type(value).__name__})"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"
