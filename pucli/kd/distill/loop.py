"""Train a student on the extended set with (robust) knowledge distillation (PU compression, stage 3).

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757), Section 3 and Algorithm 2: the student minimises, over the
extended set ``L^l`` written by ``pucli expand``, the objective of :mod:`pucli.kd.losses`, built
once (:func:`~pucli.kd.losses.make_objective`):

- ``kd``: plain KD, Eq. 1, ``1/n sum_i CE(y_i^te, y_i^st)``;
- ``weighted-kd``: Eq. 8, each sample weighted by the Eq. 7 weight of its teacher-argmax class;
- ``robust-kd``: Eq. 10, ``max over w in W`` of the weighted loss, per batch, where ``W`` holds M
  perturbations of the Eq. 7 weights within ``eps`` (re-drawn every epoch unless fixed).

Without augmentation the soft targets cached by ``pucli expand`` are the targets (the teacher never
runs); with augmentation the teacher runs on the same augmented batch as the student, so targets
match inputs. With ``align="adversarial"`` (Tang et al. 2019, :mod:`pucli.kd.align`) each step also
draws labeled positives, and the loss adds the domain discriminator's binary cross-entropy through a
gradient-reversal layer whose scale follows DANN's warm-up over the run's steps; with ``align="none"``
nothing of it runs. The batches come from :mod:`~pucli.kd.distill.data`; a checkpoint
(:mod:`~pucli.kd.distill.checkpoint`) is written before the first epoch and after epochs, so
``resume=True`` or a Ctrl-C loses at most the epoch in progress.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pucli import distributed
from pucli.architectures import ArchSpec, parse_arch
from pucli.checkpoints import LoadedModel, ModelConfig, build_student, check_architecture
from pucli.data.augment import FlipCrop, resolve_augment
from pucli.data.loading import Preprocess
from pucli.data.manifest import ExpandedSet, retemper
from pucli.data.sources import LabeledFolder
from pucli.device import autocast_dtype, cpu_has_native_bfloat16
from pucli.errors import DataError, Interrupted, OptionError, PucliWarning
from pucli.kd.align import AlignedStudent, DomainDiscriminator, dann_lambda, domain_loss, feature_channels
from pucli.kd.distill.checkpoint import (
    EpochStats,
    Trainables,
    TrainingState,
    load_checkpoint,
    run_settings,
    save_checkpoint,
)
from pucli.kd.distill.config import WEIGHT_DECAY, DistillConfig, default_epochs, steps_per_epoch
from pucli.kd.distill.data import (
    LabeledImages,
    TrainingSource,
    epoch_generator,
    labeled_images,
    load_validation_set,
    soft_class_counts,
    training_source,
)
from pucli.kd.losses import class_weights, kd_loss, make_objective
from pucli.progress import ProgressCallback
from pucli.run_context import RunContext

__all__ = ["DistillResult", "TrainingInterrupted", "TrainingPlan", "distill", "training_bound_throughput"]


class TrainingInterrupted(Interrupted):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) during training; the checkpoint holds
    the last finished epoch."""


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


