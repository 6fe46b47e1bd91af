"""Questions on a terminal, never anywhere else: required inputs left out, outputs to replace.

A question goes to stderr and its answer comes from stdin, so stdout stays clean for data. An
answer the option rejects (its type or its check, e.g. a student ``--out`` not named
``*.safetensors``) is asked for again, with the reason. Once everything is answered, the whole
command line is printed (``same as: pucli distill ...``), the one to repeat with ``--resume`` or
put in a script. In a pipeline, a cron job, CI or under torchrun pucli never asks: it decides by
the options or fails with one line, naming every required option left out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from pucli.cli._output import error, escape, info

__all__ = ["check_output_path", "checked_answer", "confirm_overwrite", "enable_prompts", "equivalent_command",
           "guard_output", "is_interactive"]


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


_ASKING = "pucli.asking"


def checked_answer(check: Callable[[Any], None]) -> Callable[[Any, Any, Any], Any]:
    """An option callback that runs ``check(value)`` on an answer typed at a question, so that an
    answer it rejects (a :class:`pucli.errors.PucliError`) is asked for again. A value given on the
    command line passes through: the command checks it itself, with its one-line error."""

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        from pucli.cli._errors import in_flags
        from pucli.errors import PucliError

        if value is not None and ctx.meta.get(_ASKING):
            try:
                check(value)
            except PucliError as exc:
                # click names the option already ("Invalid value for '--out': ..."): the rest of the message.
                raise typer.BadParameter(in_flags(exc.renamed("").lstrip() if exc.parameter else str(exc))) from None
        return value

    return callback


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
    if not hasattr(command, "commands") and not getattr(command, "_pucli_echoes", False):
        command.parse_args = functools.partial(_parse_then_echo, command.parse_args)  # type: ignore[method-assign]
        command._pucli_echoes = True
    for param in getattr(command, "params", []):
        # Typer ships its own copy of click: tell parameters by their attributes, not by class.
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and param.required and param.prompt is None and not param.is_flag:
            param.prompt = param.opts[0]
            param.prompt_for_value = functools.partial(_prompt_for_value, param)  # type: ignore[method-assign]
        elif kind == "argument" and param.required and param.nargs == 1:
            param.consume_value = functools.partial(_consume_or_ask, param, param.consume_value)  # type: ignore[method-assign]
    return command


_ANSWERS = "pucli.prompt_answers"


def _parse_then_echo(parse_args: Any, ctx: Any, args: list[str]) -> list[str]:
    """Parse ``args`` (questions asked for what is missing), then, if anything was asked, print
    the equivalent command line on stderr (not with ``--quiet``)."""
    given = list(args)
    rest = parse_args(ctx, args)
    answers = ctx.meta.pop(_ANSWERS, [])
    if answers and not ctx.params.get("quiet"):
        info(f"same as: {escape(equivalent_command(ctx.command_path, given, answers))}")
    return rest


def equivalent_command(command_path: str, given: list[str], answers: list[tuple[Any, str]]) -> str:
    """The command line that gives, without questions, what ``given`` plus the ``answers``
    (``(param, text)``, as asked) gave: asked arguments first, then the line as typed, then the
    asked options.

    >>> equivalent_command("pucli distill", ["t.pt"], [])
    'pucli distill t.pt'
    """
    arguments = [text for param, text in answers if getattr(param, "param_type_name", "") != "option"]
    options = [part for param, text in answers if getattr(param, "param_type_name", "") == "option"
               for part in (param.opts[0], text)]
    return " ".join([command_path, *(shlex.quote(part) for part in [*arguments, *given, *options])])


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
        ctx.meta[_ASKING] = True
        try:
            value = param.process_value(ctx, answer)
        except typer.BadParameter as exc:  # the type or the option's check said no: ask again
            error(escape(exc.format_message()) + "; try again")
            continue
        finally:
            ctx.meta[_ASKING] = False
        ctx.meta.setdefault(_ANSWERS, []).append((param, answer))
        return value
