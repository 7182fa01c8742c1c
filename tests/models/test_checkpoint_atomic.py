"""Checkpoints are whole or absent: a save stopped at any step leaves the old checkpoint or the new one."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import safetensors.torch
import torch

import causal_rcm
from causal_rcm.errors import CheckpointError
from causal_rcm.models import adapters
from causal_rcm.models.adapters import load_checkpoint, load_model, save_checkpoint, save_model

from ..conftest import random_model, small_config


class Killed(BaseException):
    """The process died here: no handler of the code under test runs to completion after it."""


# Where a save can be stopped: every file-system step, and every writer, which leaves half a file.
STEPS = [(os, name) for name in ("mkdir", "replace", "rename", "unlink", "rmdir", "fsync")]
WRITERS = [(safetensors.torch, "save_file", 1), (torch, "save", 1), (Path, "write_text", 0)]  # (owner, name, file argument)


@pytest.fixture(autouse=True)
def shapes_built_once(monkeypatch):
    """The loader checks tensor shapes against a model built on "meta": build one per config, not per load."""
    built = {}

    def expected_shapes(config):
        if repr(config) not in built:
            built[repr(config)] = build(config)
        return built[repr(config)]

    build = adapters._expected_shapes
    monkeypatch.setattr(adapters, "_expected_shapes", expected_shapes)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@contextmanager
def stopped_at(k: int, monkeypatch, pid: int, *, killed: bool):
    """Stop the k-th step of what runs inside, in a process ``pid``: killed (every later step fails too) or
    failed (that step raises OSError, as on a full disk, and the code under test handles it)."""
    count = itertools.count(1)
    fired = []

    def stoppable(fn, file_arg=None):
        def step(*args, **kwargs):
            n = next(count)
            if n < k or (n > k and not killed):
                return fn(*args, **kwargs)
            if n == k:
                fired.append(n)
                if file_arg is not None:
                    fn(*args, **kwargs)
                    file = args[file_arg]
                    if isinstance(file, (str, os.PathLike)):  # a stream (DCP's writers) is left as written so far
                        os.truncate(file, os.path.getsize(file) // 2)
            raise Killed() if killed else OSError(28, "No space left on device (injected)")

        return step

    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: pid)
        for owner, name in STEPS:
            m.setattr(owner, name, stoppable(getattr(owner, name)))
        for owner, name, file_arg in WRITERS:
            m.setattr(owner, name, stoppable(getattr(owner, name), file_arg))
        yield fired


def read(path: Path, whole_model: bool = False) -> tuple | None:
    """(config, state) as ``load_checkpoint`` or ``load_model`` sees ``path``; None if not found."""
    try:
        if whole_model:
            model = load_model(path)
            return model.config, model.state_dict()
        return load_checkpoint(path)[:2]
    except CheckpointError as exc:
        if "not found" not in str(exc):
            raise
        return None


def same(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


@pytest.mark.parametrize("target, killed", [
    *(pytest.param(target, True, id=f"{target}-killed") for target in ("causal-rcm", "wan", "diffusers", "wan.safetensors", "wan.pth")),
    # One folder, one file: the same code serves the other layouts.
    *(pytest.param(target, False, id=f"{target}-failed") for target in ("causal-rcm", "wan.pth")),
])
def test_a_save_stopped_at_any_step_leaves_the_old_checkpoint_or_the_new(tmp_path, monkeypatch, dead_pid, target, killed):
    layout, _, suffix = target.partition(".")
    folder = tmp_path / "run"
    path = folder / (f"model.{suffix}" if suffix else "model")
    # One architecture, two checkpoints that differ in config (where the layout records eps) and weights.
    models = [random_model(small_config(num_layers=1, eps=eps), seed=seed) for seed, eps in ((0, 1e-6), (1, 1e-5))]
    old, new = (read(save_model(m, tmp_path / f"reference{i}" / path.name, layout)) for i, m in enumerate(models))
    for had_old in (True, False):
        for k in itertools.count(1):
            shutil.rmtree(folder, ignore_errors=True)
            if had_old:
                save_model(models[0], path, layout)
            with stopped_at(k, monkeypatch, dead_pid, killed=killed) as fired:
                try:
                    save_model(models[1], path, layout)
                except (Killed, OSError):
                    assert fired
            if not killed:  # a save that failed cleans up after itself
                assert not [p.name for p in folder.glob(".*.tmp-*")]
            with monkeypatch.context() as m:
                m.setattr(adapters, "_writer_alive", lambda temp: True)  # as if its writer still ran: read in place
                seen = read(path, whole_model=True)
            assert same(seen, old if had_old else None) or same(seen, new), f"stopped at step {k}"
            assert same(read(path), seen)  # its writer is dead: what was set aside is put back
            assert seen is None or path.exists()
            save_model(models[1], path, layout)  # the next save removes what the stopped one left
            assert [p.name for p in folder.iterdir()] == [path.name]
            if not fired:
                break
        assert k > (4 if suffix else 8), "a save has more steps than that: are they all stopped?"


def test_a_folder_holding_more_than_a_checkpoint_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"holds more than a checkpoint \(notes.txt\)"):
        save_model(random_model(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


CHILD = """
import itertools, json, random, sys, time, torch
from causal_rcm.models.adapters import save_checkpoint
from causal_rcm.models.wan import CausalWanConfig, CausalWanModel

path, config = sys.argv[1], json.loads(sys.argv[2])
state = CausalWanModel(CausalWanConfig(**config)).state_dict()
for generation in itertools.count():  # each save's identity is in its config (text_len) and in every weight
    tagged = CausalWanConfig(**{**config, "text_len": 8 + generation})
    save_checkpoint(tagged, {k: torch.full_like(v, generation) for k, v in state.items()}, path)
    if generation == 0:
        print("saved", flush=True)
    time.sleep(random.uniform(0.0, 0.05))  # a read retried whenever a save replaces the folder needs a pause to finish
"""


def assert_whole(path: Path, *loaders: bool) -> None:
    """``path`` loads (``from_pretrained`` or not), and its weights are those of the save its config names."""
    for config, state in (read(path, from_pretrained) for from_pretrained in loaders):
        generation = config.text_len - 8
        assert all(torch.all(v == generation) for v in state.values()), f"{path}: weights are not those of save {generation}"


def test_kill_9_at_random_moments_leaves_whole_checkpoints(tmp_path):
    rng = random.Random(0)
    config = small_config().to_dict()
    env = {**os.environ, "PYTHONPATH": str(Path(causal_rcm.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    paths = [tmp_path / f"model{i}" for i in range(3)]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(p), json.dumps(config)], stdout=subprocess.PIPE, env=env)
                for p in paths]
    try:
        for child in children:
            assert child.stdout.readline() == b"saved\n"
        for path, child in zip(paths, children):
            assert_whole(path, False)  # read while it saves
            time.sleep(rng.uniform(0.0, 0.1))
            child.kill()
            child.wait()  # reaped: its pid is dead
            assert_whole(path, False, True)
    finally:
        for child in children:
            child.kill()
            child.wait()
    save_checkpoint(small_config(), random_model().state_dict(), paths[0])  # removes what the killed saves left
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    for path in paths[1:]:
        assert_whole(path, False)