@dataclass(frozen=True)
class TrainingPlan:
    """What a :func:`distill` run is about to do, for the front end to say before it takes long.

    ``epochs`` in all (``config.epochs`` or :func:`~pucli.kd.distill.config.default_epochs`),
    ``first_epoch`` the one this call starts at (past 1 when resumed), ``steps_per_epoch`` optimizer
    steps of ``batch_size`` images over ``items`` images. ``epoch_s``: seconds the first epoch of
    this call took (validation included), None before it ran; ``remaining_s`` the estimate for
    the epochs after it at that pace.
    """

    epochs: int
    first_epoch: int
    steps_per_epoch: int
    batch_size: int
    items: int
    epochs_defaulted: bool
    epoch_s: float | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps left to run in this call."""
        return (self.epochs - self.first_epoch + 1) * self.steps_per_epoch

    @property
    def remaining_s(self) -> float | None:
        return None if self.epoch_s is None else self.epoch_s * (self.epochs - self.first_epoch)


@dataclass
class _Run:
    """What every epoch of one :func:`distill` run reads, built once."""

    trainee: nn.Module  # the student, or its DistributedDataParallel wrapper under torchrun
    trainables: Trainables
    teacher: nn.Module | None  # runs on every batch with augmentation; None trains on cached targets
    source: TrainingSource
    soft_targets: Tensor  # (N, K) float32 on the device, cached targets at the training temperature
    preprocess: Preprocess
    flip_crop: FlipCrop | None
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    device: torch.device
    seed: int
    epochs: int
    steps_per_epoch: int
    progress: ProgressCallback
    plan: Callable[[TrainingPlan], None] | None = None
    labeled: LabeledImages | None = None  # the source domain of adversarial alignment; None without it
    align_weight: float = 0.0  # lambda_max of DANN's warm-up


def distill(
    teacher: LoadedModel,
    expanded: ExpandedSet,
    student_arch: str | ArchSpec,
    *,
    config: DistillConfig,
    checkpoint_path: str | os.PathLike[str],
    resume: bool = False,
    val_set: LabeledFolder | None = None,
    run: RunContext | None = None,
    plan: Callable[[TrainingPlan], None] | None = None,
    student_init: tuple[nn.Module, ModelConfig] | None = None,
    **legacy: Any,
) -> DistillResult:
    """Train a fresh ``student_arch`` student on ``expanded`` (Eq. 1, 8 or 10, per ``config.loss``).

    The student has the teacher's number of classes, input channels and preprocessing. Unreadable
    images are left out (added to ``run.skipped``).

    Args:
        teacher: the loaded teacher (runs only with augmentation).
        expanded: the extended set (``pucli.data.manifest.read_expanded_set``).
        student_arch: any timm model name, e.g. ``lenet5_half`` or ``resnet18``, or an
            :class:`~pucli.architectures.ArchSpec` (``torchvision:NAME``, ``PATH.py:NAME`` with its
            keyword arguments; :func:`pucli.checkpoints.build_student`).
        config: the training settings (checked when built).
        checkpoint_path: written after epochs (see ``config.checkpoint_interval``); read when ``resume``.
        val_set: labeled folder evaluated after every epoch (selects the model when ``keep=best``).
        run: the device, loader processes, progress (``run.progress("distill", step, total_steps,
            epoch=, loss=, img_s=)``) and skipped-file log (:class:`pucli.run_context.RunContext`).
        plan: called with the :class:`TrainingPlan` before the first epoch, and again with its
            ``epoch_s`` once that epoch is done (the time the rest will take).
        student_init: a network to start from instead of a fresh ``student_arch`` (e.g. a pruned
            teacher, :func:`pucli.compress.formats.load_student_init`), and its config (whose
            ``model_args`` the student keeps); it is copied, never modified.
        legacy: ``device=``, ``workers=``, ``progress=``, ``skipped=`` of callers written before
            ``run`` (:meth:`pucli.run_context.RunContext.given`).

    Returns:
        :class:`DistillResult`; ``student`` is the kept model, in eval mode on the CPU.

    Raises:
        OptionError: ``keep=best`` without ``val_set``; fewer images per batch than torchrun processes;
            ``align_stage`` names a stage the student lacks.
        UsageError: unknown architecture, no checkpoint to resume, or a checkpoint from different settings;
            a student of other code whose output width is not the teacher's class count.
        DataError: the set and the teacher disagree on the number of classes; no image readable;
            the checkpoint is unreadable; the loss diverged; adversarial alignment on a set without
            labeled positives or without unlabeled images.
        TrainingInterrupted: Ctrl-C; the checkpoint holds the last finished epoch.
    """
    context = RunContext.given(run, **legacy)
    device = context.device
    spec = None
    if student_init is None:
        spec = student_arch if isinstance(student_arch, ArchSpec) else parse_arch(student_arch, parameter="student")
        if spec.kind == "timm":
            check_architecture(spec.name)
    if config.keep == "best" and val_set is None:
        raise OptionError("keep", "best", "needs a validation set: a labeled folder, never the test set")
    teacher_config = teacher.config
    if expanded.num_classes != teacher_config.num_classes:
        raise DataError(
            f"{expanded.root or 'the expanded set'} has soft targets for {expanded.num_classes} classes but the "
            f"teacher has {teacher_config.num_classes} outputs: expand with this teacher"
        )
    checkpoint_path = Path(checkpoint_path)
    temperature = config.temperature or expanded.temperature
    augment = resolve_augment(teacher_config, config.augment)
    preprocess = Preprocess(teacher_config)

    torch.manual_seed(config.seed)
    if student_init:
        student = copy.deepcopy(student_init[0])
        student_config = dataclasses.replace(teacher_config, architecture=student_init[1].architecture,
                                             model_args=dict(student_init[1].model_args), code=student_init[1].code)
    else:
        assert spec is not None
        student, student_config = build_student(spec, teacher_config)
    student = student.to(device)
    use_cuda = device.type == "cuda"
    # channels_last speeds up convolutions on tensor cores; on the CPU it only adds copies.
    memory_format = torch.channels_last if use_cuda else torch.contiguous_format
    student = student.to(memory_format=memory_format)
    teacher_model = teacher.model.to(device, memory_format=memory_format).eval() if augment != "none" else None
    if config.align == "adversarial":
        feature_channels(student, config.align_stage)  # a stage the student lacks: say so before decoding

    source, decode_s = training_source(expanded, preprocess, config, context)
    soft_targets = retemper(expanded.soft_targets, expanded.temperature, temperature)
    # Eq. 7 at the training temperature, over the items trained on (as they are sampled).
    weights = class_weights(soft_class_counts(soft_targets, source)).float().to(device)
    soft_targets = soft_targets.to(device)
    epochs = config.epochs or default_epochs(len(source), config.batch_size)
    amp_dtype = autocast_dtype(config.precision, device)
    if amp_dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bfloat16():
        warnings.warn(PucliWarning("precision bfloat16: this CPU has no native bfloat16 (AMX or AVX-512 BF16), "
                                   "so it is emulated and slower than float32"))
    settings = run_settings(config, student=student_config.architecture, temperature=temperature, epochs=epochs, augment=augment,
                            num_items=len(source), num_classes=student_config.num_classes,
                            in_chans=student_config.in_chans, precision=_precision_name(amp_dtype))
    run_steps = steps_per_epoch(len(source), config.batch_size)
    trainables = _trainables(student, config, weights, temperature, epochs * run_steps, amp_dtype)
    trainee: nn.Module = student
    labeled = None
    if config.align == "adversarial":
        labeled = labeled_images(expanded, source, preprocess, context)
        trainee = _alignment(trainables, config, device, epochs * run_steps)
    val_images = load_validation_set(val_set, preprocess, context.workers) if val_set is not None else None
    run = _Run(
        # Under torchrun: DistributedDataParallel, each rank training on its share of every batch.
        trainee=_data_parallel(trainee, device, config.batch_size), trainables=trainables, teacher=teacher_model,
        source=source, soft_targets=soft_targets, preprocess=preprocess,
        flip_crop=FlipCrop(*preprocess.size) if augment == "flip-crop" else None, amp_dtype=amp_dtype,
        memory_format=memory_format, device=device, seed=config.seed, epochs=epochs, steps_per_epoch=run_steps,
        progress=context.progress, plan=plan, labeled=labeled, align_weight=config.align_weight,
    )

    state = TrainingState()
    resumed_from = load_checkpoint(checkpoint_path, settings, trainables, state) if resume else None
    if resumed_from is None:
        save_checkpoint(checkpoint_path, 0, settings, trainables, state)
    if plan is not None:
        plan(TrainingPlan(epochs=epochs, first_epoch=1 + (resumed_from or 0), steps_per_epoch=run_steps,
                          batch_size=config.batch_size, items=len(source), epochs_defaulted=config.epochs is None))
    images_trained, train_seconds = _train_epochs(run, config, settings, checkpoint_path, state,
                                                  first_epoch=1 + (resumed_from or 0), val_images=val_images)

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


def _train_epochs(run: _Run, config: DistillConfig, settings: dict[str, Any], checkpoint_path: Path,
                  state: TrainingState, *, first_epoch: int,
                  val_images: tuple[Tensor, Tensor] | None) -> tuple[int, float]:
    """Epochs ``first_epoch`` to ``run.epochs``: a fresh ``W`` (robust KD, unless fixed), one pass, the
    validation top-1 (and best epoch) when ``val_images``, a checkpoint once ``checkpoint_interval``
    seconds have passed and after the last epoch. Returns (images trained, seconds of training).

    Raises:
        TrainingInterrupted: Ctrl-C; the checkpoint holds the last finished epoch.
    """
    student = run.trainables.student
    images_trained, train_seconds = 0, 0.0
    epoch = first_epoch
    saved_epoch, saved_at = first_epoch - 1, time.monotonic()
    try:
        # The stage starts now, not at its first step report: its rate, hence the time left,
        # then counts the whole first epoch.
        run.progress("distill", (first_epoch - 1) * run.steps_per_epoch, run.epochs * run.steps_per_epoch,
                     epoch=first_epoch)
        for epoch in range(first_epoch, run.epochs + 1):
            epoch_start = time.monotonic()
            if config.redraw_weight_set and epoch > 1:
                run.trainables.objective.redraw(epoch_generator(config.seed, epoch, "weights"))
            stats = _train_epoch(run, epoch)
            images_trained += stats.images
            train_seconds += stats.train_s
            if val_images is not None:
                stats.val_top1 = _accuracy(student, val_images, run.preprocess, config.batch_size, run.device,
                                           run.memory_format)
                if stats.val_top1 > state.best_top1:
                    state.best_top1, state.best_epoch = stats.val_top1, epoch
                    state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
            state.history.append(stats)
            if epoch == first_epoch and run.plan is not None:
                run.plan(TrainingPlan(epochs=run.epochs, first_epoch=first_epoch, steps_per_epoch=run.steps_per_epoch,
                                      batch_size=config.batch_size, items=len(run.source),
                                      epochs_defaulted=config.epochs is None, epoch_s=time.monotonic() - epoch_start))
            if epoch == run.epochs or time.monotonic() - saved_at >= config.checkpoint_interval:
                save_checkpoint(checkpoint_path, epoch, settings, run.trainables, state)
                saved_epoch, saved_at = epoch, time.monotonic()
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch}; {checkpoint_path} holds epoch {saved_epoch}: "
            "run the same command with `resume=True` to continue"
        ) from None
    return images_trained, train_seconds


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


def _precision_name(amp_dtype: torch.dtype | None) -> str:
    """How a run's arithmetic is recorded: ``float32``, or the autocast dtype (``bfloat16``, ``float16``)."""
    return "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


