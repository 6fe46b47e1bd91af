"""Adversarial feature alignment of the labeled and the unlabeled images (``distill --align adversarial``).

Tang et al., "Bringing Giant Neural Networks Down to Earth with Unlabeled Data", 2019
(https://arxiv.org/abs/1907.06065; only the abstract is public): when a student learns from a
fraction of the labeled data and a pool of unlabeled images, the bias between the two datasets
disturbs distillation, and an adversarial loss aligning the distributions of *low-level* feature
representations of the two fixes it. pucli reads it in the domain-adversarial form of Ganin &
Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015
(https://arxiv.org/abs/1409.7495, "DANN"; ``../shared/docs/METHOD.md``):

- a domain discriminator ``D`` (:class:`DomainDiscriminator`, an MLP on globally average-pooled
  features) tells the student's early-stage features of the labeled subset ``L^t`` (source, domain
  label 1) from those of the unlabeled images of the expanded set (target, 0);
- between the features and ``D`` sits the gradient-reversal layer ``R_lambda`` (Ganin & Lempitsky,
  Sec. 3.2, Eq. 13: identity forward, ``-lambda * gradient`` backward, :func:`reverse_gradient`),
  so one backward pass trains ``D`` to minimise the domain loss ``L_d`` (binary cross-entropy)
  while the student's features move to maximise it;
- ``lambda`` follows DANN's warm-up (Sec. 5.2.2), :func:`dann_lambda`:
  ``lambda_p = lambda_max * (2 / (1 + exp(-10 p)) - 1)``, ``p`` the training progress in [0, 1];
- the student's total objective is the KD loss (robust KD by default, :mod:`pucli.kd.losses`) plus
  ``L_d`` through ``R_lambda_p``; ``D``'s accuracy near 0.5 means the features are aligned.

:class:`AlignedStudent` does the forward passes of one step (the KD batch, and an extra batch of
labeled positives resampled with replacement, since ``L^t`` is tiny) as one module, so that under
torchrun DistributedDataParallel wraps the student and ``D`` together and averages both gradients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pucli.errors import OptionError

__all__ = [
    "AlignedStudent",
    "DomainDiscriminator",
    "GradientReversal",
    "dann_lambda",
    "domain_loss",
    "feature_channels",
    "reverse_gradient",
]


class GradientReversal(torch.autograd.Function):
    """``R_lambda`` of Ganin & Lempitsky 2015 (Eq. 13): ``R(x) = x`` forward, ``dR/dx = -lambda I`` backward.

    Use :func:`reverse_gradient`; ``lambda`` gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output * -ctx.scale, None


def reverse_gradient(features: Tensor, scale: float) -> Tensor:
    """``features`` unchanged; the gradient flowing back through it multiplied by ``-scale``.

    Args:
        features: any shape and floating dtype.
        scale: ``lambda >= 0`` (a Python float: it is not trained).

    Returns:
        A tensor equal to ``features`` (same shape, dtype, device).
    """
    return GradientReversal.apply(features, float(scale))


