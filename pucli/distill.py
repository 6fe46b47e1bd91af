"""Train a student on the extended set with (robust) knowledge distillation (PU compression, stage 3).

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757), Section 3 and Algorithm 2: the student minimises, over the
extended set ``L^l`` written by ``pucli expand``,

- ``kd``: plain KD, Eq. 1, ``1/n sum_i CE(y_i^te, y_i^st)``;
- ``weighted-kd``: Eq. 8, each sample weighted by the Eq. 7 weight of its teacher-argmax class;
- ``robust-kd``: Eq. 10, ``max over w in W`` of the weighted loss, per batch, where ``W`` holds M
  perturbations of the Eq. 7 weights within ``eps`` (re-drawn every epoch unless fixed).

The losses are those of :mod:`pucli.robust_kd`. Without augmentation the soft targets cached by
``pucli expand`` are the targets (the teacher never runs); with augmentation the teacher runs on the
same augmented batch as the student, so targets match inputs. When the decoded set fits a memory
budget it is decoded once into a uint8 tensor and every epoch trains from memory; otherwise images
stream from disk through DataLoader workers. A checkpoint of plain tensors and dicts is written
atomically after every epoch (and before the first), so ``resume=True`` or a Ctrl-C loses at most
the epoch in progress.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pucli import distributed
from pucli.checkpoints import LoadedModel, ModelConfig, build_model, check_architecture
from pucli.errors import DataError, Interrupted, UsageError
from pucli.manifest import ExpandedSet, retemper
from pucli.paths import temporary_path_beside
from pucli.progress import ProgressCallback, no_progress
from pucli.robust_kd import RobustKDLoss, class_weights, kd_loss, sample_weights, soft_cross_entropy
from pucli.sources import ImageDataset, LabeledFolder, Preprocess, SkippedFile, collate, iterate_batches

__all__ = [
    "LOSSES",
    "AUGMENTATIONS",
    "CHECKPOINT_FORMAT_VERSION",
    "DistillConfig",
    "DistillResult",
    "EpochStats",
    "TrainingInterrupted",
    "distill",
    "resolve_augment",
    "default_epochs",
    "training_bound_throughput",
    "sampling_weights",
    "WEIGHTINGS",
]

LOSSES = ("robust-kd", "weighted-kd", "kd")
AUGMENTATIONS = ("auto", "none", "flip-crop")
OPTIMIZERS = ("sgd", "adamw")
KEEP = ("last", "best")
WEIGHTINGS = ("uniform", "pu-score")
CHECKPOINT_FORMAT = "pucli-distill-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 2**30
# Paper's student recipe (official code): SGD lr 0.1, momentum 0.9, weight decay 5e-4.
_DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Auto epochs: enough passes for a few thousand optimizer steps on small sets, 20 on large ones.
_AUTO_TARGET_STEPS = 5000
_AUTO_MIN_EPOCHS, _AUTO_MAX_EPOCHS = 20, 200
# Images with one channel and at most this many pixels a side are treated as digits / characters:
# flips and crops change their meaning (a flipped 2 is not a 2), so auto augmentation is off.
_SMALL_GRAY_SIDE = 64


class TrainingInterrupted(Interrupted):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) during training; the checkpoint holds
    the last finished epoch."""


