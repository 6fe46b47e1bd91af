"""Build the extended set ``L^l = L^t ∪ U^p`` and its teacher soft targets (PU compression, stage 2).

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757), Section 3: the labeled positives ``L^t`` and the unlabeled
images the PU selector kept (``U^p``) form the extended set; the teacher's soft targets
``y_i^te = softmax(Z_i / T)`` are the pseudo ground truth of every item, and their sum per class
gives the class weights of Eq. 7. The soft targets are computed once here, with the teacher's
deterministic evaluation transform, so ``pucli distill`` without augmentation never runs the teacher.
The format written is defined in :mod:`pucli.data.manifest`. The set is written whole or not at all:
it is a folder, which :func:`pucli.paths.replace_atomically` (one file) cannot replace, so it is
written into a staging folder beside ``out`` and swapped into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pucli import distributed
from pucli.checkpoints import LoadedModel
from pucli.data.files import SkippedFile
from pucli.data.index import IndexEntry
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.data.manifest import MANIFEST_NAME, ExpandedSet, write_expanded_set
from pucli.data.sources import LabeledFolder
from pucli.errors import DataError, OptionError, UsageError
from pucli.kd.losses import class_weights
from pucli.run_context import RunContext

__all__ = ["build_expanded_set", "expand", "teacher_soft_targets"]


def build_expanded_set(
    *,
    paths: Sequence[Path],
    origins: Sequence[str],
    labels: Sequence[int],
    scores: Sequence[float | None],
    soft_targets: torch.Tensor,
    temperature: float,
    teacher_digest: str,
    class_names: Sequence[str],
    teacher: str = "",
) -> ExpandedSet:
    """The :class:`pucli.data.manifest.ExpandedSet` of these items, with the class weights of Eq. 7
    computed from their soft class counts (:func:`pucli.kd.losses.class_weights`).

    Args:
        soft_targets: (N, K) float, rows summing to 1.

    Raises:
        DataError: no items, or lengths that disagree with ``soft_targets``.
    """
    targets = soft_targets.detach().to("cpu", torch.float32).contiguous()
    if 0 < len(paths) == targets.shape[0]:
        weights = class_weights(targets.double().sum(dim=0))
    else:  # ExpandedSet.assemble says what is wrong
        weights = torch.ones(targets.shape[-1], dtype=torch.float64)
    return ExpandedSet.assemble(paths=paths, origins=origins, labels=labels, scores=scores, soft_targets=targets,
                                temperature=temperature, teacher_digest=teacher_digest, class_names=class_names,
                                class_weights=weights, teacher=teacher)


def teacher_soft_targets(
    teacher: LoadedModel,
    paths: Sequence[Path],
    *,
    temperature: float = 1.0,
    batch_size: int = 256,
    run: RunContext | None = None,
    **legacy: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher soft targets ``softmax(teacher(x) / T)`` of every readable image in ``paths``.

    Images go through the teacher's evaluation transform (resize, centre crop, normalise) and are
    streamed in batches of ``batch_size`` on ``run.device`` (``run``: :class:`pucli.run_context.RunContext`;
    ``legacy``: its ``device=``, ``workers=``, ``progress=``, ``skipped=`` given directly), so memory
    stays flat in ``len(paths)``.

    Returns:
        ``(kept, soft_targets)``: ``kept`` (N',) int64 positions in ``paths`` of the readable
        images, in order; ``soft_targets`` (N', K) float32, rows summing to 1.

    Side effects: unreadable files are added to ``run.skipped``.
    """
    run = RunContext.given(run, **legacy)
    device, progress = run.device, run.progress
    preprocess = Preprocess(teacher.config)
    model = teacher.model.to(device).eval()
    kept: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    # Under torchrun each rank runs the teacher on its block of whole batches (the same batches as
    # one process) and every rank gets all the rows back; progress counts this rank's block.
    start, end = distributed.batch_block(len(paths), batch_size)
    unreadable: list[SkippedFile] = []
    progress("soft targets", 0, end - start)
    with torch.inference_mode():
        for batch in iterate_batches(
            ImageDataset(paths[start:end], preprocess), batch_size=batch_size, workers=run.workers,
            pin_memory=device.type == "cuda", skipped=unreadable,
        ):
            images = preprocess.normalize(batch.images.to(device, non_blocking=True))
            logits = model(images).float()
            rows.append(torch.softmax(logits / temperature, dim=1).cpu())
            kept.append(batch.indices + start)
            progress("soft targets", int(batch.indices[-1]) + 1, end - start)
    num_classes = teacher.config.num_classes
    index = torch.cat(kept) if kept else torch.empty(0, dtype=torch.int64)
    targets = torch.cat(rows) if rows else torch.empty(0, num_classes, dtype=torch.float32)
    run.skipped.extend(item for part in distributed.gather_objects(unreadable) for item in part)
    gathered = distributed.gather_rows(index, targets, to_all=True)
    assert gathered is not None
    return gathered


