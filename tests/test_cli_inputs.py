"""Every input a user can give ends in a clean exit or one clear line: known bad inputs, then property-based tests.

The property tests draw their inputs from the real option space, walked, not listed by hand:

* **Overrides** ``KEY=VALUE`` to ``train RECIPE --print-config``, for every recipe. KEY is a field of the run's
  config dataclasses (``dataclasses.fields``, with its type and the range declared beside it, ``limits.ranged``), or
  an unknown key, a section, an empty key, a malformed item (no ``=``). VALUE is valid (inside the range, at its
  ends), one past an end, of another type (``abc``, ``1.5`` for an int, ``maybe`` for a bool), not finite (``nan``,
  ``inf``, ``1e400``), huge (10^30, 5000 digits), negative, empty, unicode, or 10^5 characters long.
* **Config files** for ``train RECIPE --config FILE --print-config``: a JSON object of sections whose values are
  valid, out of range, NaN or Infinity, or of another JSON type (string, number, bool, null, list, object); or a
  file that is no such object (a list, a number, null, a string, empty, invalid JSON, bytes that are not UTF-8,
  arrays nested 10^5 deep), is for another recipe, or extends a missing file, a non-string or itself.
* **Command options** of ``generate``, ``eval``, ``convert`` and ``serve``, walked from the click commands' params
  (their types, ranges, choices and flags), each drawn as above, against a tiny causal and a tiny bidirectional
  checkpoint (``tests/checkpoints.py``), with paths that are missing, files, folders or of the wrong suffix, prompts
  inside and outside the vocabulary (unicode, 10^5 characters), ``--switch`` times as above, and devices that exist
  or not (``tpu``, ``cuda:7``, ``meta``, ``""``). ``serve`` runs against the bidirectional checkpoint only, which it
  refuses once its options are parsed (a causal one would be served for ever); ``--compile`` is never drawn (it
  compiles for seconds). Valid values that cost run time are drawn small (up to 2 s of video, 2 steps, 2 videos, a
  window of 8); their upper bounds are still drawn one past.
* **A checkpoint's config.json** with one key of its ``model`` section or of its ``pipeline`` section (nested ones
  included) set to a JSON value as in config files (valid ones at most 64), then used by ``generate`` or ``eval``.

Asserted for every example: exit 0, or a non-zero exit with exactly one line on stderr, starting ``error:`` (no
traceback); an input known to be invalid (outside its declared range, of the wrong type, not finite, missing)
never exits 0, and a bad config key or value is named in the line; a valid override shows in the printed config;
every example ends within ``EXAMPLE_SECONDS`` (SIGALRM). Deterministic (``derandomize``, no example database):
810 examples (300 overrides, 200 files, 100 generate, 80 eval, 40 convert, 30 serve, 60 checkpoint configs) in
about 70 s on 2 shared CPU cores, torch on one thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
import signal
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from causal_rcm.cli import Number, Numbers, cli
from causal_rcm.cli import _run as run_main
from causal_rcm.data.text import VOCABULARY
from causal_rcm.data.video import write_gif
from causal_rcm.limits import Range
from causal_rcm.models.wan import CausalWanConfig
from causal_rcm.runs import recipe_config, recipe_names
from causal_rcm.spec import PipelineSpec

from .checkpoints import make_checkpoint
from .conftest import FAST

EXAMPLE_SECONDS = 60
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
LONG = "x" * 100_000
PROMPT = "a red circle moves left"


# ------------------------------------------------------------------ running the CLI in this process
class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS (a BaseException: no ``except Exception`` of the code under test eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    args: list[str]
    code: int
    out: str
    err: str


def run(args: list[str]) -> Outcome:
    """``causal-rcm ARGS`` in this process (``cli._run``, what ``main`` calls): its exit code, stdout and stderr.
    An exception that escapes it is a traceback a user would see: it fails the test as it is."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(EXAMPLE_SECONDS):
        code = run_main(args)
    return Outcome(args, code, out.getvalue(), err.getvalue())


