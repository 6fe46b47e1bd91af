"""PU training of the selector: frozen (the head on cached descriptors) and fine-tuned (end to end).

Both minimise the nnPU risk (:func:`pucli.pu.nnpu.nnpu_risk`, Kiryo et al. 2017) with P resampled
with replacement into every mini-batch (P is tiny, U is not): AdamW with a high learning rate,
weight decay and a cosine schedule (the rates tried: see docs/benchmarks.md, section "`pucli select`
on mnist-pu", "Against the targets"). Frozen mode trains an ensemble of heads from different seeds;
each finished member is saved, so an interrupted training resumes with the same result.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pucli.cache import read_entry, write_entry
from pucli.data.augment import PositiveAugmentation
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.errors import NoImagesError, OptionError
from pucli.paths import cache_dir
from pucli.progress import ProgressCallback, no_progress
from pucli.pu.degenerate import risk_stuck
from pucli.pu.descriptors import extract_descriptors
from pucli.pu.network import AttentionScoreHead, PUSelectorNet, ScoreEnsemble
from pucli.pu.nnpu import nnpu_risk
from pucli.pu.options import SelectorOptions, options_record
from pucli.run_context import RunContext

__all__ = [
    "FINETUNE_SCHEDULE",
    "LEGACY_FINETUNE_SCHEDULE",
    "TRAINING_STATE_FORMAT",
    "TRAINING_STATE_VERSION",
    "FinetuneSchedule",
    "train_finetune",
    "train_frozen",
    "steps_per_training_epoch",
    "training_state_path",
]


def _optimizer(parameters: Any, options: SelectorOptions, lr: float | None = None) -> torch.optim.Optimizer:
    lr = options.lr if lr is None else lr
    if options.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=options.weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=options.weight_decay)


def _positive_per_batch(options: SelectorOptions, unlabeled_batch: int) -> int:
    return options.positive_per_batch or max(1, unlabeled_batch // 4)


def _risk(scores_p: torch.Tensor, scores_u: torch.Tensor, options: SelectorOptions) -> Any:
    return nnpu_risk(scores_p, scores_u, options.class_prior, loss=options.loss, beta=options.beta,
                     gamma=options.gamma, non_negative=options.risk == "nnpu")


def steps_per_training_epoch(pool_size: int, options: SelectorOptions) -> int:
    """Optimiser steps per frozen-mode epoch: ``ceil(min(pool_size, epoch_pool_max) / train_batch_size)``, at least 1."""
    seen = pool_size if options.epoch_pool_max is None else min(pool_size, options.epoch_pool_max)
    return max(1, math.ceil(seen / options.train_batch_size))


def _train_head_member(
    head: AttentionScoreHead,
    positive: torch.Tensor,
    unlabeled: torch.Tensor,
    options: SelectorOptions,
    generator: torch.Generator,
    on_step: Callable[[int, int], None],
) -> list[dict[str, float]]:
    """Train one head on standardised descriptors; returns per-epoch mean risks.

    A pool larger than ``options.epoch_pool_max`` contributes a fresh seeded random sample of that
    many descriptors to each epoch (standardised batch by batch, so no standardised copy of the
    whole pool is held); a smaller pool is seen whole every epoch."""
    positive = head.standardize(positive)
    sampled = options.epoch_pool_max is not None and len(unlabeled) > options.epoch_pool_max
    if not sampled:
        unlabeled = head.standardize(unlabeled)
    steps_per_epoch = steps_per_training_epoch(len(unlabeled), options)
    total_steps = steps_per_epoch * options.epochs
    optimizer = _optimizer(head.parameters(), options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    n_p = _positive_per_batch(options, options.train_batch_size)
    history = []
    step = 0
    head.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(unlabeled), generator=generator)
        if sampled:
            order = order[:options.epoch_pool_max]
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0}
        for start in range(0, len(order), options.train_batch_size):
            batch_u = unlabeled[order[start:start + options.train_batch_size]]
            if sampled:
                batch_u = head.standardize(batch_u)
            # P is tiny: resample with replacement and jitter, so no step sees the same few points.
            draw = torch.randint(len(positive), (n_p,), generator=generator)
            batch_p = positive[draw] + options.positive_noise * torch.randn(n_p, positive.shape[1], generator=generator)
            result = _risk(head.forward_standardized(batch_p), head.forward_standardized(batch_u), options)
            optimizer.zero_grad(set_to_none=True)
            result.objective.backward()
            optimizer.step()
            schedule.step()
            step += 1
            sums["risk"] += float(result.risk)
            sums["positive_risk"] += float(result.positive_risk)
            sums["negative_risk"] += float(result.negative_risk)
            sums["ascent_steps"] += float(result.ascent)
            on_step(step, total_steps)
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch if k != "ascent_steps" else v for k, v in sums.items()}})
    head.eval()
    return history


def train_frozen(
    positive: torch.Tensor,
    unlabeled: torch.Tensor,
    options: SelectorOptions,
    *,
    progress: ProgressCallback = no_progress,
    state_path: Path | None = None,
) -> tuple[ScoreEnsemble, list[dict[str, float]]]:
    """Train the gate + head (an ensemble of ``options.ensemble`` members) on frozen descriptors.

    Each member draws from its own seeded generator, so members are independent: with
    ``state_path``, every finished member is saved there (atomically) and members already saved
    are loaded instead of trained, which makes an interrupted training resumable with the same
    result.

    Args:
        positive: (N_P, C) float32 descriptors of the labeled positives.
        unlabeled: (N_U, C) float32 descriptors of the pool.
        state_path: where finished members are kept (None: nowhere).

    Returns:
        The ensemble (eval mode) and one history entry per epoch, averaged over members.

    Raises:
        NoImagesError: no readable positive or unlabeled image.
    """
    if len(positive) == 0 or len(unlabeled) == 0:
        raise NoImagesError("no readable positive or unlabeled image left to train the selector on")
    members = []
    histories = []
    finished = _read_training_state(state_path) if state_path is not None else {}
    steps = options.epochs * steps_per_training_epoch(len(unlabeled), options)
    for member in range(options.ensemble):
        generator = torch.Generator().manual_seed(options.seed * 1000 + member)
        torch.manual_seed(options.seed * 1000 + member)  # layer initialisation
        head = AttentionScoreHead(positive.shape[1], reduction=options.reduction, attention=options.attention)
        head.set_statistics(unlabeled)

        def on_step(step: int, _total: int, member: int = member) -> None:
            progress("train", member * steps + step, options.ensemble * steps)

        saved = finished.get(member)
        if saved is not None and _load_member(head, saved["head"]):
            histories.append(saved["history"])
            progress("train", (member + 1) * steps, options.ensemble * steps, cached=1)
        else:
            histories.append(_train_head_member(head, positive, unlabeled, options, generator, on_step))
            finished[member] = {"head": head.state_dict(), "history": histories[-1]}
            if state_path is not None:
                _write_training_state(state_path, finished)
        members.append(head.eval())
    history = [
        {key: sum(h[epoch][key] for h in histories) / len(histories) for key in histories[0][epoch]}
        for epoch in range(options.epochs)
    ]
    return ScoreEnsemble(members).eval(), history


TRAINING_STATE_FORMAT = "pucli-selector-state"


TRAINING_STATE_VERSION = 2  # 2: a pucli.cache entry (safetensors), no longer torch.save


def training_state_path(descriptors_key: str, options: SelectorOptions) -> Path:
    """Where :func:`train_frozen` keeps finished members for these descriptors and options:
    ``cache_dir()/selector-runs/<key>.safetensors`` (:mod:`pucli.cache`). ``descriptors_key`` names
    the positives' and the pool's descriptors together (:attr:`pucli.pu.descriptors.Descriptors.key`);
    the key changes with it and with any option but the budget and the graph smoothing and the
    ranking (which only act on the trained heads' scores)."""
    after_training = {"budget", "graph_neighbors", "graph_alpha", "graph_steps", "graph_exact_max", "ranking"}
    settings = {k: v for k, v in options_record(options).items() if k not in after_training}
    text = json.dumps({"descriptors": descriptors_key, "options": settings}, sort_keys=True, default=str)
    return cache_dir() / "selector-runs" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"


def _read_training_state(path: Path) -> dict[int, dict[str, Any]]:
    """Finished members by number: ``{"head": state dict, "history": per-epoch risks}``; {} when
    there is no usable state (a damaged state only means training those members again)."""
    entry = read_entry(path, kind=TRAINING_STATE_FORMAT, version=TRAINING_STATE_VERSION)
    if entry is None:
        return {}
    members: dict[int, dict[str, Any]] = {}
    for number, history in entry.metadata.get("histories", {}).items():
        prefix = f"{number}."
        head = {key[len(prefix):]: value for key, value in entry.tensors.items() if key.startswith(prefix)}
        members[int(number)] = {"head": head, "history": history}
    return members


def _write_training_state(path: Path, members: dict[int, dict[str, Any]]) -> None:
    # A read-only cache: training goes on, only resuming starts over.
    tensors = {f"{number}.{key}": value for number, member in members.items() for key, value in member["head"].items()}
    write_entry(path, tensors, kind=TRAINING_STATE_FORMAT, version=TRAINING_STATE_VERSION,
                metadata={"histories": {str(number): member["history"] for number, member in members.items()}})


def _load_member(head: AttentionScoreHead, state: dict[str, torch.Tensor]) -> bool:
    try:
        head.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class FinetuneSchedule:
    """How :func:`train_finetune` trains the backbone end to end (the measured choices:
    docs/benchmarks.md, section "`pucli select --finetune`").

    Attributes:
        warmup: first train the head alone on frozen descriptors of P and of a pool sample, the way
            one frozen-mode member is trained (:func:`train_frozen`'s steps, rate and seeded draws),
            so end-to-end training starts from a head that already separates P from U instead of
            a random one.
        head_lr_scale, backbone_lr_scale: the end-to-end rates of the head and of the backbone, as
            shares of ``options.lr``.
        clip_norm: gradient-norm clipping of every end-to-end step (None: no clipping).
        batchnorm: ``"frozen"`` runs the network in evaluation mode while it trains (BatchNorm keeps
            the teacher's statistics, dropout is off: the network that trains is the one that scores
            the pool); ``"train"`` uses batch statistics of the mixed P + U batches.
        pool_sample: pool images (a seeded sample) whose descriptors set the head's standardisation
            statistics and, with ``warmup``, train the head.
        collapse_steps: this many steps in a row with the collapse signature of
            :func:`pucli.pu.degenerate.risk_stuck` (positive risk ``~ pi``, negative risk ``~ 0``, no
            ascent: every score below zero; or the mirror) send training back to the last healthy
            state (the end of the last epoch without it, or the warmed-up start), with network and
            optimizer state, at half the rate; 0 never.
        max_rollbacks: after this many rollbacks another collapse ends training at the last
            healthy state.
        augment_positives: every end-to-end step draws a fresh small random affine copy of each
            positive in its batch (:class:`pucli.data.augment.PositiveAugmentation`'s rotation,
            shift and zoom; no flips), so the backbone cannot learn P's few images by heart.
    """

    warmup: bool = True
    head_lr_scale: float = 0.01
    backbone_lr_scale: float = 0.001
    clip_norm: float | None = 1.0
    batchnorm: str = "frozen"
    pool_sample: int = 32_768
    collapse_steps: int = 5
    max_rollbacks: int = 3
    augment_positives: bool = True

    def __post_init__(self) -> None:
        if self.batchnorm not in ("frozen", "train"):
            raise OptionError("batchnorm", self.batchnorm, "use frozen or train")
        for name in ("collapse_steps", "max_rollbacks", "pool_sample"):
            if getattr(self, name) < (1 if name == "pool_sample" else 0):
                raise OptionError(name, getattr(self, name), "must be >= 1" if name == "pool_sample" else "must be >= 0")


#: The schedule :func:`train_finetune` uses unless it is given one.
FINETUNE_SCHEDULE = FinetuneSchedule()

#: What fine-tuning did before the warm-up (a random head with the frozen mode's rate, the backbone
#: at a tenth of it, no clipping, batch statistics, statistics from 4,096 pool images): it
#: collapses on low-prior pools (every score below zero within a few steps; see
#: docs/benchmarks.md). Kept for the benchmark that measures it (``benchmarks/finetune_pool.py``).
LEGACY_FINETUNE_SCHEDULE = FinetuneSchedule(warmup=False, head_lr_scale=1.0, backbone_lr_scale=0.1, clip_norm=None,
                                            batchnorm="train", pool_sample=4096, collapse_steps=0,
                                            augment_positives=False)


def train_finetune(
    net: PUSelectorNet,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    options: SelectorOptions,
    *,
    run: RunContext | None = None,
    schedule: FinetuneSchedule | None = None,
) -> list[dict[str, float]]:
    """Train extractor + head end to end on streamed images (the paper's code path), on
    ``run.device`` with ``run.workers`` loader processes, reporting to ``run.progress``; unreadable
    images are left out and added to ``run.skipped``.

    P (tiny) is decoded once and held; U is streamed in a seeded shuffled order every epoch, so
    memory stays flat in the pool size. With the default :data:`FINETUNE_SCHEDULE`:

    1. warm-up: the descriptors of P and of a seeded pool sample through the start backbone (the
       teacher) set the head's standardisation statistics, and the head trains on them for
       ``options.epochs`` epochs the way one frozen-mode member does;
    2. end to end, ``options.epochs`` passes over the pool: the head at 1/100 of ``options.lr``,
       the backbone at 1/1000, gradients clipped to norm 1, the network in evaluation mode
       (BatchNorm statistics and the standardisation stay those of the teacher), each step's
       positives a fresh random affine copy of the drawn images;
    3. the collapse guard: 5 steps in a row with every score on one side of zero (the signature
       :func:`pucli.pu.degenerate.risk_stuck` reads) restore the last healthy state at half the
       rate; after 3 such rollbacks a fourth ends training there.

    Why: the schedule before (a random head at ``options.lr``, the backbone at a tenth of it, no
    clipping) collapsed. AdamW moves every weight by about its rate at each step whatever the size
    of the gradient, and on a pool that is mostly negative the first steps pushed every score, P's
    included, far below zero (a median of -13 after 5 steps at prior 0.05), where the sigmoid loss
    is flat: the risk then sat at ``pi`` (positive risk ``pi``, negative risk 0, no ascent step,
    so nnPU's correction never fired) and nothing was kept. The lower rates and the augmented P
    also stop the end-to-end epochs from learning the few positives by heart (measured:
    docs/benchmarks.md).

    Args:
        schedule: the end-to-end recipe (None: :data:`FINETUNE_SCHEDULE`).

    Returns:
        One history entry per end-to-end epoch (mean risks, ascent steps and ``rollbacks``, the
        collapses it went back from); fewer than ``options.epochs`` when the guard ended training.

    Raises:
        NoImagesError: no readable positive image.
    """
    run = run or RunContext()
    device, workers, skipped, progress = run.device, run.workers, run.skipped, run.progress
    schedule = schedule or FINETUNE_SCHEDULE
    generator = torch.Generator().manual_seed(options.seed)
    positive_set: list[torch.Tensor] = []
    for batch in iterate_batches(ImageDataset(positive_paths, preprocess), batch_size=options.batch_size,
                                 workers=0, skipped=skipped):
        positive_set.append(batch.images)
    if not positive_set:
        raise NoImagesError("no readable positive image to fine-tune the selector on")
    positive_images = torch.cat(positive_set)
    # Statistics for the standardisation, from a seeded sample of the pool through the start backbone.
    sample = torch.randperm(len(unlabeled_paths), generator=generator)[:schedule.pool_sample].sort().values
    _, sample_descriptors = extract_descriptors(net.extractor, [unlabeled_paths[int(i)] for i in sample],
                                                preprocess, batch_size=options.batch_size, run=run, stage="statistics")
    net.head.set_statistics(sample_descriptors.to(device))
    if schedule.warmup:
        _warm_up_head(net, positive_images, sample_descriptors.to(device), preprocess, options, device=device,
                      progress=progress)
    del sample_descriptors
    groups = [{"params": list(net.extractor.parameters()), "lr": options.lr * schedule.backbone_lr_scale},
              {"params": list(net.head.parameters()), "lr": options.lr * schedule.head_lr_scale}]
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay) if options.optimizer == "adamw" \
        else torch.optim.SGD(groups, momentum=0.9, weight_decay=options.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(unlabeled_paths) / options.batch_size))
    total_steps = steps_per_epoch * options.epochs
    # Cosine to zero over the run, times a factor the collapse guard halves at each rollback.
    rate = {"factor": 1.0}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: rate["factor"] * 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    n_p = _positive_per_batch(options, options.batch_size)
    history: list[dict[str, float]] = []
    step = 0
    healthy = _Snapshot(net, optimizer)  # the warmed-up start: never collapsed
    stuck_steps = 0
    rollbacks = 0
    for epoch in range(options.epochs):
        net.train(schedule.batchnorm == "train")
        order = torch.randperm(len(unlabeled_paths), generator=generator)
        epoch_paths = [unlabeled_paths[int(i)] for i in order]
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0, "rollbacks": 0.0}
        batches = 0
        for batch in iterate_batches(ImageDataset(epoch_paths, preprocess), batch_size=options.batch_size,
                                     workers=workers, skipped=skipped if epoch == 0 else None):
            if rollbacks > schedule.max_rollbacks:
                break
            draw = torch.randint(len(positive_images), (n_p,), generator=generator)
            batch_p = positive_images[draw]
            if schedule.augment_positives:
                jitter = PositiveAugmentation(copies=1, seed=options.seed * 1_000_003 + step)
                batch_p = jitter.apply(batch_p, jitter.draw(n_p, (batch_p.shape[-2], batch_p.shape[-1]))[0])
            images_p = preprocess.normalize(batch_p.to(device))
            images_u = preprocess.normalize(batch.images.to(device))
            scores = net(torch.cat([images_p, images_u]))
            result = _risk(scores[:n_p], scores[n_p:], options)
            optimizer.zero_grad(set_to_none=True)
            result.objective.backward()
            if schedule.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), schedule.clip_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            batches += 1
            for key, value in (("risk", result.risk), ("positive_risk", result.positive_risk),
                               ("negative_risk", result.negative_risk), ("ascent_steps", result.ascent)):
                sums[key] += float(value)
            progress("train", step, total_steps, risk=float(result.risk))
            stuck_steps = stuck_steps + 1 if _step_collapsed(result, options.class_prior) else 0
            if schedule.collapse_steps and stuck_steps >= schedule.collapse_steps:
                # Every score has gone below (or above) zero, where the loss gives no gradient back:
                # go back to the last healthy state and carry on at half the rate.
                healthy.restore(net, optimizer)
                rate["factor"] *= 0.5
                rollbacks += 1
                sums["rollbacks"] += 1
                stuck_steps = 0
        batches = max(1, batches)
        history.append({"epoch": epoch + 1, **{k: v / batches if k not in ("ascent_steps", "rollbacks") else v
                                               for k, v in sums.items()}})
        if rollbacks > schedule.max_rollbacks:
            break  # still collapsing at a 2^-max_rollbacks rate: keep the last healthy state
        if stuck_steps == 0:
            healthy = _Snapshot(net, optimizer)
    net.eval()
    return history


