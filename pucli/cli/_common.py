"""What every command shares: error mapping, stderr console, progress bars, JSON output, options.

Imports here stay light (typer, rich): torch is imported inside command bodies, so ``--help``
answers at once.
"""

from __future__ import annotations

import contextlib
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

_state: dict[str, Any] = {"debug": False, "signal": None}


def set_debug(enabled: bool) -> None:
    _state["debug"] = enabled


def error(message: str) -> None:
    """Print one error line on stderr."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)


def handles_errors(command: F) -> F:
    """Turn pucli's typed errors (and OS errors) into one line on stderr and an exit code:
    2 for usage errors, 1 for data errors, 128 + the signal's number for SIGINT (130) and
    SIGTERM (143). ``--debug`` shows the traceback.

    While the command runs, SIGTERM interrupts it as Ctrl-C does (``KeyboardInterrupt``), so the
    engine's handlers keep finished work for ``--resume`` whichever of the two stopped it."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pucli.errors import Interrupted, PucliError

        try:
            with _signals_interrupt():
                return command(*args, **kwargs)
        except typer.Exit:
            raise
        except PucliError as exc:
            _maybe_traceback()
            error(_escape(str(exc)))
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
            error(_escape(f"{where}{exc.strerror or exc}; check the path and its permissions"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _maybe_traceback()
            error("interrupted; no output is left half written: run the command again")
            raise typer.Exit(_signal_exit_code()) from None

    return wrapper  # type: ignore[return-value]


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


def is_interactive() -> bool:
    """True when a person can answer a question: stdin and stderr are both terminals, and this is
    the only process (under torchrun every rank would ask). In a pipeline, a cron job or CI pucli
    never asks; it decides by the options or fails with one line."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return False
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


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
    """Ask for required options left out (on a terminal only; see :func:`is_interactive`), instead
    of failing. ``command`` is the click command Typer built (a group: its subcommands too).

    The question goes to stderr and the answer comes from stdin, so stdout stays clean for data.
    """
    for sub in getattr(command, "commands", {}).values():
        enable_prompts(sub)
    for param in getattr(command, "params", []):
        # Typer ships its own copy of click: tell options by their attributes, not by class.
        if (getattr(param, "param_type_name", "") == "option" and param.required and param.prompt is None
                and not param.is_flag):
            param.prompt = param.opts[0]
            param.prompt_for_value = functools.partial(_prompt_for_value, param)  # type: ignore[method-assign]
    return command


def _prompt_for_value(param: Any, ctx: Any) -> Any:
    help_text = f" ({param.help.rstrip('.')})" if param.help else ""
    while True:
        try:
            answer = _ask(f"{param.opts[0]}{help_text}: ").strip()
        except EOFError:
            raise typer.Abort() from None
        if not answer:
            continue
        try:
            return param.process_value(ctx, answer)
        except typer.BadParameter as exc:
            error(_escape(exc.format_message()))


# Options shared by several commands ------------------------------------------------------
ForceOption = Annotated[
    bool,
    typer.Option("--force", "--yes", "-f", "-y", help="Replace existing outputs without asking (needed outside a terminal).",
                 rich_help_panel="Output"),
]
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
# The inputs of the commands that train on P and U (select, prior), declared once so their help agrees.
PositiveOption = Annotated[
    Path, typer.Option("--positive", help="Labeled positives: one subfolder of images per teacher class.", show_default=False)
]
UnlabeledOption = Annotated[
    str, typer.Option("--unlabeled", help="Unlabeled pool: a folder, a file listing image paths (or tar shards), - (stdin), or tar shards ('pool-{000000..000099}.tar').", show_default=False)
]
TeacherOption = Annotated[
    Path, typer.Option("--teacher", help="Teacher weights (.safetensors, timm .pth.tar, or a state dict with --arch).", show_default=False)
]
ArchOption = Annotated[str | None, typer.Option("--arch", help="timm architecture, for bare state dicts.")]
ClassesOption = Annotated[Path | None, typer.Option("--classes", help="Class names in the teacher's output order, one per line.")]
StateReportOption = Annotated[
    Path | None, typer.Option("--report", dir_okay=False, help="Where to write the run report (JSON) \\[default: <user state dir>/pucli/runs/COMMAND-<time>.report.json].", rich_help_panel="Output")
]


def load_pu_inputs(teacher: Path, arch: str | None, positive: Path, classes: Path | None, unlabeled: str) -> Any:
    """The teacher, the positive set (labels in the teacher's output order) and the unlabeled pool,
    as ``(LoadedModel, LabeledFolder, UnlabeledPool)``.

    Raises:
        PucliError: an unreadable teacher, a positive folder that does not match it, an unusable pool.
    """
    from pucli.checkpoints import load_model
    from pucli.sources import LabeledFolder, UnlabeledPool

    loaded = load_model(teacher, arch, option="--teacher")
    positive_set = LabeledFolder.from_folder(positive, num_classes=loaded.config.num_classes,
                                             label_names=loaded.config.label_names, classes_file=classes)
    return loaded, positive_set, UnlabeledPool.from_source(unlabeled)


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
