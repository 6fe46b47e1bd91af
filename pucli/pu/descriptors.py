"""Frozen-mode descriptors of the positive set and the unlabeled pool, and their on-disk cache.

With the teacher frozen, each image's multi-scale descriptor (:class:`~pucli.pu.network.MultiScaleExtractor`)
is computed once, with the deterministic evaluation transform, and cached
(``cache_dir()/descriptors/pool-<key>.safetensors`` for the pool, ``positive-<key>.safetensors``
for the labeled positives, :mod:`pucli.cache`: another labeled subset reuses the pool's entry);
the pool's extraction is saved in parts as it goes, so an interrupted run resumes. Under torchrun the ranks share the extraction.
When P is tiny, seeded affine copies of the positives (:class:`~pucli.data.augment.PositiveAugmentation`)
are extracted and cached beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pucli import distributed
from pucli.cache import CacheEntry, read_entry, write_entry
from pucli.checkpoints import LoadedModel, ModelConfig
from pucli.data.augment import PositiveAugmentation, resolve_augment
from pucli.data.files import SkippedFile
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.data.shards import storage_name
from pucli.paths import cache_dir
from pucli.pu.network import MultiScaleExtractor
from pucli.pu.options import Scales
from pucli.run_context import RunContext

__all__ = ["Descriptors", "DESCRIPTOR_CACHE_VERSION", "DESCRIPTOR_PART_IMAGES", "AUTO_AUGMENT_COPIES",
           "AUTO_AUGMENT_MAX_PER_CLASS", "resolve_positive_augmentation", "descriptor_cache_key", "pool_cache_key",
           "positive_cache_key",
           "extract_descriptors", "extract_augmented_descriptors", "load_or_extract_descriptors",
           "extract_descriptors_in_parts"]


# (part number, positions of the readable images within the part, their descriptors, its unreadable files)
PartCallback = Callable[[int, torch.Tensor, torch.Tensor, list[SkippedFile]], None]

DESCRIPTOR_CACHE_VERSION = 5  # 2: augmented positives beside the plain ones; 3: pucli.cache entries; 4: timm eval transform;
# 5: the pool and the positives in separate entries (another labeled subset reuses the pool's)


@dataclass
class Descriptors:
    """Frozen-mode descriptors. ``positive`` (N_P', C) float32 and ``unlabeled`` (N_U', C) float32
    hold the readable images only; ``positive_index`` / ``unlabeled_index`` (int64) give their
    positions in the input lists; ``skipped`` the unreadable files; ``cache_path`` where they
    live on disk (None with the cache off); ``from_cache`` whether this run loaded them;
    ``positive_augmented`` (copies * N_P', C) float32 the descriptors of the augmented copies of
    the positives, copy-major (all images' copy 0, then copy 1, ...), (0, C) without augmentation.

    The pool and the positives are cached in separate entries (``cache_path``: the pool's, the
    large one; ``positive_cache_path``: the positives'), so a run with another labeled subset
    against the same pool reuses the pool's descriptors; ``from_cache`` says whether the pool's
    were loaded. ``key`` names the two together (:func:`descriptor_cache_key`; None with the cache off)."""

    positive: torch.Tensor
    unlabeled: torch.Tensor
    positive_index: torch.Tensor
    unlabeled_index: torch.Tensor
    skipped: list[SkippedFile]
    cache_path: Path | None
    from_cache: bool
    positive_augmented: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    positive_cache_path: Path | None = None
    key: str | None = None

    @property
    def positive_set(self) -> torch.Tensor:
        """P as trained on: (N_P' + copies * N_P', C) float32, the plain then the augmented descriptors."""
        if len(self.positive_augmented) == 0:
            return self.positive
        return torch.cat([self.positive, self.positive_augmented])


AUTO_AUGMENT_COPIES = 32


AUTO_AUGMENT_MAX_PER_CLASS = 5


def resolve_positive_augmentation(config: ModelConfig, copies: int | None, num_positive: int, seed: int) -> PositiveAugmentation | None:
    """The augmentation a run uses, or None for none.

    ``copies`` None (auto): :data:`AUTO_AUGMENT_COPIES` when P has at most
    :data:`AUTO_AUGMENT_MAX_PER_CLASS` images per class of the teacher (``config.num_classes``),
    else none (copies help the smallest P and not n_l = 10 on mnist-pu: see docs/benchmarks.md,
    section "`pucli select` on mnist-pu", "Augmenting P"). Flips only where distill's
    ``resolve_augment`` would (not for small grayscale inputs such as digits, where a flip changes
    the class).
    """
    if copies is None:
        copies = AUTO_AUGMENT_COPIES if num_positive <= AUTO_AUGMENT_MAX_PER_CLASS * config.num_classes else 0
    if copies == 0:
        return None
    return PositiveAugmentation(copies=copies, seed=seed, flip=resolve_augment(config, "auto") == "flip-crop")


def _file_identities(paths: Sequence[Path]) -> str:
    """sha256 over (path, size, mtime_ns) of each file, in order; a missing file hashes as -1.
    A member of a tar shard takes the shard's size and mtime (:func:`pucli.data.shards.storage_name`),
    and each shard is ``stat``-ed once, not once per member (a million-image pool in 100 shards:
    100 calls, not 1,000,000)."""
    digest = hashlib.sha256()
    shard_identities: dict[str, tuple[int, int]] = {}
    lines: list[str] = []
    for path in paths:
        text = str(path)
        storage = storage_name(text)
        member = storage != text  # a member of a shard: its shard is stat-ed once
        identity = shard_identities.get(storage) if member else None
        if identity is None:
            try:
                stat = os.stat(storage)
                identity = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                identity = (-1, -1)
            if member:
                shard_identities[storage] = identity
        lines.append(f"{text}\0{identity[0]}\0{identity[1]}\n")
        if len(lines) == 65536:  # hashed in blocks: the same digest as line by line, a fraction of the calls
            digest.update("".join(lines).encode())
            lines.clear()
    digest.update("".join(lines).encode())
    return digest.hexdigest()


def _model_parts(teacher: LoadedModel, preprocess: Preprocess, scales: Scales) -> dict[str, object]:
    config = teacher.config
    return {
        "version": DESCRIPTOR_CACHE_VERSION,
        "weights": teacher.digest,
        "architecture": config.architecture,
        "model_args": json.dumps(config.model_args, sort_keys=True, default=str),
        "preprocess": [preprocess.channels, list(preprocess.size), preprocess.crop_pct, preprocess.crop_mode,
                       str(preprocess.interpolation.value), list(config.mean), list(config.std)],
        "scales": scales.describe(),
        # The code of a model that is not a timm model (its file's digest): only then, so timm keys stay as they were.
        **({"code": config.code.get("sha256") or config.code.get("arch")} if config.code else {}),
    }


def _key(parts: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def pool_cache_key(teacher: LoadedModel, unlabeled_paths: Sequence[Path], preprocess: Preprocess,
                   scales: Scales) -> str:
    """Hex key naming the cached descriptors of the pool alone: it changes when the teacher's
    weights, the architecture, any pool file (path, size, mtime_ns), the pool's order, the
    preprocessing or the scales change, and not with the labeled positives, so another labeled
    subset against the same pool reuses the pool's descriptors."""
    return _key({**_model_parts(teacher, preprocess, scales), "unlabeled": _file_identities(unlabeled_paths)})


def positive_cache_key(teacher: LoadedModel, positive_paths: Sequence[Path], preprocess: Preprocess, scales: Scales,
                       augmentation: PositiveAugmentation | None = None) -> str:
    """Hex key naming the cached descriptors of the labeled positives (and their augmented
    copies): as :func:`pool_cache_key`, over the positives' files, plus the augmentation's
    settings (copies, seed, ranges)."""
    return _key({**_model_parts(teacher, preprocess, scales), "positive": _file_identities(positive_paths),
                 "augment": augmentation.describe() if augmentation is not None else "none"})


def descriptor_cache_key(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    scales: Scales,
    augmentation: PositiveAugmentation | None = None,
) -> str:
    """Hex key naming the descriptors of these positives and this pool together (what the
    selector's saved ensemble members are keyed by, :func:`pucli.pu.training.training_state_path`):
    it changes when either :func:`pool_cache_key` or :func:`positive_cache_key` does, i.e. with the
    teacher's weights, the architecture, any input file (path, size, mtime_ns), the order of the
    inputs, the preprocessing, the scales or the augmentation of the positives."""
    return _combined_key(pool_cache_key(teacher, unlabeled_paths, preprocess, scales),
                         positive_cache_key(teacher, positive_paths, preprocess, scales, augmentation))


def _combined_key(pool_key: str, positive_key: str) -> str:
    return hashlib.sha256(f"{pool_key}+{positive_key}".encode()).hexdigest()[:32]


def _cache_file(kind: str, key: str) -> Path:
    return cache_dir() / "descriptors" / f"{kind}-{key}.safetensors"


@dataclass
class _Part:
    """The cached descriptors of one side (the pool, or the positives with their copies)."""

    index: torch.Tensor
    values: torch.Tensor
    skipped: list[SkippedFile]
    augmented: torch.Tensor | None = None


def _read_cache(path: Path, kind: str) -> _Part | None:
    entry = read_entry(path, kind=f"descriptors-{kind}", version=DESCRIPTOR_CACHE_VERSION)
    if entry is None:
        return None
    tensors = entry.tensors
    try:
        return _Part(tensors["index"], tensors["descriptors"],
                     [SkippedFile(**item) for item in entry.metadata.get("skipped", [])], tensors.get("augmented"))
    except (KeyError, TypeError):
        return None  # a damaged entry is only a lost shortcut: recompute and overwrite it


def _write_cache(path: Path, kind: str, part: _Part) -> bool:
    tensors = {"index": part.index, "descriptors": part.values}
    if part.augmented is not None:
        tensors["augmented"] = part.augmented
    return write_entry(path, tensors, kind=f"descriptors-{kind}", version=DESCRIPTOR_CACHE_VERSION,
                       metadata={"skipped": [asdict(s) for s in part.skipped]})


@torch.inference_mode()
def extract_descriptors(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    batch_size: int = 512,
    run: RunContext | None = None,
    skipped: list[SkippedFile] | None = None,
    stage: str = "extract",
    progress_offset: int = 0,
    progress_total: int | None = None,
    part_size: int | None = None,
    on_part: PartCallback | None = None,
    **legacy: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``paths`` through ``extractor`` with the deterministic evaluation transform, on
    ``run.device`` with ``run.workers`` loader processes, reporting to ``run.progress`` (``legacy``:
    ``device=``, ``workers=``, ``progress=`` given directly, :meth:`RunContext.given`).

    Only one batch of decoded pixels is alive at a time; the (N', C) float32 descriptors of the
    readable images are collected on the CPU. Returns ``(index (N',) int64, descriptors (N', C))``;
    unreadable files go to ``skipped`` (the descriptors' own record of them, which the cache keeps).

    With ``part_size`` (a multiple of ``batch_size``) and ``on_part``, each run of ``part_size``
    positions (the last may be shorter) is handed to ``on_part(part, index, descriptors,
    skipped)`` as soon as its last batch is in (``index``: positions within the part), from the
    same loader: its workers start once for the whole list.
    """
    run = RunContext.given(run, **legacy)
    device, workers, progress = run.device, run.workers, run.progress
    extractor.eval()
    # Filled in place: collecting chunks and concatenating would hold the descriptors twice.
    descriptors = torch.empty(len(paths), extractor.channels)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    total = progress_total if progress_total is not None else len(paths)
    started = time.perf_counter()
    part_skipped: list[SkippedFile] = []
    dataset = ImageDataset(paths, preprocess)
    for number, batch in enumerate(iterate_batches(dataset, batch_size=batch_size, workers=workers,
                                                   pin_memory=device.type == "cuda", keep_empty=True)):
        failed = [SkippedFile(str(paths[i]), reason) for i, reason in batch.failed]
        part_skipped.extend(failed)
        if skipped is not None:
            skipped.extend(failed)
        if len(batch.indices):
            images = preprocess.normalize(batch.images.to(device, non_blocking=True))
            descriptors[batch.indices] = extractor(images).float().cpu()
            kept[batch.indices] = True
            done = int(batch.indices[-1]) + 1
            elapsed = time.perf_counter() - started
            progress(stage, progress_offset + done, total, img_s=done / elapsed if elapsed > 0 else 0.0)
        end = min(len(paths), (number + 1) * batch_size)
        if on_part is not None and part_size and (end % part_size == 0 or end == len(paths)):
            first = (end - 1) // part_size * part_size
            index = kept[first:end].nonzero().flatten()
            on_part(first // part_size, index, descriptors[first:end][index], part_skipped)
            part_skipped = []
    index = kept.nonzero().flatten()
    if len(index) == len(paths):
        return index, descriptors
    return index, descriptors[index]


@torch.inference_mode()
def extract_augmented_descriptors(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    augmentation: PositiveAugmentation,
    *,
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Descriptors of ``augmentation.copies`` augmented copies of each readable image of ``paths``.

    Augments the resized uint8 images (before normalisation), then extracts as
    :func:`extract_descriptors` does. Returns (copies * N', C) float32, copy-major; unreadable
    files are left out (the plain extraction already reported them).
    """
    extractor.eval()
    parameters = augmentation.draw(len(paths), preprocess.size)
    descriptors = torch.empty(augmentation.copies, len(paths), extractor.channels)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=batch_size, workers=0):
        for copy_index in range(augmentation.copies):
            images = augmentation.apply(batch.images, parameters[copy_index, batch.indices])
            descriptors[copy_index, batch.indices] = extractor(preprocess.normalize(images.to(device))).float().cpu()
        kept[batch.indices] = True
    return descriptors[:, kept].flatten(0, 1)


def load_or_extract_descriptors(
    teacher: LoadedModel,
    extractor: MultiScaleExtractor,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    scales: Scales,
    batch_size: int = 512,
    use_cache: bool = True,
    augmentation: PositiveAugmentation | None = None,
    resume: bool = False,
    run: RunContext | None = None,
    **legacy: Any,
) -> Descriptors | None:
    """Descriptors of P and U: each side from the cache when its key matches, else extracted (and cached),
    on ``run.device`` with ``run.workers`` loader processes, reporting to ``run.progress`` (``legacy``:
    those given as ``device=``, ``workers=``, ``progress=``).

    Under torchrun the ranks share the pool's extraction (:func:`_load_or_extract_pool`):
    rank 0 gets the descriptors, the other ranks None.

    With ``augmentation``, the augmented copies of P (:func:`extract_augmented_descriptors`) are
    extracted and cached with P, under a key that includes the augmentation's settings.

    The cache lives in ``pucli.paths.cache_dir()/descriptors/``: ``pool-<key>.safetensors`` (key:
    :func:`pool_cache_key`, independent of the positives) and ``positive-<key>.safetensors``
    (:func:`positive_cache_key`), each written atomically, so an interrupted run never leaves a
    half-written entry behind. While the pool is extracted, each finished part of it is saved in
    ``pool-<key>.parts/`` (:func:`extract_descriptors_in_parts`); ``resume`` loads the parts an
    interrupted run left instead of extracting them again (without it they are discarded).
    """
    run = RunContext.given(run, **legacy)
    pool_path = positive_path = key = None
    if use_cache:
        pool_key = pool_cache_key(teacher, unlabeled_paths, preprocess, scales)
        positive_key = positive_cache_key(teacher, positive_paths, preprocess, scales, augmentation)
        pool_path, positive_path = _cache_file("pool", pool_key), _cache_file("positive", positive_key)
        key = _combined_key(pool_key, positive_key)
    total = len(positive_paths) + len(unlabeled_paths)
    # The positives first (a few images: one process extracts them), then the pool.
    positives = None
    if distributed.is_main():
        positives = _read_cache(positive_path, "positive") if positive_path is not None else None
        if positives is None:
            skipped: list[SkippedFile] = []
            index, values, augmented = _positive_descriptors(
                extractor, positive_paths, preprocess, augmentation, batch_size=batch_size, run=run,
                skipped=skipped, progress_total=total)
            positives = _Part(index, values, skipped, augmented)
            if positive_path is not None and not _write_cache(positive_path, "positive", positives):
                positive_path = None
        else:
            run.progress("extract", len(positive_paths), total, cached=1)
    pool = _load_or_extract_pool(extractor, unlabeled_paths, preprocess, pool_path, batch_size=batch_size, run=run,
                                 resume=resume, progress_offset=len(positive_paths), progress_total=total)
    if pool is None or positives is None:
        return None
    part, from_cache = pool
    if pool_path is not None and not pool_path.is_file():
        pool_path = None  # a read-only cache folder must not fail the run: the next run recomputes
    augmented = positives.augmented if positives.augmented is not None else torch.empty(0, extractor.channels)
    return Descriptors(positives.values, part.values, positives.index, part.index, positives.skipped + part.skipped,
                       pool_path, from_cache, augmented, positive_cache_path=positive_path,
                       key=key if pool_path is not None and positive_path is not None else None)


def _load_or_extract_pool(
    extractor: MultiScaleExtractor,
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    path: Path | None,
    *,
    batch_size: int,
    run: RunContext,
    resume: bool,
    progress_offset: int,
    progress_total: int,
) -> tuple[_Part, bool] | None:
    """The pool's descriptors and whether they came from the cache.

    Under torchrun rank 0 looks up the cache and tells the others. Otherwise each rank extracts
    its block of whole batches of the pool (:func:`pucli.distributed.batch_block`: the same
    batches, so the same bits, as one process) and the blocks are gathered on rank 0 in pool
    order; the other ranks get None. The per-part resume of a one-process extraction is not used
    there: an interrupted run extracts the pool again.
    """
    sharded = distributed.is_distributed()
    cached = _read_cache(path, "pool") if path is not None and distributed.is_main() else None
    if (distributed.broadcast_object(cached is not None) if sharded else cached is not None):
        if cached is None:
            return None  # a rank other than 0: rank 0 has the cached pool
        run.progress("extract", progress_total, progress_total, cached=1)
        return cached, True
    skipped: list[SkippedFile] = []
    parts = None
    if sharded:
        start, end = distributed.batch_block(len(unlabeled_paths), batch_size)
        index, values = extract_descriptors(extractor, unlabeled_paths[start:end], preprocess, batch_size=batch_size,
                                            run=run, skipped=skipped)
        gathered = distributed.gather_rows(index + start, values)
        skipped = [item for rank_skipped in distributed.gather_objects(skipped) for item in rank_skipped]
        if gathered is None:
            return None
        index, values = gathered
    else:
        parts = _parts_folder(path, keep=resume) if path is not None else None
        index, values = extract_descriptors_in_parts(
            extractor, unlabeled_paths, preprocess, parts=parts, batch_size=batch_size, run=run, skipped=skipped,
            progress_offset=progress_offset, progress_total=progress_total)
    part = _Part(index, values, skipped)
    if path is not None and _write_cache(path, "pool", part) and parts is not None:
        shutil.rmtree(parts, ignore_errors=True)  # the whole entry now holds them
    return part, False


def _positive_descriptors(
    extractor: MultiScaleExtractor,
    positive_paths: Sequence[Path],
    preprocess: Preprocess,
    augmentation: PositiveAugmentation | None,
    *,
    batch_size: int,
    run: RunContext,
    skipped: list[SkippedFile],
    progress_total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P's ``(index, descriptors, augmented copies' descriptors)``; (0, C) copies without augmentation.
    One process decodes them (a few images: no loader workers)."""
    index, positive = extract_descriptors(extractor, positive_paths, preprocess, batch_size=batch_size,
                                          run=run.with_(workers=0), skipped=skipped, progress_total=progress_total)
    augmented = torch.empty(0, extractor.channels)
    if augmentation is not None:
        augmented = extract_augmented_descriptors(extractor, positive_paths, preprocess, augmentation, device=run.device,
                                                  batch_size=batch_size)
    return index, positive, augmented


# Images per saved part of the pool's descriptors (rounded to whole batches): an interrupted
# extraction loses at most this much work, and each part costs one DataLoader start-up.
DESCRIPTOR_PART_IMAGES = 8192


def _parts_folder(cache_path: Path, *, keep: bool) -> Path | None:
    """``<key>.parts/`` beside the cache entry, emptied unless ``keep``; None when it cannot be
    made (a read-only cache: extraction then simply cannot resume)."""
    parts = cache_path.with_name(cache_path.stem + ".parts")
    if not keep:
        shutil.rmtree(parts, ignore_errors=True)
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return parts


def extract_descriptors_in_parts(
    extractor: MultiScaleExtractor,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    parts: Path | None,
    batch_size: int = 512,
    run: RunContext | None = None,
    skipped: list[SkippedFile] | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
    **legacy: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_descriptors`, saving each part of :data:`DESCRIPTOR_PART_IMAGES` images to
    ``parts`` (atomically) as soon as it is done, and loading the parts already there instead of
    extracting them. Parts are whole batches starting at multiples of the batch size, so the
    descriptors are the same bits as one uninterrupted pass. ``parts`` None: one plain pass.

    Returns ``(index (N',) int64, descriptors (N', C) float32)`` as :func:`extract_descriptors`.
    """
    run = RunContext.given(run, **legacy)
    if parts is None:
        return extract_descriptors(extractor, paths, preprocess, batch_size=batch_size, run=run, skipped=skipped,
                                   progress_offset=progress_offset, progress_total=progress_total)
    total = progress_total if progress_total is not None else len(paths)
    size = batch_size * max(1, round(DESCRIPTOR_PART_IMAGES / batch_size))
    descriptors = torch.empty(len(paths), extractor.channels)  # pages are touched only when resuming
    kept = torch.zeros(len(paths), dtype=torch.bool)
    missing: list[int] = []  # first pool positions of the parts to extract, in order
    skipped_by_part: dict[int, list[SkippedFile]] = {}
    for start in range(0, len(paths), size):
        loaded = _read_part(_part_file(parts, start, len(paths[start:start + size])), extractor.channels)
        if loaded is None:
            missing.append(start)
            continue
        index, values, part_skipped = loaded
        descriptors[index + start] = values
        kept[index + start] = True
        skipped_by_part[start] = part_skipped
        run.progress("extract", progress_offset + start + len(paths[start:start + size]), total, cached=1)
    if missing:
        # One loader over all the missing parts: its workers start once, not once a part. Parts
        # are whole batches and only the pool's last part can be shorter, so the batches, and the
        # bits, are those of one pass over the pool.
        todo = [path for start in missing for path in paths[start:start + size]]

        def save(part: int, index: torch.Tensor, values: torch.Tensor, part_skipped: list[SkippedFile]) -> None:
            start = missing[part]
            _write_part(_part_file(parts, start, len(paths[start:start + size])), index, values, part_skipped)
            skipped_by_part[start] = list(part_skipped)

        index, values = extract_descriptors(extractor, todo, preprocess, batch_size=batch_size, run=run,
                                            progress_offset=progress_offset, progress_total=total, part_size=size,
                                            on_part=save)
        if len(todo) < len(paths):
            positions = torch.cat([torch.arange(start, start + len(paths[start:start + size])) for start in missing])
            descriptors[positions[index]] = values
            kept[positions[index]] = True
    if skipped is not None:
        for start in sorted(skipped_by_part):  # pool order, resumed or not
            skipped.extend(skipped_by_part[start])
    if missing and len(todo) == len(paths):
        return index, values  # nothing was cached: the pass was the whole pool, in pool order
    index = kept.nonzero().flatten()
    return index, (descriptors if len(index) == len(paths) else descriptors[index])


def _part_file(parts: Path, start: int, count: int) -> Path:
    return parts / f"unlabeled-{start:010d}-{count}.safetensors"


def _read_part(path: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]] | None:
    def whole(entry: CacheEntry) -> bool:
        index, values = entry.tensors["index"], entry.tensors["descriptors"]
        return values.ndim == 2 and values.shape[1] == channels and len(index) == len(values)

    entry = read_entry(path, kind="descriptor-part", version=DESCRIPTOR_CACHE_VERSION, check=whole)
    if entry is None:
        return None  # a damaged part is extracted again
    skipped = [SkippedFile(**item) for item in entry.metadata.get("skipped", [])]
    return entry.tensors["index"], entry.tensors["descriptors"], skipped


def _write_part(path: Path, index: torch.Tensor, values: torch.Tensor, skipped: list[SkippedFile]) -> None:
    # Parts are a shortcut: if one cannot be written the run goes on, only resuming starts over.
    write_entry(path, {"index": index, "descriptors": values}, kind="descriptor-part",
                version=DESCRIPTOR_CACHE_VERSION, metadata={"skipped": [asdict(s) for s in skipped]})
