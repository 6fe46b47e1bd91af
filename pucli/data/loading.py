"""From paths to batches: the evaluation transform, the dataset, and ordered batching.

Images are decoded (:mod:`pucli.data.decode`) in DataLoader worker processes and brought to the
model's input size as uint8; :class:`Preprocess` turns a batch into normalised float32 on the
model's device. Unreadable files are reported in each batch's ``failed`` list and collected as
:class:`~pucli.data.files.SkippedFile` records: a long run never dies on one file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from pucli.data.decode import BadImageError, decode_image_file, decode_images, draft_side
from pucli.data.files import SkippedFile

if TYPE_CHECKING:
    from pucli.model_config import ModelConfig

__all__ = ["Batch", "ImageDataset", "Preprocess", "collate", "iterate_batches"]


class Preprocess:
    """The deterministic evaluation transform of a model's config: timm's own, so a model means the
    same in pucli and in timm (``timm.data.create_transform(**resolve_model_data_config(model))``).

    :meth:`resize` works per image in the loader workers: uint8 (C, H, W) -> uint8 (C, h, w) at the
    model's input size, by timm's eval transform on a PIL image (``crop_mode`` ``center``: shorter
    side to ``floor(size / crop_pct)``, then centre crop; ``squash``, ``border`` as timm), with every
    ``crop_pct`` applied, also to images already at the input size. An image the transform would
    leave as it is (at the input size with ``floor(size / crop_pct) == size``) is passed through.
    :meth:`normalize` works per batch on the model's device: uint8 (B, C, h, w) -> float32,
    ``(x/255 - mean) / std``.
    """

    def __init__(self, config: ModelConfig) -> None:
        from torchvision.transforms import InterpolationMode

        self.channels = config.in_chans
        self.size = (config.input_size[1], config.input_size[2])
        self.crop_pct = config.crop_pct
        self.crop_mode = config.crop_mode
        # "random" is a training-time choice; timm's eval transform takes bilinear for it too.
        self.interpolation = InterpolationMode(config.interpolation if config.interpolation != "random" else "bilinear")
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self._mean, self._std = tuple(config.mean), tuple(config.std)
        scale = tuple(math.floor(s / self.crop_pct) for s in self.size)
        self._unchanged_at_size = scale == self.size and self.crop_mode in ("center", "squash")
        self._transform: Callable[[Any], torch.Tensor] | None = None  # built on first use, in the worker

    def data_config(self) -> dict[str, Any]:
        """This transform in timm's data-config form, as run reports record it."""
        return {
            "input_size": [self.channels, *self.size],
            "interpolation": str(self.interpolation.value),
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "mean": list(self._mean),
            "std": list(self._std),
        }

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        if self._unchanged_at_size and tuple(image.shape[-2:]) == self.size:
            return image
        from PIL import Image

        if self._transform is None:
            from timm.data import create_transform

            # use_prefetcher: stop at uint8 pixels (normalize runs per batch, on the device).
            self._transform = create_transform(
                (self.channels, *self.size), is_training=False, interpolation=str(self.interpolation.value),
                mean=self._mean, std=self._std, crop_pct=self.crop_pct, crop_mode=self.crop_mode,
                use_prefetcher=True,
            )
        pixels = image[0] if self.channels == 1 else image.permute(1, 2, 0)
        return self._transform(Image.fromarray(pixels.contiguous().numpy()))

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
        # JPEGs twice this size or more are decoded at reduced size (pucli.data.decode, draft).
        self.draft = draft_side(preprocess.size, preprocess.crop_pct)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        label = self.labels[index] if self.labels is not None else -1
        try:
            image = self.preprocess.resize(decode_image_file(self.paths[index], self.preprocess.channels,
                                                             draft=self.draft))
        except BadImageError as exc:
            return index, None, label, str(exc)
        return index, image, label, None

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The items ``indices`` already collated, in order: what ``collate`` would make of
        ``[self[i] for i in indices]``.

        DataLoader calls this once per batch in the worker: one warnings context, one stack and
        one set of index/label tensors per batch instead of per image.
        """
        decoded = decode_images([self.paths[index] for index in indices], self.preprocess.channels, draft=self.draft)
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
    keep_empty: bool = False,
) -> Iterator[Batch]:
    """Batches of ``dataset`` in order; unreadable files are appended to ``skipped`` and left out.

    Batch ``b`` holds the readable items of positions ``b * batch_size`` to ``(b + 1) * batch_size - 1``;
    a batch none of whose items could be read is dropped, unless ``keep_empty`` (then it comes
    with 0 images and its ``failed`` list, so a caller can tell which batch it was).
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
        if len(batch.indices) or keep_empty:
            yield batch