def assert_clean(result: Outcome, *, invalid: bool = False, names: tuple[str, ...] = ()) -> None:
    """Exit 0, or one ``error:`` line and a non-zero exit; ``invalid`` inputs never exit 0, and the line names one of
    ``names`` (if given)."""
    shown = [shorten(a) for a in result.args]
    assert "Traceback" not in result.err + result.out, shown
    if result.code == 0:
        assert not invalid, f"an invalid input was accepted: {shown}"
        return
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (shown, result.err[-2000:])
    assert len(lines[0]) <= 700, f"the error line echoes a long input: {lines[0][:200]}..."
    if invalid and names:
        assert any(name in lines[0] for name in names), (shown, lines[0], names)


def shorten(text: str) -> str:
    return text if len(text) <= 60 else f"{text[:60]}...({len(text)})"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    (root / "afile").write_text("not a checkpoint")
    (root / "afolder").mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (6, 20, 28, 3), dtype=np.uint8)
    Image.fromarray(frames[0]).save(root / "first.png")
    write_gif(root / "clip.gif", frames)
    return {
        # text_len 24: the shapes world's held-out captions (up to 19 tokens) that `eval` samples
        "root": root, "causal": make_checkpoint(root / "causal", text_len=24),
        "bidirectional": make_checkpoint(root / "bi", causal=False, steps=2, solver="euler", guidance=3.0, text_len=24),
        "missing": root / "nowhere", "file": root / "afile", "folder": root / "afolder",
        "image": root / "first.png", "video": root / "clip.gif",
    }


# ------------------------------------------------------------------ values: (text or JSON value, known invalid?)
Value = tuple[Any, bool]

GARBAGE = ["abc", "", " ", "é✓🙂", "1.2.3", "0x1f", "None", "[]", LONG]  # no number, bool or choice reads them


@dataclass(frozen=True)
class Key:
    """A config field: its dotted key, Python type, optional-ness and declared range."""

    name: str
    kind: Any  # int, float, bool, str or tuple
    item: Any  # a tuple's item type
    length: int | None  # tuple[int, int, int]: 3; tuple[int, ...]: None
    optional: bool
    allowed: Range | None


def keys_of(obj: Any, prefix: str = "") -> list[Key]:
    """Every field of dataclass ``obj`` (and of the dataclasses in it, but those left None) as a :class:`Key`."""
    found = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += keys_of(value, f"{prefix}{f.name}.")
            continue
        kind, args, optional = hints[f.name], (), False
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            optional, kind = True, next(a for a in typing.get_args(kind) if a is not type(None))
        if dataclasses.is_dataclass(kind):  # a section this recipe (or checkpoint) does not have
            continue
        if typing.get_origin(kind) is tuple:
            args, kind = typing.get_args(kind), tuple
        length = None if not args or args[-1] is Ellipsis else len(args)
        found.append(Key(prefix + f.name, kind, args[0] if args else None, length, optional, f.metadata.get("range")))
    return found


