"""Looking at a selection: contact sheets of what ``pucli select`` kept and threw away.

- :mod:`pucli.show.sampling` picks the few images worth looking at from an index (top kept, kept
  and rejected nearest the threshold, a random sample of the rejected; labeled positives per class
  for reference) or from an expanded set (kept images grouped by the teacher's predicted class),
  plus the score histogram's data. It reads paths and scores only; it never decodes the pool.
- :mod:`pucli.show.render` decodes just those images and draws the sheet as a PNG (Pillow, the
  histogram by matplotlib) or as one self-contained HTML file (thumbnails embedded).

:func:`write_preview` is the one call for a caller that has an index in memory (``pucli select
--preview``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pucli.data.index import IndexEntry
    from pucli.show.render import SheetSummary


def write_preview(
    index: Sequence[IndexEntry] | str | os.PathLike[str] | Any,
    out: str | os.PathLike[str],
    *,
    positive: str | os.PathLike[str] | None = None,
    class_prior: float | None = None,
    prior_source: str | None = None,
    **options: Any,
) -> SheetSummary:
    """Draw the contact sheet of a selection index to ``out`` (``.png`` or ``.html``, atomically).

    ``index`` is a selection in memory (index entries, every pool item with its ``selected`` flag
    or the kept ones only; or a :class:`pucli.pu.selection.SelectionResult`: its ``paths``,
    ``scores`` (N,) and ``selected`` (N,) bool, and the class prior it used and where that came
    from), or an index file; ``positive`` the labeled folder for the reference rows;
    ``class_prior`` / ``prior_source`` (``"given"``/``"estimated"``) what the selection used, when
    the index does not say (by default the result's, or the run report's beside an index file). ``options``: those of
    :func:`pucli.show.sampling.sheet_from_index` (``per_group``, ``columns``, ``seed``) and of
    :func:`pucli.show.render.write_sheet` (``thumb``, ``fmt``, ``words``).

    Raises:
        UsageError, DataError: an unreadable index or positive folder; an unknown output format.
    """
    from pucli.show.render import write_sheet
    from pucli.show.sampling import sheet_from_index

    if hasattr(index, "selected") and hasattr(index, "paths"):  # a SelectionResult
        from pucli.data.index import IndexEntry

        if class_prior is None and getattr(index, "class_prior", None) is not None:
            class_prior, prior_source = index.class_prior, getattr(index, "class_prior_source", None)
        index = [IndexEntry(Path(path), float(score), bool(kept))
                 for path, score, kept in zip(index.paths, index.scores.tolist(), index.selected.tolist())]
    render_keys = {"thumb", "fmt", "words"}
    sheet = sheet_from_index(index, positive=positive, class_prior=class_prior, prior_source=prior_source,
                             **{k: v for k, v in options.items() if k not in render_keys})
    return write_sheet(sheet, Path(out) if str(out) != "-" else "-", **{k: v for k, v in options.items() if k in render_keys})
