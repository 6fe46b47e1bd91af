"""``pucli expand``: the extended set L^t ∪ U^p with the teacher's soft targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pucli.cli._errors import FLAGS, handles_errors
from pucli.cli._options import (
    ArchOption,
    ArchKwargsOption,
    CropPctOption,
    InputSizeOption,
    InterpolationOption,
    MeanOption,
    StdOption,
    BatchSizeOption,
    ClassesOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    PositiveOption,
    QuietOption,
    ReportOption,
    TeacherArgument,
    TeacherCommand,
    ThreadsOption,
    WorkersOption,
    load_teacher_and_positives,
    model_spec,
)
from pucli.cli._output import command_help, console, info, progress_bars, run_context, show_result, start_run, warn_skipped
from pucli.cli._prompts import guard_output

HELP = """Build the extended set (positives + selected images) with the teacher's soft targets.

Writes OUT/manifest.tsv (every item, where it came from), OUT/soft_targets.safetensors (softmax of
the teacher's logits at --temperature, computed once) and OUT/classes.json (soft class counts and
the class weights of Eq. 7 used by weighted and robust KD), and prints per-class counts and weights.

[bold]Example[/]

  pucli select teacher.safetensors --positive ./labeled --unlabeled ./pool --out - \\
    | pucli expand teacher.safetensors --positive ./labeled --index - --out ./expanded

TEACHER may also be given as --teacher FILE. An existing --out is replaced only with --force (or a yes on a terminal).
"""


def register(app: typer.Typer) -> None:
    app.command("expand", cls=TeacherCommand, help=command_help(HELP), no_args_is_help=True)(expand)


@handles_errors(flags=FLAGS["expand"])
def expand(
    teacher: TeacherArgument,
    positive: PositiveOption,
    index: Annotated[str, typer.Option("--index", help="Selection index from `pucli select` (TSV), or - for stdin.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the expanded set to (replaced if it holds one).", show_default=False)],
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    classes: ClassesOption = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature T of the soft targets.")] = 1.0,
    whole_pool: Annotated[bool, typer.Option("--whole-pool", help="Take every image of the index, kept or not (an index from `pucli select --all`), with its score: the whole pool, for `distill --weighting pu-score` or unselected, when `pucli select` recommends it.")] = False,
    batch_size: BatchSizeOption = 256,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
    force: ForceOption = False,
) -> None:
    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    guard_output(out, force=force)
    from pucli import distributed
    from pucli.device import default_workers
    from pucli.kd.expand import expand as expand_set
    from pucli.report import report_location

    # Under torchrun every rank runs this command; only rank 0 reports and writes the set.
    report, run_device = start_run(device=device, threads=threads, torchrun=True)
    with report.stage("load"):
        loaded, positive_set, entries = _load_inputs(teacher, spec, positive, classes, index, whole_pool=whole_pool,
                                                     model_files=report.model_files)
    selected = sum(1 for e in entries if e.selected)
    if whole_pool and selected == len(entries):
        info(f"[yellow]warning:[/] --whole-pool: {index} lists only the kept images (written without `pucli select "
             "--all`), so the set holds the selection alone; select again with --all for the whole pool", quiet=False)
    with progress_bars(quiet=quiet) as progress, report.stage("soft targets"):
        run = run_context(report, run_device, workers if workers is not None else default_workers(len(positive_set) + selected),
                          progress)
        expanded = expand_set(positive_set, entries, loaded, out, temperature=temperature, batch_size=batch_size,
                              whole_pool=whole_pool, run=run)
    if not distributed.is_main():
        return
    table = expanded.class_table()
    report.counts = {"positive": len(positive_set), "index_entries": len(entries), "selected": selected,
                     "items": len(expanded), "skipped": len(report.skipped)}
    report.results = {"classes": table, "temperature": temperature, "teacher_digest": expanded.teacher_digest,
                      "whole_pool": whole_pool}
    written = report.write(report_location("expand", out, report_path))
    summary = {"out": str(out), "items": len(expanded), "skipped": len(report.skipped), "classes": table,
               "report": str(written)}
    show_result(summary, json_output=json_output, quiet=quiet, table=_print_table)
    warn_skipped(report.skipped, quiet=quiet)
    info(f"expanded set: {out} ({len(expanded)} images); report: {written}", quiet=quiet)


def _load_inputs(teacher: Path, arch: Any, positive: Path, classes: Path | None, index: str, *,
                 whole_pool: bool = False, model_files: Any = None) -> Any:
    """``(LoadedModel, LabeledFolder, index entries)``: the teacher, the positives in its class
    order and the selection index, whose selected files must exist.

    Raises:
        UsageError: ``--index -`` under torchrun; a missing file.
        DataError: an unreadable teacher, a positive folder that does not match it, a malformed index.
    """
    from pucli import distributed
    from pucli.data.index import check_files_exist, read_index
    from pucli.errors import UsageError

    if index == "-" and distributed.is_distributed():
        raise UsageError("--index - under torchrun: every rank would read its own part of stdin; give the index file")
    loaded, positive_set = load_teacher_and_positives(teacher, arch, positive, classes, model_files=model_files)
    entries = read_index(index)
    check_files_exist(entries, index, every_entry=whole_pool)
    return loaded, positive_set, entries


def _print_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    rows, total = summary["classes"], summary["items"]
    table = Table(title=f"extended set: {total} images", title_justify="left")
    for name in ("class", "positive", "selected", "soft count", "weight (Eq. 7)"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in rows:
        table.add_row(row["class"], str(row["positive"]), str(row["selected"]), f"{row['soft_count']:.1f}",
                      f"{row['weight']:.3f}")
    console.print(table)