def mostly(valid: st.SearchStrategy[Value], invalid: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
    """``valid`` two times in three: most examples then reach past the first check."""
    return st.integers(0, 2).flatmap(lambda i: valid if i < 2 else invalid)


def numbers(kind: type, allowed: Range | None, cap: float | None = None) -> st.SearchStrategy[Value]:
    """Valid numbers of ``kind`` in ``allowed`` (at most ``cap``: run time), its ends, and invalid ones past them."""
    lo = None if allowed is None else allowed.lo
    hi = None if allowed is None else allowed.hi
    above = allowed is not None and allowed.above
    top = hi if cap is None else cap if hi is None else min(hi, cap)
    if kind is int:
        start = -(10**6) if lo is None else int(lo) + above
        stop = start + 10**6 if top is None else int(top)
        valid = st.integers(start, stop) | st.sampled_from([start, stop])
        bad = [v for v in (None if lo is None else start - 1, None if hi is None else int(hi) + 1) if v is not None]
    else:
        start = -1e6 if lo is None else lo
        stop = 1e6 if top is None else top
        valid = st.floats(start, stop, exclude_min=above) | st.sampled_from([stop] + ([] if above else [start]))
        bad = [v for v in (None if lo is None else lo - 0.5, lo if above else None, None if hi is None else hi + 0.5)
               if v is not None] + [math.nan, math.inf, -math.inf]
    valid = valid.map(lambda v: (v, False))
    return mostly(valid, st.sampled_from([(v, True) for v in bad])) if bad else valid


def key_values(key: Key, *, as_json: bool, cap: float | None = None) -> st.SearchStrategy[Value]:
    """Values for ``key``: Python/JSON values (``as_json``) or override text, each with whether it is invalid."""
    kind, allowed = key.kind, key.allowed
    if kind is tuple:  # items as the item type's values; an override joins them with commas (skipping empty ones)
        items = st.lists(key_values(Key(key.name, key.item, None, None, False, allowed), as_json=as_json, cap=cap), max_size=4)
        if not as_json:
            items = items.filter(lambda vs: all(str(v).strip() for v, _ in vs))

        def join(vs: list[Value]) -> Value:
            bad = any(b for _, b in vs) or (key.length is not None and len(vs) != key.length)
            return ([v for v, _ in vs], bad) if as_json else (",".join(str(v) for v, _ in vs), bad)

        value = items.map(join)
    elif kind is bool:
        value = st.sampled_from([(True, False), (False, False)])
        if not as_json:
            value = st.sampled_from([("true", False), ("false", False), ("1", False), ("no", False), ("maybe", True), ("2", True)])
    elif kind in (int, float):
        value = numbers(kind, allowed, cap)
        if not as_json:
            value = value.map(lambda v: (repr(v[0]) if isinstance(v[0], float) else str(v[0]), v[1]))
    elif allowed is not None and allowed.choices:
        value = st.sampled_from([(c, False) for c in allowed.choices]) | st.sampled_from([(g, True) for g in GARBAGE])
    else:
        value = st.text(max_size=20).map(lambda s: (s, False)) | st.sampled_from([(LONG, False)])
    if as_json:  # another JSON type than the field's
        others = {int: ["5", 5.5, True, [], {"a": 1}], float: ["1.0", True, [1.0]], bool: [1, 0, "true"],
                  str: [5, True, ["a"], {"a": "b"}], tuple: [5, "1,2", {"a": 1}]}[kind]
        value = value | st.sampled_from([(v, True) for v in others]) | st.just((None, not key.optional))
    elif kind is not str:
        value = value | st.sampled_from([(g, True) for g in GARBAGE if kind is not tuple or g.strip("[] ")]
                                        + ([("1e400", True), ("9" * 5000, True), ("nan", True)] if kind is int else []))
    return value


def config_keys(recipe: str) -> list[Key]:
    """The keys a run's config has, but ``recipe``: the command's argument (a file may only repeat it)."""
    return [k for k in keys_of(recipe_config(recipe)) if k.name != "recipe"]


# ------------------------------------------------------------------ known bad inputs (the issue's, and those found)
BAD = [
    (["train", "teacher", "--print-config", "model.num_heads=0"], "model.num_heads must be in [1, 1024], got 0"),
    (["train", "teacher", "--print-config", "model.dim=100", "model.num_heads=3"], "dim 100 is not divisible by num_heads 3"),
    (["train", "teacher", "--print-config", "train.batch_size=0"], "train.batch_size must be in [1, 65536], got 0"),
    (["train", "teacher", "--print-config", "optim.lr=-1e-4"], "optim.lr must be in (0, 1], got -0.0001"),
    (["train", "teacher", "--print-config", "objective.caption_dropout=1.5"], "objective.caption_dropout must be in [0, 1]"),
    (["train", "teacher", "--print-config", "optim.beta2=nan"], "optim.beta2 must be a finite number, got nan"),
    (["train", "teacher", "--print-config", "train.steps=-1"], "train.steps must be in [0, inf), got -1"),
    (["train", "teacher", "--print-config", "train.steps=1e400"], "train.steps: cannot read '1e400' as int"),
    (["train", "teacher", "--print-config", "train.steps=-1e-3"], "train.steps: cannot read '-1e-3' as int"),
    (["train", "teacher", "--print-config", "--config", "{list}"], "must hold a JSON object of sections, not a list"),
    (["train", "teacher", "--print-config", "--config", "{typed}"], "train.steps must be an integer, got '10'"),
    (["train", "teacher", "--print-config", "--config", "{deep}"], "nests [] or {} too deeply"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--seconds", "nan"], "'--seconds': nan is not a finite number"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--seconds", "inf"], "'--seconds': inf is not a finite number"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--seconds", "1e6"], "more than the 4 GiB bound"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--steps", "1000000"], "not in the range 1<=x<=1000"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--times", "nan"], "holds a number that is not finite"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--switch", "nan", PROMPT], "--switch time 'nan' must be"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--switch", "9s", PROMPT], "past the end of the video"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--window", "1000000000"], "--window must be at most 1023"),
    (["generate", "-c", "{causal}", "-p", PROMPT + " circle" * 20000, "-o", "{out}"], "(140023 characters) has 20006 tokens"),
    (["generate", "-c", "{causal}", "-p", "dragon " * 20000, "-o", "{out}"], "vocabulary: 'dragon' (known"),
    (["generate", "-c", "{bidirectional}", "-p", PROMPT, "-o", "{out}", "--mode", "frame"], "--mode frame streams a causal"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["generate", "-c", "{causal}", "-p", PROMPT, "-o", "{out}", "--device", "cuda:7"], "--device: device 'cuda:7'"),
    (["eval", "-c", "{causal}", "--videos", "0"], "'--videos' / '-n': 0 is not in the range 1<=x<=1024"),
    (["eval", "-c", "{causal}", "--steps", "-2"], "'--steps': -2 is not in the range 1<=x<=1000"),
    (["eval", "-c", "{causal}", "--steps", "0"], "'--steps': 0 is not in the range 1<=x<=1000"),
    (["eval", "-c", "{causal}", "--drift", "-1"], "'--drift': -1 is not in the range 0<=x<=32"),
    (["eval", "-c", "{bidirectional}", "-n", "1", "--steps", "1", "--drift", "2"], "--drift needs a causal checkpoint"),
    (["eval", "-c", "{causal}", "--stream-seconds", "nan"], "'--stream-seconds': nan is not a finite number"),
    (["eval", "-c", "{causal}", "-n", "1", "--steps", "1", "--switch", "0.5s"], "at least one training length (1 s)"),
    (["eval", "-c", "{causal}", "-n", "1", "--steps", "1", "--switch", "1s", "--switch", "1.5s"], "at least one training length"),
    (["eval", "-c", "{causal}", "--switch", "soon"], "--switch time 'soon' is not like '4s'"),
    (["eval", "-c", "{bidirectional}", "-n", "1", "--steps", "1", "--sink", "1"], "--context and --kv-int8 need a causal"),
    (["eval", "-c", "{bidirectional}", "-n", "1", "--steps", "1", "--context", "noisy"], "--context and --kv-int8 need a causal"),
    (["eval", "-c", "{causal}", "--context", "dirty"], "'--context': 'dirty' is not one of"),
    (["eval", "-c", "{bidirectional}", "-n", "1", "--steps", "1", "--switch", "2s"], "--switch needs a causal checkpoint"),
    (["experiment", "stream-ablation", "-c", "{causal}", "--trained", "nolabel"], "--trained takes LABEL=CKPT"),
    (["experiment", "stream-ablation", "-c", "{causal}", "--windows", "8,x"], "--windows: non-negative integers"),
    (["experiment", "stream-ablation", "-c", "{bidirectional}"], "needs a causal one"),
    (["serve", "-c", "{causal}", "--port", "70000"], "'--port': 70000 is not in the range 0<=x<=65535"),
    (["eval", "world", "-c", "{causal}", "--shards", "{folder}", "--horizon", "0"], "'--horizon': 0 is not in the range x>=1"),
    (["eval", "world", "-c", "{causal}@1,0", "--shards", "{folder}"], "steps are integers in 1..1000 separated by commas"),
    (["eval", "world", "-c", "{causal}", "--shards", "{folder}"], "has no manifest.json"),
    (["eval", "world", "-c", "{causal}", "--shards", "{missing}", "--start", "-1"], "'--start': -1 is not in the range x>=0"),
    (["play", "-c", "{causal}", "--port", "70000"], "'--port': 70000 is not in the range 0<=x<=65535"),
    (["play", "-c", "{causal}"], "was trained without actions, so keys cannot steer it"),
    (["play", "-c", "{missing}"], "does not exist"),
    (["convert", "{causal}", "{root}/c", "--to", "causal-rcm", "--window", "0"], "'--window': 0 is not in the range x>=1"),
    (["train", "teacher", "--print-config", "x" * 100_000 + "=1"], "(100000 characters): config has recipe"),
    (["train", "teacher", "--print-config", "recipe=sf-dmd"], "recipe is the command's RECIPE argument"),
    (["eval", "-c", "{causal}", "-n", "1", "--steps", "1", "--json", "{folder}"], "is a folder; give a file name"),
    (["quickstart", "--minutes", "nan"], "'--minutes': nan is not a finite number"),
    (["quickstart", "--minutes", "-1"], "'--minutes': -1.0 is not in the range 0<x<=10080"),
    (["experiment", "init-ablation", "-t", "{causal}", "--dmd-teacher", "{bidirectional}", "--jobs", "0"], "'--jobs' / '-j'"),
    (["experiment", "cm-convergence", "-t", "{causal}", "--threshold", "1.5"], "'--threshold': 1.5 is not in the range"),
    (["experiment", "cm-convergence", "-t", "{causal}", "--eval-every", "0"], "'--eval-every': 0 is not in the range x>=1"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[shorten(" ".join(a))[:70] for a, _ in BAD])
