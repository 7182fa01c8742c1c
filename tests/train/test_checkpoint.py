"""The trainer's checkpoint (a folder of DCP shards and meta.pt) is whole or absent: stopped at any step of its save, killed with SIGKILL while it
saves, the loader sees the old checkpoint or the new one, and the next run removes what the dead one left.

The steps themselves (every file-system call and writer of ``models.adapters.write_whole``) are stopped by
``tests/models/test_checkpoint_atomic.py``'s ``stopped_at``, which also covers the model folders and files."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import causal_rcm
from causal_rcm.runs import load_config, train
from causal_rcm.train.checkpoint import load_sharded, read_meta, save_sharded
from causal_rcm.train.parallel import DistEnv

from ..conftest import FAST
from ..models.test_checkpoint_atomic import Killed, dead_pid, stopped_at  # noqa: F401 (dead_pid is a fixture)


WORLD = DistEnv()  # one process: the sharded format is the same, with one shard per tensor


def test_a_save_removes_what_dead_processes_left_and_only_that(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = {pid: tmp_path / f".checkpoint.tmp-{host}-{pid}-0123abcd" for pid in (dead.pid, os.getpid())}
    for folder in left.values():
        folder.mkdir()
        (folder / "__0_0.distcp").write_bytes(b"half a checkpoint")
    save_sharded(tmp_path / "checkpoint", training_state(3)[0], training_state(3)[1], WORLD)
    assert read_meta(tmp_path / "checkpoint") == training_state(3)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint", left[os.getpid()].name])  # ours may be in flight


def training_state(step: int) -> tuple[dict, dict]:
    """What the trainer saves, in small: tensors and meta that say which save they belong to."""
    return {"models": {"w": torch.full((64, 64), float(step))}}, {"step": step, "rng": [step] * 3}


def load(path: Path) -> tuple[dict, dict]:
    """The checkpoint at ``path`` as Trainer._resume reads it."""
    meta = read_meta(path)
    tensors = training_state(-1)[0]
    load_sharded(path, tensors, WORLD)
    return tensors, meta


def assert_whole(tensors: dict, meta: dict) -> None:
    assert torch.equal(tensors["models"]["w"], training_state(meta["step"])[0]["models"]["w"]) and meta["rng"] == [meta["step"]] * 3


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "failed"])
def test_a_training_checkpoint_stopped_at_any_step_is_the_old_or_the_new(tmp_path, monkeypatch, dead_pid, killed):
    path = tmp_path / "run" / "checkpoint"
    for had_old in (True, False):
        for k in itertools.count(1):
            shutil.rmtree(path.parent, ignore_errors=True)
            path.parent.mkdir()
            if had_old:
                save_sharded(path, *training_state(1), WORLD)
            with stopped_at(k, monkeypatch, dead_pid, killed=killed) as fired:
                try:
                    save_sharded(path, *training_state(2), WORLD)
                except BaseException:  # Killed, OSError, or DCP's CheckpointException (a BaseException) wrapping either
                    assert fired
            if read_meta(path) is not None:
                tensors, meta = load(path)
                assert_whole(tensors, meta)
                assert meta["step"] in ((1, 2) if had_old else (2,)), f"stopped at step {k}"
            else:
                assert not had_old, f"stopped at step {k}: the old checkpoint is gone"
            save_sharded(path, *training_state(3), WORLD)  # the next run's first save removes what the stopped one left
            assert [p.name for p in path.parent.iterdir()] == [path.name]
            if not fired:
                break
        assert k > 4, "a save has more steps than that: are they all stopped?"


CHILD = """
import itertools, random, sys, time, torch
from pathlib import Path
from causal_rcm.train.checkpoint import save_sharded
from causal_rcm.train.parallel import DistEnv

for step in itertools.count():  # 16 MB a save, so that a kill lands inside one
    save_sharded(Path(sys.argv[1]), {"models": {"w": torch.full((2048, 2048), float(step))}}, {"step": step}, DistEnv())
    if step == 0:
        print("saved", flush=True)
    time.sleep(random.uniform(0.0, 0.02))
"""


def test_kill_9_while_saving_leaves_a_whole_training_checkpoint(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(Path(causal_rcm.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    paths = [tmp_path / f"run{i}" / "checkpoint" for i in range(3)]
    children = []
    try:
        for path in paths:
            path.parent.mkdir()
            children.append(subprocess.Popen([sys.executable, "-W", "ignore", "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env))
        for child in children:
            assert child.stdout.readline() == b"saved\n"
        for path, child in zip(paths, children):
            while not any(path.parent.glob(".checkpoint.tmp-*")):  # a save has begun: kill inside it, or just after
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))
            child.kill()
            child.wait()
            meta = read_meta(path)
            tensors = {"models": {"w": torch.zeros(2048, 2048)}}
            load_sharded(path, tensors, WORLD)
            assert torch.all(tensors["models"]["w"] == meta["step"]), f"{path}: weights of another save than its step"
    finally:
        for child in children:
            child.kill()
            child.wait()
    for path in paths:
        save_sharded(path, {"w": torch.zeros(1)}, {"step": -1}, WORLD)  # the next run's save
        assert [p.name for p in path.parent.iterdir()] == ["checkpoint"]


def test_the_next_run_resumes_and_removes_what_a_killed_run_left(tmp_path, dead_pid):
    out = tmp_path / "run"
    common = FAST + ["train.eval_videos=0", "train.ckpt_every=1", "train.progress=false", f"train.out_dir={out}"]
    train(load_config("teacher", None, [*common, "train.steps=1"]))
    # What a run killed in its second save and in its export leaves: half a checkpoint, half a model folder,
    # and the previous model set aside (its writer dead) while the half-written one never replaced it.
    host = socket.gethostname()
    tag = f"{host}-{dead_pid}-0123abcd"
    shutil.copytree(out / "checkpoint", out / f".checkpoint.tmp-{tag}")
    (out / f".checkpoint.tmp-{tag}" / "meta.pt").write_bytes(b"half")
    (out / f".model.tmp-{tag}").mkdir()
    (out / f".model.tmp-{tag}" / "config.json").write_text("{")
    os.replace(out / "model", out / f".model.old-{tag}")
    summary = train(load_config("teacher", None, [*common, "train.steps=2"]))
    assert summary["steps"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # resumed at step 1, not started over
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert (out / "model" / "model.safetensors").exists()