def _trainables(student: nn.Module, config: DistillConfig, weights: Tensor, temperature: float,
                total_steps: int, amp_dtype: torch.dtype | None) -> Trainables:
    """The optimizer (SGD with momentum 0.9, or AdamW), its warm-up + cosine schedule over
    ``total_steps``, the gradient scaler (float16 autocast only) and the objective (Eq. 1, 8 or 10;
    robust KD's first ``W`` drawn from the run's epoch-0 generator)."""
    lr, decay = config.peak_lr, WEIGHT_DECAY[config.optimizer]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=decay)
    else:
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    objective = make_objective(config.loss, weights, temperature=temperature, eps=config.eps,
                               num_weight_vectors=config.num_weight_vectors,
                               generator=epoch_generator(config.seed, 0, "weights"))
    return Trainables(student, optimizer, scheduler, scaler, objective)


def _alignment(trainables: Trainables, config: DistillConfig, device: torch.device, total_steps: int) -> nn.Module:
    """Adversarial alignment's trainables, put in ``trainables``: the domain discriminator (initialised
    from a generator of its own, seeded by ``config.seed``: the global RNG is left as it was), its
    optimizer (the student's kind and peak learning rate, no weight decay) and the student's warm-up +
    cosine schedule. Returns the :class:`~pucli.kd.align.AlignedStudent` the steps run.

    Raises:
        OptionError: ``align_stage`` names a stage the student lacks.
    """
    student = trainables.student
    discriminator = DomainDiscriminator(feature_channels(student, config.align_stage), config.align_hidden,
                                        generator_seed=config.seed).to(device)
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(discriminator.parameters(), lr=config.peak_lr, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.peak_lr, weight_decay=0.0)
    trainables.discriminator, trainables.discriminator_optimizer = discriminator, optimizer
    trainables.discriminator_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total_steps))
    return AlignedStudent(student, discriminator, config.align_stage)