def test_a_known_bad_input_is_one_clear_line(world, args, message):
    root = world["root"]
    (root / "list.json").write_text("[1, 2]")
    (root / "typed.json").write_text('{"train": {"steps": "10"}}')
    (root / "deep.json").write_text("[" * 100_000)
    fill = {**{k: str(v) for k, v in world.items()}, "out": str(root / "v.gif"),
            **{name: str(root / f"{name}.json") for name in ("list", "typed", "deep")}}
    result = run([a.format(**fill) if "{" in a and len(a) < 100 else a for a in args])
    assert_clean(result, invalid=True)
    assert message in result.err, result.err


def test_train_steps_0_exports_the_starting_model_and_says_so(tmp_path):
    result = run(["train", "teacher", *FAST, "train.steps=0", "train.eval_videos=0", f"train.out_dir={tmp_path}"])
    assert result.code == 0 and "not trained (train.steps=0): exported a randomly initialised model" in result.out
    assert "trained 0 steps" not in result.out


# ------------------------------------------------------------------ overrides and config files
MALFORMED = [  # (override, known invalid, what its error names)
    ("train.nope=1", True, "train.nope"), ("nope=1", True, "nope"), ("train=1", True, "train is a section"),
    ("=1", True, "'=1'"), ("train.steps", True, "'train.steps'"), (" =1", True, "' =1'"),
    ("train.steps.x=1", True, "train.steps is a value"), ("é✓.🙂=1", True, "é✓"), (LONG + "=1", True, "xxxxxxxx"),
    ("recipe=sf-dmd", True, "recipe is the command's RECIPE argument"),
]


