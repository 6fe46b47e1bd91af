"""pucli's command line: a thin Typer front end over the engine.

Each command lives in its own module and registers itself on :data:`app`; bodies import torch
lazily so ``pucli --help`` answers at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pucli import __version__
from pucli.cli._errors import set_debug

app = typer.Typer(
    name="pucli",
    help=(
        "Compress an image classifier with a small labeled subset and a large unlabeled pool.\n\n"
        "select -> expand -> distill -> evaluate (Xu et al., Positive-Unlabeled Compression on the Cloud, NeurIPS 2019)."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pucli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
) -> None:
    set_debug(debug)


from pucli.cli import compress, distill, evaluate, expand, export, prior, select, shards, show  # noqa: E402  (after `app` exists)

for _command in (select, prior, expand, distill, evaluate, shards, show, export, compress):
    _command.register(app)


def main() -> None:
    """Console-script entry point. On a terminal, required options left out are asked for
    (:func:`pucli.cli._prompts.enable_prompts`); in a pipeline they are an error, never a prompt."""
    import sys

    from pucli.cli._prompts import enable_prompts, is_interactive

    try:  # Typer >= 0.20 ships its own copy of click; older releases use click itself.
        from typer._click import ClickException
    except ImportError:  # pragma: no cover
        from click import ClickException

    from pucli.cli._output import error

    command = typer.main.get_command(app)
    if is_interactive():
        enable_prompts(command)
    try:
        code = command.main(prog_name="pucli", standalone_mode=False)
    except ClickException as exc:
        # A usage error from the option parser (missing or unknown option, bad value): one line,
        # like pucli's own errors, instead of click's boxed block.
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else "pucli"
        error(f"{exc.format_message()} (see '{where} --help')")
        sys.exit(exc.exit_code)
    except typer.Abort:
        error("aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
