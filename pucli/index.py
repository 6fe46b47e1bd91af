"""The selection index: which unlabeled files ``pucli select`` kept, with their scores.

Format (version 1), UTF-8 text, tab-separated, one item per line::

    #pucli-index v1
    path<TAB>score
    /data/pool/a.png<TAB>3.2107
    /data/pool/b.png<TAB>1.0054

- The first line is the format tag; other lines starting with ``#`` are comments.
- The header names the columns; ``path`` and ``score`` come first, in that order; more columns
  (e.g. ``selected`` with ``--all``) may follow.
- ``path`` is absolute, or relative to the index file's folder (to the working directory when
  read from stdin). Tabs and newlines in paths are not allowed.
- ``score`` is the selector's F(x) as a decimal float; rows are sorted by descending score.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pucli.errors import DataError, UsageError
from pucli.paths import atomic_write

__all__ = ["INDEX_TAG", "IndexEntry", "write_index", "read_index", "format_index"]

INDEX_TAG = "#pucli-index v1"


@dataclass(frozen=True)
class IndexEntry:
    """One unlabeled file and its selector score F(x) (float; > 0 means positive under PU-s1)."""

    path: Path
    score: float
    selected: bool = True


def format_index(entries: Iterable[IndexEntry], *, with_selected: bool = False) -> Iterable[str]:
    """The index's lines (each ending in a newline), in the order given."""
    yield INDEX_TAG + "\n"
    yield "path\tscore" + ("\tselected" if with_selected else "") + "\n"
    for entry in entries:
        text = str(entry.path)
        if "\t" in text or "\n" in text:
            raise DataError(f"cannot write path with a tab or newline to the index: {text!r}")
        line = f"{text}\t{entry.score:.6g}"
        if with_selected:
            line += "\t1" if entry.selected else "\t0"
        yield line + "\n"


def write_index(entries: Iterable[IndexEntry], out: str | os.PathLike[str], *, with_selected: bool = False) -> None:
    """Write the index to ``out`` atomically, or to stdout when ``out`` is ``-``.

    Raises:
        DataError: a path contains a tab or newline.
        OSError: ``out``'s folder is missing or read-only.
    """
    if str(out) == "-":
        sys.stdout.writelines(format_index(entries, with_selected=with_selected))
        sys.stdout.flush()
        return
    with atomic_write(out) as handle:
        handle.writelines(format_index(entries, with_selected=with_selected))


def read_index(source: str | os.PathLike[str], *, stdin: TextIO | None = None, option: str = "--index") -> list[IndexEntry]:
    """Read an index file (or ``-`` for stdin). With a ``selected`` column, every row is returned
    and ``entry.selected`` tells which were kept.

    Raises:
        UsageError: the file does not exist.
        DataError: malformed content (names the line and what is wrong).
    """
    if str(source) == "-":
        return _parse(stdin or sys.stdin, base=Path.cwd(), name="stdin", option=option)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{option} {path} does not exist: give the index written by `pucli select`, or -")
    try:
        with path.open(encoding="utf-8") as handle:
            return _parse(handle, base=path.parent, name=str(path), option=option)
    except UnicodeDecodeError as exc:
        raise DataError(f"{option} {path} is not a text index (not UTF-8): give the file `pucli select` wrote") from exc


def _parse(lines: Iterable[str], *, base: Path, name: str, option: str) -> list[IndexEntry]:
    entries: list[IndexEntry] = []
    columns: list[str] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            if number == 1 and line.startswith("#pucli-index") and line != INDEX_TAG:
                raise DataError(f"{option} {name}: unsupported index version {line[1:]!r}; upgrade pucli")
            continue
        fields = line.split("\t")
        if columns is None:
            columns = fields
            if columns[:2] != ["path", "score"]:
                raise DataError(f"{option} {name} line {number}: header must start with 'path<TAB>score', got {line[:60]!r}")
            continue
        if len(fields) != len(columns):
            raise DataError(f"{option} {name} line {number}: expected {len(columns)} tab-separated fields, got {len(fields)}")
        try:
            score = float(fields[1])
        except ValueError:
            raise DataError(f"{option} {name} line {number}: score {fields[1][:30]!r} is not a number") from None
        if math.isnan(score):
            raise DataError(f"{option} {name} line {number}: score is NaN")
        if not fields[0]:
            raise DataError(f"{option} {name} line {number}: empty path")
        selected = True
        if "selected" in columns:
            flag = fields[columns.index("selected")]
            if flag not in ("0", "1"):
                raise DataError(f"{option} {name} line {number}: selected must be 0 or 1, got {flag[:10]!r}")
            selected = flag == "1"
        path = Path(fields[0])
        entries.append(IndexEntry(path if path.is_absolute() else base / path, score, selected))
    if columns is None:
        raise DataError(f"{option} {name} is empty or has no header: give the index written by `pucli select`")
    return entries