@st.composite
def overrides(draw) -> tuple[str, list[tuple[str, bool, str, Any]]]:
    """A recipe and 1-2 override items, and at times a malformed one: (text, invalid, key named by its error, the value a valid item sets)."""
    recipe = draw(st.sampled_from(recipe_names()))
    keys = config_keys(recipe)
    items = []
    for key in draw(st.permutations(keys))[: draw(st.integers(1, 2))]:
        text, invalid = draw(key_values(key, as_json=False))
        items.append((f"{key.name}={text}", invalid, key.name, text))
    malformed = draw(st.sampled_from([None, *MALFORMED]))
    if malformed is not None:
        items.insert(draw(st.integers(0, len(items))), (*malformed, None))
    return recipe, items


@settings(max_examples=300, **SETTINGS)
@given(overrides())
def test_overrides_are_applied_or_refused_in_one_line(drawn):
    recipe, items = drawn
    result = run(["train", recipe, "--print-config", *(text for text, *_ in items)])
    invalid = any(bad for _, bad, *_ in items)
    assert_clean(result, invalid=invalid, names=tuple(name for _, bad, name, _ in items if bad and name))
    if result.code == 0:  # nothing valid is silently ignored: each value shows in the resolved config
        printed = json.loads(result.out)
        for text, _, name, value in items:
            shown = printed
            for part in name.split("."):
                shown = shown[part]
            key = next(k for k in config_keys(recipe) if k.name == name)
            assert shown == _parsed(value, key), (text, shown)


