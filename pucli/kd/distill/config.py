"""The options of ``pucli distill``, validated once (no torch import: the CLI builds them before loading it).

Every check of a single option lives in :meth:`DistillConfig.__post_init__`; errors name the
parameter (:class:`pucli.errors.OptionError`, e.g. ``num_weight_vectors 0: must be >= 1``) and the
CLI maps parameters to its flags. The defaults follow the student recipe of Xu et al., "Positive-
Unlabeled Compression on the Cloud", NeurIPS 2019 (https://arxiv.org/abs/1909.09757; official
code: SGD lr 0.1, momentum 0.9, weight decay 5e-4, eps 0.1 for robust KD, Eq. 9-10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pucli.data.augment import AUGMENTATIONS  # torch-free at import; ``auto`` resolved by resolve_augment
from pucli.errors import OptionError

__all__ = [
    "ALIGNMENTS",
    "AUGMENTATIONS",
    "DEFAULT_LR",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "KEEP",
    "LOSSES",
    "OPTIMIZERS",
    "PRECISIONS",
    "WEIGHTINGS",
    "WEIGHT_DECAY",
    "DistillConfig",
    "default_epochs",
    "parse_widths",
    "steps_per_epoch",
]

LOSSES = ("robust-kd", "weighted-kd", "kd")
OPTIMIZERS = ("sgd", "adamw")
KEEP = ("last", "best")
WEIGHTINGS = ("uniform", "pu-score")
#: ``none``, or ``adversarial``: the student's early features of L^t and of the unlabeled images
#: aligned through a domain discriminator and a gradient-reversal layer (:mod:`pucli.kd.align`).
ALIGNMENTS = ("none", "adversarial")
#: Training precision, resolved per device by :func:`pucli.device.autocast_dtype`.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 2**30
#: Peak learning rate per optimizer when ``lr`` is None: the paper's SGD 0.1, AdamW's usual 1e-3.
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
#: Weight decay per optimizer: the paper's 5e-4 for SGD, 0.05 for AdamW.
WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Auto epochs: enough passes for a few thousand optimizer steps on small sets, 20 on large ones.
_AUTO_TARGET_STEPS = 5000
_AUTO_MIN_EPOCHS, _AUTO_MAX_EPOCHS = 20, 200


@dataclass(frozen=True)
class DistillConfig:
    """Training settings, checked once when built. ``None`` means "choose from the data".

    Attributes:
        loss: ``robust-kd`` (Eq. 10), ``weighted-kd`` (Eq. 8) or ``kd`` (Eq. 1).
        temperature: T of the soft targets; None = the expanded set's (cached targets are
            re-tempered exactly otherwise).
        epochs: None = :func:`default_epochs`.
        batch_size: images per optimizer step.
        lr: peak learning rate (linear warm-up, then cosine); None = :data:`DEFAULT_LR`.
        optimizer: ``sgd`` (momentum 0.9) or ``adamw``; weight decay :data:`WEIGHT_DECAY`.
        eps, num_weight_vectors: robust KD's radius and M, the size of the set ``W`` (Eq. 9).
        redraw_weight_set: draw a new ``W`` every epoch (False keeps the first, as Algorithm 2).
        augment: ``auto`` | ``none`` | ``flip-crop``.
        keep: ``last`` or ``best`` (best validation top-1; needs a validation set).
        seed: seeds the student's initialisation and every draw of training.
        memory_budget_bytes: largest decoded uint8 set trained from memory (larger sets stream).
        weighting: ``uniform`` (every item once per epoch) or ``pu-score`` (each epoch draws as
            many items with replacement, with probability
            :func:`pucli.kd.distill.data.sampling_weights`: the PU selector's scores as sampling
            weights, for a set that holds a whole pool; Eq. 7 then uses the soft class counts
            expected under that sampling).
        checkpoint_interval: seconds between checkpoints (written at the end of an epoch once that
            long has passed since the last, and after the last epoch; 0 writes one every epoch):
            epochs of a few images would otherwise spend their time writing checkpoints.
        align: ``none`` or ``adversarial`` (Tang et al. 2019 in pucli's reading, :mod:`pucli.kd.align`:
            a domain discriminator tells the student's early features of the labeled positives
            from those of the unlabeled images; the student learns, through a gradient-reversal
            layer, to make them indistinguishable).
        align_stage: the student's feature stage the discriminator reads (timm ``feature_info``
            order, 0 = the first stage); checked against the student when training starts.
        align_weight: lambda_max of DANN's warm-up ``lambda_p = lambda_max (2 / (1 + exp(-10 p)) - 1)``
            (Ganin & Lempitsky 2015), the reversed gradient's scale at the end of training; 0 trains
            the discriminator but leaves the student exactly as without alignment.
        align_hidden: the discriminator's hidden layer widths (Linear-BatchNorm-ReLU each).
        precision: ``auto`` (CUDA: mixed precision, bfloat16 or float16; CPU: float32),
            ``float32``, ``bfloat16`` (mixed precision by ``torch.autocast``; on a CPU with AMX or
            AVX-512 BF16 several times faster than float32) or ``float16`` (CUDA only).

    Raises:
        OptionError: a field has a value it cannot take; the message names the field.
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
    align: str = "none"
    align_stage: int = 0
    align_weight: float = 0.1
    align_hidden: tuple[int, ...] = (256, 256)
    precision: str = "auto"

    def __post_init__(self) -> None:
        for parameter, choices in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("augment", AUGMENTATIONS),
                                   ("keep", KEEP), ("weighting", WEIGHTINGS), ("align", ALIGNMENTS),
                                   ("precision", PRECISIONS)):
            if getattr(self, parameter) not in choices:
                raise OptionError(parameter, getattr(self, parameter), f"choose one of {', '.join(choices)}")
        checks = [
            ("checkpoint_interval", self.checkpoint_interval >= 0, "must be >= 0 (seconds)"),
            ("temperature", self.temperature is None or (math.isfinite(self.temperature) and self.temperature > 0),
             "must be > 0"),
            ("epochs", self.epochs is None or self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "must be > 0"),
            ("eps", math.isfinite(self.eps) and self.eps >= 0, "must be >= 0"),
            ("num_weight_vectors", self.num_weight_vectors >= 1, "must be >= 1"),
            ("align_stage", isinstance(self.align_stage, int) and self.align_stage >= 0,
             "must be a stage index >= 0 (0 = the student's first stage)"),
            ("align_weight", isinstance(self.align_weight, (int, float)) and math.isfinite(self.align_weight)
             and self.align_weight >= 0, "must be >= 0 (lambda_max)"),
            ("align_hidden", isinstance(self.align_hidden, tuple) and len(self.align_hidden) >= 1
             and all(isinstance(w, int) and w >= 1 for w in self.align_hidden),
             "give one or more layer widths >= 1, e.g. 256,256"),
        ]
        for parameter, ok, problem in checks:
            if not ok:
                raise OptionError(parameter, getattr(self, parameter), problem)

    @property
    def peak_lr(self) -> float:
        """``lr``, or the optimizer's default (:data:`DEFAULT_LR`) when None."""
        return float(self.lr or DEFAULT_LR[self.optimizer])


def parse_widths(text: str, parameter: str = "align_hidden") -> tuple[int, ...]:
    """``"256,256"`` -> ``(256, 256)``: layer widths as the command line spells them.

    Raises:
        OptionError: not a comma-separated list of integers (the message names ``parameter``).
    """
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OptionError(parameter, text, "give comma-separated layer widths, e.g. 256,256") from None


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over ``num_items`` items in batches of ``batch_size``.

    A last batch much smaller than the others gives a noisy gradient (and a noisy max in Eq. 10):
    it is dropped once there are two full batches; every epoch reshuffles, so no item is always
    left out.
    """
    if num_items >= 2 * batch_size:
        return num_items // batch_size
    return max(1, math.ceil(num_items / batch_size))


def default_epochs(num_items: int, batch_size: int) -> int:
    """Epochs giving about 5,000 optimizer steps, at least 20 and at most 200."""
    steps = steps_per_epoch(num_items, batch_size)
    return int(min(_AUTO_MAX_EPOCHS, max(_AUTO_MIN_EPOCHS, math.ceil(_AUTO_TARGET_STEPS / steps))))
