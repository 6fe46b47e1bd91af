"""The one output layer of every command: data on stdout (tables, ``--json``), everything for
humans on stderr (messages, progress), nothing but errors with ``--quiet``.

Progress takes one of two forms, chosen by where stderr goes:

- a terminal: rich progress bars, one per stage, redrawn in place;
- anything else (CI, ``nohup``, a pipe, a file): plain log lines, as timm's ``train.py`` writes
  them: one per epoch for a stage that reports an ``epoch``, else one per ~10 % of a pass, and one
  at least every :data:`HEARTBEAT_S` seconds while a stage advances; each gives the stage, the
  progress, the rate and the time left (:class:`ProgressLog`).

Imports stay light (typer, rich): ``--help`` answers at once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console

__all__ = [
    "HEARTBEAT_S",
    "ProgressLog",
    "command_help",
    "console",
    "current_context",
    "emit_json",
    "error",
    "escape",
    "info",
    "progress_bars",
    "run_context",
    "show_result",
    "shows_warnings",
    "silenced",
    "start_run",
    "warn_skipped",
]

# Human output (messages, tables, progress) goes to stderr; stdout carries only data.
console = Console(stderr=True, highlight=False)

# Off a terminal, the longest a stage that advances goes without a log line (seconds): long
# enough to keep logs short, short enough for CI services that stop a job silent for 10 minutes.
HEARTBEAT_S = 300.0
# Off a terminal, a stage without epochs logs a line each time it passes another such share.
LOG_STEP = 0.1


def silenced(quiet: bool = False) -> bool:
    """True with ``--quiet``, and in every process but rank 0 under torchrun (``WORLD_SIZE`` and
    ``RANK`` set by the launcher): one process speaks for all."""
    if quiet:
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def escape(text: str) -> str:
    """``text`` with rich markup characters escaped, to print as it is."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def error(message: str) -> None:
    """Print one error line on stderr (``message`` is rich markup: escape file names)."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)


def info(message: str, *, quiet: bool = False) -> None:
    """A message for humans on stderr (suppressed by ``--quiet``)."""
    if not silenced(quiet):
        console.print(message, soft_wrap=True)


@contextmanager
def shows_warnings(words: Callable[[str], str] = str) -> Iterator[None]:
    """While a command runs, each :class:`pucli.errors.PucliWarning` the engine issues is one
    ``warning:`` line on stderr (each time, not once per place; suppressed by ``--quiet``), its
    text put in the command line's ``words`` (:func:`pucli.cli._errors.in_flags`); other Python
    warnings go where they went before."""
    import warnings

    from pucli.errors import PucliWarning

    with warnings.catch_warnings():
        previous = warnings.showwarning
        warnings.simplefilter("always", PucliWarning)

        def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if issubclass(category, PucliWarning):
                context = current_context()
                quiet = bool(context is not None and context.params.get("quiet"))
                info(f"[yellow]warning:[/] {escape(words(str(message)))}", quiet=quiet)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def warn_skipped(skipped: list[Any], *, quiet: bool = False, what: str = "file(s)") -> None:
    """The one line every command prints when it left unreadable inputs out."""
    if skipped:
        info(f"[yellow]skipped {len(skipped)} unreadable {what}[/]; listed in the report", quiet=quiet)


def emit_json(data: Any) -> None:
    """Machine output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def show_result(summary: Any, *, json_output: bool, quiet: bool, table: Callable[[Any], None]) -> None:
    """``--json``: ``summary`` as JSON on stdout; otherwise ``table(summary)`` on stderr unless ``--quiet``."""
    if json_output:
        emit_json(summary)
    elif not silenced(quiet):
        table(summary)


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


# --- the run report ----------------------------------------------------------------------------


def start_run(*, device: str | None = None, threads: int | None = None, torchrun: bool = False,
              **computed: Any) -> tuple[Any, Any]:
    """The running command's :class:`pucli.report.RunReport` and the device it runs on.

    The report's arguments are the command's own parameters as parsed (named by their flags:
    ``--all`` -> ``all``, ``--batch-size`` -> ``batch_size``), updated with ``computed`` (values
    the command worked out, such as distill's default checkpoint path). ``device`` is resolved
    (:func:`pucli.device.resolve_device`; with ``torchrun``, the process group set up too, see
    :func:`pucli.distributed.setup`) and ``threads`` configured, both recorded in the report;
    without ``device`` the device is None. Imports torch when ``device`` is given.
    """
    from pucli.report import RunReport

    context = current_context()
    parameters = context.command.params if context is not None else []
    arguments = {_recorded_name(p): context.params[p.name] for p in parameters if p.name in context.params}
    name = " ".join(context.command_path.split()[1:]) if context is not None else "pucli"
    report = RunReport.from_arguments(name or context.info_name, {**arguments, **computed})
    run_device = None
    if device is not None:
        from pucli import distributed
        from pucli.device import configure_threads, resolve_device

        run_device = distributed.setup(resolve_device(device)) if torchrun else resolve_device(device)
        report.device, report.threads = str(run_device), configure_threads(threads)
        if threads is None and run_device.type == "cpu":
            _warn_busy_cpu(report.threads, quiet=bool(context is not None and context.params.get("quiet")))
    return report, run_device


def run_context(report: Any, device: Any = None, workers: int = 0, progress: Callable[..., None] | None = None) -> Any:
    """The engine's :class:`pucli.run_context.RunContext` for this command run: ``device`` (from
    :func:`start_run`; the CPU when None), ``workers`` loader processes, ``progress`` (from
    :func:`progress_bars`), and the run report's logs, so what the engine skips and the model files
    it reads or writes land in the report."""
    from pucli.run_context import RunContext

    return RunContext.given(RunContext(skipped=report.skipped, model_files=report.model_files), device=device,
                            workers=workers, progress=progress)


