"""Errors to one line and an exit code; signals to ``KeyboardInterrupt``.

Exit codes: 0 done; 1 unusable data (:class:`pucli.errors.DataError`, OS errors); 2 wrong usage
(:class:`pucli.errors.UsageError`, the option parser); 128 + the signal's number when SIGINT
(130) or SIGTERM (143) stopped the command; 141 when the reader of stdout went away.

The engine's option classes raise :class:`pucli.errors.OptionError` naming their *parameter*
(``class_prior 1.5: ...``); :func:`handles_errors` renames it to the command's flag
(``--prior 1.5: ...``), ``--`` + the parameter with ``_`` as ``-`` unless the command says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from pucli.cli._output import error, escape, shows_warnings

__all__ = ["flag_for", "handles_errors", "set_debug"]

F = TypeVar("F", bound=Callable[..., Any])

_state: dict[str, Any] = {"debug": False, "signal": None}


def set_debug(enabled: bool) -> None:
    """``--debug``: print the traceback with every error."""
    _state["debug"] = enabled


def flag_for(parameter: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line spelling of an engine parameter: ``flags[parameter]`` if given, else
    ``--`` + the parameter with ``_`` as ``-`` (``graph_neighbors`` -> ``--graph-neighbors``)."""
    return (flags or {}).get(parameter) or "--" + parameter.replace("_", "-")


def handles_errors(command: F | None = None, *, flags: Mapping[str, str] | None = None) -> Any:
    """Decorate a command: pucli's typed errors (and OS errors) become one line on stderr and an
    exit code (see the module docstring); ``--debug`` shows the traceback. ``flags`` maps engine
    parameters whose flag is not ``--`` + their name (``{"class_prior": "--prior"}``).

    Use as ``@handles_errors`` or ``@handles_errors(flags={...})``. While the command runs, SIGTERM
    interrupts it as Ctrl-C does (``KeyboardInterrupt``), so the engine's handlers keep finished
    work for ``--resume`` whichever of the two stopped it."""
    if command is None:
        return functools.partial(handles_errors, flags=flags)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pucli.errors import Interrupted, OptionError, PucliError

        try:
            with _signals_interrupt(), shows_warnings():
                return command(*args, **kwargs)
        except typer.Exit:
            raise
        except PucliError as exc:
            _maybe_traceback()
            message = exc.renamed(flag_for(exc.parameter, flags)) if isinstance(exc, OptionError) else str(exc)
            error(escape(message))
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