def _step_collapsed(result: Any, class_prior: float | None) -> bool:
    """One step's risks show the collapse signature :mod:`pucli.pu.degenerate` warns about."""
    return risk_stuck([{"positive_risk": float(result.positive_risk), "negative_risk": float(result.negative_risk),
                        "ascent_steps": float(result.ascent)}], class_prior) is not None


class _Snapshot:
    """A copy of the network's and the optimizer's state, to go back to after a collapse."""

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.network = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.optimizer = copy.deepcopy(optimizer.state_dict())

    def restore(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        net.load_state_dict(self.network)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))


@torch.no_grad()
def _warm_up_head(net: PUSelectorNet, positive_images: torch.Tensor, unlabeled: torch.Tensor, preprocess: Preprocess,
                  options: SelectorOptions, *, device: torch.device, progress: ProgressCallback) -> None:
    """Train ``net.head`` on frozen descriptors the way a frozen-mode member is trained
    (:func:`_train_head_member`, with member 0's generator seed): P's descriptors through the start
    backbone, ``unlabeled`` (N, C) the pool sample's. Its statistics must already be set."""
    net.extractor.eval()
    positive = torch.cat([net.extractor(preprocess.normalize(chunk.to(device)))
                          for chunk in positive_images.split(options.batch_size)]).float()
    generator = torch.Generator().manual_seed(options.seed * 1000)
    steps = options.epochs * steps_per_training_epoch(len(unlabeled), options)

    def on_step(step: int, _total: int) -> None:
        progress("warmup", step, steps)

    with torch.enable_grad():
        _train_head_member(net.head, positive, unlabeled, options, generator, on_step)
