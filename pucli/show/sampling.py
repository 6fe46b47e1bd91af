"""Which images a contact sheet shows, and the numbers around them; paths and scores only.

From a selection index (:func:`sheet_from_index`), groups of ``per_group`` images:

1. **top kept**: the highest-scored kept images (what the selector is surest of);
2. **kept, nearest the threshold**: the lowest-scored kept images (where mistakes get in);
3. **rejected, nearest the threshold**: the highest-scored rejected images (what was almost kept);
4. **rejected, random**: a seeded random sample of the other rejected images (what the pool
   holds besides the task);

and, with ``positive``, one reference row per class of the labeled positives. An index written
without every pool item (``pucli select`` without ``all_items``) lists the kept images only:
groups 3-4 are then empty and a note says so.

From an expanded set (:func:`sheet_from_expanded`): for each class, a seeded random sample of the
pool images the teacher puts in that class, beside that class's labeled positives.

The threshold is the midpoint between the lowest kept and the highest rejected score (PU-s1 keeps
score > 0, PU-s2 the ``budget`` best); the class prior and its source are the selection's own
(:class:`pucli.data.index.SelectionFacts`: from the result in memory, or from the run report
beside an index file) unless given. Work is O(N) in the index's
length for the scores (one float64 array) and O(shown) for images: nothing is decoded here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pucli.data.index import IndexEntry, SelectionFacts
from pucli.errors import NoImagesError, OptionError, UsageError

__all__ = ["ContactSheet", "Group", "Tile", "sheet_from_expanded", "sheet_from_index", "sheet_from_source"]


@dataclass
class Tile:
    """One image of the sheet: its path (a file or a ``shard.tar#member``) and its caption."""

    path: Path
    caption: str
    score: float | None = None
    kind: str | None = None  # kept | rejected | positive; None: its group's


@dataclass
class Group:
    """A titled block of tiles; ``note`` says how the tiles were chosen (and how many there were)."""

    title: str
    note: str
    tiles: list[Tile]
    kind: str = "kept"  # kept | rejected | positive: the colour of its frame


@dataclass
class ContactSheet:
    """Everything a renderer needs: the groups, and the score histogram's data.

    ``reference``: one group per class of labeled positives (a line each, labelled with the class),
    drawn above ``groups``. ``scores``: float64 (N,) every score of the index (kept and rejected);
    ``kept``: bool (N,). ``threshold`` is None when the index gives no way to tell; ``class_prior``
    in (0, 1) or None.
    """

    title: str
    groups: list[Group]
    scores: np.ndarray
    kept: np.ndarray
    threshold: float | None
    class_prior: float | None
    prior_source: str | None
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    columns: int = 8
    reference: list[Group] = field(default_factory=list)

    @property
    def tiles(self) -> list[Tile]:
        """Every tile of the sheet, reference rows first."""
        return [tile for group in self.reference + self.groups for tile in group.tiles]


def sheet_from_index(
    index: Sequence[IndexEntry] | str | os.PathLike[str],
    *,
    positive: str | os.PathLike[str] | None = None,
    class_prior: float | None = None,
    prior_source: str | None = None,
    per_group: int = 16,
    columns: int = 8,
    seed: int = 0,
    report: str | os.PathLike[str] | None = None,
) -> ContactSheet:
    """The contact sheet of a selection index (entries in memory, an index file, or ``-``).

    Args:
        positive: labeled positives, one subfolder per class: a reference row per class.
        class_prior, prior_source: the prior the selection used; else the
            :class:`~pucli.data.index.SelectionFacts` of ``report`` (the selection's run report),
            else of the report beside an index file.
        per_group: images per group; ``columns``: tiles per line.

    Raises:
        UsageError: missing index or positive folder; ``per_group`` or ``columns`` < 1.
        DataError: a malformed index; NoImagesError: an index of no entry.
    """
    from pucli.data.index import read_index

    _check_sizes(per_group, columns)
    name = "selection"
    facts = SelectionFacts.from_report(report) if report is not None else SelectionFacts()
    if isinstance(index, (str, os.PathLike)):
        name = "stdin" if str(index) == "-" else Path(index).name
        if report is None and str(index) != "-":
            facts = SelectionFacts.beside(index)
        entries: Sequence[IndexEntry] = read_index(index, parameter="index")
    else:
        entries = index
    if not entries:
        raise NoImagesError(f"index {name} lists no image: nothing to show; check that `pucli select` kept some "
                            "(or use `pucli select all_items=True`)", parameter="index", path=name)
    if class_prior is None:
        class_prior, prior_source = facts.class_prior, facts.class_prior_source

    scores = np.fromiter((e.score for e in entries), dtype=np.float64, count=len(entries))
    kept = np.fromiter((e.selected for e in entries), dtype=bool, count=len(entries))
    kept_at, rejected_at = np.flatnonzero(kept), np.flatnonzero(~kept)
    kept_order = kept_at[np.argsort(-scores[kept_at], kind="stable")]  # best first
    rejected_order = rejected_at[np.argsort(-scores[rejected_at], kind="stable")]  # nearest the threshold first
    threshold = None
    if len(kept_at) and len(rejected_at):
        threshold = float((scores[kept_at].min() + scores[rejected_at].max()) / 2)

    def tiles(positions: Sequence[int] | np.ndarray) -> list[Tile]:
        return [Tile(Path(entries[i].path), f"{scores[i]:.3g}", float(scores[i])) for i in positions]

    n_kept, n_rejected = len(kept_at), len(rejected_at)
    top = kept_order[:per_group]
    borderline_kept = kept_order[max(len(top), n_kept - per_group):]
    borderline_rejected = rejected_order[:per_group]
    rest = rejected_order[len(borderline_rejected):]
    rng = np.random.default_rng(seed)
    random_rejected = np.sort(rng.choice(rest, size=min(per_group, len(rest)), replace=False)) if len(rest) else rest
    random_rejected = random_rejected[np.argsort(-scores[random_rejected], kind="stable")]
    groups = [
        Group("Top kept", f"the {len(top)} highest scores of {n_kept:,} kept", tiles(top)),
        Group("Kept, nearest the threshold", f"the {len(borderline_kept)} lowest kept scores", tiles(borderline_kept)),
        Group("Rejected, nearest the threshold", f"the {len(borderline_rejected)} highest scores of {n_rejected:,} rejected",
              tiles(borderline_rejected), kind="rejected"),
        Group("Rejected, random", f"{len(random_rejected)} drawn at random (seed {seed}) from the other rejected",
              tiles(random_rejected), kind="rejected"),
    ]
    notes = []
    if not n_rejected:
        notes.append("the index lists the kept images only: write it with `pucli select all_items=True` to see the "
                     "rejected ones")
    reference = positive_groups(positive, columns) if positive is not None else []
    counts = {"total": len(entries), "kept": n_kept, "rejected": n_rejected}
    return ContactSheet(f"pucli selection: {name}", [g for g in groups if g.tiles], scores, kept, threshold,
                        class_prior, prior_source, counts, notes, columns, reference)


def sheet_from_expanded(
    folder: str | os.PathLike[str], *, per_group: int = 8, columns: int = 8, seed: int = 0,
) -> ContactSheet:
    """The contact sheet of an expanded set (``pucli expand --out``): per class, up to ``per_group``
    labeled positives and a seeded random sample of ``per_group`` of the pool images the teacher
    puts in that class (argmax of its soft targets), with the teacher's probability as caption.

    Raises:
        UsageError, DataError: from :func:`pucli.data.manifest.read_expanded_set`.
    """
    from pucli.data.manifest import read_expanded_set

    _check_sizes(per_group, columns)
    folder = Path(folder)
    expanded = read_expanded_set(folder, check_files=False, parameter="source")
    probabilities, predicted = expanded.soft_targets.max(dim=1)
    origins = np.array(expanded.origins)
    labels = np.array(expanded.labels)
    predicted = predicted.numpy()
    pool_at = np.flatnonzero(origins == "unlabeled")
    rng = np.random.default_rng(seed)
    groups: list[Group] = []
    for k, name in enumerate(expanded.class_names):
        positives = np.flatnonzero((origins == "positive") & (labels == k))[:per_group]
        members = pool_at[predicted[pool_at] == k]
        sample = np.sort(rng.choice(members, size=min(per_group, len(members)), replace=False)) if len(members) else members
        tiles = [Tile(expanded.paths[i], "labeled", None, kind="positive") for i in positives]
        tiles += [Tile(expanded.paths[i], f"p={float(probabilities[i]):.2f}", _score(expanded.scores[i])) for i in sample]
        groups.append(Group(f"Class {name}", f"{len(positives)} labeled (first), then {len(sample)} of {len(members):,} "
                            f"pool images the teacher puts in class {name}", tiles))
    scores = np.array([s for s, o in zip(expanded.scores, expanded.origins) if o == "unlabeled" and s is not None], dtype=np.float64)
    facts = _expanded_selection_facts(folder)
    class_prior, prior_source = facts.class_prior, facts.class_prior_source
    counts = {"total": len(expanded), "kept": len(pool_at), "rejected": 0, "positive": int((origins == "positive").sum())}
    notes = ["the expanded set holds the kept pool images only; `pucli show INDEX` shows the rejected ones too"]
    return ContactSheet(f"pucli expanded set: {folder.name}", groups, scores, np.ones(len(scores), dtype=bool), None,
                        class_prior, prior_source, counts, notes, columns)


def positive_groups(root: str | os.PathLike[str], columns: int) -> list[Group]:
    """One reference group per class subfolder of ``root`` (sorted): its first ``columns`` images
    by path (nothing decoded). Tar shards of ``<class>/<file>`` members serve too
    (:meth:`pucli.data.sources.LabeledFolder.from_folder`).

    Raises:
        UsageError: ``root`` is not a folder with class subfolders (nor shards).
    """
    from pucli.data.files import scan_images
    from pucli.data.shards import expand_braces, is_shard_name, shard_members, split_member

    root = Path(root)
    if is_shard_name(root) and not root.is_dir():
        by_class: dict[str, list[Path]] = {}
        for member in shard_members(expand_braces(str(root)), parameter="positive"):
            name = Path(split_member(member)[1])  # type: ignore[index]
            if len(name.parts) >= 2:
                by_class.setdefault(name.parent.name, []).append(member)
        return [Group(name, f"{min(columns, len(images))} of {len(images)}",
                      [Tile(p, p.name) for p in sorted(images, key=str)[:columns]], kind="positive")
                for name, images in sorted(by_class.items())]
    if not root.is_dir():
        raise UsageError(f"positive {root} is not a folder: give the labeled folder (one subfolder per class)",
                         parameter="positive", path=root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"positive {root} has no class subfolders: put each class's images in {root}/<class>/",
                         parameter="positive", path=root)
    groups = []
    for folder in classes:
        images = scan_images(folder)
        groups.append(Group(folder.name, f"{min(columns, len(images))} of {len(images)}",
                            [Tile(p, p.name) for p in images[:columns]], kind="positive"))
    return groups


def _expanded_selection_facts(folder: Path) -> SelectionFacts:
    """The :class:`~pucli.data.index.SelectionFacts` of the index an expanded set was made from:
    the set's own run report names the index (``arguments.index``), whose report holds them."""
    from pucli.report import read_report, report_path_for

    arguments = (read_report(report_path_for(folder)) or {}).get("arguments")
    index = arguments.get("index") if isinstance(arguments, dict) else None
    return SelectionFacts.beside(index) if isinstance(index, str) and index != "-" else SelectionFacts()


def _score(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_sizes(per_group: int, columns: int) -> None:
    if per_group < 1:
        raise OptionError("per_group", per_group, "show at least 1 image per group")
    if columns < 1:
        raise OptionError("columns", columns, "give at least 1 column")


def sheet_from_source(
    source: str | os.PathLike[str],
    *,
    positive: str | os.PathLike[str] | None = None,
    per_group: int | None = None,
    columns: int = 8,
    seed: int = 0,
    report: str | os.PathLike[str] | None = None,
) -> ContactSheet:
    """The sheet of ``source``: an expanded-set folder (:func:`sheet_from_expanded`), else a
    selection index file or ``-`` (:func:`sheet_from_index`). ``per_group`` defaults to 16 for an
    index, 8 per class for an expanded set.

    Raises:
        UsageError: ``source`` does not exist, or ``positive`` is given with an expanded set (it
            holds its positives already).
        DataError: a malformed index or expanded set.
    """
    path = Path(source)
    if str(source) != "-" and path.is_dir():
        if positive is not None:
            raise UsageError(f"positive: {path} is an expanded set, which shows its own labeled positives; leave "
                             "`positive` out", parameter="positive", path=path)
        return sheet_from_expanded(path, per_group=per_group or 8, columns=columns, seed=seed)
    if str(source) != "-" and not path.exists():
        raise UsageError(f"source {path} does not exist: give an index written by `pucli select`, an expanded set, "
                         "or -", parameter="source", path=path)
    return sheet_from_index(source, positive=positive, per_group=per_group or 16, columns=columns, seed=seed, report=report)


def default_sheet_path(source: str | os.PathLike[str], fmt: str = "png") -> Path:
    """Where ``pucli show`` writes without ``--out``: ``index.tsv`` -> ``index.sheet.png`` beside it;
    an expanded set ``runs/expanded/`` -> ``runs/expanded.sheet.png``.

    Raises:
        UsageError: ``source`` is ``-`` (stdin has no folder to write beside).
    """
    if str(source) == "-":
        raise UsageError("source -: give `out=PATH` (a .png or .html file, or - for stdout with `fmt`)",
                         parameter="source", path="-")
    from pucli.paths import output_stem

    path = Path(source)
    stem = path.name if path.is_dir() else output_stem(path)
    return path.with_name(f"{stem}.sheet.{fmt}")
