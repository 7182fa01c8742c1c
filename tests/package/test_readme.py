"""The README's commands and library examples work as written: every `causal-rcm ...` line it shows parses
with the CLI (its command and options exist), and its Python examples run (on the shipped models)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from causal_rcm.cli import cli
from causal_rcm.runs.quickstart import SHIPPED_TEACHERS, _shipped_run

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _command_lines() -> list[list[str]]:
    """Every concrete command of the README's shell blocks (a `...` line of the table is a synopsis, not a command)."""
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].split("&&")[-1].strip()
            words = shlex.split(line)
            if words and words[0].endswith("causal-rcm"):
                lines.append(words[1:])
    inline = re.findall(r"`(causal-rcm [^`]*)`", README.read_text())
    lines += [shlex.split(c)[1:] for c in inline if not re.search(r"[\[{]|RECIPE|CKPT|PROMPT|IN OUT", c)]
    return lines


def test_the_readme_shows_commands():
    names = {words[0] for words in _command_lines()}
    assert {"quickstart", "train", "eval", "generate"} <= names


@pytest.mark.parametrize("words", _command_lines(), ids=lambda w: " ".join(w)[:60])
def test_every_readme_command_parses(words):
    """The command exists and takes the options shown (click parses them without running the command; a group
    resolves its command as when it runs, e.g. `eval -c CKPT` as `eval shapes -c CKPT`)."""
    group, args = cli, list(words)
    while isinstance(group, click.Group):
        _, group, args = group.resolve_command(click.Context(group), args)
        assert group is not None, f"no such command: {' '.join(words)}"
    group.make_context(group.name, args)


def test_every_table_command_exists():
    table = [line for line in README.read_text().splitlines() if line.startswith("| `causal-rcm ")]
    assert len(table) >= 8
    for line in table:
        words = line.split("`")[1].split()
        command = cli.get_command(click.Context(cli), words[1])
        assert command is not None, line
        if isinstance(command, click.Group):  # `bench {a,b}`, `eval world`, or a group's default (`eval -c`)
            for part in words[2].strip("{}").split(",") if words[2].startswith("{") else [words[2]]:
                _, sub, _ = command.resolve_command(click.Context(command), [part])
                assert sub is not None, f"{words[1]} {part}"


@pytest.mark.skipif(_shipped_run(SHIPPED_TEACHERS, "sf-dmd") is None or _shipped_run(SHIPPED_TEACHERS, "tf-scm") is None,
                    reason="the shipped students are not in this checkout")
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_the_readme_library_examples_run(index, monkeypatch):
    monkeypatch.chdir(README.parent)
    namespace: dict = {}
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), namespace)
    if "video" in namespace:
        assert namespace["video"].shape == (24, 32, 32, 3)
    if "v" in namespace:
        assert namespace["v"].shape == namespace["x"].shape
