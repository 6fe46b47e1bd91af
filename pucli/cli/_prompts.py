"""Questions on a terminal, never anywhere else: required inputs left out, outputs to replace.

A question goes to stderr and its answer comes from stdin, so stdout stays clean for data. In a
pipeline, a cron job, CI or under torchrun pucli never asks: it decides by the options or fails
with one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any

import typer

from pucli.cli._output import error, escape

__all__ = ["check_output_path", "confirm_overwrite", "enable_prompts", "guard_output", "is_interactive"]


def is_interactive() -> bool:
    """True when a person can answer a question: stdin and stderr are both terminals, and this is
    the only process (under torchrun every rank would ask)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return False
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def check_output_path(path: Path, option: str = "--out") -> None:
    """Fail early, before any work, when an output cannot be written.

    Raises:
        UsageError: missing or read-only folder.
    """
    from pucli.errors import UsageError

    folder = path.parent if path.parent != Path("") else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: folder {folder} is not writable; choose another location")


def confirm_overwrite(path: Path, *, force: bool, option: str = "--out") -> None:
    """Guard an existing output: replace it with ``--force``; on a terminal, ask; anywhere else
    refuse, so a re-run script never destroys earlier results by accident.

    Raises:
        UsageError: ``path`` exists, no ``--force``, and no one said yes.
    """
    from pucli.errors import UsageError

    if str(path) == "-" or not path.exists() or force:
        return
    if path.is_dir() and not any(path.iterdir()):
        return  # an empty folder holds nothing to lose
    if is_interactive():
        with contextlib.suppress(EOFError):  # stdin closed: as good as a no
            if _ask(f"{path} exists; replace it? [y/N] ").strip().lower() in ("y", "yes"):
                return
        raise UsageError(f"{option} {path} exists and was kept: choose another path, or pass --force to replace it")
    raise UsageError(f"{option} {path} exists: pass --force to replace it, or choose another path")


def guard_output(out: str | Path, *, force: bool, option: str = "--out") -> None:
    """Before any work: ``out`` can be written (:func:`check_output_path`) and replacing it is
    allowed (:func:`confirm_overwrite`). ``-`` (stdout) needs neither."""
    if str(out) != "-":
        check_output_path(Path(out), option)
        confirm_overwrite(Path(out), force=force, option=option)


def _ask(question: str) -> str:
    """Print ``question`` on stderr (as is: no markup, no wrapping) and read one line of stdin.

    Raises:
        EOFError: stdin is closed.
    """
    sys.stderr.write(question)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def enable_prompts(command: Any) -> Any:
    """Ask for required options and single arguments (``TEACHER``) left out, instead of failing.
    Call it on a terminal only (:func:`is_interactive`). ``command`` is the click command Typer
    built (a group: its subcommands too)."""
    for sub in getattr(command, "commands", {}).values():
        enable_prompts(sub)
    for param in getattr(command, "params", []):
        # Typer ships its own copy of click: tell parameters by their attributes, not by class.
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and param.required and param.prompt is None and not param.is_flag:
            param.prompt = param.opts[0]
            param.prompt_for_value = functools.partial(_prompt_for_value, param)  # type: ignore[method-assign]
        elif kind == "argument" and param.required and param.nargs == 1:
            param.consume_value = functools.partial(_consume_or_ask, param, param.consume_value)  # type: ignore[method-assign]
    return command


def _consume_or_ask(param: Any, consume: Any, ctx: Any, opts: Any) -> Any:
    """An argument's value from the command line, or asked for when it is missing."""
    value, source = consume(ctx, opts)
    if param.value_is_missing(value):
        return _prompt_for_value(param, ctx), source
    return value, source


def _prompt_for_value(param: Any, ctx: Any) -> Any:
    is_option = getattr(param, "param_type_name", "") == "option"
    name = param.opts[0] if is_option else (getattr(param, "metavar", None) or param.name.upper())
    help_text = f" ({param.help.rstrip('.')})" if getattr(param, "help", None) else ""
    while True:
        try:
            answer = _ask(f"{name}{help_text}: ").strip()
        except EOFError:
            raise typer.Abort() from None
        if not answer:
            continue
        try:
            return param.process_value(ctx, answer)
        except typer.BadParameter as exc:
            error(escape(exc.format_message()))
