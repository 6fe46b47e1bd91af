"""Robust knowledge distillation losses (PU compression, stage 3).

Implements Section 3 of Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757):

- plain KD, Eq. 1: ``L_KD = 1/n sum_i CE(y_i^te, y_i^st)``;
- class weights from the teacher's soft class counts, Eq. 7;
- weighted KD, Eq. 8: ``1/n sum_i w_i CE(y_i^te, y_i^st)``;
- robust KD, Eq. 9-10: ``min over student, max over w in W`` of weighted KD, where ``W`` is a finite
  set of perturbations of the Eq. 7 weights.

The paper abbreviates robust KD as "RKD"; pucli never does, because in the KD literature "RKD"
means Relational KD (Park et al., CVPR 2019).

Unlike the official code (one non-negative perturbation, drawn once, never renormalised, so the max
always picks the same uniformly inflated vector), ``perturbation_set`` draws several vectors with
perturbations of both signs, each kept at mean 1, and ``robust_kd_loss`` takes the max per batch.

The training loop picks its loss once: :func:`make_objective` builds a
:class:`DistillationObjective` whose one call per batch gives Eq. 1, 8 or 10, in one process or with
the batch split over the ranks of a torchrun launch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pucli import distributed
from pucli.kd.distill.config import LOSSES

__all__ = [
    "DEFAULT_MIN_COUNT_FRACTION",
    "DistillationObjective",
    "RobustKDLoss",
    "class_weights",
    "kd_loss",
    "make_objective",
    "perturbation_set",
    "robust_kd_loss",
    "sample_weights",
    "soft_cross_entropy",
]

DEFAULT_MIN_COUNT_FRACTION = 1e-2
"""Default floor for soft class counts in ``class_weights``, as a fraction of the mean count.

