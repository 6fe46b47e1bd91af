"""Non-negative positive-unlabeled (nnPU) risk, the training objective of the PU selector.

Implements the non-negative risk estimator and its optimisation rule from

* Kiryo, Niu, du Plessis, Sugiyama, "Positive-Unlabeled Learning with Non-Negative Risk
  Estimator", NeurIPS 2017, https://arxiv.org/abs/1703.00593 (Sec. 3, Algorithm 1),

as used for stage 1 (the PU selector) of

* Xu, Wang, Chen, Han, Xu, Tao, Xu, "Positive-Unlabeled Compression on the Cloud",
  NeurIPS 2019, https://arxiv.org/abs/1909.09757 (Sec. 2.2, Eq. 3).

With ``l(z, y)`` a surrogate loss, ``F`` the score function and ``pi`` the class prior::

    R_p^+ = mean over P of l(F(x), +1)
    R_p^- = mean over P of l(F(x), -1)
    R_u^- = mean over U of l(F(x), -1)
    r     = R_u^- - pi * R_p^-                       (negative-class risk)
    R_pu  = pi * R_p^+ + max(0, r)                   (non-negative risk, Eq. 3)

The engine is pure torch: no printing, no CLI imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SURROGATE_LOSSES",
    "NonNegativePULoss",
    "PURisk",
    "get_surrogate_loss",
    "logistic_loss",
    "nnpu_risk",
    "sigmoid_loss",
]

SurrogateLoss = Callable[[torch.Tensor, float], torch.Tensor]


def _check_target_sign(target_sign: float) -> None:
    if target_sign not in (1, -1):
        raise ValueError(f"target_sign must be +1 or -1, got {target_sign!r}")


def sigmoid_loss(scores: torch.Tensor, target_sign: float) -> torch.Tensor:
    """Sigmoid surrogate loss ``l(z, y) = sigmoid(-y z)``, elementwise.

    The usual surrogate for nnPU (Kiryo et al. 2017, experiments; pucli's default for
    Xu et al. 2019, Sec. 2.2): it is bounded and satisfies ``l(z, +1) + l(z, -1) = 1``.

    Args:
        scores: ``(N,)`` float tensor of scores ``F(x)``.
        target_sign: ``+1`` or ``-1`` (int or float), the label the loss is taken against.

    Returns:
        ``(N,)`` tensor, same dtype and device as ``scores``, values in ``(0, 1)``.

    Raises:
        ValueError: if ``target_sign`` is not +1 or -1.
    """
    _check_target_sign(target_sign)
    return torch.sigmoid(-target_sign * scores)


def logistic_loss(scores: torch.Tensor, target_sign: float) -> torch.Tensor:
    """Logistic surrogate loss ``l(z, y) = log(1 + exp(-y z)) = softplus(-y z)``, elementwise.

    Args:
        scores: ``(N,)`` float tensor of scores ``F(x)``.
        target_sign: ``+1`` or ``-1`` (int or float), the label the loss is taken against.

    Returns:
        ``(N,)`` tensor, same dtype and device as ``scores``, values in ``(0, inf)``.

    Raises:
        ValueError: if ``target_sign`` is not +1 or -1.
    """
    _check_target_sign(target_sign)
    # softplus is the overflow-safe form of log(1 + exp(.)) for large |z|.
    return F.softplus(-target_sign * scores)


SURROGATE_LOSSES: Mapping[str, SurrogateLoss] = MappingProxyType(
    {"sigmoid": sigmoid_loss, "logistic": logistic_loss}
)
"""Surrogate losses by name, read-only."""


def get_surrogate_loss(name: str) -> SurrogateLoss:
    """Return the surrogate loss registered under ``name`` in :data:`SURROGATE_LOSSES`.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the valid names.
    """
    try:
        return SURROGATE_LOSSES[name]
    except KeyError:
        valid = ", ".join(sorted(SURROGATE_LOSSES))
        raise ValueError(f"unknown surrogate loss {name!r}; valid names: {valid}") from None


@dataclass(frozen=True)
class PURisk:
    """Result of :func:`nnpu_risk`. All tensors are 0-d, in the dtype of the scores.

    Attributes:
        objective: the value to call ``.backward()`` on (Kiryo et al. 2017, Algorithm 1):
            ``-gamma * r`` on an ascent step, ``pi * R_p^+ + r`` otherwise. Carries the graph.
        risk: detached reported risk: ``pi * R_p^+ + max(0, r)`` for nnPU (Xu et al. Eq. 3),
            the unbiased ``pi * R_p^+ + r`` (possibly negative) for uPU.
        positive_risk: detached ``pi * R_p^+``.
        negative_risk: detached ``r = R_u^- - pi * R_p^-``; negative values signal over-fitting.
        ascent: True when the gradient-ascent branch was taken.
    """

    objective: torch.Tensor
    risk: torch.Tensor
    positive_risk: torch.Tensor
    negative_risk: torch.Tensor
    ascent: bool


def _check_hyperparameters(class_prior: float, beta: float, gamma: float) -> None:
    # Written as `not (a < x < b)` so that NaN is rejected too.
    if not (0.0 < class_prior < 1.0):
        raise ValueError(f"class_prior must be in (0, 1), got {class_prior!r}")
    if not (beta >= 0.0) or math.isinf(beta):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not (0.0 <= gamma <= 1.0):
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")


def _as_score_vector(scores: torch.Tensor, name: str) -> torch.Tensor:
    # A linear head with one output gives (N, 1); accept it so callers need not squeeze.
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores.squeeze(1)
    if scores.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, 1), got {tuple(scores.shape)}")
    if scores.numel() == 0:
        raise ValueError(f"{name} is empty; the PU risk needs at least one score")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {scores.dtype}")
    return scores


def nnpu_risk(
    scores_positive: torch.Tensor,
    scores_unlabeled: torch.Tensor,
    class_prior: float,
    *,
    loss: str = "sigmoid",
    beta: float = 0.0,
    gamma: float = 1.0,
    non_negative: bool = True,
) -> PURisk:
    """Non-negative PU risk of one batch and the objective to back-propagate.

    Source: Kiryo et al. 2017 (arXiv:1703.00593), Sec. 3 and Algorithm 1; Xu et al. 2019
    (arXiv:1909.09757), Eq. 3 and Sec. 2.2.

    With ``r = R_u^- - pi * R_p^-`` (see the module docstring): if ``non_negative`` and
    ``r < -beta`` the batch has over-fitted, so the objective is ``-gamma * r`` (gradient
    *ascent* on the negative-class risk only; ``R_p^+`` is deliberately absent from this
    gradient). Otherwise the objective is ``pi * R_p^+ + r``. ``non_negative=False`` gives the
    unbiased PU (uPU) objective of du Plessis et al., which never takes the ascent branch.

    The reported ``risk`` is always Eq. 3, ``pi * R_p^+ + max(0, r)`` (uPU: ``pi * R_p^+ + r``).
    Kiryo's reference Chainer code reports ``pi * R_p^+ - beta`` on ascent steps instead; the
    two agree when ``beta = 0``.

    Args:
        scores_positive: ``(N_p,)`` or ``(N_p, 1)`` float tensor, scores ``F(x)`` of the labeled
            positive set P.
        scores_unlabeled: ``(N_u,)`` or ``(N_u, 1)`` float tensor, scores of the unlabeled pool U.
        class_prior: ``pi = p(y = +1)`` in the unlabeled pool, in ``(0, 1)``.
        loss: surrogate loss name, a key of :data:`SURROGATE_LOSSES` (``"sigmoid"``, the
            paper's choice, or ``"logistic"``).
        beta: ascent threshold, ``>= 0``: ascent only when ``r < -beta``.
        gamma: ascent step scale, in ``[0, 1]``.
        non_negative: False for the uPU ablation.

    Returns:
        A :class:`PURisk`; its tensors are 0-d, in the promoted dtype of the scores.

    Raises:
        ValueError: ``class_prior`` outside (0, 1), ``beta < 0``, ``gamma`` outside [0, 1], an
            unknown ``loss`` name, or scores that are empty, not floating point, or not of
            shape ``(N,)`` / ``(N, 1)``.
    """
    _check_hyperparameters(class_prior, beta, gamma)
    surrogate = get_surrogate_loss(loss)
    scores_positive = _as_score_vector(scores_positive, "scores_positive")
    scores_unlabeled = _as_score_vector(scores_unlabeled, "scores_unlabeled")

    positive_risk = class_prior * surrogate(scores_positive, 1).mean()
    negative_risk = (
        surrogate(scores_unlabeled, -1).mean()
        - class_prior * surrogate(scores_positive, -1).mean()
    )

    ascent = non_negative and bool(negative_risk < -beta)
    if ascent:
        objective = -gamma * negative_risk
    else:
        objective = positive_risk + negative_risk

    if non_negative:
        risk = positive_risk + negative_risk.clamp(min=0)
    else:
        risk = positive_risk + negative_risk

    return PURisk(
        objective=objective,
        risk=risk.detach(),
        positive_risk=positive_risk.detach(),
        negative_risk=negative_risk.detach(),
        ascent=ascent,
    )


class NonNegativePULoss(nn.Module):
    """``nn.Module`` form of :func:`nnpu_risk`, holding its hyper-parameters.

    Arguments are those of :func:`nnpu_risk` and are validated here, so a bad configuration
    fails at construction rather than at the first batch.

    Raises:
        ValueError: as :func:`nnpu_risk`, for invalid ``class_prior``, ``loss``, ``beta`` or
            ``gamma``.
    """

    def __init__(
        self,
        class_prior: float,
        *,
        loss: str = "sigmoid",
        beta: float = 0.0,
        gamma: float = 1.0,
        non_negative: bool = True,
    ) -> None:
        super().__init__()
        _check_hyperparameters(class_prior, beta, gamma)
        get_surrogate_loss(loss)
        self.class_prior = class_prior
        self.loss = loss
        self.beta = beta
        self.gamma = gamma
        self.non_negative = non_negative

    def forward(self, scores_positive: torch.Tensor, scores_unlabeled: torch.Tensor) -> PURisk:
        """Scores as in :func:`nnpu_risk`: ``(N_p,)`` / ``(N_u,)`` (or ``(N, 1)``) float."""
        return nnpu_risk(
            scores_positive,
            scores_unlabeled,
            self.class_prior,
            loss=self.loss,
            beta=self.beta,
            gamma=self.gamma,
            non_negative=self.non_negative,
        )

    def extra_repr(self) -> str:
        return (
            f"class_prior={self.class_prior}, loss={self.loss!r}, beta={self.beta}, "
            f"gamma={self.gamma}, non_negative={self.non_negative}"
        )
