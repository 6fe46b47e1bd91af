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
  read from stdin). Tabs, newlines and NUL bytes in paths are not allowed. File names that are
  not valid UTF-8 (possible on Linux) are written byte for byte (``surrogateescape``) and read
  back as the same path.
- Lines end in ``\n`` (a ``\r\n`` written by another tool is accepted).
- ``score`` is the selector's F(x) as a decimal float; rows are sorted by descending score.

What the index does not say itself (the class prior the selection used, where that prior came
from, the rule that kept the rows) is kept in the selection's run report beside it
(``<stem>.report.json``, under ``results``): :class:`SelectionFacts` writes and reads those fields.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pucli.errors import DataError, UsageError
from pucli.paths import atomic_write
from pucli.report import read_report, report_path_for

__all__ = ["INDEX_TAG", "INDEX_TAG_PREFIX", "IndexEntry", "SelectionFacts", "check_files_exist", "format_index",
           "read_index", "write_index"]

INDEX_TAG_PREFIX = "#pucli-index"
INDEX_TAG = f"{INDEX_TAG_PREFIX} v1"


@dataclass(frozen=True)
class IndexEntry:
    """One unlabeled file and its selector score F(x) (float; > 0 means positive under PU-s1)."""

    path: Path
    score: float
    selected: bool = True


_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


@dataclass(frozen=True)
class SelectionFacts:
    """What a selection index does not say itself: ``class_prior`` (the share of the pool the
    selection assumed, in (0, 1)), ``class_prior_source`` (``"given"`` or ``"estimated"``) and
    ``rule`` (PU-s1 or PU-s2, in words). ``pucli select`` decides them
    (:class:`pucli.pu.selection.SelectionResult`) and keeps them in its run report
    (:meth:`as_record`, under ``results``); a reader of the index gets them back with
    :meth:`beside` or :meth:`from_report`. Each is None when unknown."""

    class_prior: float | None = None
    class_prior_source: str | None = None
    rule: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The fields as the run report's ``results`` hold them."""
        return {"class_prior": self.class_prior, "class_prior_source": self.class_prior_source, "rule": self.rule}

    @classmethod
    def from_record(cls, results: Mapping[str, Any]) -> SelectionFacts:
        """The fields of a run report's ``results`` (:meth:`as_record`); a field of the wrong type is None."""
        prior = results.get("class_prior")
        source, rule = results.get("class_prior_source"), results.get("rule")
        return cls(float(prior) if isinstance(prior, (int, float)) and not isinstance(prior, bool) else None,
                   source if isinstance(source, str) else None, rule if isinstance(rule, str) else None)

    @classmethod
    def from_report(cls, path: str | os.PathLike[str]) -> SelectionFacts:
        """The facts in the selection's run report at ``path``; all None when it cannot be read (a
        reader of the index works without them)."""
        results = (read_report(path) or {}).get("results")
        return cls.from_record(results) if isinstance(results, Mapping) else cls()

    @classmethod
    def beside(cls, index: str | os.PathLike[str]) -> SelectionFacts:
        """The facts in the run report beside the index file ``index`` (``<stem>.report.json``)."""
        return cls.from_report(report_path_for(index))


def format_index(entries: Iterable[IndexEntry], *, with_selected: bool = False) -> Iterable[str]:
    """The index's lines (each ending in a newline), in the order given.

    Raises:
        DataError: a path holds a tab, newline or NUL byte, or a score is NaN.
    """
    yield INDEX_TAG + "\n"
    yield "path\tscore" + ("\tselected" if with_selected else "") + "\n"
    for entry in entries:
        text = str(entry.path)
        if "\t" in text or "\n" in text or "\x00" in text:
            raise DataError(f"cannot write path with a tab, newline or NUL byte to the index: {text!r}; rename the file")
        if math.isnan(entry.score):
            raise DataError(f"cannot write a NaN score to the index (for {text!r})")
        if text.startswith("#"):
            text = "./" + text  # the same relative path, not a comment line
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
        lines = format_index(entries, with_selected=with_selected)
        binary = getattr(sys.stdout, "buffer", None)
        if binary is None:
            sys.stdout.writelines(lines)
        else:
            sys.stdout.flush()
            binary.writelines(line.encode(**_ENCODING) for line in lines)
            binary.flush()
        sys.stdout.flush()
        return
    with atomic_write(out, **_ENCODING) as handle:
        handle.writelines(format_index(entries, with_selected=with_selected))


