"""Errors to one line and an exit code; signals to ``KeyboardInterrupt``.

Exit codes: 0 done; 1 unusable data (:class:`pucli.errors.DataError`, OS errors); 2 wrong usage
(:class:`pucli.errors.UsageError`, the option parser); 128 + the signal's number when SIGINT
(130) or SIGTERM (143) stopped the command; 141 when the reader of stdout went away.

The engine names its *parameters*, never flags (:mod:`pucli.errors`): an error about one opens
with it (``class_prior 1.5: ...``) and carries it as a field, and a message names others between
backticks (`` `class_prior` ``, `` `align=none` ``, `` `pucli select all_items=True` ``). This module
alone turns them into the command line's spelling (:func:`in_flags`): ``--`` + the parameter with
``_`` as ``-``, unless the command's entry in :data:`FLAGS` says otherwise (``--prior 1.5: ...``,
``give --prior``, ``--align none``, ```pucli select --all```). Warnings get the same treatment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from pucli.cli._output import current_context, error, escape, shows_warnings

__all__ = ["FLAGS", "SPELLED", "flag_for", "handles_errors", "in_flags", "set_debug"]

F = TypeVar("F", bound=Callable[..., Any])

_state: dict[str, Any] = {"debug": False, "signal": None, "flags": None}

#: Per command, the engine parameters whose spelling on its command line is not ``--`` + their
#: name with ``_`` as ``-``: other flags, and the arguments (``MODEL``). A command passes its entry to
#: :func:`handles_errors`; a message that names another command's parameter
#: (`` `pucli select all_items=True` ``) is spelled with that command's entry.
FLAGS: dict[str, dict[str, str]] = {
    "select": {"class_prior": "--prior", "all_items": "--all", "classes_file": "--classes",
               "positive_paths": "--positive", "unlabeled_paths": "--unlabeled"},
    "prior": {"class_prior": "--prior", "classes_file": "--classes", "positive_paths": "--positive",
              "unlabeled_paths": "--unlabeled"},
    "expand": {"classes_file": "--classes"},
    "distill": {},
    "evaluate": {"classes_file": "--classes", "model": "MODEL", "test_root": "--test"},
    "prune": {"model_source": "MODEL"},
    "quantize": {"model_source": "MODEL"},
    "recalibrate": {"model_source": "MODEL", "data": "--calibration"},
    "export": {"model_path": "MODEL", "method": "--calibration-method"},
    "show": {"source": "SOURCE", "index": "INDEX", "fmt": "--format"},
    "shards pack": {"root": "FOLDER", "pattern": "--out", "images_per_shard": "--size"},
}

#: The key in the click context's ``meta`` under which a command records spellings decided as its
#: line is parsed (the teacher as ``TEACHER`` or ``--teacher``); they win over :data:`FLAGS`.
SPELLED = "pucli.spelled"

_ARGUMENT = re.compile(r"(?P<parameter>[a-z][a-z0-9_]*)=(?P<value>\S*)")


def set_debug(enabled: bool) -> None:
    """``--debug``: print the traceback with every error."""
    _state["debug"] = enabled


def flag_for(parameter: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line spelling of an engine parameter: ``flags[parameter]`` if given, else
    ``--`` + the parameter with ``_`` as ``-`` (``graph_neighbors`` -> ``--graph-neighbors``)."""
    return (flags or {}).get(parameter) or "--" + parameter.replace("_", "-")


def in_flags(message: str | BaseException, flags: Mapping[str, str] | None = None) -> str:
    """An engine message (or error) in the command line's words: the parameter an error opens with
    as its flag, and every parameter named between backticks (:data:`pucli.errors.MENTION`) as its
    flag, with its value after it (`` `align=none` `` -> ``--align none``; ``=True`` -> the flag
    alone). ``flags``: the command's entry in :data:`FLAGS`; by default the running command's."""
    from pucli.errors import MENTION, PucliError

    if flags is None:
        context = current_context()
        flags = {**(_state["flags"] or {}), **(context.meta.get(SPELLED, {}) if context is not None else {})}
    if isinstance(message, PucliError):
        text = message.renamed(flag_for(message.parameter, flags)) if message.parameter else str(message)
    else:
        text = str(message)

    def spelled(match: re.Match[str]) -> str:
        if match["command"] is None:
            return _with_value(flag_for(match["parameter"], flags), match["value"])
        command = FLAGS.get(match["command"], {})
        words = [_with_value(flag_for(word["parameter"], command), word["value"])
                 if (word := _ARGUMENT.fullmatch(token)) else token for token in match["arguments"].split()]
        return "`" + " ".join(["pucli", match["command"], *words]) + "`"

    return MENTION.sub(spelled, text)


def _with_value(flag: str, value: str | None) -> str:
    return flag if value is None or value == "True" else f"{flag} {value}"


def handles_errors(command: F | None = None, *, flags: Mapping[str, str] | None = None) -> Any:
    """Decorate a command: pucli's typed errors (and OS errors) become one line on stderr and an
    exit code (see the module docstring); ``--debug`` shows the traceback. ``flags`` maps engine
    parameters whose flag is not ``--`` + their name (``{"class_prior": "--prior"}``): the
    command's entry in :data:`FLAGS`, with which its errors and warnings are spelled (:func:`in_flags`).

    Use as ``@handles_errors(flags=FLAGS["select"])`` (or bare ``@handles_errors``). While the command runs, SIGTERM
    interrupts it as Ctrl-C does (``KeyboardInterrupt``), so the engine's handlers keep finished
    work for ``--resume`` whichever of the two stopped it."""
    if command is None:
        return functools.partial(handles_errors, flags=flags)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pucli.errors import Interrupted, PucliError

        _state["flags"] = dict(flags or {})
        try:
            with _signals_interrupt(), shows_warnings(in_flags):
                return command(*args, **kwargs)
        except typer.Exit:
            raise
        except PucliError as exc:
            _maybe_traceback()
            error(escape(in_flags(exc)))
            raise typer.Exit(_signal_exit_code() if isinstance(exc, Interrupted) else exc.exit_code) from None
        except BrokenPipeError:
            # The reader of stdout went away (`pucli select --out - | head`): stop quietly, as
            # Unix tools do, and keep Python from complaining when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except OSError as exc:
            _maybe_traceback()
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            error(escape(f"{where}{exc.strerror or exc}; check the path and its permissions"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _maybe_traceback()
            error("interrupted; no output is left half written: run the command again")
            raise typer.Exit(_signal_exit_code()) from None

    return wrapper


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Raise ``KeyboardInterrupt`` on SIGINT and SIGTERM and remember which one came; the
    previous handlers come back afterwards. A no-op outside the main thread (where Python cannot
    set handlers)."""
    import signal
    import threading

    _state["signal"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        _state["signal"] = signum
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_exit_code() -> int:
    """The shell's convention for a command stopped by a signal: 128 + its number (130 for Ctrl-C)."""
    import signal

    return 128 + int(_state["signal"] or signal.SIGINT)


def _maybe_traceback() -> None:
    if _state["debug"]:
        traceback.print_exc(file=sys.stderr)
