"""``pucli expand``: the extended set L^t ∪ U^p with the teacher's soft targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pucli.cli._common import (
    command_help,
    DeviceOption,
    JsonOption,
    QuietOption,
    ReportOption,
    ThreadsOption,
    WorkersOption,
    ForceOption,
    check_output_path,
    confirm_overwrite,
    console,
    emit_json,
    handles_errors,
    info,
    progress_bars,
)

HELP = """Build the extended set (positives + selected images) with the teacher's soft targets.

Writes OUT/manifest.tsv (every item, where it came from), OUT/soft_targets.safetensors (softmax of
the teacher's logits at --temperature, computed once) and OUT/classes.json (soft class counts and
the class weights of Eq. 7 used by weighted and robust KD), and prints per-class counts and weights.

[bold]Example[/]

  pucli select teacher.safetensors --positive ./labeled --unlabeled ./pool --out - \\
    | pucli expand --positive ./labeled --index - --teacher teacher.safetensors --out ./expanded
"""


def register(app: typer.Typer) -> None:
    app.command("expand", help=command_help(HELP), no_args_is_help=True)(expand)


@handles_errors
def expand(
    positive: Annotated[Path, typer.Option("--positive", help="Labeled images, one subfolder per class.", show_default=False)],
    index: Annotated[str, typer.Option("--index", help="Selection index from `pucli select` (TSV), or - for stdin.", show_default=False)],
    teacher: Annotated[Path, typer.Option("--teacher", help="Teacher weights (.safetensors, .pth, .pth.tar).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the expanded set to (replaced if it holds one).", show_default=False)],
    arch: Annotated[str | None, typer.Option("--arch", help="timm architecture for bare state dicts.")] = None,
    classes: Annotated[Path | None, typer.Option("--classes", help="Class names in output order, one per line.")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature T of the soft targets.")] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per teacher forward pass.")] = 256,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
    force: ForceOption = False,
) -> None:
    from pucli import distributed
    from pucli.checkpoints import load_model
    from pucli.errors import UsageError
    from pucli.device import configure_threads, default_workers, resolve_device
    from pucli.expand import expand as expand_set
    from pucli.index import check_files_exist, read_index
    from pucli.report import RunReport, report_path_for
    from pucli.sources import LabeledFolder

    check_output_path(out)
    confirm_overwrite(out, force=force)
    # Under torchrun every rank runs this command; only rank 0 reports and writes the set.
    run_device = distributed.setup(resolve_device(device))
    quiet = quiet or not distributed.is_main()
    if index == "-" and distributed.is_distributed():
        raise UsageError("--index - under torchrun: every rank would read its own part of stdin; give the index file")
    report = RunReport("expand", dict(positive=positive, index=index, teacher=teacher, out=out, arch=arch, classes=classes,
                                      temperature=temperature, batch_size=batch_size, device=device, workers=workers,
                                      threads=threads))
    report.device, report.threads = str(run_device), configure_threads(threads)
    with report.stage("load"):
        loaded = load_model(teacher, arch, option="--teacher")
        positive_set = LabeledFolder.from_folder(positive, num_classes=loaded.config.num_classes,
                                                 label_names=loaded.config.label_names, classes_file=classes)
        entries = read_index(index)
        check_files_exist(entries, index)
    selected = sum(1 for e in entries if e.selected)
    with progress_bars(quiet=quiet) as progress, report.stage("soft targets"):
        expanded = expand_set(
            positive_set, entries, loaded, out, temperature=temperature, device=run_device, batch_size=batch_size,
            workers=workers if workers is not None else default_workers(len(positive_set) + selected),
            skipped=report.skipped, progress=progress,
        )
    if not distributed.is_main():
        return
    table = expanded.class_table()
    report.counts = {"positive": len(positive_set), "index_entries": len(entries), "selected": selected,
                     "items": len(expanded), "skipped": len(report.skipped)}
    report.results = {"classes": table, "temperature": temperature, "teacher_digest": expanded.teacher_digest}
    written = report.write(report_path or report_path_for(out))
    if json_output:
        emit_json({"out": str(out), "items": len(expanded), "skipped": len(report.skipped), "classes": table,
                   "report": str(written)})
    elif not quiet:
        _print_table(table, len(expanded))
    if report.skipped:
        info(f"[yellow]skipped {len(report.skipped)} unreadable file(s)[/]; listed in the report", quiet=quiet)
    info(f"expanded set: {out} ({len(expanded)} images); report: {written}", quiet=quiet)


def _print_table(rows: list[dict[str, Any]], total: int) -> None:
    from rich.table import Table

    table = Table(title=f"extended set: {total} images", title_justify="left")
    for name in ("class", "positive", "selected", "soft count", "weight (Eq. 7)"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in rows:
        table.add_row(row["class"], str(row["positive"]), str(row["selected"]), f"{row['soft_count']:.1f}",
                      f"{row['weight']:.3f}")
    console.print(table)