def read_index(source: str | os.PathLike[str], *, stdin: TextIO | None = None,
               parameter: str = "index") -> list[IndexEntry]:
    """Read an index file (or ``-`` for stdin). With a ``selected`` column, every row is returned
    and ``entry.selected`` tells which were kept. Errors name ``parameter``, the one that named ``source``.

    Raises:
        UsageError: the file does not exist.
        DataError: malformed content (names the line and what is wrong).
    """
    if str(source) == "-":
        stream = stdin or sys.stdin
        binary = getattr(stream, "buffer", None)
        # Bytes, split on "\n" only: the same lines a file gives, whatever stdin's text settings.
        lines: Iterable[str] = binary.read().decode(**_ENCODING).split("\n") if binary is not None else stream
        return _parse(lines, base=Path.cwd(), name="stdin", parameter=parameter)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{parameter} {path} does not exist: give the index written by `pucli select`, or -",
                         parameter=parameter, path=path)
    with path.open(newline="\n", **_ENCODING) as handle:
        return _parse(handle, base=path.parent, name=str(path), parameter=parameter)


def _parse(lines: Iterable[str], *, base: Path, name: str, parameter: str) -> list[IndexEntry]:
    def error(problem: str) -> DataError:
        return DataError(f"{parameter} {name}{problem}", parameter=parameter, path=name)

    entries: list[IndexEntry] = []
    columns: list[str] | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n").removesuffix("\r")
        if "\x00" in line:
            raise error(f" line {number} holds a NUL byte: not a text index; give the file `pucli select` wrote")
        if not line.strip() or line.startswith("#"):
            if number == 1 and line.startswith(INDEX_TAG_PREFIX) and line != INDEX_TAG:
                raise error(f": unsupported index version {line[1:]!r}; upgrade pucli")
            continue
        fields = line.split("\t")
        if columns is None:
            columns = fields
            if not line.replace("\t", " ").isprintable():
                raise error(f" line {number}: not a text index (binary or not UTF-8); give the file `pucli select` wrote")
            if columns[:2] != ["path", "score"]:
                raise error(f" line {number}: header must start with 'path<TAB>score', got {line[:60]!r}")
            continue
        if len(fields) != len(columns):
            raise error(f" line {number}: expected {len(columns)} tab-separated fields, got {len(fields)}")
        try:
            score = float(fields[1])
        except ValueError:
            raise error(f" line {number}: score {fields[1][:30]!r} is not a number") from None
        if math.isnan(score):
            raise error(f" line {number}: score is NaN")
        if not fields[0]:
            raise error(f" line {number}: empty path")
        selected = True
        if "selected" in columns:
            flag = fields[columns.index("selected")]
            if flag not in ("0", "1"):
                raise error(f" line {number}: selected must be 0 or 1, got {flag[:10]!r}")
            selected = flag == "1"
        path = Path(fields[0])
        entries.append(IndexEntry(path if path.is_absolute() else base / path, score, selected))
    if columns is None:
        raise error(" is empty or has no header: give the index written by `pucli select`")
    return entries


def check_files_exist(entries: Iterable[IndexEntry], source: str | os.PathLike[str], *, parameter: str = "index",
                      every_entry: bool = False) -> None:
    """Fail when selected entries name files that are gone (the pool moved or was cleaned up).

    A member path of a tar shard counts as present when its shard holds that member.
    ``every_entry`` checks the entries not kept too (``pucli expand --whole-pool``).

    Raises:
        DataError: one or more selected files do not exist (says how many and the first).
    """
    from pucli.data.shards import member_exists

    selected = [entry.path for entry in entries if every_entry or entry.selected]
    missing = [path for path in selected if not member_exists(path)]
    if missing:
        raise DataError(
            f"{parameter} {source}: {len(missing)} of the {len(selected)} selected files do not exist (first: {missing[0]}); "
            "restore them, or run `pucli select` again on the pool as it is now", parameter=parameter, path=source)
