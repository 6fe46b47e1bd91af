"""``pucli shards``: pack a folder of images into WebDataset-style tar shards for ``--unlabeled``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pucli.cli._errors import FLAGS, handles_errors
from pucli.cli._options import ForceOption, JsonOption, QuietOption
from pucli.cli._output import command_help, emit_json, info, progress_bars
from pucli.cli._prompts import confirm_overwrite

HELP = """Tar shards of images: a pool read as a few large files instead of millions of small ones."""

PACK_HELP = """Pack the images under FOLDER into uncompressed tar shards (WebDataset-style) for `pucli select --unlabeled`.

Images are taken in the order `pucli select` scans a folder in (recursive, sorted by path) and named in the shards by their path under FOLDER, so the shards make the same pool as the folder. Prints the shard paths on stdout, one per line (a list file `--unlabeled` reads), and on stderr the brace pattern that names them.

[bold]Example[/]

  pucli shards pack ./pool --out shards/pool-%06d.tar --size 10000 > pool-shards.txt
  pucli select ... --unlabeled 'shards/pool-{000000..000009}.tar'

Index entries for images of shards read `<shard>#<member>` (e.g. shards/pool-000003.tar#part0/u000123.png); `pucli expand` and `pucli distill` read them from the shards (docs/formats.md)."""


def register(app: typer.Typer) -> None:
    group = typer.Typer(help=HELP, no_args_is_help=True)
    group.command("pack", help=command_help(PACK_HELP), no_args_is_help=True)(pack)
    app.add_typer(group, name="shards")


@handles_errors(flags=FLAGS["shards pack"])
def pack(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder of images (scanned recursively).", show_default=False)],
    out: Annotated[str, typer.Option("--out", help="Shard name with one integer field, e.g. shards/pool-%06d.tar.", show_default=False)],
    size: Annotated[int, typer.Option("--size", min=1, help="Images per shard (WebDataset suggests shards of a few hundred MB).")] = 10_000,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    from pucli.data.shards import pack_folder

    try:
        first = Path(out % 0)
    except (TypeError, ValueError):
        first = None  # not a valid pattern: pack_folder says how to write one
    if first is not None:
        confirm_overwrite(first, force=force)

    with progress_bars(quiet=quiet) as progress:
        packed = pack_folder(folder, out, images_per_shard=size, progress=progress)
    if json_output:
        emit_json({"shards": [str(p) for p in packed.shards], "images": packed.images, "counts": packed.counts,
                   "pattern": packed.pattern()})
    else:
        typer.echo("\n".join(str(p) for p in packed.shards))
    info(f"packed {packed.images:,} images into {len(packed.shards)} shard(s); read them with "
         f"--unlabeled '{packed.pattern()}'", quiet=quiet)
