"""What every command shares: error mapping, stderr console, progress bars, JSON output, options.

Imports here stay light (typer, rich): torch is imported inside command bodies, so ``--help``
answers at once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

# Human output (messages, tables, progress) goes to stderr; stdout carries only data.
console = Console(stderr=True, highlight=False)

_state = {"debug": False}


def set_debug(enabled: bool) -> None:
    _state["debug"] = enabled


def error(message: str) -> None:
    """Print one error line on stderr."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)


def handles_errors(command: F) -> F:
    """Turn pucli's typed errors (and OS errors) into one line on stderr and an exit code:
    2 for usage errors, 1 for data errors, 130 for Ctrl-C. ``--debug`` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pucli.errors import PucliError

        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except PucliError as exc:
            _maybe_traceback()
            error(_escape(str(exc)))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            _maybe_traceback()
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            error(_escape(f"{where}{exc.strerror or exc}; check the path and its permissions"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _maybe_traceback() -> None:
    if _state["debug"]:
        traceback.print_exc(file=sys.stderr)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def info(message: str, *, quiet: bool = False) -> None:
    """A message for humans on stderr (suppressed by ``--quiet``)."""
    if not quiet:
        console.print(message, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Machine output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress_bars(*, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A :class:`pucli.progress.ProgressCallback` that draws rich progress bars on stderr, one per
    stage, only when stderr is a terminal (and not ``--quiet``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    enabled = console.is_terminal and not quiet
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=console, disable=not enabled, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def update(stage: str, completed: int, total: int | None, **metrics: float) -> None:
            if not enabled:
                return
            text = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, metrics=text)
            bars.update(tasks[stage], completed=completed, total=total, metrics=text)

        yield update


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


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


# Options shared by several commands ------------------------------------------------------
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.", rich_help_panel="Run")
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Data-loading processes \\[default: one per CPU, at most 8; 0 for tiny inputs].", rich_help_panel="Run"),
]
ThreadsOption = Annotated[
    int | None, typer.Option("--threads", min=1, help="CPU threads for the network \\[default: CPUs available].", rich_help_panel="Run")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed: same inputs and seed give the same result.", rich_help_panel="Run")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.", rich_help_panel="Output")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.", rich_help_panel="Output")]
ReportOption = Annotated[
    Path | None, typer.Option("--report", dir_okay=False, help="Where to write the run report (JSON) \\[default: beside the output].", rich_help_panel="Output")
]


def command_help(text: str) -> str:
    """Reflow a command's help for Typer's rich mode, which keeps every newline: lines of a prose
    paragraph are joined; indented lines (examples) stay as they are."""
    paragraphs = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if any(line.startswith("  ") for line in lines):
            paragraphs.append("\n".join(lines))
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)
