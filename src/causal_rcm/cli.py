"""The ``causal-rcm`` command line. Subcommands only parse options and call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="causal-rcm")
def cli() -> None:
    """Causal-rCM: turn a video diffusion model into a real-time streaming generator."""


@cli.command()
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--to", "layout", type=click.Choice(["causal-rcm", "wan", "diffusers"]), required=True,
              help="Layout to write. 'wan' with OUT ending in .safetensors or .pth writes one file.")
def convert(src: Path, dst: Path, layout: str) -> None:
    """Convert a checkpoint between layouts (ours, original Wan2.1, diffusers); IN's layout is detected."""
    from .models.adapters import load_checkpoint, save_checkpoint

    config, state, src_layout = load_checkpoint(src)
    _check_writable(dst)
    save_checkpoint(config, state, dst, layout)
    n_params = sum(v.numel() for v in state.values())
    click.echo(f"{src} ({src_layout}) -> {dst} ({layout}): {len(state)} tensors, {n_params / 1e6:.2f} M parameters")


def _check_writable(path: Path) -> None:
    """Fail early with one line if ``path`` cannot be created or written."""
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {path}: {parent} is not writable")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="causal-rcm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
