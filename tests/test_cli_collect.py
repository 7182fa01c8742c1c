"""`causal-rcm collect` as a user runs it: a summary line, and one clear line with a non-zero exit for bad input."""

from __future__ import annotations

import pytest

from causal_rcm.cli import main
from causal_rcm.data.shards import Manifest


def run_main(*args: str) -> int:
    """The console entry point in this process: its exit code (0 when it returns)."""
    try:
        main(list(args))
    except SystemExit as exit_:
        return exit_.code
    return 0


def test_collect_writes_shards_and_says_what_it_did(tmp_path, capsys):
    out = tmp_path / "shards"
    args = ("collect", "--env", "ALE/Pong-v5", "--policy", "agent", "--episodes", "2", "--max-steps", "12", "--size", "16",
            "--holdout", "0.5", "--out", str(out), "--no-progress")
    assert run_main(*args) == 0
    said = capsys.readouterr().out
    assert f"{out}: recorded 2 episodes (26 frames" in said and "1 train and 1 held-out shards, 26 frames" in said
    assert Manifest.read(out).env.id == "ALE/Pong-v5"
    assert run_main(*args) == 0 and "recorded 0 episodes (0 frames), 2 shards already whole" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--env", "ALE/Breakot-v5"], "error: unknown environment 'ALE/Breakot-v5': did you mean ALE/Breakout-v5?"),
    (["--episodes", "0"], "error: --episodes must be at least 1, got 0"),
    (["--size", "4"], "error: --size must lie in 16..256 pixels, got 4"),
    (["--out", "{file}/shards"], "error: cannot write to {file}/shards: {file} is a file, not a folder"),
    (["--env", "ALE/SpaceInvaders-v5", "--policy", "agent"], "error: --policy agent has a scripted player only for breakout, pong"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(args, message, tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    base = {"--env": "ALE/Breakout-v5", "--episodes": "2", "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    words = [w.format(file=file) for pair in base.items() for w in pair]
    assert run_main("collect", *words, "--max-steps", "5", "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(file=file)) and err.count("\n") == 1 and "Traceback" not in err


def test_training_on_shards_of_another_frame_size_or_none_is_one_line(breakout_shards, tmp_path, capsys):
    common = ("train", "teacher", "data.source=atari", f"train.out_dir={tmp_path / 'run'}")
    assert run_main(*common, f"data.shards={breakout_shards}") == 2  # data.resolution left at the shapes world's 32
    assert capsys.readouterr().err == (f"error: {breakout_shards} holds 64x64 frames but data.resolution=32: "
                                       "set data.resolution=64 (or collect with --size 32)\n")
    assert run_main(*common, f"data.shards={tmp_path}", "data.resolution=64") == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} has no manifest.json")