def _warn_busy_cpu(threads: int, *, quiet: bool) -> None:
    """The default ``--threads`` (every CPU) on a CPU that other work already fills: say so, on a
    terminal (a log or a test's stderr should not change with the machine's load; the report
    records the threads)."""
    from pucli.device import cpu_overload

    if threads <= 1 or not console.is_terminal:
        return
    load = cpu_overload()
    if load is not None:
        info(f"[yellow]warning:[/] the CPU is busy (load {load:.1f} on {threads} CPUs): {threads} threads can run many "
             "times slower than one; pass --threads 1 (docs/troubleshooting.md#a-busy-cpu)", quiet=quiet)


def _recorded_name(param: Any) -> str:
    flags = [opt for opt in getattr(param, "opts", []) if opt.startswith("--")]
    return flags[0][2:].replace("-", "_") if flags and param.param_type_name == "option" else param.name


def current_context() -> Any:
    """The click context of the running command, or None outside one."""
    try:  # Typer >= 0.20 ships its own copy of click; older releases use click itself.
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context
    return get_current_context(silent=True)


# --- progress ----------------------------------------------------------------------------------


@contextmanager
def progress_bars(*, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A :class:`pucli.progress.ProgressCallback` for the engine: rich progress bars on stderr when
    it is a terminal, plain log lines (:class:`ProgressLog`) when it is not, nothing with ``--quiet``."""
    from pucli.progress import no_progress

    if silenced(quiet):
        yield no_progress
    elif not console.is_terminal:
        yield ProgressLog(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    else:
        with _bars() as update:
            yield update


@contextmanager
def _bars() -> Iterator[Callable[..., None]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def update(stage: str, completed: int, total: int | None, **metrics: float) -> None:
            text = "  ".join(f"{k} {_number(v)}" for k, v in metrics.items())
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, metrics=text)
            bars.update(tasks[stage], completed=completed, total=total, metrics=text)

        yield update


@dataclass
class _Stage:
    started: float  # clock at the stage's first report
    first: int  # completed at the first report (a resumed run starts past 0)
    completed: int
    printed_at: float
    printed_share: int = 0  # tenths (LOG_STEP) of the pass already logged
    epoch: Any = None
    pending: str | None = None  # epoch mode: the latest line, printed when the epoch turns out finished
    done: bool = False


class ProgressLog:
    """A :class:`pucli.progress.ProgressCallback` that writes plain lines for logs.

    One line per epoch for a stage whose reports carry an ``epoch`` metric (the last report of
    each epoch, written when the next epoch begins or the stage ends); otherwise one line each
    time another ``step`` (10 %) of ``total`` is done; and one whenever ``heartbeat_s`` seconds
    passed since the stage's last line and it advanced. A stage of unknown ``total`` logs its first
    report, then heartbeats. A line reads::

        distill: 120/600 (20 %), epoch 2, loss 0.8123, img_s 1520, 41.3/s, elapsed 0:00:03, ETA 0:00:12

    ``rate`` (``41.3/s``) counts the stage's own units (images, steps) since its first report;
    ``elapsed`` is since that report; ``ETA`` is the rest at that rate. ``write`` receives each
    line; ``clock`` gives seconds (``time.monotonic``).
    """

    def __init__(self, write: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic,
                 step: float = LOG_STEP, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._write, self._clock, self._step, self._heartbeat = write, clock, step, heartbeat_s
        self._stages: dict[str, _Stage] = {}

    def __call__(self, stage: str, completed: int, total: int | None, **metrics: float) -> None:
        now = self._clock()
        state = self._stages.get(stage)
        if state is None or completed < state.completed:  # a new stage, or the same name run again
            state = self._stages[stage] = _Stage(started=now, first=completed, completed=completed, printed_at=now)
            if total is None:
                self._print(state, self._line(stage, state, completed, total, metrics, now))
                return
        advanced = completed > state.completed
        state.completed = completed
        finished = total is not None and completed >= total
        line = self._line(stage, state, completed, total, metrics, now)
        if state.done and not advanced:
            return
        if "epoch" in metrics:
            if state.pending is not None and metrics["epoch"] != state.epoch:
                self._print(state, state.pending)
            state.epoch, state.pending = metrics["epoch"], line
            if finished:
                self._print(state, line)
                state.pending, state.done = None, True
            elif advanced and now - state.printed_at >= self._heartbeat:
                self._print(state, line)
                state.pending = None  # printed already: not again when the epoch turns
            return
        share = math.floor(completed / total / self._step + 1e-9) if total else 0
        if finished or share > state.printed_share or (advanced and now - state.printed_at >= self._heartbeat):
            state.printed_share = max(state.printed_share, share)
            state.done = finished
            self._print(state, line)

    def _print(self, state: _Stage, line: str) -> None:
        state.printed_at = self._clock()
        self._write(line)

    @staticmethod
    def _line(stage: str, state: _Stage, completed: int, total: int | None, metrics: dict[str, float],
              now: float) -> str:
        if total is None:
            parts = [f"{stage}: started" if completed == 0 else f"{stage}: {completed:,}"]
        else:
            parts = [f"{stage}: {completed:,}/{total:,} ({100 * completed / total if total else 100:.0f} %)"]
        parts += [f"{name} {_number(value)}" for name, value in metrics.items() if name != "cached"]
        if metrics.get("cached"):
            parts.append("cached")
        elapsed = now - state.started
        rate = (completed - state.first) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s")
        parts.append(f"elapsed {_clock_time(elapsed)}")
        if total is not None and rate > 0 and completed < total:
            parts.append(f"ETA {_clock_time((total - completed) / rate)}")
        return ", ".join(parts)


def _clock_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"
