import os
import subprocess
import sys
from pathlib import Path

import pytest


def _console_script() -> list[str]:
    exe = Path(sys.executable).with_name("causal-rcm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "causal_rcm.cli"]


def test_help_lists_commands_and_version_prints():
    help_ = subprocess.run(_console_script() + ["--help"], capture_output=True, text=True)
    assert help_.returncode == 0
    assert "convert" in help_.stdout
    version = subprocess.run(_console_script() + ["--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("causal-rcm, version ")


def test_unknown_command_fails_with_usage():
    result = subprocess.run(_console_script() + ["frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "No such command 'frobnicate'" in result.stderr


@pytest.mark.parametrize("name", ["attention", "jvp", "train", "scm-step", "stream"])
def test_gpu_benchmarks_say_they_need_a_gpu(name):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    result = subprocess.run(_console_script() + ["bench", name], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"bench {name} needs a CUDA GPU" in result.stderr


def test_help_lists_every_command():
    result = subprocess.run(_console_script() + ["--help"], capture_output=True, text=True)
    for command in ("quickstart", "train", "eval", "generate", "serve", "play", "convert", "bench", "experiment"):
        assert command in result.stdout


def test_eval_without_a_command_is_the_shapes_worlds_and_eval_world_is_there():
    shapes = subprocess.run(_console_script() + ["eval", "-c", "no/such/checkpoint", "--drift", "2"], capture_output=True, text=True)
    assert shapes.returncode == 2 and shapes.stderr == "error: checkpoint no/such/checkpoint does not exist\n"
    world = subprocess.run(_console_script() + ["eval", "world", "--help"], capture_output=True, text=True)
    assert world.returncode == 0 and "--no-action-model" in world.stdout and "--horizon" in world.stdout
    group = subprocess.run(_console_script() + ["eval", "--help"], capture_output=True, text=True)
    assert group.returncode == 0 and "shapes" in group.stdout and "world" in group.stdout


_WORKER = """
import atexit, sys
atexit.register(lambda: print("exit handler ran", flush=True))
class Finalised:
    def __del__(self):
        print("finalised", flush=True)
keep = Finalised()
sys.argv = ["causal-rcm", "train", "no-such-recipe"]
from causal_rcm.cli import main
main()
"""


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_torchrun_workers_run_exit_handlers_but_skip_finalisation(world_size):
    # gloo's worker threads can abort a torchrun worker during interpreter finalisation (cli._leave_process_group_worker)
    env = {**os.environ, "WORLD_SIZE": world_size}
    result = subprocess.run([sys.executable, "-c", _WORKER], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    assert "no-such-recipe" in result.stderr
    assert "exit handler ran" in result.stdout
    assert ("finalised" in result.stdout) == (world_size == "1")
