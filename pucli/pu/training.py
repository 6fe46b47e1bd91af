"""PU training of the selector: frozen (the head on cached descriptors) and fine-tuned (end to end).

Both minimise the nnPU risk (:func:`pucli.pu.nnpu.nnpu_risk`, Kiryo et al. 2017) with P resampled
with replacement into every mini-batch (P is tiny, U is not): AdamW with a high learning rate,
weight decay and a cosine schedule (the rates tried: see docs/benchmarks.md, section "`pucli select`
on mnist-pu", "Against the targets"). Frozen mode trains an ensemble of heads from different seeds;
each finished member is saved, so an interrupted training resumes with the same result.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pucli.cache import read_entry, write_entry
from pucli.data.files import SkippedFile
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.errors import NoImagesError
from pucli.paths import cache_dir
from pucli.progress import ProgressCallback, no_progress
from pucli.pu.descriptors import extract_descriptors
from pucli.pu.network import AttentionScoreHead, PUSelectorNet, ScoreEnsemble
from pucli.pu.nnpu import nnpu_risk
from pucli.pu.options import SelectorOptions

__all__ = ["train_frozen", "train_finetune", "training_state_path", "TRAINING_STATE_FORMAT", "TRAINING_STATE_VERSION"]


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


def _train_head_member(
    head: AttentionScoreHead,
    positive: torch.Tensor,
    unlabeled: torch.Tensor,
    options: SelectorOptions,
    generator: torch.Generator,
    on_step: Callable[[int, int], None],
) -> list[dict[str, float]]:
    """Train one head on standardised descriptors; returns per-epoch mean risks."""
    positive = head.standardize(positive)
    unlabeled = head.standardize(unlabeled)
    steps_per_epoch = max(1, math.ceil(len(unlabeled) / options.train_batch_size))
    total_steps = steps_per_epoch * options.epochs
    optimizer = _optimizer(head.parameters(), options)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    n_p = _positive_per_batch(options, options.train_batch_size)
    history = []
    step = 0
    head.train()
    for epoch in range(options.epochs):
        order = torch.randperm(len(unlabeled), generator=generator)
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0}
        for start in range(0, len(order), options.train_batch_size):
            batch_u = unlabeled[order[start:start + options.train_batch_size]]
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
    steps = options.epochs * max(1, math.ceil(len(unlabeled) / options.train_batch_size))
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


def training_state_path(descriptor_cache: Path, options: SelectorOptions) -> Path:
    """Where :func:`train_frozen` keeps finished members for these descriptors and options:
    ``cache_dir()/selector-runs/<key>.safetensors`` (:mod:`pucli.cache`); the key changes with any option but the budget and
    the graph smoothing (which only act on the trained heads' scores)."""
    after_training = {"budget", "graph_neighbors", "graph_alpha", "graph_steps", "graph_exact_max"}
    settings = {k: v for k, v in asdict(options).items() if k not in after_training}
    text = json.dumps({"descriptors": descriptor_cache.stem, "options": settings}, sort_keys=True, default=str)
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


def train_finetune(
    net: PUSelectorNet,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    preprocess: Preprocess,
    options: SelectorOptions,
    *,
    device: torch.device,
    workers: int = 0,
    skipped: list[SkippedFile] | None = None,
    progress: ProgressCallback = no_progress,
) -> list[dict[str, float]]:
    """Train extractor + head end to end on streamed images (the paper's code path).

    P (tiny) is decoded once and held; U is streamed in a seeded shuffled order every epoch, so
    memory stays flat in the pool size. The backbone learns at a tenth of the head's rate, to
    move gently away from the teacher it starts from. Returns per-epoch mean risks.

    Raises:
        NoImagesError: no readable positive image.
    """
    generator = torch.Generator().manual_seed(options.seed)
    positive_set: list[torch.Tensor] = []
    for batch in iterate_batches(ImageDataset(positive_paths, preprocess), batch_size=options.batch_size,
                                 workers=0, skipped=skipped):
        positive_set.append(batch.images)
    if not positive_set:
        raise NoImagesError("no readable positive image to fine-tune the selector on")
    positive_images = torch.cat(positive_set)
    # Statistics for the standardisation, from a seeded sample of the pool through the start backbone.
    sample = torch.randperm(len(unlabeled_paths), generator=generator)[:4096].sort().values
    _, sample_descriptors = extract_descriptors(net.extractor, [unlabeled_paths[int(i)] for i in sample],
                                                preprocess, device=device, batch_size=options.batch_size,
                                                workers=workers, progress=progress, stage="statistics")
    net.head.set_statistics(sample_descriptors.to(device))
    optimizer = torch.optim.AdamW(
        [{"params": net.extractor.parameters(), "lr": options.lr * 0.1},
         {"params": net.head.parameters(), "lr": options.lr}],
        weight_decay=options.weight_decay,
    ) if options.optimizer == "adamw" else torch.optim.SGD(
        [{"params": net.extractor.parameters(), "lr": options.lr * 0.1},
         {"params": net.head.parameters(), "lr": options.lr}],
        momentum=0.9, weight_decay=options.weight_decay,
    )
    steps_per_epoch = max(1, math.ceil(len(unlabeled_paths) / options.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * options.epochs)
    n_p = _positive_per_batch(options, options.batch_size)
    history = []
    step = 0
    for epoch in range(options.epochs):
        net.train()
        order = torch.randperm(len(unlabeled_paths), generator=generator)
        epoch_paths = [unlabeled_paths[int(i)] for i in order]
        sums = {"risk": 0.0, "positive_risk": 0.0, "negative_risk": 0.0, "ascent_steps": 0.0}
        batches = 0
        for batch in iterate_batches(ImageDataset(epoch_paths, preprocess), batch_size=options.batch_size,
                                     workers=workers, skipped=skipped if epoch == 0 else None):
            draw = torch.randint(len(positive_images), (n_p,), generator=generator)
            images_p = preprocess.normalize(positive_images[draw].to(device))
            images_u = preprocess.normalize(batch.images.to(device))
            scores = net(torch.cat([images_p, images_u]))
            result = _risk(scores[:n_p], scores[n_p:], options)
            optimizer.zero_grad(set_to_none=True)
            result.objective.backward()
            optimizer.step()
            schedule.step()
            step += 1
            batches += 1
            for key, value in (("risk", result.risk), ("positive_risk", result.positive_risk),
                               ("negative_risk", result.negative_risk), ("ascent_steps", result.ascent)):
                sums[key] += float(value)
            progress("train", step, steps_per_epoch * options.epochs, risk=float(result.risk))
        batches = max(1, batches)
        history.append({"epoch": epoch + 1, **{k: v / batches if k != "ascent_steps" else v for k, v in sums.items()}})
    net.eval()
    return history