def expand(
    positive_set: LabeledFolder,
    index: Sequence[IndexEntry],
    teacher: LoadedModel,
    out: str | os.PathLike[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 256,
    whole_pool: bool = False,
    run: RunContext | None = None,
    **legacy: Any,
) -> ExpandedSet:
    """Write the extended set ``L^t ∪ U^p`` to the folder ``out`` (format: :mod:`pucli.data.manifest`).

    Items are the positives (in ``positive_set`` order) then the index entries with
    ``selected=True`` (in index order, i.e. by descending selector score); an unlabeled path that
    is also a positive is kept once, as a positive. Unreadable images are left out of the manifest
    and added to ``run.skipped``. The folder is written under a temporary name beside ``out`` and
    renamed into place, so ``out`` is either the complete new set or what it was before.

    Args:
        positive_set: ``L^t``, labels in the teacher's output order.
        index: the selection index (``pucli.data.index.read_index``).
        teacher: the loaded teacher.
        out: the expanded-set folder; it must not exist, be empty, or hold an earlier expanded set
            (which is replaced).
        temperature: T > 0 of the soft targets (the paper uses 1).
        whole_pool: take every index entry, kept or not (an index written by ``pucli select --all``),
            each with its selector score: the whole pool, for ``distill --weighting pu-score`` or
            for training on the pool unselected (what :mod:`pucli.pu.trust` may recommend).
        run, legacy: as for :func:`teacher_soft_targets`.

    Returns:
        The :class:`ExpandedSet` written, ``root`` set to ``out``.

    Raises:
        OptionError: ``temperature`` not > 0.
        UsageError: ``out`` is a file or a non-empty folder that is not an expanded set; its parent
            folder is missing.
        DataError: no image of the extended set could be read.
    """
    if not temperature > 0:
        raise OptionError("temperature", temperature, "must be > 0")
    run = RunContext.given(run, **legacy)
    out = Path(out)
    _check_replaceable(out)
    positive_paths = {p.absolute() for p in positive_set.paths}
    selected = [e for e in index if (whole_pool or e.selected) and e.path.absolute() not in positive_paths]
    paths = list(positive_set.paths) + [e.path for e in selected]
    origins = ["positive"] * len(positive_set) + ["unlabeled"] * len(selected)
    labels = list(positive_set.labels) + [-1] * len(selected)
    scores: list[float | None] = [None] * len(positive_set) + [e.score for e in selected]

    kept, soft_targets = teacher_soft_targets(teacher, paths, temperature=temperature, batch_size=batch_size, run=run)
    if len(kept) == 0:
        raise DataError(f"none of the positive or selected images could be read; check the positive set "
                        f"{positive_set.root} and the index")
    keep = kept.tolist()
    expanded = build_expanded_set(
        paths=[paths[i] for i in keep],
        origins=[origins[i] for i in keep],
        labels=[labels[i] for i in keep],
        scores=[scores[i] for i in keep],
        soft_targets=soft_targets,
        temperature=temperature,
        teacher_digest=teacher.digest,
        class_names=list(positive_set.class_names),
        teacher=str(teacher.path.absolute()),
    )
    if not distributed.is_main():  # under torchrun, rank 0 writes the set
        expanded.root = out
        return expanded
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        # mkdtemp makes the folder private (0700); the set should get the permissions of any new folder.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        write_expanded_set(expanded, staging)
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    expanded.root = out
    return expanded


def _check_replaceable(out: Path) -> None:
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist; create it first")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{out} is a file: name a new folder for the expanded set")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise UsageError(f"{out} is a non-empty folder that is not an expanded set: name a new folder")


def _replace_folder(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(old / out.name, out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