def _parsed(text: str, key: Key) -> Any:
    """What an override's valid text means (the independent reading the printed config must agree with)."""
    if key.optional and text.lower() in ("none", "null"):
        return None
    if key.kind is tuple:
        return [int(v) for v in text.strip("()[] ").split(",") if v.strip()]
    if key.kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    if key.kind is int:
        return int(float(text)) if "e" in text.lower() or "." in text else int(text)
    if key.kind is float:
        return float(text)
    return text.strip()


RAW_FILES = [  # (content, invalid): files that are no JSON object of sections, or are and read well
    ("[1, 2]", True), ("5", True), ("null", True), ('"teacher"', True), ("", True), ("{", True), (b"\xff\xfe\x00", True),
    ("[" * 100_000, True), ('{"a":' * 3000 + "1" + "}" * 3000, True), ('{"recipe": "sf-dmd"}', None),
    ('{"extends": "nowhere.json"}', True), ('{"extends": 5}', True), ('{"extends": "config.json"}', True),
    ('{"train": 5}', True), ('{"nope": {}}', True), ('{"train": {"nope": 1}}', True), ('{"train": {"steps": {"a": 1}}}', True),
    ('{"about": "a note", "train": {}}', False), ("{}", False), ('{"optim": {"lr": NaN}}', True),
    ('{"optim": {"lr": Infinity}}', True), ('{"train": {"steps": 1e3}}', True),
]


@st.composite
def config_files(draw) -> tuple[str, bytes | str, bool | None, tuple[str, ...]]:
    """A recipe, a config file's content, whether it is invalid (None: depends) and the keys its error names."""
    recipe = draw(st.sampled_from(recipe_names()))
    if draw(st.integers(0, 3)) == 0:
        content, invalid = draw(st.sampled_from(RAW_FILES))
        return recipe, content, invalid, ()
    sections: dict[str, Any] = {}
    invalid, names = False, []
    for key in draw(st.permutations(config_keys(recipe)))[: draw(st.integers(1, 4))]:
        value, bad = draw(key_values(key, as_json=True))
        *path, last = key.name.split(".")
        target = sections
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
        invalid |= bad
        names += [key.name] * bad
    return recipe, json.dumps(sections), invalid, tuple(names)


