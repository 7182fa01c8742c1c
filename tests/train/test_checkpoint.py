import os
import socket
import subprocess

import torch

from causal_rcm.train.checkpoint import atomic_torch_save


def test_atomic_torch_save_removes_what_dead_processes_left_and_only_that(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    left = {pid: tmp_path / f".checkpoint.pt.tmp-{host}-{pid}-0123abcd" for pid in (dead.pid, os.getpid())}
    for file in left.values():
        file.write_bytes(b"half a checkpoint")
    atomic_torch_save({"step": 3}, tmp_path / "checkpoint.pt")
    assert torch.load(tmp_path / "checkpoint.pt") == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", left[os.getpid()].name])  # ours may be in flight
