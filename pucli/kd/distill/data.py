"""What the student trains on: the extended set ``L^l`` in batches, from memory or from disk.

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757), Algorithm 2 draws mini-batches from ``L^l``. When the decoded
set fits a memory budget it is decoded once into a uint8 tensor (:class:`InMemorySource`) and every
epoch trains from memory; otherwise images stream from disk through DataLoader workers
(:class:`StreamingSource`). With ``weighting="pu-score"`` items are drawn with replacement, with
probability :func:`sampling_weights`. Every draw comes from :func:`epoch_generator`, so a resumed
run draws what an uninterrupted one would have. With ``align="adversarial"`` the labeled positives
``L^t`` are also held apart (:class:`LabeledImages`): the source domain of :mod:`pucli.kd.align`,
resampled with replacement every step from generators of their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pucli import distributed
from pucli.data.files import SkippedFile
from pucli.data.loading import ImageDataset, Preprocess, collate, iterate_batches
from pucli.data.manifest import MANIFEST_NAME, ExpandedSet
from pucli.data.sources import LabeledFolder
from pucli.errors import DataError
from pucli.kd.distill.config import DistillConfig, steps_per_epoch
from pucli.progress import no_progress
from pucli.run_context import RunContext

__all__ = [
    "InMemorySource",
    "LabeledImages",
    "StreamingSource",
    "TrainingSource",
    "epoch_generator",
    "labeled_images",
    "load_validation_set",
    "sampling_weights",
    "soft_class_counts",
    "training_source",
]

_PURPOSES = {"order": 0, "augment": 1, "weights": 2, "source": 3, "source-augment": 4}


def epoch_generator(seed: int, epoch: int, purpose: str) -> torch.Generator:
    """Independent, reproducible randomness per (seed, epoch, purpose): resuming at epoch e draws
    exactly what an uninterrupted run would have drawn. ``purpose``: ``order`` (which items form
    each batch), ``augment`` (flip-crop), ``weights`` (robust KD's set ``W``, Eq. 9), ``source``
    (the labeled images drawn for adversarial alignment) or ``source-augment`` (their flip-crop):
    the last two never touch the draws of the others, so alignment leaves the KD batches as they were."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 8 + _PURPOSES[purpose])


def sampling_weights(expanded: ExpandedSet) -> Tensor:
    """Per-item sampling weights of ``weighting="pu-score"``: (N,) float64.

    ``sigmoid(s)`` of the selector score ``s`` of each unlabeled item (the index's score: the
    head's ``F(x)``, which nnPU's sigmoid loss trains towards +1 on positives and -1 on
    negatives, smoothed over the pool's k-NN graph by default, :mod:`pucli.pu.propagation`; a weighted
    average of ``F`` values, shifted so that ``s > 0`` keeps the same images count as ``F(x) > 0``),
    and 1 for the labeled positives, whose class is known. For an expanded set holding a whole
    pool (PU scores as sampling weights instead of a hard PU-s1 cut), items the selector
    rejects are still drawn, rarely. With the propagation ranking (``pucli select``'s default with
    at least 5 labeled positives per class) the scores are label-propagation values of magnitude
    0.01-0.1, so ``sigmoid(s)`` stays within about 0.49-0.53 and the draw is close to uniform
    (docs/benchmarks.md, "Select, weight or take the pool").

    Raises:
        DataError: an unlabeled item has no score (the message names its manifest row).
    """
    weights = torch.ones(len(expanded), dtype=torch.float64)
    for row, (origin, score) in enumerate(zip(expanded.origins, expanded.scores)):
        if origin == "positive":
            continue
        if score is None:
            raise DataError(f"weighting pu-score: row {row + 1} of {_manifest(expanded)} has no selector score")
        weights[row] = 1.0 / (1.0 + math.exp(-score)) if score > -700 else 0.0
    return weights


class InMemorySource:
    """Decoded uint8 images (N', C, H, W) in memory; ``items`` (N',) their manifest rows;
    ``sampling_weights`` (N',) float64 or None (uniform, each item once per epoch)."""

    in_memory = True
    sampling_weights: Tensor | None = None

    def __init__(self, images: Tensor, items: Tensor, batch_size: int, device: torch.device) -> None:
        # On a GPU the whole set lives there: no per-batch host-to-device copies.
        self.images = images.to(device) if device.type == "cuda" else images
        self.items = items
        self.batch_size = batch_size
        self.device = device

    def __len__(self) -> int:
        return len(self.items)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """(manifest rows (B,) int64, images uint8 (B, C, H, W) on the device) in a fresh order."""
        if self.sampling_weights is None:
            order = torch.randperm(len(self.items), generator=generator)
        else:
            order = torch.multinomial(self.sampling_weights, len(self.items), replacement=True, generator=generator)
        for step in range(steps_per_epoch(len(self.items), self.batch_size)):
            positions = distributed.batch_share(order[step * self.batch_size:(step + 1) * self.batch_size])
            images = self.images[positions.to(self.images.device)]
            yield self.items[positions], images.to(self.device, non_blocking=True)


class StreamingSource:
    """Images decoded from disk every epoch by DataLoader workers (sets above the memory budget)."""

    in_memory = False
    sampling_weights: Tensor | None = None

    def __init__(self, expanded: ExpandedSet, preprocess: Preprocess, batch_size: int, run: RunContext) -> None:
        self.dataset = ImageDataset(expanded.paths, preprocess)
        self.items = torch.arange(len(expanded))
        self.batch_size, self.workers, self.device = batch_size, run.workers, run.device
        self.skipped = run.skipped
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """As :meth:`InMemorySource.epoch_batches`; unreadable images are left out of their batch
        (and appended to ``skipped`` once)."""
        from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

        sampler = RandomSampler(self.dataset, generator=generator) if self.sampling_weights is None else \
            WeightedRandomSampler(self.sampling_weights, len(self.dataset), replacement=True, generator=generator)
        drop_last = len(self.dataset) >= 2 * self.batch_size
        if distributed.is_distributed():
            # Every rank draws the same order and loads its share of each batch: the batches of one
            # process, split (DistributedSampler deals single items and cannot weight them).
            order = torch.tensor(list(sampler), dtype=torch.int64)
            batches = [distributed.batch_share(order[s * self.batch_size:(s + 1) * self.batch_size]).tolist()
                       for s in range(steps_per_epoch(len(order), self.batch_size))]
            batching: dict[str, Any] = {"batch_sampler": batches}
        else:
            batching = {"batch_size": self.batch_size, "sampler": sampler, "drop_last": drop_last}
        loader = DataLoader(
            self.dataset, **batching,
            num_workers=self.workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )
        for batch in loader:
            for index, reason in batch.failed:
                if index not in self._reported and self.skipped is not None:
                    self._reported.add(index)
                    self.skipped.append(SkippedFile(str(self.dataset.paths[index]), reason))
            if len(batch.indices):
                yield batch.indices, batch.images.to(self.device, non_blocking=True)
            elif distributed.is_distributed():  # ranks step together, even with nothing readable
                channels, (height, width) = self.dataset.preprocess.channels, self.dataset.preprocess.size
                yield batch.indices, torch.empty(0, channels, height, width, dtype=torch.uint8, device=self.device)


TrainingSource = InMemorySource | StreamingSource


class LabeledImages:
    """The labeled positives ``L^t``, decoded: uint8 (P, C, H, W), the source domain of adversarial
    alignment (:mod:`pucli.kd.align`). ``is_positive`` (N,) bool: which manifest rows are labeled
    positives (the rest, unlabeled pool images, are the target domain)."""

    def __init__(self, images: Tensor, is_positive: Tensor, device: torch.device) -> None:
        self.images = images.to(device) if device.type == "cuda" else images
        self.is_positive = is_positive
        self.device = device

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` images drawn uniformly with replacement (``L^t`` is tiny next to the pool):
        uint8 (count', C, H, W) on the device, count' this rank's share under torchrun."""
        positions = distributed.batch_share(torch.randint(len(self.images), (count,), generator=generator))
        return self.images[positions.to(self.images.device)].to(self.device, non_blocking=True)


def labeled_images(expanded: ExpandedSet, source: TrainingSource, preprocess: Preprocess,
                   run: RunContext) -> LabeledImages:
    """The labeled positives of ``expanded`` for adversarial alignment: taken from ``source`` when it
    holds the set in memory, else decoded once (they are few; unreadable ones go to ``run.skipped``).

    Raises:
        DataError: the set has no labeled positive (origin ``positive``) or no unlabeled item, or
            none of its positives can be read; the message names the manifest.
    """
    is_positive = torch.tensor([origin == "positive" for origin in expanded.origins], dtype=torch.bool)
    if not bool(is_positive.any()) or bool(is_positive.all()):
        missing = "labeled positives" if not bool(is_positive.any()) else "unlabeled images"
        raise DataError(f"align adversarial: {_manifest(expanded)} lists no {missing}; alignment needs both "
                        "(`pucli expand positive=DIR index=INDEX`), or distill with `align=none`")
    if isinstance(source, InMemorySource):
        images = source.images[is_positive[source.items].to(source.images.device)]
    else:
        rows = is_positive.nonzero().flatten().tolist()
        images, _ = _decode_all([expanded.paths[r] for r in rows], preprocess, run.with_(progress=no_progress), "decode")
    if len(images) == 0:
        raise DataError(f"align adversarial: none of the labeled positives of {_manifest(expanded)} could be read")
    return LabeledImages(images, is_positive, run.device)


def training_source(expanded: ExpandedSet, preprocess: Preprocess, config: DistillConfig,
                    run: RunContext) -> tuple[TrainingSource, float]:
    """The source ``distill`` trains from and the seconds spent decoding it (0 when streaming):
    in memory when the decoded uint8 set fits ``config.memory_budget_bytes``, else streaming; with
    ``weighting="pu-score"``, its items' :func:`sampling_weights`. Unreadable images go to
    ``run.skipped``.

    Raises:
        DataError: no image of the set could be read; an unlabeled item has no selector score
            (PU-score weighting).
    """
    channels, height, width = preprocess.channels, *preprocess.size
    source: TrainingSource
    decode_s = 0.0
    if len(expanded) * channels * height * width > config.memory_budget_bytes:
        source = StreamingSource(expanded, preprocess, config.batch_size, run)
    else:
        start = time.perf_counter()
        images, items = _decode_all(expanded.paths, preprocess, run, "decode")
        if len(items) == 0:
            raise DataError(f"{_manifest(expanded)}: none of the images it lists could be read")
        source, decode_s = InMemorySource(images, items, config.batch_size, run.device), time.perf_counter() - start
    if config.weighting == "pu-score":
        source.sampling_weights = sampling_weights(expanded)[source.items]
    return source, decode_s


def soft_class_counts(soft_targets: Tensor, source: TrainingSource) -> Tensor:
    """``y = sum_i y_i^te`` of Eq. 7 over the items ``source`` trains on (unreadable ones dropped):
    (K,) float64 from (N, K) ``soft_targets``; with PU-score weighting, the counts expected under
    the sampling (each row weighted by its sampling weight)."""
    trained_targets = soft_targets[source.items].double()
    if source.sampling_weights is not None:
        trained_targets = trained_targets * source.sampling_weights[:, None]
    return trained_targets.sum(dim=0)


def load_validation_set(val_set: LabeledFolder, preprocess: Preprocess, workers: int) -> tuple[Tensor, Tensor]:
    """Decode ``val_set`` once: ``(images uint8 (N', C, H, W), labels (N',) int64)`` of its readable images.

    Raises:
        DataError: none of its images could be read.
    """
    images, kept = _decode_all(val_set.paths, preprocess, RunContext(workers=workers), "validation")
    if len(kept) == 0:
        raise DataError(f"{val_set.root}: none of its images could be read")
    labels = torch.tensor(val_set.labels, dtype=torch.int64)[kept]
    return images, labels


def _decode_all(paths: list[Path], preprocess: Preprocess, run: RunContext, stage: str) -> tuple[Tensor, Tensor]:
    """Decode every image once into a preallocated uint8 (N, C, H, W) tensor with ``run.workers``
    processes, reporting ``stage`` to ``run.progress``; returns it cut to the readable images and their
    positions (N',) int64 in ``paths`` (the others go to ``run.skipped``)."""
    progress = run.progress
    channels, height, width = preprocess.channels, *preprocess.size
    images = torch.empty(len(paths), channels, height, width, dtype=torch.uint8)
    kept = torch.empty(len(paths), dtype=torch.int64)
    filled = 0
    progress(stage, 0, len(paths))
    for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=512, workers=run.workers,
                                 skipped=run.skipped):
        count = len(batch.indices)
        images[filled:filled + count] = batch.images
        kept[filled:filled + count] = batch.indices
        filled += count
        progress(stage, int(batch.indices[-1]) + 1, len(paths))
    if filled < len(paths):
        return images[:filled].clone(), kept[:filled].clone()
    return images, kept


def _manifest(expanded: ExpandedSet) -> str:
    """The manifest's path, for messages (an expanded set built in memory has none)."""
    return str(expanded.root / MANIFEST_NAME) if expanded.root is not None else "the expanded set's manifest"