@settings(max_examples=200, **SETTINGS)
@given(config_files())
def test_config_files_are_read_or_refused_in_one_line(world, drawn):
    recipe, content, invalid, names = drawn
    path = world["root"] / "config.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    assert_clean(run(["train", recipe, "--config", str(path), "--print-config"]), invalid=bool(invalid), names=names)


# ------------------------------------------------------------------ command options, walked from click
COST_CAPS = {"seconds": 2.0, "stream_seconds": 2.0, "steps": 2, "videos": 2, "drift": 2, "window": 8, "scale": 2, "sink": 4,
             "recache_every": 4}
# eval --switch on the test checkpoint (8-frame clips at 8 fps): a switch needs a second of its own on either side
EVAL_SWITCHES = st.sampled_from([("1s", False), ("1.5", False), ("0.5s", True), ("nan", True), ("x", True), ("-1s", True), ("", True)])
DEVICES = mostly(st.sampled_from([("cpu", False), ("auto", False)]), st.sampled_from(
    [("tpu", True), ("cuda:7", True), ("meta", True), ("", True), ("cpu:x", True), ("cuda", not torch.cuda.is_available())]))
PROMPTS = (st.lists(st.sampled_from([w for w in VOCABULARY if w.isalpha()]), min_size=0, max_size=8).map(" ".join)
           | st.sampled_from([PROMPT, "a red dragon", "", "é✓🙂", LONG, PROMPT + " circle" * 30]) | st.text(max_size=30))
SWITCH_TIMES = st.sampled_from(["0.5s", "1s", "3f", "0", "nan", "-1s", "inf", "1e9s", "x", "2.5f", ""])


def path_values(world: dict[str, Path], name: str, command: str) -> st.SearchStrategy[Value]:
    """The checkpoint, output and JSON paths a command's path option or argument may get."""
    root = world["root"]
    if name in ("checkpoint", "src"):
        good = ["bidirectional"] if command == "serve" else ["causal", "bidirectional"]
        return mostly(st.sampled_from([(str(world[g]), False) for g in good]), st.sampled_from(
            [(str(world["missing"]), True), (str(world["file"]), True), (str(world["folder"]), True)]))
    if name in ("image", "video"):  # a good file still depends on the rest: a causal checkpoint, --extend with --video
        return mostly(st.just((str(world[name]), None)), st.sampled_from(
            [(str(world["missing"]), True), (str(world["file"]), True), (str(world["folder"]), True)]))
    suffixes = {"out": [".gif", ".mp4"], "json_out": [".json"], "dst": ["", ".safetensors", ".pth"]}[name]
    good = [(str(root / "out" / f"result{s}"), False) for s in suffixes]
    bad = [(str(world["file"] / "under-a-file.gif"), True)] + ([(str(world["folder"]), True)] if name != "dst" else [])
    if name == "out":
        bad.append((str(root / "v.avi"), True))
    return mostly(st.sampled_from(good), st.sampled_from(bad))


def option_values(param: click.Parameter, world: dict[str, Path], command: str) -> st.SearchStrategy[Value]:
    """Values for one click parameter, from its type (range, choices) and, for strings and paths, its meaning."""
    kind, name, cap = param.type, param.name, COST_CAPS.get(param.name)
    if isinstance(kind, click.Path):
        return path_values(world, name, command)
    if name == "device":
        return DEVICES
    if name == "prompt":
        return PROMPTS.map(lambda p: (p, False))
    if name == "switches":
        return EVAL_SWITCHES
    if isinstance(kind, (click.IntRange, Number)):
        allowed = Range(kind.min, kind.max, kind.min_open)
        numeric = numbers(int if isinstance(kind, click.IntRange) else float, allowed, cap)
        return mostly(numeric.map(lambda v: (repr(v[0]) if isinstance(v[0], float) else str(v[0]), v[1])), st.sampled_from(
            [(g, True) for g in GARBAGE] + [("1e400", True), ("10" * 20, kind.max is not None)]))
    if isinstance(kind, click.Choice):
        return mostly(st.sampled_from([(c, False) for c in kind.choices]), st.sampled_from([(g, True) for g in GARBAGE]))
    if isinstance(kind, Numbers):
        return st.sampled_from([("0.75", False), ("0.9,0.5", False), ("", False), ("0.5,0.75", None), ("2", None),
                                ("nan", True), ("0.5,abc", True), ("inf", True), ("0.5," * 1500, True)])
    return st.text(max_size=20).map(lambda s: (s, None)) | st.sampled_from([("localhost", None), (LONG, None)])