#: Linear warm-up of the learning rate: this percentage of the run's steps, at most WARMUP_MAX_STEPS.
WARMUP_PERCENT = 10
WARMUP_MAX_STEPS = 500


def warmup_steps(total_steps: int) -> int:
    """Steps of linear warm-up in a run of ``total_steps``: 10 % of them, at most 500, at least 1.

    Long enough for a small ReLU network without batch norm (LeNet-5-half: 3 and 8 convolution
    channels) to leave the loss plateau of its initialisation before the rate reaches its peak. With
    3 % (150 of the default ~5,000 steps) some runs met lr 0.1 still on that plateau and lost 1-4 of
    their 8 second-stage channels to dead ReLUs for good, which cost the student 0.5-1 point of
    top-1 on some batch orders and not others (issue 30).
    """
    return max(1, min(WARMUP_MAX_STEPS, total_steps * WARMUP_PERCENT // 100))


def _warmup_cosine(total_steps: int) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over :func:`warmup_steps` (10 % of the steps, at most 500),
    then cosine to 0. Warm-up keeps lr 0.1 from blowing up a freshly initialised network without
    batch norm (LeNet), and from killing its ReLU channels."""
    warmup = warmup_steps(total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _train_epoch(run: _Run, epoch: int) -> EpochStats:
    """One pass over ``run.source``: one optimizer step per batch on the objective's loss.

    Raises:
        DataError: the mean loss is not finite (training diverged).
    """
    trainables, device = run.trainables, run.device
    run.trainee.train()
    # Each rank augments its own images: its own draws (rank 0's are those of one process).
    augment_generator = epoch_generator(run.seed + 7919 * distributed.rank(), epoch, "augment")
    loss_sum = torch.zeros((), device=device)
    images_seen, steps = 0, 0
    max_counts = [0] * trainables.objective.num_vectors
    total_steps = run.epochs * run.steps_per_epoch
    done_before = (epoch - 1) * run.steps_per_epoch
    if run.labeled is not None:
        # Their own generators: the KD batches, their augmentation and W are drawn as without alignment.
        source_generator = epoch_generator(run.seed, epoch, "source")
        source_augment_generator = epoch_generator(run.seed + 7919 * distributed.rank(), epoch, "source-augment")
        domain_sums = torch.zeros(3, device=device)  # loss x items, correct, items
    start = time.perf_counter()
    for items, images in run.source.epoch_batches(epoch_generator(run.seed, epoch, "order")):
        if run.flip_crop is not None and len(images):
            images = run.flip_crop(images, augment_generator)
        inputs = run.preprocess.normalize(images).contiguous(memory_format=run.memory_format)
        with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            if run.teacher is not None:
                with torch.no_grad():
                    targets = torch.softmax(run.teacher(inputs).float() / trainables.objective.temperature, dim=1)
            else:
                targets = run.soft_targets[items.to(device)]
            if run.labeled is None:
                logits = run.trainee(inputs).float()
            else:
                source_images = run.labeled.draw(run.source.batch_size, source_generator)
                if run.flip_crop is not None and len(source_images):
                    source_images = run.flip_crop(source_images, source_augment_generator)
                source_inputs = run.preprocess.normalize(source_images).contiguous(memory_format=run.memory_format)
                scale = dann_lambda((done_before + steps) / total_steps, run.align_weight)
                logits, domain_logits, is_source = run.trainee(inputs, source_inputs, run.labeled.is_positive[items],
                                                               scale)
                logits = logits.float()
        loss, chosen = trainables.objective(logits, targets)
        if chosen is not None:
            max_counts[chosen] += 1
        trainables.optimizer.zero_grad(set_to_none=True)
        if run.labeled is None:
            trainables.scaler.scale(loss).backward()
            trainables.scaler.step(trainables.optimizer)
        else:
            # One backward: D descends L_d, the student (behind the reversal layer) ascends lambda_p L_d.
            discriminator_loss, correct = domain_loss(domain_logits.float(), is_source)
            domain_sums += torch.stack([discriminator_loss.detach() * len(is_source), correct,
                                        torch.tensor(float(len(is_source)), device=device)])
            trainables.discriminator_optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            trainables.scaler.scale(loss + discriminator_loss).backward()
            trainables.scaler.step(trainables.optimizer)
            trainables.scaler.step(trainables.discriminator_optimizer)
            trainables.discriminator_scheduler.step()
        trainables.scaler.update()
        trainables.scheduler.step()
        loss_sum += loss.detach()
        images_seen += len(items)
        steps += 1
        if steps % 20 == 0 or steps == run.steps_per_epoch:
            elapsed = time.perf_counter() - start
            run.progress("distill", done_before + steps, total_steps, epoch=epoch,
                         loss=float(loss_sum) / steps, img_s=images_seen / elapsed if elapsed else 0.0)
    elapsed = time.perf_counter() - start
    if distributed.is_distributed():
        # A rank's loss is its share of the batch loss, scaled so that the ranks' mean is the batch loss.
        totals = distributed.all_reduce_sum(torch.tensor([float(loss_sum), images_seen], dtype=torch.float64))
        loss_sum, images_seen = totals[0] / distributed.world_size(), int(totals[1])
    mean_loss = float(loss_sum) / max(1, steps)
    if not math.isfinite(mean_loss):
        raise DataError(f"training diverged in epoch {epoch} (loss {mean_loss}): lower the learning rate (lr)")
    stats = EpochStats(
        epoch=epoch, loss=mean_loss, lr=trainables.optimizer.param_groups[0]["lr"], val_top1=None,
        images=images_seen, train_s=elapsed, images_per_s=images_seen / elapsed if elapsed else float("nan"),
        max_vector_counts=max_counts,
    )
    if run.labeled is not None:
        totals = domain_sums.double().cpu()
        if distributed.is_distributed():
            totals = distributed.all_reduce_sum(totals)
        stats.domain_loss = float(totals[0] / totals[2]) if totals[2] else None
        stats.domain_accuracy = float(totals[1] / totals[2]) if totals[2] else None
    return stats


def _data_parallel(student: nn.Module, device: torch.device, batch_size: int) -> nn.Module:
    """``student`` in DistributedDataParallel under torchrun (gradients averaged over ranks after
    every backward pass); ``student`` itself in one process.

    Raises:
        OptionError: fewer images per batch than processes.
    """
    if not distributed.is_distributed():
        return student
    if batch_size < distributed.world_size():
        raise OptionError("batch_size", batch_size, f"each batch is split over the {distributed.world_size()} "
                          "processes; give at least one image per process")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


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
