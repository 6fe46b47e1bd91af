"""The images BN re-estimation runs on: any source pucli reads, drawn, decoded and batched.

A calibration source (``pucli recalibrate --data SRC``) is any of: a folder of images (recursive;
a labeled folder with class subfolders too), a file listing image paths (or tar shards), ``-``
(such a list, or a selection index, on stdin), tar shards (``pool-{000000..000099}.tar``), a
selection index written by ``pucli select`` (``#pucli-index v1``: its selected rows), or an
expanded set written by ``pucli expand`` (a folder with ``manifest.tsv``: all its items).

:func:`calibration_batches` draws ``images`` of the source's paths in a seeded random order, skips
unreadable files (drawing the next ones in their place) and yields batches of one size: the number
of batches is ``ceil(n / batch_size)`` and each holds ``n // batches`` images (``n``: the readable
images drawn, at most ``images``), so at most ``batches - 1`` of them are left out and every image
weighs the same in the cumulative average.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch
from torch import Tensor

from pucli.data.files import SkippedFile
from pucli.data.index import INDEX_TAG_PREFIX
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches

__all__ = ["AUGMENTATIONS", "calibration_batches", "calibration_paths", "calibration_plan"]

AUGMENTATIONS = ("none", "flip-crop")


def calibration_paths(source: str, *, stdin: TextIO | None = None, parameter: str = "data") -> list[Path]:
    """The image paths of ``source`` (module docstring), in the source's own order. Errors name
    ``parameter``, the parameter that named ``source``.

    Raises:
        UsageError: the source does not exist.
        DataError: a malformed index, expanded set, path list or shard.
        NoImagesError: the source names no image.
    """
    from pucli.data.index import read_index
    from pucli.data.manifest import MANIFEST_NAME, read_expanded_set
    from pucli.data.sources import UnlabeledPool

    if source == "-":
        stream = stdin or sys.stdin
        binary = getattr(stream, "buffer", None)
        text = binary.read().decode("utf-8", errors="surrogateescape") if binary is not None else stream.read()
        if text.startswith(INDEX_TAG_PREFIX):
            return _selected(read_index("-", stdin=io.StringIO(text), parameter=parameter), parameter, "stdin")
        return UnlabeledPool.from_source("-", stdin=io.StringIO(text), parameter=parameter).paths
    path = Path(source)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return list(read_expanded_set(path, parameter=parameter).paths)
    if path.is_file() and _starts_with_index_tag(path):
        return _selected(read_index(path, parameter=parameter), parameter, str(path))
    return UnlabeledPool.from_source(source, parameter=parameter).paths


def _starts_with_index_tag(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(INDEX_TAG_PREFIX)) == INDEX_TAG_PREFIX.encode()


def _selected(entries: list, parameter: str, where: str) -> list[Path]:
    from pucli.errors import NoImagesError

    paths = [entry.path for entry in entries if entry.selected]
    if not paths:
        raise NoImagesError(f"{parameter} {where}: the index keeps no image; select with a lower threshold or a "
                            "`pucli select budget=N`", parameter=parameter, path=where)
    return paths


def calibration_plan(available: int, images: int, batch_size: int) -> tuple[int, int]:
    """``(batches, per_batch)`` for ``images`` (at most ``available``) in equal batches of at
    most ``batch_size`` (module docstring)."""
    wanted = min(images, available)
    batches = max(1, math.ceil(wanted / batch_size))
    return batches, max(1, wanted // batches)


def calibration_batches(
    paths: list[Path],
    preprocess: Preprocess,
    *,
    images: int = 1000,
    batch_size: int = 100,
    seed: int = 0,
    augment: str = "none",
    device: torch.device | None = None,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
) -> Iterator[Tensor]:
    """Normalised batches, float32 (per_batch, C, H, W) on ``device`` (default CPU), of ``images`` images drawn
    from ``paths`` in a seeded random order (:func:`calibration_plan`); ``augment="flip-crop"``
    pads, crops and flips each image at random (``pucli.data.augment.FlipCrop``), else the
    deterministic evaluation transform alone. Unreadable files go to ``skipped`` and are replaced
    by the next paths of the order; when the source runs out of readable images, the batches are
    planned on the images it had.
    """
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(paths), generator=generator).tolist()
    wanted = min(images, len(paths))
    flip_crop = None
    if augment == "flip-crop":
        from pucli.data.augment import FlipCrop

        flip_crop = FlipCrop(*preprocess.size)
    # Decode first, batch afterwards: unreadable files are only known once read, and the batches
    # must all have one size. The drawn images are held as uint8 (1,000 RGB at 224 x 224: 150 MB).
    dataset = ImageDataset([paths[i] for i in order], preprocess)
    held: list[Tensor] = []
    count = 0
    for batch in iterate_batches(dataset, batch_size=min(wanted, 256), workers=workers, skipped=skipped):
        held.append(batch.images[: wanted - count])
        count += len(held[-1])
        if count >= wanted:
            break
    if not count:
        return
    drawn = torch.cat(held)
    batches, per_batch = calibration_plan(count, count, batch_size)
    for k in range(batches):
        chunk = drawn[k * per_batch : (k + 1) * per_batch]
        if flip_crop is not None:
            chunk = flip_crop(chunk, generator)
        yield preprocess.normalize(chunk.to(device))