@dataclass
class DistillConfig:
    """Training settings. ``None`` means "choose from the data" (see each field).

    ``temperature``: T of the soft targets, ``None`` = the expanded set's (cached targets are
    re-tempered exactly otherwise). ``epochs``: ``None`` = :func:`default_epochs`. ``lr``: ``None``
    = 0.1 for SGD (the paper's), 1e-3 for AdamW. ``eps`` / ``num_weight_vectors``: robust KD's
    radius and M (Eq. 9). ``redraw_weight_set``: draw a new ``W`` every epoch (``False`` keeps the
    first, as Algorithm 2). ``augment``: ``auto`` | ``none`` | ``flip-crop``. ``keep``: ``last`` or
    ``best`` (best validation top-1; needs a validation set). ``memory_budget_bytes``: largest
    decoded uint8 set trained from memory. ``checkpoint_interval``: seconds between checkpoints
    (written at the end of an epoch once that long has passed since the last, and after the last
    epoch; 0 writes one every epoch): epochs of a few images would otherwise spend their time
    writing checkpoints. ``weighting``: ``uniform`` (every item once per epoch)
    or ``pu-score`` (each epoch draws as many items with replacement, with probability
    :func:`sampling_weights`: the PU selector's scores as sampling weights, for a set that holds
    a whole pool; Eq. 7 then uses the soft class counts expected under that sampling).
    """

    loss: str = "robust-kd"
    temperature: float | None = None
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    eps: float = 0.1
    num_weight_vectors: int = 8
    redraw_weight_set: bool = True
    augment: str = "auto"
    keep: str = "last"
    seed: int = 0
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    weighting: str = "uniform"
    checkpoint_interval: float = 30.0

    def validate(self) -> None:
        """Raises UsageError naming the CLI option of the first bad setting."""
        checks = [
            (self.loss in LOSSES, f"--loss {self.loss}: choose one of {', '.join(LOSSES)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer}: choose sgd or adamw"),
            (self.augment in AUGMENTATIONS, f"--augment {self.augment}: choose one of {', '.join(AUGMENTATIONS)}"),
            (self.keep in KEEP, f"--keep {self.keep}: choose last or best"),
            (self.weighting in WEIGHTINGS, f"--weighting {self.weighting}: choose one of {', '.join(WEIGHTINGS)}"),
            (self.checkpoint_interval >= 0, f"--checkpoint-interval {self.checkpoint_interval}: must be >= 0 (seconds)"),
            (self.temperature is None or (math.isfinite(self.temperature) and self.temperature > 0),
             f"--temperature {self.temperature}: must be > 0"),
            (self.epochs is None or self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"--lr {self.lr}: must be > 0"),
            (math.isfinite(self.eps) and self.eps >= 0, f"--eps {self.eps}: must be >= 0"),
            (self.num_weight_vectors >= 1, f"--num-weight-vectors {self.num_weight_vectors}: must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


@dataclass
class EpochStats:
    """One epoch: mean training loss, learning rate at its end, validation top-1 (percent, or
    ``None``), images trained, seconds of training (excluding validation and checkpointing), images/s,
    and for robust KD how often each vector of ``W`` attained the max."""

    epoch: int
    loss: float
    lr: float
    val_top1: float | None
    images: int
    train_s: float
    images_per_s: float
    max_vector_counts: list[int] = field(default_factory=list)


@dataclass
class DistillResult:
    """What :func:`distill` produced: the student (eval mode, CPU) and how training went.

    ``images_per_s`` is the training throughput over all epochs run in this call;
    ``decode_s`` the seconds spent decoding the set into memory (0 when streaming).
    """

    student: nn.Module
    student_config: ModelConfig
    epochs: int
    history: list[EpochStats]
    kept_epoch: int
    augment: str
    in_memory: bool
    num_items: int
    images_per_s: float
    decode_s: float
    resumed_from: int | None
    teacher_matches_data: bool
    settings: dict[str, Any]


def resolve_augment(config: ModelConfig, augment: str) -> str:
    """``auto`` -> ``none`` for small single-channel inputs (digits, characters), else ``flip-crop``."""
    if augment != "auto":
        return augment
    _, height, width = config.input_size
    small_gray = config.in_chans == 1 and max(height, width) <= _SMALL_GRAY_SIDE
    return "none" if small_gray else "flip-crop"


def default_epochs(num_items: int, batch_size: int) -> int:
    """Epochs giving about 5,000 optimizer steps, at least 20 and at most 200."""
    steps = _steps_per_epoch(num_items, batch_size)
    return int(min(_AUTO_MAX_EPOCHS, max(_AUTO_MIN_EPOCHS, math.ceil(_AUTO_TARGET_STEPS / steps))))


def sampling_weights(expanded: ExpandedSet) -> Tensor:
    """Per-item sampling weights of ``weighting="pu-score"``: (N,) float64.

    ``sigmoid(s)`` of the selector score ``s`` of each unlabeled item (the index's score: the
    head's ``F(x)``, which nnPU's sigmoid loss trains towards +1 on positives and -1 on
    negatives, smoothed over the pool's k-NN graph by default, :mod:`pucli.graph`; a weighted
    average of ``F`` values, shifted so that ``s > 0`` keeps the same images count as ``F(x) > 0``),
    and 1 for the labeled positives, whose class
    is known. For an expanded set holding a whole pool (issue 5: PU scores as sampling weights
    instead of a hard PU-s1 cut), items the selector rejects are still drawn, rarely.

    Raises:
        DataError: an unlabeled item has no score.
    """
    weights = torch.ones(len(expanded), dtype=torch.float64)
    for row, (origin, score) in enumerate(zip(expanded.origins, expanded.scores)):
        if origin == "positive":
            continue
        if score is None:
            raise DataError(f"--weighting pu-score: manifest row {row + 1} has no selector score")
        weights[row] = 1.0 / (1.0 + math.exp(-score)) if score > -700 else 0.0
    return weights


class FlipCrop:
    """Random crop after zero-padding by 1/8 of the side plus a random horizontal flip (the CIFAR
    recipe, scaled to any size), per image, by torchvision's transforms. uint8 (B, C, H, W) in and
    out; the randomness is drawn from ``generator``, so a seeded run is reproducible."""

    def __init__(self, height: int, width: int) -> None:
        from torchvision.transforms import v2

        padding = [max(1, width // 8), max(1, height // 8)]
        self.transform = v2.Compose([v2.RandomCrop((height, width), padding=padding), v2.RandomHorizontalFlip()])

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        # torchvision draws from the global RNG: seed a forked copy of it from our generator.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in images])


def distill(
    teacher: LoadedModel,
    expanded: ExpandedSet,
    student_arch: str,
    *,
    config: DistillConfig,
    checkpoint_path: str | os.PathLike[str],
    resume: bool = False,
    val_set: LabeledFolder | None = None,
    device: torch.device = torch.device("cpu"),
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
) -> DistillResult:
    """Train a fresh ``student_arch`` student on ``expanded`` (Eq. 1, 8 or 10, per ``config.loss``).

    The student has the teacher's number of classes, input channels and preprocessing. Unreadable
    images are left out (appended to ``skipped``).

    Args:
        teacher: the loaded teacher (runs only with augmentation).
        expanded: the extended set (``pucli.manifest.read_expanded_set``).
        student_arch: any timm model name, e.g. ``lenet5_half`` or ``resnet18``.
        checkpoint_path: written after every epoch; read when ``resume``.
        val_set: labeled folder evaluated after every epoch (selects the model when ``keep=best``).
        progress: called as ``progress("distill", step, total_steps, epoch=, loss=, img_s=)``.

    Returns:
        :class:`DistillResult`; ``student`` is the kept model, in eval mode on the CPU.

    Raises:
        UsageError: bad settings, unknown architecture, ``keep=best`` without ``val_set``, no
            checkpoint to resume, or a checkpoint from different settings.
        DataError: the set and the teacher disagree on the number of classes; no image readable;
            the checkpoint is unreadable.
        TrainingInterrupted: Ctrl-C; the checkpoint holds the last finished epoch.
    """
    config.validate()
    check_architecture(student_arch)
    if config.keep == "best" and val_set is None:
        raise UsageError("--keep best needs --val DIR (a labeled validation folder, never the test set)")
    teacher_config = teacher.config
    if expanded.num_classes != teacher_config.num_classes:
        raise DataError(
            f"--data has soft targets for {expanded.num_classes} classes but the teacher has "
            f"{teacher_config.num_classes} outputs: expand with this teacher"
        )
    checkpoint_path = Path(checkpoint_path)
    temperature = config.temperature or expanded.temperature
    augment = resolve_augment(teacher_config, config.augment)
    preprocess = Preprocess(teacher_config)
    student_config = dataclasses.replace(teacher_config, architecture=student_arch, model_args={})

    torch.manual_seed(config.seed)
    student = build_model(student_config).to(device)
    use_cuda = device.type == "cuda"
    # channels_last speeds up convolutions on tensor cores; on the CPU it only adds copies.
    memory_format = torch.channels_last if use_cuda else torch.contiguous_format
    student = student.to(memory_format=memory_format)
    teacher_model = teacher.model.to(device, memory_format=memory_format).eval() if augment != "none" else None

    source, decode_s = _training_source(expanded, preprocess, config, device, workers, skipped, progress)
    soft_targets = retemper(expanded.soft_targets, expanded.temperature, temperature)
    # Eq. 7 over the items actually trained on (unreadable ones dropped), at the training temperature;
    # with PU-score weighting, over the soft class counts expected under the sampling.
    trained_targets = soft_targets[source.items].double()
    if config.weighting == "pu-score":
        source.sampling_weights = sampling_weights(expanded)[source.items]
        trained_targets = trained_targets * source.sampling_weights[:, None]
    weights = class_weights(trained_targets.sum(dim=0)).float().to(device)
    soft_targets = soft_targets.to(device)
    epochs = config.epochs or default_epochs(len(source), config.batch_size)
    steps_per_epoch = _steps_per_epoch(len(source), config.batch_size)

    settings = {
        "student": student_arch, "loss": config.loss, "temperature": float(temperature), "epochs": epochs,
        "batch_size": config.batch_size, "optimizer": config.optimizer,
        "lr": float(config.lr or _DEFAULT_LR[config.optimizer]), "eps": float(config.eps),
        "num_weight_vectors": config.num_weight_vectors, "redraw_weight_set": config.redraw_weight_set,
        "augment": augment, "keep": config.keep, "seed": config.seed, "num_items": len(source),
        "weighting": config.weighting,
        "num_classes": student_config.num_classes, "in_chans": student_config.in_chans,
    }
    optimizer = _make_optimizer(student, config.optimizer, settings["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(epochs * steps_per_epoch))
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    robust = (
        RobustKDLoss(weights, eps=config.eps, num_vectors=config.num_weight_vectors, temperature=temperature,
                     generator=_epoch_generator(config.seed, 0, "weights"))
        if config.loss == "robust-kd" else None
    )
    val_images = _load_val(val_set, preprocess, config, workers) if val_set is not None else None
    # Under torchrun: DistributedDataParallel, each rank training on its share of every batch.
    trainee = _data_parallel(student, device, config.batch_size)

    state = _TrainingState(history=[], best_epoch=0, best_top1=-1.0, best_state=None)
    start_epoch = 1
    resumed_from: int | None = None
    if resume:
        start_epoch = 1 + _load_checkpoint(checkpoint_path, settings, student, optimizer, scheduler, scaler, robust, state)
        resumed_from = start_epoch - 1
    else:
        _save_checkpoint(checkpoint_path, 0, settings, student, optimizer, scheduler, scaler, robust, state)

    images_trained, train_seconds = 0, 0.0
    epoch = start_epoch
    saved_epoch, saved_at = start_epoch - 1, time.monotonic()
    try:
        for epoch in range(start_epoch, epochs + 1):
            if robust is not None and config.redraw_weight_set and epoch > 1:
                robust.redraw(_epoch_generator(config.seed, epoch, "weights"))
            stats = _train_epoch(
                epoch, epochs, steps_per_epoch, trainee, teacher_model, source, soft_targets, weights, robust,
                config.loss, temperature, preprocess, augment, optimizer, scheduler, scaler, amp_dtype,
                memory_format, config.seed, device, progress,
            )
            images_trained += stats.images
            train_seconds += stats.train_s
            if val_images is not None:
                stats.val_top1 = _accuracy(student, val_images, preprocess, config.batch_size, device, memory_format)
                if stats.val_top1 > state.best_top1:
                    state.best_top1, state.best_epoch = stats.val_top1, epoch
                    state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
            state.history.append(stats)
            if epoch == epochs or time.monotonic() - saved_at >= config.checkpoint_interval:
                _save_checkpoint(checkpoint_path, epoch, settings, student, optimizer, scheduler, scaler, robust, state)
                saved_epoch, saved_at = epoch, time.monotonic()
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}; {checkpoint_path} holds epoch {saved_epoch}: "
            "run the same command with --resume to continue"
        ) from None

    kept_epoch = epochs
    if config.keep == "best" and state.best_state is not None:
        student.load_state_dict(state.best_state)
        kept_epoch = state.best_epoch
    student = student.to("cpu", memory_format=torch.contiguous_format).eval()
    teacher.model.to("cpu", memory_format=torch.contiguous_format)
    return DistillResult(
        student=student,
        student_config=student_config,
        epochs=epochs,
        history=state.history,
        kept_epoch=kept_epoch,
        augment=augment,
        in_memory=source.in_memory,
        num_items=len(source),
        images_per_s=images_trained / train_seconds if train_seconds else float("nan"),
        decode_s=decode_s,
        resumed_from=resumed_from,
        teacher_matches_data=not expanded.teacher_digest or expanded.teacher_digest == teacher.digest,
        settings=settings,
    )


def training_bound_throughput(
    student: nn.Module,
    teacher: nn.Module | None,
    input_size: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    *,
    budget_s: float = 2.0,
) -> float:
    """Upper bound on distill throughput, images/s: student forward + backward (soft cross-entropy)
    plus, when ``teacher`` is given, a teacher forward, on a float32 batch already on ``device``.

    The models are copied, so the callers' weights and gradients are untouched.
    """
    student = copy.deepcopy(student).to(device).train()
    teacher = copy.deepcopy(teacher).to(device).eval() if teacher is not None else None
    images = torch.randn(batch_size, *input_size, device=device)
    num_classes = student(images[:1]).shape[1]
    targets = torch.softmax(torch.randn(batch_size, num_classes, device=device), dim=1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        if teacher is not None:
            with torch.no_grad():
                teacher(images)
        kd_loss(student(images), targets).backward()

    step()
    sync()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < budget_s:
        step()
        runs += 1
    sync()
    return runs * batch_size / (time.perf_counter() - start)


# --- data --------------------------------------------------------------------------------------


class _InMemorySource:
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
        steps = _steps_per_epoch(len(self.items), self.batch_size)
        for step in range(steps):
            positions = distributed.batch_share(order[step * self.batch_size:(step + 1) * self.batch_size])
            images = self.images[positions.to(self.images.device)]
            yield self.items[positions], images.to(self.device, non_blocking=True)


class _StreamingSource:
    """Images decoded from disk every epoch by DataLoader workers (sets above the memory budget)."""

    in_memory = False
    sampling_weights: Tensor | None = None

    def __init__(self, expanded: ExpandedSet, preprocess: Preprocess, batch_size: int, workers: int,
                 device: torch.device, skipped: list[SkippedFile] | None) -> None:
        self.dataset = ImageDataset(expanded.paths, preprocess)
        self.items = torch.arange(len(expanded))
        self.batch_size, self.workers, self.device = batch_size, workers, device
        self.skipped = skipped
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def epoch_batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

        sampler = RandomSampler(self.dataset, generator=generator) if self.sampling_weights is None else \
            WeightedRandomSampler(self.sampling_weights, len(self.dataset), replacement=True, generator=generator)
        drop_last = len(self.dataset) >= 2 * self.batch_size
        if distributed.is_distributed():
            # Every rank draws the same order and loads its share of each batch: the batches of one
            # process, split (DistributedSampler deals single items and cannot weight them).
            order = torch.tensor(list(sampler), dtype=torch.int64)
            batches = [distributed.batch_share(order[s * self.batch_size:(s + 1) * self.batch_size]).tolist()
                       for s in range(_steps_per_epoch(len(order), self.batch_size))]
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


def _training_source(expanded: ExpandedSet, preprocess: Preprocess, config: DistillConfig, device: torch.device,
                     workers: int, skipped: list[SkippedFile] | None,
                     progress: ProgressCallback) -> tuple[_InMemorySource | _StreamingSource, float]:
    channels, height, width = preprocess.channels, *preprocess.size
    if len(expanded) * channels * height * width > config.memory_budget_bytes:
        return _StreamingSource(expanded, preprocess, config.batch_size, workers, device, skipped), 0.0
    start = time.perf_counter()
    images, items = _decode_all(expanded.paths, preprocess, workers, skipped, progress, "decode")
    if len(items) == 0:
        raise DataError("--data: none of the images listed in the manifest could be read")
    return _InMemorySource(images, items, config.batch_size, device), time.perf_counter() - start


def _decode_all(paths: list[Path], preprocess: Preprocess, workers: int, skipped: list[SkippedFile] | None,
                progress: ProgressCallback, stage: str, labels: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """Decode every image once into a preallocated uint8 (N, C, H, W) tensor; returns it cut to the
    readable images and their positions (N',) int64 in ``paths``."""
    channels, height, width = preprocess.channels, *preprocess.size
    images = torch.empty(len(paths), channels, height, width, dtype=torch.uint8)
    kept = torch.empty(len(paths), dtype=torch.int64)
    filled = 0
    progress(stage, 0, len(paths))
    for batch in iterate_batches(ImageDataset(paths, preprocess, labels), batch_size=512, workers=workers,
                                 skipped=skipped):
        count = len(batch.indices)
        images[filled:filled + count] = batch.images
        kept[filled:filled + count] = batch.indices
        filled += count
        progress(stage, int(batch.indices[-1]) + 1, len(paths))
    if filled < len(paths):
        return images[:filled].clone(), kept[:filled].clone()
    return images, kept


def _load_val(val_set: LabeledFolder, preprocess: Preprocess, config: DistillConfig,
              workers: int) -> tuple[Tensor, Tensor]:
    images, kept = _decode_all(val_set.paths, preprocess, workers, None, no_progress, "validation")
    if len(kept) == 0:
        raise DataError(f"--val {val_set.root}: none of its images could be read")
    labels = torch.tensor(val_set.labels, dtype=torch.int64)[kept]
    return images, labels


def _steps_per_epoch(num_items: int, batch_size: int) -> int:
    # A last batch much smaller than the others gives a noisy gradient (and a noisy max in Eq. 10):
    # drop it once there are two full batches; every epoch reshuffles, so no item is always left out.
    if num_items >= 2 * batch_size:
        return num_items // batch_size
    return max(1, math.ceil(num_items / batch_size))


def _epoch_generator(seed: int, epoch: int, purpose: str) -> torch.Generator:
    """Independent, reproducible randomness per (seed, epoch, purpose): resuming at epoch e draws
    exactly what an uninterrupted run would have drawn."""
    offsets = {"order": 0, "augment": 1, "weights": 2}
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 8 + offsets[purpose])


# --- training ------------------------------------------------------------------------------------


@dataclass
class _TrainingState:
    history: list[EpochStats]
    best_epoch: int
    best_top1: float
    best_state: dict[str, Tensor] | None


def _make_optimizer(student: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=_WEIGHT_DECAY["sgd"])
    return torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=_WEIGHT_DECAY["adamw"])


def _warmup_cosine(total_steps: int):  # noqa: ANN202 - LambdaLR's callable
    """LR factor per step: linear warm-up over 3% of the steps (at most 500), then cosine to 0.
    Warm-up keeps lr 0.1 from blowing up a freshly initialised network without batch norm (LeNet)."""
    warmup = max(1, min(500, total_steps * 3 // 100))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _train_epoch(
    epoch: int, epochs: int, steps_per_epoch: int, student: nn.Module, teacher: nn.Module | None,
    source: _InMemorySource | _StreamingSource, soft_targets: Tensor, weights: Tensor, robust: RobustKDLoss | None,
    loss_name: str, temperature: float, preprocess: Preprocess, augment: str, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format, seed: int, device: torch.device, progress: ProgressCallback,
) -> EpochStats:
    student.train()
    flip_crop = FlipCrop(*preprocess.size) if augment == "flip-crop" else None
    # Each rank augments its own images: its own draws (rank 0's are those of one process).
    augment_generator = _epoch_generator(seed + 7919 * distributed.rank(), epoch, "augment")
    loss_sum = torch.zeros((), device=device)
    images_seen, steps = 0, 0
    max_counts = [0] * (robust.num_vectors if robust is not None else 0)
    total_steps = epochs * steps_per_epoch
    done_before = (epoch - 1) * steps_per_epoch
    start = time.perf_counter()
    for items, images in source.epoch_batches(_epoch_generator(seed, epoch, "order")):
        if flip_crop is not None and len(images):
            images = flip_crop(images, augment_generator)
        inputs = preprocess.normalize(images).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if teacher is not None:
                with torch.no_grad():
                    targets = torch.softmax(teacher(inputs).float() / temperature, dim=1)
            else:
                targets = soft_targets[items.to(device)]
            logits = student(inputs).float()
        if distributed.is_distributed():
            loss, chosen = _distributed_loss(logits, targets, robust, loss_name, weights, temperature)
            if chosen is not None:
                max_counts[chosen] += 1
        elif robust is not None:
            loss, chosen = robust(logits, targets)
            max_counts[chosen] += 1
        elif loss_name == "weighted-kd":
            loss = kd_loss(logits, targets, temperature, sample_weights(targets, weights))
        else:
            loss = kd_loss(logits, targets, temperature)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach()
        images_seen += len(items)
        steps += 1
        if steps % 20 == 0 or steps == steps_per_epoch:
            elapsed = time.perf_counter() - start
            progress("distill", done_before + steps, total_steps, epoch=epoch,
                     loss=float(loss_sum) / steps, img_s=images_seen / elapsed if elapsed else 0.0)
    elapsed = time.perf_counter() - start
    if distributed.is_distributed():
        # A rank's loss is its share of the batch loss, scaled so that the ranks' mean is the batch loss.
        totals = distributed.all_reduce_sum(torch.tensor([float(loss_sum), images_seen], dtype=torch.float64))
        loss_sum, images_seen = totals[0] / distributed.world_size(), int(totals[1])
    mean_loss = float(loss_sum) / max(1, steps)
    if not math.isfinite(mean_loss):
        raise DataError(f"training diverged in epoch {epoch} (loss {mean_loss}): lower --lr")
    return EpochStats(
        epoch=epoch, loss=mean_loss, lr=optimizer.param_groups[0]["lr"], val_top1=None, images=images_seen,
        train_s=elapsed, images_per_s=images_seen / elapsed if elapsed else float("nan"), max_vector_counts=max_counts,
    )


def _data_parallel(student: nn.Module, device: torch.device, batch_size: int) -> nn.Module:
    """``student`` in DistributedDataParallel under torchrun (gradients averaged over ranks after
    every backward pass); ``student`` itself in one process.

    Raises:
        UsageError: fewer images per batch than processes.
    """
    if not distributed.is_distributed():
        return student
    if batch_size < distributed.world_size():
        raise UsageError(f"--batch-size {batch_size}: each batch is split over the {distributed.world_size()} "
                         "processes; give at least one image per process")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


def _distributed_loss(logits: Tensor, targets: Tensor, robust: RobustKDLoss | None, loss_name: str,
                      weights: Tensor, temperature: float) -> tuple[Tensor, int | None]:
    """The batch loss of Eq. 1, 8 or 10 when the batch is split over the ranks of a torchrun launch.

    Each rank sums its per-sample losses, weighted by each vector of ``W`` for robust KD (by the
    Eq. 7 weights for weighted KD); these sums and the item counts are all-reduced, so every rank
    knows the whole batch's losses and, for robust KD, takes the same maximising vector (Eq. 10's
    max is over the batch, not over a rank's share of it). The rank's loss is its sum for that
    vector times ``world_size / n``: DDP's mean of the ranks' gradients is then the gradient of
    the whole batch's loss, as in one process. A rank with no image (all unreadable) contributes
    zero. Returns ``(loss, chosen vector or None)``.
    """
    rows = robust.num_vectors if robust is not None else 1
    if len(logits):
        per_sample = soft_cross_entropy(logits, targets, temperature)
        if robust is not None:
            vector_weights = robust.weight_set.to(per_sample.dtype)[:, targets.argmax(dim=1)]
        elif loss_name == "weighted-kd":
            vector_weights = sample_weights(targets, weights).to(per_sample.dtype)[None]
        else:
            vector_weights = torch.ones(1, len(per_sample), dtype=per_sample.dtype, device=per_sample.device)
        sums = vector_weights @ per_sample
    else:  # keeps the graph through the student, which DDP needs on every rank
        sums = logits.sum() * 0 + torch.zeros(rows, device=logits.device)
    totals = torch.cat([sums.detach().double(), torch.tensor([float(len(logits))], dtype=torch.float64, device=sums.device)])
    distributed.all_reduce_sum(totals)
    chosen = int(totals[:-1].argmax()) if robust is not None else None
    loss = sums[chosen or 0] * (distributed.world_size() / float(totals[-1]))
    return loss, chosen


def _accuracy(student: nn.Module, val: tuple[Tensor, Tensor], preprocess: Preprocess, batch_size: int,
              device: torch.device, memory_format: torch.memory_format) -> float:
    """Top-1 accuracy in percent of ``student`` on decoded validation images."""
    images, labels = val
    student.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 4 * batch_size):
            batch = images[start:start + 4 * batch_size].to(device)
            logits = student(preprocess.normalize(batch).contiguous(memory_format=memory_format))
            correct += int((logits.argmax(dim=1).cpu() == labels[start:start + 4 * batch_size]).sum())
    student.train()
    return 100.0 * correct / len(labels)


# --- checkpoints ---------------------------------------------------------------------------------
# Plain tensors, numbers, strings, lists and dicts only, so torch.load(weights_only=True) reads them.

# Settings a resumed run must share with the checkpoint (others, e.g. --keep, may change).
#: Values of settings added after the first checkpoints, for checkpoints that predate them.
_RESUME_DEFAULTS = {"weighting": "uniform"}
_RESUME_KEYS = ("student", "loss", "temperature", "epochs", "batch_size", "optimizer", "lr", "eps", "weighting",
                "num_weight_vectors", "redraw_weight_set", "augment", "seed", "num_items", "num_classes", "in_chans")


def _save_checkpoint(path: Path, epoch: int, settings: dict[str, Any], student: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                     robust: RobustKDLoss | None, state: _TrainingState) -> None:
    if not distributed.is_main():  # under torchrun the replicas are equal: rank 0 writes
        return
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": epoch,
        "settings": settings,
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "weight_set": robust.weight_set.cpu() if robust is not None else torch.empty(0),
        "history": [dataclasses.asdict(s) for s in state.history],
        "best": {"epoch": state.best_epoch, "val_top1": state.best_top1, "state": state.best_state or {}},
    }
    tmp = temporary_path_beside(path)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path, settings: dict[str, Any], student: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: torch.amp.GradScaler, robust: RobustKDLoss | None,
                     state: _TrainingState) -> int:
    """Restore everything from ``path``; returns the number of finished epochs."""
    if not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}; run without --resume, or pass --checkpoint PATH")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling or I/O failure means the same thing to the user
        raise DataError(f"--checkpoint {path} cannot be read ({exc.__class__.__name__}): delete it and start again") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"--checkpoint {path} is not a pucli distill checkpoint")
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise DataError(f"--checkpoint {path} has unsupported version {checkpoint.get('format_version')}; upgrade pucli")
    saved = checkpoint["settings"]
    for key in _RESUME_KEYS:
        if saved.get(key, _RESUME_DEFAULTS.get(key)) != settings[key]:
            raise UsageError(
                f"--resume: {path} was written with {key}={saved.get(key)!r}, this run has {settings[key]!r}; "
                "use the same options, or start again without --resume"
            )
    student.load_state_dict(checkpoint["student"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    if robust is not None:
        robust.weight_set = checkpoint["weight_set"].to(robust.class_weights.device)
    state.history = [EpochStats(**entry) for entry in checkpoint["history"]]
    best = checkpoint["best"]
    state.best_epoch, state.best_top1 = best["epoch"], best["val_top1"]
    state.best_state = best["state"] or None
    return int(checkpoint["epoch"])
