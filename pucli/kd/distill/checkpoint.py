"""The distill checkpoint: what a run saves after an epoch and ``resume=True`` reads back.

Like torchvision's ``references/classification/train.py``, one dict holds the student, optimizer,
scheduler and scaler states and the epoch, so resuming is one branch; it also holds the RNG state,
robust KD's current weight set ``W`` (Xu et al., NeurIPS 2019, Eq. 9), the history and the best
epoch so far, and with adversarial alignment the domain discriminator with its optimizer and
scheduler (:mod:`pucli.kd.align`). Plain tensors, numbers, strings, lists and dicts only, so
``torch.load(weights_only=True)`` reads it; written atomically (:func:`pucli.paths.replace_atomically`),
so a Ctrl-C loses at most the epoch in progress. A resumed run must share the settings in
:data:`RESUME_KEYS` with the checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pucli import distributed
from pucli.errors import DataError, UsageError
from pucli.kd.distill.config import DistillConfig
from pucli.kd.losses import DistillationObjective
from pucli.paths import replace_atomically

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "RESUME_KEYS",
    "EpochStats",
    "Trainables",
    "TrainingState",
    "load_checkpoint",
    "run_settings",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "pucli-distill-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: Settings a resumed run must share with the checkpoint (others, e.g. ``keep``, may change).
RESUME_KEYS = ("student", "loss", "temperature", "epochs", "batch_size", "optimizer", "lr", "eps", "weighting",
               "num_weight_vectors", "redraw_weight_set", "augment", "seed", "num_items", "num_classes", "in_chans",
               "align", "align_stage", "align_weight", "align_hidden")
# Values of settings added after the first checkpoints, for checkpoints that predate them (and the
# align_* settings, recorded only with align="adversarial").
_RESUME_DEFAULTS = {"weighting": "uniform", "align": "none", "align_stage": None, "align_weight": None,
                    "align_hidden": None}


@dataclass
class EpochStats:
    """One epoch: mean training loss, learning rate at its end, validation top-1 (percent, or
    ``None``), images trained, seconds of training (excluding validation and checkpointing), images/s,
    for robust KD how often each vector of ``W`` attained the max, and with adversarial alignment
    the domain discriminator's accuracy (fraction in [0, 1] of the source and target items of the
    epoch it classified right; about 0.5 means aligned) and mean domain loss (binary cross-entropy,
    nats), else ``None``."""

    epoch: int
    loss: float
    lr: float
    val_top1: float | None
    images: int
    train_s: float
    images_per_s: float
    max_vector_counts: list[int] = field(default_factory=list)
    domain_accuracy: float | None = None
    domain_loss: float | None = None


@dataclass
class TrainingState:
    """The history so far and the best epoch on the validation set (``best_state``: its student
    weights on the CPU, None until a validation set was evaluated)."""

    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_top1: float = -1.0
    best_state: dict[str, Tensor] | None = None


@dataclass
class Trainables:
    """What training changes and a checkpoint restores: the student (not its DDP wrapper), its
    optimizer, LR scheduler and gradient scaler, the objective (robust KD's ``W``), and with
    adversarial alignment the domain discriminator (not its DDP wrapper), its optimizer and scheduler."""

    student: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    objective: DistillationObjective
    discriminator: nn.Module | None = None
    discriminator_optimizer: torch.optim.Optimizer | None = None
    discriminator_scheduler: Any = None


def run_settings(config: DistillConfig, *, student: str, temperature: float, epochs: int, augment: str,
                 num_items: int, num_classes: int, in_chans: int, precision: str = "float32") -> dict[str, Any]:
    """The settings of a run as the checkpoint and the run report record them: ``config`` with
    every "choose from the data" value resolved, and the shape of the data and the student; the
    ``align_*`` settings only with ``align="adversarial"``; ``precision`` the arithmetic the steps ran in
    (``float32``, ``bfloat16``, ``float16``), recorded but not checked on resume (a run may move
    between devices)."""
    settings: dict[str, Any] = {
        "student": student, "loss": config.loss, "temperature": float(temperature), "epochs": epochs,
        "batch_size": config.batch_size, "optimizer": config.optimizer, "lr": config.peak_lr,
        "eps": float(config.eps), "num_weight_vectors": config.num_weight_vectors,
        "redraw_weight_set": config.redraw_weight_set, "augment": augment, "keep": config.keep,
        "seed": config.seed, "num_items": num_items, "weighting": config.weighting,
        "num_classes": num_classes, "in_chans": in_chans, "align": config.align, "precision": precision,
    }
    if config.align == "adversarial":
        settings.update(align_stage=config.align_stage, align_weight=float(config.align_weight),
                        align_hidden=list(config.align_hidden))
    return settings


def save_checkpoint(path: Path, epoch: int, settings: dict[str, Any], trainables: Trainables,
                    state: TrainingState) -> None:
    """Write the checkpoint of ``epoch`` finished epochs to ``path``, atomically (rank 0 only
    under torchrun: the replicas are equal).

    Raises:
        OSError: the folder is missing or not writable.
    """
    if not distributed.is_main():
        return
    weight_set = trainables.objective.weight_set
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": epoch,
        "settings": settings,
        "student": trainables.student.state_dict(),
        "optimizer": trainables.optimizer.state_dict(),
        "scheduler": trainables.scheduler.state_dict(),
        "scaler": trainables.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "weight_set": weight_set.cpu() if weight_set is not None else torch.empty(0),
        "history": [dataclasses.asdict(s) for s in state.history],
        "best": {"epoch": state.best_epoch, "val_top1": state.best_top1, "state": state.best_state or {}},
    }
    if trainables.discriminator is not None:
        checkpoint["discriminator"] = {
            "model": trainables.discriminator.state_dict(),
            "optimizer": trainables.discriminator_optimizer.state_dict(),  # type: ignore[union-attr]
            "scheduler": trainables.discriminator_scheduler.state_dict(),
        }
    replace_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: Path, settings: dict[str, Any], trainables: Trainables, state: TrainingState) -> int:
    """Restore ``trainables``, ``state`` and the RNG from ``path``; returns the number of finished epochs.

    Raises:
        UsageError: no checkpoint at ``path``, or one written with other settings (a
            :data:`RESUME_KEYS` entry differs).
        DataError: the file is unreadable, not a distill checkpoint, or of another format version.
    """
    if not path.is_file():
        raise UsageError(f"no checkpoint to resume from at {path}: start afresh, or give the checkpoint's path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling or I/O failure means the same thing to the user
        raise DataError(f"{path} cannot be read ({exc.__class__.__name__}): delete it and start again") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a pucli distill checkpoint")
    if checkpoint.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise DataError(f"{path} has unsupported version {checkpoint.get('format_version')}; upgrade pucli")
    saved = checkpoint["settings"]
    for key in RESUME_KEYS:
        if saved.get(key, _RESUME_DEFAULTS.get(key)) != settings.get(key, _RESUME_DEFAULTS.get(key)):
            raise UsageError(
                f"{path} was written with {key}={saved.get(key, _RESUME_DEFAULTS.get(key))!r}, this run has "
                f"{settings.get(key, _RESUME_DEFAULTS.get(key))!r}: resume with the same settings, or start afresh"
            )
    trainables.student.load_state_dict(checkpoint["student"])
    trainables.optimizer.load_state_dict(checkpoint["optimizer"])
    trainables.scheduler.load_state_dict(checkpoint["scheduler"])
    trainables.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    trainables.objective.restore_weight_set(checkpoint["weight_set"])
    if trainables.discriminator is not None:
        if "discriminator" not in checkpoint:
            raise DataError(f"{path} holds no domain discriminator: delete it and start again")
        trainables.discriminator.load_state_dict(checkpoint["discriminator"]["model"])
        trainables.discriminator_optimizer.load_state_dict(checkpoint["discriminator"]["optimizer"])  # type: ignore[union-attr]
        trainables.discriminator_scheduler.load_state_dict(checkpoint["discriminator"]["scheduler"])
    state.history = [EpochStats(**entry) for entry in checkpoint["history"]]
    best = checkpoint["best"]
    state.best_epoch, state.best_top1 = best["epoch"], best["val_top1"]
    state.best_state = best["state"] or None
    return int(checkpoint["epoch"])