def dann_lambda(progress: float, lambda_max: float) -> float:
    """DANN's warm-up of the adversarial weight (Ganin & Lempitsky 2015, Sec. 5.2.2; gamma = 10):
    ``lambda_max * (2 / (1 + exp(-10 p)) - 1)``.

    0 at ``p = 0``, rising to ``lambda_max * 0.99991`` at ``p = 1``; early in training, when the
    features are still noise, the discriminator's signal is kept from the student.

    Args:
        progress: ``p``, the fraction of training done, clamped to [0, 1].
        lambda_max: the weight the warm-up approaches, >= 0.
    """
    p = min(1.0, max(0.0, float(progress)))
    return float(lambda_max) * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class DomainDiscriminator(nn.Module):
    """``D``: pooled features -> one domain logit, as the usual DANN implementations build it
    (each hidden layer Linear -> BatchNorm1d -> ReLU, then Linear -> 1).

    Args:
        in_channels: C, the width of the pooled features.
        hidden: the hidden layer widths (at least one).
        generator_seed: seeds the initialisation from a generator of its own, so building ``D``
            leaves the global RNG (hence the student's training draws) exactly as it was.

    Shapes: ``forward`` (B, C) float32 -> (B,) float32 logits; positive says "labeled (source)".

    Raises:
        OptionError: ``hidden`` is empty or holds a width < 1 (parameter ``align_hidden``).
    """

    def __init__(self, in_channels: int, hidden: Sequence[int] = (256, 256), *, generator_seed: int = 0) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if not hidden or any(width < 1 for width in hidden):
            raise OptionError("align_hidden", ",".join(map(str, hidden)), "give one or more layer widths >= 1")
        layers: list[nn.Module] = []
        widths = (in_channels, *hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            for width_in, width_out in itertools.pairwise(widths):
                layers += [nn.Linear(width_in, width_out), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
            layers.append(nn.Linear(widths[-1], 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(1)


def domain_loss(logits: Tensor, is_source: Tensor) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy of ``D``'s logits against the domain labels, and how many it got right.

    Args:
        logits: (B,) float, ``D``'s output.
        is_source: (B,) bool, True for labeled positives (source), False for unlabeled images.

    Returns:
        ``(mean loss, scalar float tensor: correct predictions)``; the loss carries the gradient.
    """
    labels = is_source.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    correct = ((logits.detach() > 0) == is_source).sum().to(torch.float32)
    return loss, correct


def feature_channels(model: nn.Module, stage: int) -> int:
    """Channels of ``model``'s feature stage ``stage`` (timm ``feature_info`` order).

    Raises:
        OptionError: the model exposes no feature stages, or has no stage ``stage`` (parameter ``align_stage``).
    """
    info = list(getattr(getattr(model, "feature_info", None), "info", getattr(model, "feature_info", None)) or [])
    if not info:
        raise OptionError("align_stage", stage, f"the student ({type(model).__name__}) exposes no feature stages "
                          "(timm feature_info); use a timm CNN or `align=none`")
    if not 0 <= stage < len(info):
        raise OptionError("align_stage", stage, f"the student has stages 0..{len(info) - 1}")
    return int(info[stage]["num_chs"])


class AlignedStudent(nn.Module):
    """The student and ``D`` of one training step, as one module (one DDP wrapper under torchrun).

    ``forward(inputs, source_inputs, is_source, scale)``:

    - ``inputs`` (B, C_in, H, W) float32, the KD batch: the student's logits (B, K), exactly as
      ``student(inputs)`` for timm models (``forward_intermediates`` then ``forward_head``; forward
      hooks on the ``feature_info`` module for models without it, as :mod:`pucli.pu.network` does),
      and its stage-``stage`` maps;
    - ``source_inputs`` (S, C_in, H, W) float32, labeled positives resampled for the source domain:
      the student runs only up to the stage, and its BatchNorm running statistics are put back
      afterwards, so they describe the KD batches alone (as without alignment);
    - the maps of both, average-pooled to (B + S, C), pass :func:`reverse_gradient` with ``scale``
      (``lambda_p``) into ``D``.

    Returns ``(logits (B, K) float32, domain logits (B + S,) float32, is_source (B + S,) bool)``:
    ``is_source`` is the given (B,) mask of the KD batch's labeled items followed by S Trues.
    """

    def __init__(self, student: nn.Module, discriminator: DomainDiscriminator, stage: int) -> None:
        super().__init__()
        feature_channels(student, stage)  # raises on a stage the student lacks
        self.student = student
        self.discriminator = discriminator
        self.stage = stage
        self._intermediates = hasattr(student, "forward_intermediates")
        info = list(getattr(student.feature_info, "info", student.feature_info))
        self._tap = info[stage]["module"]

    def forward(self, inputs: Tensor, source_inputs: Tensor, is_source: Tensor,
                scale: float) -> tuple[Tensor, Tensor, Tensor]:
        logits, target_maps = self._logits_and_maps(inputs)
        source_maps = self._maps_only(source_inputs)
        pooled = torch.cat([target_maps.float().mean(dim=(2, 3)), source_maps.float().mean(dim=(2, 3))])
        domain_logits = self.discriminator(reverse_gradient(pooled, scale))
        labels = torch.cat([is_source.to(domain_logits.device),
                            torch.ones(len(source_inputs), dtype=torch.bool, device=domain_logits.device)])
        return logits, domain_logits, labels

    def _logits_and_maps(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        if self._intermediates:
            final, maps = self.student.forward_intermediates(inputs, indices=[self.stage])
            return self.student.forward_head(final), maps[0]
        captured: list[Tensor] = []
        handle = dict(self.student.named_modules())[self._tap].register_forward_hook(
            lambda _m, _i, out: captured.append(out))
        try:
            logits = self.student(inputs)
        finally:
            handle.remove()
        return logits, captured[0]

    def _maps_only(self, inputs: Tensor) -> Tensor:
        saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                 for m in self.student.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                 and m.running_mean is not None]
        try:
            if self._intermediates:
                return self.student.forward_intermediates(inputs, indices=[self.stage], stop_early=True,
                                                          intermediates_only=True)[0]
            return self._logits_and_maps(inputs)[1]
        finally:
            with torch.no_grad():
                for module, mean, var, count in saved:
                    module.running_mean.copy_(mean)
                    module.running_var.copy_(var)
                    module.num_batches_tracked.copy_(count)
