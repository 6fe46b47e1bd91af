"""Stage 3: train a student on the expanded set with (robust) knowledge distillation.

Light to import: :mod:`~pucli.kd.distill.config` (the options, no torch) loads alone; the others
load on first use of the names below. :mod:`~pucli.kd.distill.data` holds the training sources,
:mod:`~pucli.kd.distill.checkpoint` the checkpoint format and :mod:`~pucli.kd.distill.loop` the
training loop (Xu et al., NeurIPS 2019, Algorithm 2; losses Eq. 1, 8, 10 in :mod:`pucli.kd.losses`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("DistillConfig", "ALIGNMENTS", "parse_widths", "LOSSES", "OPTIMIZERS", "KEEP", "WEIGHTINGS", "AUGMENTATIONS", "DEFAULT_LR",
                     "WEIGHT_DECAY", "DEFAULT_MEMORY_BUDGET_BYTES", "default_epochs", "steps_per_epoch"), "config"),
    **dict.fromkeys(("sampling_weights", "epoch_generator", "InMemorySource", "StreamingSource", "LabeledImages",
                     "labeled_images"), "data"),
    **dict.fromkeys(("CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "EpochStats"), "checkpoint"),
    **dict.fromkeys(("distill", "DistillResult", "TrainingInterrupted", "TrainingPlan", "training_bound_throughput"), "loop"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
