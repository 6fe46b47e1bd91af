"""``pucli show``: contact sheets of a selection, to see what was kept and what was thrown away."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from pucli.cli._errors import FLAGS, handles_errors, in_flags
from pucli.cli._options import ForceOption, JsonOption, QuietOption, SeedOption, renaming
from pucli.cli._output import command_help, emit_json, escape, info
from pucli.cli._prompts import check_output_path, confirm_overwrite

HELP = """Draw contact sheets of a selection: what was kept, what was thrown away, and the scores.

For an index (from `pucli select`): the top-scored kept images, the kept and the rejected images nearest the threshold, a random sample of the rejected, and the histogram of the scores with the threshold, the class prior and the counts. --positive adds a reference line of labeled positives per class. For an expanded set (from `pucli expand`): per class, its labeled positives and a sample of the pool images the teacher puts in it. Only the images shown are decoded, so a pool of millions takes seconds; tar-shard members work.

[bold]Example[/]

  pucli show index.tsv --positive ./labeled --out sheet.png
  pucli show index.tsv --out sheet.html      (one self-contained page; opens in any browser)
  pucli show ./expanded --out classes.png

The rejected images appear when the index lists them (`pucli select --all`). The class prior is read from the selection's run report beside the index (or --selection-report FILE; --report, its old name, still works). Without --out the sheet goes beside SOURCE (index.sheet.png). Prints the sheet's path on stdout.
"""


def register(app: typer.Typer) -> None:
    # --report reads here but writes everywhere else: renamed, the old spelling kept (hidden).
    app.command("show", cls=renaming(TyperCommand, {"--report": "--selection-report"}), help=command_help(HELP),
                no_args_is_help=True)(show)


@handles_errors(flags=FLAGS["show"])
def show(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Index (TSV from `pucli select`), - for one on stdin, or an expanded-set folder.", show_default=False)],
    out: Annotated[str | None, typer.Option("--out", help="Sheet to write: .png or .html, or - for stdout (with --format) \\[default: beside SOURCE].", show_default=False)] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="png or html \\[default: from --out's suffix, else png].", show_default=False)] = None,
    positive: Annotated[Path | None, typer.Option("--positive", help="Labeled positives (one subfolder per class, or tar shards of <class>/<file> members): a reference line per class.", show_default=False)] = None,
    per_group: Annotated[int | None, typer.Option("--per-group", min=1, help="Images per group \\[default: 16; 8 per class for an expanded set].", show_default=False)] = None,
    columns: Annotated[int, typer.Option("--columns", min=1, help="Images per line.")] = 8,
    thumb: Annotated[int, typer.Option("--thumb", min=16, help="Thumbnail size in pixels.")] = 96,
    selection_report: Annotated[Path | None, typer.Option("--selection-report", dir_okay=False, help="The selection's run report (from `pucli select`), for the class prior \\[default: beside the index].", show_default=False)] = None,
    seed: SeedOption = 0,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    from dataclasses import asdict

    from pucli.show.render import sheet_format, write_sheet
    from pucli.show.sampling import default_sheet_path, sheet_from_source

    target = out if out is not None else str(default_sheet_path(source, fmt or "png"))
    fmt = sheet_format(target, fmt) if target != "-" or fmt else None
    if target != "-":
        check_output_path(Path(target))
        confirm_overwrite(Path(target), force=force)
    sheet = sheet_from_source(source, positive=positive, per_group=per_group, columns=columns, seed=seed,
                              report=selection_report)
    summary = write_sheet(sheet, target, fmt=fmt, thumb=thumb, words=in_flags)
    if json_output and target != "-":
        emit_json(asdict(summary))
    elif target != "-":
        typer.echo(summary.out)
    for note in summary.notes:
        info(f"[yellow]note:[/] {escape(note)}", quiet=quiet)
    info(f"{summary.shown} images shown ({summary.unreadable} unreadable) of {summary.counts['total']:,}", quiet=quiet)
