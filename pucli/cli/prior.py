"""``pucli prior``: estimate the class prior of an unlabeled pool (the share that belongs to the task)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pucli.cli._errors import FLAGS, handles_errors, in_flags
from pucli.cli._options import (
    ArchOption,
    ArchKwargsOption,
    CropPctOption,
    InputSizeOption,
    InterpolationOption,
    MeanOption,
    StdOption,
    TapsOption,
    BatchSizeOption,
    ClassesOption,
    DeviceOption,
    JsonOption,
    PositiveOption,
    QuietOption,
    SeedOption,
    StateReportOption,
    TeacherArgument,
    TeacherCommand,
    ThreadsOption,
    UnlabeledOption,
    WorkersOption,
    load_pu_inputs,
    model_spec,
)
from pucli.cli._output import (
    command_help,
    console,
    emit_json,
    escape,
    info,
    progress_bars,
    run_context,
    start_run,
    warn_skipped,
)

HELP = """Estimate the class prior: the fraction of the unlabeled pool that belongs to the teacher's task.

Prints the estimate alone on stdout (a number in (0, 1)), or with --json the estimate, its bootstrap standard deviation and interval, and how it was found. The estimator is best-bin estimation (Garg et al. 2021) on held-out positive-vs-unlabeled scores of the teacher's frozen descriptors; `pucli select` runs the same estimate when --prior is left out, and shares the descriptor cache with this command.

[bold]Example[/]

  pucli prior teacher.safetensors --positive ./labeled --unlabeled ./pool.txt

With fewer than about 5 labeled images per class the estimate is unreliable (wide interval): give --prior to `pucli select` from what you know of the pool instead."""


def register(app: typer.Typer) -> None:
    app.command("prior", cls=TeacherCommand, help=command_help(HELP), no_args_is_help=True)(prior)


@handles_errors(flags=FLAGS["prior"])
def prior(
    teacher: TeacherArgument,
    positive: PositiveOption,
    unlabeled: UnlabeledOption,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    taps: TapsOption = None,
    classes: ClassesOption = None,
    batch_size: BatchSizeOption = 256,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the descriptor cache.")] = False,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: StateReportOption = None,
) -> None:
    from pucli.pu.options import Scales, parse_taps

    scales = Scales(taps=parse_taps(taps))
    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    _check_single_process()
    from pucli.device import default_workers
    from pucli.pu.class_prior import estimate_prior
    from pucli.report import report_location

    report, run_device = start_run(device=device, threads=threads)
    with report.stage("load"):
        loaded, positive_set, pool = load_pu_inputs(teacher, spec, positive, classes, unlabeled,
                                                  model_files=report.model_files)
    with progress_bars(quiet=quiet) as progress:
        run = run_context(report, run_device, workers if workers is not None else default_workers(len(pool)), progress)
        result = estimate_prior(loaded, positive_set.paths, pool.paths, seed=seed, scales=scales, batch_size=batch_size,
                                positive_labels=positive_set.labels, use_cache=not no_cache, run=run)
    report.timings.update({k: round(v, 4) for k, v in result.timings.items()})
    report.skipped = list(result.skipped)
    report.counts = {"positive": result.estimate.positive, "unlabeled": result.estimate.unlabeled,
                     "skipped": len(result.skipped)}
    report.results = {"prior_estimate": estimate_record(result.estimate), "taps": result.taps}
    written = report.write(report_location("prior", None, report_path))
    estimate = result.estimate
    if json_output:
        emit_json(_summary(estimate, written))
    else:
        # The number alone on stdout, so `--prior $(pucli prior ...)` works in a shell.
        print(f"{estimate.class_prior:.4f}", flush=True)
        if not quiet:
            _print_table(estimate)
    if estimate.warning():
        info(f"[yellow]warning:[/] {escape(in_flags(estimate.warning()))}", quiet=quiet)
    warn_skipped(result.skipped, quiet=quiet)
    info(f"report: {written}", quiet=quiet)


def _check_single_process() -> None:
    from pucli import distributed
    from pucli.errors import UsageError

    if distributed.launched():
        raise UsageError("pucli prior runs in one process: launch it without torchrun (the descriptors are cached, "
                         "so it is cheap after a select)")


def _summary(estimate: Any, report: Path) -> dict[str, Any]:
    return {**estimate_record(estimate), "report": str(report)}


def estimate_record(estimate: Any) -> dict[str, Any]:
    """A :class:`pucli.pu.mixture_proportion.PriorEstimate` as the report and ``--json`` give it, its warning in
    the command line's words."""
    warning = estimate.warning()
    return {**estimate.as_dict(), "warning": in_flags(warning) if warning else None}


def _print_table(estimate: Any) -> None:
    from rich.table import Table

    table = Table(title="pucli prior", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("class prior", f"{estimate.class_prior:.4f}")
    table.add_row(f"{estimate.level:.0%} interval", f"{estimate.low:.4f} - {estimate.high:.4f}")
    table.add_row("bootstrap std", f"{estimate.std:.4f}")
    table.add_row("labeled positives", f"{estimate.positive:,}")
    table.add_row("unlabeled pool", f"{estimate.unlabeled:,}")
    table.add_row("top bin: positives / pool in it", f"{estimate.positive_in_bin:.1%} / {estimate.unlabeled_in_bin:.1%}")
    console.print(table)
