"""From paths to batches: the evaluation transform, the dataset, and ordered batching.

Images are decoded (:mod:`pucli.data.decode`) in DataLoader worker processes and brought to the
model's input size as uint8; :class:`Preprocess` turns a batch into normalised float32 on the
model's device. Unreadable files are reported in each batch's ``failed`` list and collected as
:class:`~pucli.data.files.SkippedFile` records: a long run never dies on one file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from pucli.data.decode import BadImageError, decode_image_file, decode_images
from pucli.data.files import SkippedFile

if TYPE_CHECKING:
    from pucli.checkpoints import ModelConfig

__all__ = ["Batch", "ImageDataset", "Preprocess", "collate", "iterate_batches"]


class Preprocess:
    """The deterministic evaluation transform of a model's config (timm's eval recipe).

    :meth:`resize` works per image in the loader workers: uint8 (C, H, W) -> uint8 (C, h, w) at the
    model's input size (shorter side to ``size / crop_pct``, then centre crop). :meth:`normalize`
    works per batch on the model's device: uint8 (B, C, h, w) -> float32, ``(x/255 - mean) / std``.
    """

    def __init__(self, config: ModelConfig) -> None:
        from torchvision.transforms import InterpolationMode

        self.channels = config.in_chans
        self.size = (config.input_size[1], config.input_size[2])
        self.crop_pct = config.crop_pct
        self.interpolation = InterpolationMode(config.interpolation if config.interpolation != "random" else "bilinear")
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if tuple(image.shape[-2:]) == self.size:
            return image
        scale = [math.floor(s / self.crop_pct) for s in self.size]
        if self.size[0] == self.size[1]:
            image = F.resize(image, scale[0], interpolation=self.interpolation, antialias=True)
        else:
            image = F.resize(image, scale, interpolation=self.interpolation, antialias=True)
        return F.center_crop(image, list(self.size))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(batch.device)
        std = self.std.to(batch.device)
        return (batch.float() - mean) / std


class ImageDataset(Dataset):
    """Decoded, resized images of ``paths``; item ``i`` is ``(i, image or None, label, reason)``.

    A DataLoader with a batch size fetches through :meth:`__getitems__`, a whole batch per call.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess, labels: Sequence[int] | None = None) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else None
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        label = self.labels[index] if self.labels is not None else -1
        try:
            image = self.preprocess.resize(decode_image_file(self.paths[index], self.preprocess.channels))
        except BadImageError as exc:
            return index, None, label, str(exc)
        return index, image, label, None

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The items ``indices`` already collated, in order: what ``collate`` would make of
        ``[self[i] for i in indices]``.

        DataLoader calls this once per batch in the worker: one warnings context, one stack and
        one set of index/label tensors per batch instead of per image.
        """
        decoded = decode_images([self.paths[index] for index in indices], self.preprocess.channels)
        samples: list[tuple[int, torch.Tensor | None, int, str | None]] = []
        for index, (image, reason) in zip(indices, decoded):
            label = self.labels[index] if self.labels is not None else -1
            if image is not None:
                try:
                    samples.append((index, self.preprocess.resize(image), label, None))
                    continue
                except BadImageError as exc:
                    reason = str(exc)
            samples.append((index, None, label, reason))
        return collate(samples)


@dataclass
class Batch:
    """``images`` (B, C, h, w) uint8; ``indices`` (B,) int64 positions in the dataset; ``labels`` (B,)
    int64 (-1 when unlabeled); ``failed`` lists (index, reason) of the items dropped from it."""

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    failed: list[tuple[int, str]]


def collate(samples: list[tuple[int, torch.Tensor | None, int, str | None]] | Batch) -> Batch:
    """Items of :class:`ImageDataset` to a :class:`Batch`; a batch that
    :meth:`ImageDataset.__getitems__` already made passes through."""
    if isinstance(samples, Batch):
        return samples
    good = [s for s in samples if s[1] is not None]
    failed = [(s[0], s[3] or "unreadable") for s in samples if s[1] is None]
    if good:
        images = torch.stack([s[1] for s in good])  # type: ignore[misc]
    else:
        images = torch.empty(0, dtype=torch.uint8)
    return Batch(
        indices=torch.tensor([s[0] for s in good], dtype=torch.int64),
        images=images,
        labels=torch.tensor([s[2] for s in good], dtype=torch.int64),
        failed=failed,
    )


def iterate_batches(
    dataset: ImageDataset,
    *,
    batch_size: int = 256,
    workers: int = 0,
    pin_memory: bool = False,
    skipped: list[SkippedFile] | None = None,
) -> Iterator[Batch]:
    """Batches of ``dataset`` in order; unreadable files are appended to ``skipped`` and left out.

    Memory stays flat in the size of the dataset: batches are produced and dropped one by one.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch in loader:
        if skipped is not None:
            skipped.extend(SkippedFile(str(dataset.paths[i]), reason) for i, reason in batch.failed)
        if len(batch.indices):
            yield batch