@st.composite
def command_lines(draw, world: dict[str, Path], command: str) -> tuple[list[str], bool]:
    """``causal-rcm COMMAND ...`` with every required parameter and a random subset of the others (a group's: its
    default command's, as `eval -c CKPT` is `eval shapes -c CKPT`)."""
    found = cli.commands[command]
    params = (found.commands[found.default] if isinstance(found, click.Group) else found).params
    args, invalid = [command], False
    for param in params:
        if param.name in ("compile_blocks", "help"):
            continue
        if isinstance(param, click.Argument):
            value, bad = draw(path_values(world, param.name, command))
            args.append(value)
            invalid |= bad
            continue
        if not param.required and not draw(st.booleans()):
            continue
        if param.is_flag:
            args.append(draw(st.sampled_from(param.opts + param.secondary_opts)))
            continue
        for _ in range(draw(st.integers(1, 2)) if param.multiple else 1):
            if param.nargs == 2:  # --switch TIME PROMPT
                args += [param.opts[0], draw(SWITCH_TIMES), draw(PROMPTS)]
                continue
            value, bad = draw(option_values(param, world, command))
            args += [param.opts[0], value]
            invalid |= bool(bad)
    return args, invalid


@pytest.mark.parametrize("command, examples", [("generate", 100), ("eval", 80), ("convert", 40), ("serve", 30)])
def test_command_options_run_or_are_refused_in_one_line(world, command, examples):
    @settings(max_examples=examples, **SETTINGS)
    @given(command_lines(world, command))
    def check(drawn):
        args, invalid = drawn
        shutil.rmtree(world["root"] / "out", ignore_errors=True)
        assert_clean(run(args), invalid=invalid)

    check()


# ------------------------------------------------------------------ a checkpoint's config.json
CHECKPOINT_KEYS = [
    *(Key(f"model.{k.name}", k.kind, k.item, k.length, k.optional, k.allowed) for k in keys_of(CausalWanConfig())),
    *(Key(f"pipeline.{k.name}", k.kind, k.item, k.length, k.optional, k.allowed)
      for k in keys_of(PipelineSpec.from_dict(json.loads(json.dumps(
          {"resolution": 32, "num_frames": 8, "frames_per_chunk": 2, "causal": True, "codec": {}, "text": {}}))))),
]


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(CHECKPOINT_KEYS).flatmap(lambda k: st.tuples(st.just(k), key_values(k, as_json=True, cap=64))),
       st.sampled_from(["generate", "eval"]))
def test_a_checkpoint_config_is_read_or_refused_in_one_line(world, drawn, command):
    key, (value, invalid) = drawn
    folder = world["root"] / "edited"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(world["causal"], folder)
    config = json.loads((folder / "config.json").read_text())
    *path, last = key.name.split(".")
    target = config
    for part in path:
        target = target.setdefault(part, {})
    target[last] = value
    (folder / "config.json").write_text(json.dumps(config))
    args = (["generate", "-c", str(folder), "-p", PROMPT, "--steps", "1", "--seconds", "1", "-o", str(world["root"] / "e.gif")]
            if command == "generate" else ["eval", "-c", str(folder), "-n", "1", "--steps", "1", "--device", "cpu"])
    assert_clean(run(args), invalid=invalid, names=(last,))