Eq. 7 gives every class the same total share of the loss, so a class the teacher almost never
predicts takes nearly all the weight while no sample carries it, and the loss over the samples
that do exist shrinks by roughly ``harmonic mean / arithmetic mean`` of the counts. Flooring at 1%
of the mean still leaves weight ratios of ~100x between classes (the paper's worst imbalance,
'dog' vs 'plane' in ImageNet, is ~30x) and bounds that shrinkage.
"""


def class_weights(soft_counts: Tensor, min_count: float | None = None) -> Tensor:
    """Per-class weights of weighted KD from the teacher's soft class counts (Eq. 7).

    ``w^k = (K / y^k) / sum_j (1 / y^j)``: inversely proportional to the soft count ``y^k`` and
    averaging to 1, so every class contributes the same total weight.

    Args:
        soft_counts: (K,) float, ``y = sum_i y_i^te`` over the extended set ``L^l`` (teacher soft
            targets summed per class).
        min_count: counts below this are raised to it before Eq. 7, so that an (almost) absent
            class cannot take all the weight. ``None`` (default) uses
            ``DEFAULT_MIN_COUNT_FRACTION * soft_counts.mean()``; ``0`` disables the floor (then a
            zero count raises).

    Returns:
        (K,) tensor with the dtype and device of ``soft_counts``, positive, mean 1.

    Raises:
        ValueError: ``soft_counts`` is not a non-empty 1-D floating tensor, holds a negative or
            non-finite value, or sums to zero; ``min_count`` is negative or non-finite; a count
            is still zero after the floor.
    """
    if soft_counts.ndim != 1 or soft_counts.numel() == 0:
        raise ValueError(f"soft_counts must be a non-empty (K,) tensor, got shape {tuple(soft_counts.shape)}")
    if not soft_counts.is_floating_point():
        raise ValueError(f"soft_counts must be a floating tensor, got {soft_counts.dtype}")
    if not bool(torch.isfinite(soft_counts).all()):
        raise ValueError("soft_counts must be finite; the teacher produced NaN or inf soft targets")
    if bool((soft_counts < 0).any()):
        raise ValueError("soft_counts must be non-negative; pass summed softmax outputs, not logits")
    mean_count = float(soft_counts.mean())
    if mean_count == 0.0:
        raise ValueError("soft_counts are all zero; the extended set holds no samples")
    if min_count is None:
        min_count = DEFAULT_MIN_COUNT_FRACTION * mean_count
    if not math.isfinite(min_count) or min_count < 0:
        raise ValueError(f"min_count must be finite and >= 0, got {min_count}")
    counts = soft_counts.clamp_min(min_count)
    if bool((counts == 0).any()):
        raise ValueError("a class has a zero soft count; set min_count > 0 to floor it")
    inverse = counts.reciprocal()
    num_classes = counts.numel()
    return num_classes * inverse / inverse.sum()


def sample_weights(soft_targets: Tensor, class_weights: Tensor) -> Tensor:
    """Weight of each sample: the class weight of its teacher-argmax class (Eq. 8, ``w_i``).

    Args:
        soft_targets: (B, K) float, teacher soft targets ``y_i^te``.
        class_weights: (K,) float, e.g. from ``class_weights``.

    Returns:
        (B,) tensor with the dtype of ``class_weights``.

    Raises:
        ValueError: the shapes are not (B, K) and (K,).
    """
    _check_targets(soft_targets)
    if class_weights.ndim != 1 or class_weights.shape[0] != soft_targets.shape[1]:
        raise ValueError(
            f"class_weights must have shape ({soft_targets.shape[1]},), "
            f"got {tuple(class_weights.shape)}"
        )
    return class_weights[soft_targets.argmax(dim=1)]


def soft_cross_entropy(
    student_logits: Tensor, soft_targets: Tensor, temperature: float = 1.0
) -> Tensor:
    """Per-sample cross-entropy ``CE(y^te, softmax(z^st / T)) * T^2`` (the ``F_ce`` of Eq. 1 and 8).

    The ``T^2`` factor (Hinton et al., 2015) keeps gradient magnitudes independent of the
    temperature, so a learning rate tuned at one T carries over; at T = 1 (the paper's setting)
    this is plain cross-entropy against soft targets.

    Args:
        student_logits: (B, K) float (any float dtype; computed in at least float32).
        soft_targets: (B, K) float, ``softmax(z^te / T)`` already computed by the caller with the
            same temperature; rows should sum to 1.
        temperature: T > 0.

    Returns:
        (B,) float32 (or float64 for float64 logits).

    Raises:
        ValueError: shapes differ or are not (B, K) with B >= 1; temperature not finite and > 0.
    """
    _check_pair(student_logits, soft_targets)
    _check_temperature(temperature)
    compute_dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_probs = F.log_softmax(student_logits.to(compute_dtype) / temperature, dim=1)
    return -(soft_targets.to(compute_dtype) * log_probs).sum(dim=1) * temperature**2


def kd_loss(
    student_logits: Tensor,
    soft_targets: Tensor,
    temperature: float = 1.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Batch KD loss ``1/n sum_i w_i CE_i``: weighted KD (Eq. 8), or plain KD (Eq. 1) unweighted.

    Args:
        student_logits: (B, K) float.
        soft_targets: (B, K) float teacher soft targets.
        temperature: T > 0, see ``soft_cross_entropy``.
        weights: (B,) float per-sample weights (``sample_weights``), or ``None`` for plain KD.

    Returns:
        Scalar float tensor carrying the gradient w.r.t. ``student_logits``.

    Raises:
        ValueError: as ``soft_cross_entropy``, or ``weights`` is not (B,).
    """
    per_sample = soft_cross_entropy(student_logits, soft_targets, temperature)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights must have shape {tuple(per_sample.shape)}, got {tuple(weights.shape)}")
    return (weights.to(per_sample.dtype) * per_sample).mean()


def perturbation_set(
    class_weights: Tensor,
    eps: float,
    num_vectors: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The finite set ``W`` of weight vectors around ``w_kd`` for robust KD (Eq. 9-10).

    Construction, per vector ``m``:

    1. draw ``d ~ U(-1, 1)^K`` from ``generator`` and subtract its mean, so ``sum_k d_k = 0``
       (``w_kd + s * d`` keeps the mean of ``w_kd``, i.e. 1, for any scale ``s``, and ``d`` has
       entries of both signs whenever it is non-zero);
    2. pick the largest scale ``s >= 0`` with ``|s * d_k| <= eps`` for every k and, where
       ``d_k < 0``, ``s * |d_k| <= w_kd^k / 2``, so every entry stays at least half its original
       weight and strictly positive even when ``w_kd^k <= eps``;
    3. ``W[m] = w_kd + s * d``.

    Scaling to the largest feasible ``s`` puts each vector on the boundary of the eps-box, where the
    maximum of a loss that is linear in ``w`` lies. With ``eps = 0`` (or K = 1) every row is
    exactly ``w_kd``.

    Args:
        class_weights: (K,) float ``w_kd``, positive, mean 1 (as ``class_weights`` returns).
        eps: perturbation radius, >= 0 (the official code uses 0.1).
        num_vectors: M >= 1, number of vectors in the set.
        generator: source of randomness; the same seed gives the same set. Draws happen on the
            generator's device (CPU when ``None``, using the global RNG).

    Returns:
        (M, K) tensor with the dtype and device of ``class_weights``; every entry within eps of
        ``w_kd`` and each row of mean 1, up to float rounding.

    Raises:
        ValueError: ``class_weights`` is not a non-empty 1-D tensor of finite positive values with
            mean 1 (to 1e-4); ``eps`` is negative or non-finite; ``num_vectors`` < 1.
    """
    if class_weights.ndim != 1 or class_weights.numel() == 0:
        raise ValueError(f"class_weights must be a non-empty (K,) tensor, got shape {tuple(class_weights.shape)}")
    if not bool(torch.isfinite(class_weights).all()) or bool((class_weights <= 0).any()):
        raise ValueError("class_weights must be finite and strictly positive")
    mean_weight = float(class_weights.double().mean())
    if abs(mean_weight - 1.0) > 1e-4:
        raise ValueError(f"class_weights must average to 1 (as Eq. 7 weights do), got mean {mean_weight:.6g}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if isinstance(num_vectors, bool) or not isinstance(num_vectors, int) or num_vectors < 1:
        raise ValueError(f"num_vectors must be an integer >= 1, got {num_vectors!r}")

    num_classes = class_weights.numel()
    draw_device = generator.device if generator is not None else torch.device("cpu")
    unit = torch.rand((num_vectors, num_classes), generator=generator, device=draw_device, dtype=torch.float64)
    direction = (2.0 * unit - 1.0).to(class_weights.device)
    direction = direction - direction.mean(dim=1, keepdim=True)

    base = class_weights.to(torch.float64)
    # Per-entry room: eps either way, but never more than half the weight downwards.
    room = torch.where(direction < 0, (0.5 * base).clamp(max=eps), torch.full_like(base, eps))
    magnitude = direction.abs()
    # Entries with d_k = 0 put no limit on the scale.
    limits = torch.where(magnitude > 0, room / magnitude.clamp_min(torch.finfo(torch.float64).tiny), math.inf)
    scale = limits.amin(dim=1, keepdim=True)
    scale = torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))
    perturbed = base + scale * direction
    return perturbed.to(class_weights.dtype)


def robust_kd_loss(
    student_logits: Tensor,
    soft_targets: Tensor,
    weight_set: Tensor,
    temperature: float = 1.0,
) -> tuple[Tensor, int]:
    """Robust KD loss for one batch: ``max over w in W`` of weighted KD (Eq. 10, inner max).

    All M weighted losses ``loss_m = 1/n sum_i W[m, argmax_k y_i^te] CE_i`` are computed in one
    matrix product; the largest is returned, so its gradient is that of the chosen vector.

    Args:
        student_logits: (B, K) float.
        soft_targets: (B, K) float teacher soft targets.
        weight_set: (M, K) float, e.g. from ``perturbation_set``.
        temperature: T > 0, see ``soft_cross_entropy``.

    Returns:
        ``(loss, index)``: scalar float tensor carrying the gradient w.r.t. ``student_logits``,
        and the row of ``weight_set`` that attained the max (first one on ties).

    Raises:
        ValueError: as ``soft_cross_entropy``, or ``weight_set`` is not (M, K) with M >= 1.
    """
    per_sample = soft_cross_entropy(student_logits, soft_targets, temperature)
    num_classes = soft_targets.shape[1]
    if weight_set.ndim != 2 or weight_set.shape[0] == 0 or weight_set.shape[1] != num_classes:
        raise ValueError(
            f"weight_set must have shape (M, {num_classes}) with M >= 1, "
            f"got {tuple(weight_set.shape)}"
        )
    teacher_classes = soft_targets.argmax(dim=1)
    per_vector_weights = weight_set.to(per_sample.dtype)[:, teacher_classes]
    losses = per_vector_weights @ per_sample / per_sample.shape[0]
    index = int(losses.detach().argmax())
    return losses[index], index


class RobustKDLoss(nn.Module):
    """Robust KD criterion holding ``w_kd`` and its current perturbation set ``W`` (Eq. 7-10).

    Call ``redraw()`` once per epoch to draw a fresh ``W`` (Algorithm 2 draws it once; re-drawing
    explores more of the eps-box over training). ``forward`` returns ``(loss, index)`` like
    ``robust_kd_loss``.

    Args:
        class_weights: (K,) float ``w_kd`` (mean 1).
        eps: perturbation radius, >= 0.
        num_vectors: M >= 1, size of ``W``.
        temperature: T > 0.
        generator: used for the initial draw.

    Raises:
        ValueError: as ``perturbation_set`` or for a bad temperature.
    """

    class_weights: Tensor
    weight_set: Tensor

    def __init__(
        self,
        class_weights: Tensor,
        eps: float = 0.1,
        num_vectors: int = 8,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.eps = eps
        self.num_vectors = num_vectors
        self.temperature = temperature
        self.register_buffer("class_weights", class_weights.detach().clone())
        self.register_buffer("weight_set", perturbation_set(self.class_weights, eps, num_vectors, generator))

    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Replace ``weight_set`` with a fresh (M, K) draw around ``class_weights``."""
        self.weight_set = perturbation_set(self.class_weights, self.eps, self.num_vectors, generator)

    def forward(self, student_logits: Tensor, soft_targets: Tensor) -> tuple[Tensor, int]:
        """(B, K) student logits and teacher soft targets -> (scalar loss, chosen row of W)."""
        return robust_kd_loss(student_logits, soft_targets, self.weight_set, self.temperature)


class DistillationObjective:
    """The student's loss per batch, chosen once per run: plain KD (Eq. 1), weighted KD (Eq. 8) or
    robust KD (Eq. 10, the max over the set ``W`` of Eq. 9). Build it with :func:`make_objective`.

    Attributes:
        loss: ``kd``, ``weighted-kd`` or ``robust-kd``.
        class_weights: (K,) float ``w_kd`` of Eq. 7.
        temperature: T > 0 of the soft targets.
        robust: the robust KD criterion holding ``W`` (``loss == "robust-kd"``), else None.
    """

    def __init__(self, loss: str, class_weights: Tensor, temperature: float,
                 robust: RobustKDLoss | None = None) -> None:
        self.loss, self.class_weights, self.temperature, self.robust = loss, class_weights, temperature, robust

    @property
    def num_vectors(self) -> int:
        """M, the number of vectors in ``W`` (0 unless robust KD)."""
        return self.robust.num_vectors if self.robust is not None else 0

    @property
    def weight_set(self) -> Tensor | None:
        """(M, K) float ``W`` for robust KD, else None."""
        return self.robust.weight_set if self.robust is not None else None

    def restore_weight_set(self, weight_set: Tensor) -> None:
        """Put back a saved (M, K) ``W`` (resuming a run); nothing to restore unless robust KD."""
        if self.robust is not None:
            self.robust.weight_set = weight_set.to(self.robust.class_weights.device)

    def redraw(self, generator: torch.Generator) -> None:
        """Draw a fresh ``W`` around ``w_kd`` (robust KD; nothing to draw otherwise)."""
        if self.robust is not None:
            self.robust.redraw(generator)

    def __call__(self, student_logits: Tensor, soft_targets: Tensor) -> tuple[Tensor, int | None]:
        """The batch loss: ``(scalar float tensor carrying the gradient, row of W that attained
        the max, or None unless robust KD)``.

        Args:
            student_logits: (B, K) float; B may be 0 on a rank of a torchrun launch.
            soft_targets: (B, K) float teacher soft targets at ``temperature``.

        Under torchrun the batch is split over the ranks: see :meth:`split_batch_loss`.
        """
        if distributed.is_distributed():
            return self.split_batch_loss(student_logits, soft_targets)
        if self.robust is not None:
            return self.robust(student_logits, soft_targets)
        if self.loss == "weighted-kd":
            weights = sample_weights(soft_targets, self.class_weights)
            return kd_loss(student_logits, soft_targets, self.temperature, weights), None
        return kd_loss(student_logits, soft_targets, self.temperature), None

    def split_batch_loss(self, student_logits: Tensor, soft_targets: Tensor) -> tuple[Tensor, int | None]:
        """The batch loss of Eq. 1, 8 or 10 when the batch is split over the ranks of a torchrun launch.

        Each rank sums its per-sample losses, weighted by each vector of ``W`` for robust KD (by the
        Eq. 7 weights for weighted KD); these sums and the item counts are all-reduced, so every rank
        knows the whole batch's losses and, for robust KD, takes the same maximising vector (Eq. 10's
        max is over the batch, not over a rank's share of it). The rank's loss is its sum for that
        vector times ``world_size / n``: DDP's mean of the ranks' gradients is then the gradient of
        the whole batch's loss, as in one process. A rank with no image (all unreadable) contributes
        zero. Returns ``(loss, chosen vector or None)`` as :meth:`__call__`.
        """
        rows = max(1, self.num_vectors)
        if len(student_logits):
            per_sample = soft_cross_entropy(student_logits, soft_targets, self.temperature)
            if self.robust is not None:
                vector_weights = self.robust.weight_set.to(per_sample.dtype)[:, soft_targets.argmax(dim=1)]
            elif self.loss == "weighted-kd":
                vector_weights = sample_weights(soft_targets, self.class_weights).to(per_sample.dtype)[None]
            else:
                vector_weights = torch.ones(1, len(per_sample), dtype=per_sample.dtype, device=per_sample.device)
            sums = vector_weights @ per_sample
        else:  # keeps the graph through the student, which DDP needs on every rank
            sums = student_logits.sum() * 0 + torch.zeros(rows, device=student_logits.device)
        totals = torch.cat([sums.detach().double(),
                            torch.tensor([float(len(student_logits))], dtype=torch.float64, device=sums.device)])
        distributed.all_reduce_sum(totals)
        chosen = int(totals[:-1].argmax()) if self.robust is not None else None
        loss = sums[chosen or 0] * (distributed.world_size() / float(totals[-1]))
        return loss, chosen


def make_objective(loss: str, class_weights: Tensor, *, temperature: float = 1.0, eps: float = 0.1,
                   num_weight_vectors: int = 8, generator: torch.Generator | None = None) -> DistillationObjective:
    """The objective a distillation run trains with (Eq. 1, 8 or 10), built once.

    Args:
        loss: ``kd`` (Eq. 1), ``weighted-kd`` (Eq. 8) or ``robust-kd`` (Eq. 10).
        class_weights: (K,) float ``w_kd`` (Eq. 7, mean 1, as :func:`class_weights` returns), on
            the device the loss is computed on; unused by plain KD.
        temperature: T > 0 of the soft targets.
        eps, num_weight_vectors: robust KD's radius and M (Eq. 9).
        generator: robust KD's first draw of ``W`` (:func:`perturbation_set`).

    Raises:
        ValueError: ``loss`` is not one of those; as :class:`RobustKDLoss` for robust KD; a bad
            temperature.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    _check_temperature(temperature)
    robust = (RobustKDLoss(class_weights, eps=eps, num_vectors=num_weight_vectors, temperature=temperature,
                           generator=generator) if loss == "robust-kd" else None)
    return DistillationObjective(loss, class_weights, temperature, robust)


def _check_targets(soft_targets: Tensor) -> None:
    if soft_targets.ndim != 2 or soft_targets.shape[0] == 0 or soft_targets.shape[1] == 0:
        raise ValueError(f"soft_targets must have shape (B, K) with B, K >= 1, got {tuple(soft_targets.shape)}")


def _check_pair(student_logits: Tensor, soft_targets: Tensor) -> None:
    _check_targets(soft_targets)
    if student_logits.shape != soft_targets.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and soft_targets "
            f"{tuple(soft_targets.shape)} must have the same (B, K) shape"
        )


def _check_temperature(temperature: float) -> None:
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
