"""BatchNorm re-estimation ("re-normalization") after pruning or low-bit weights.

He & Cheng, "Learning Compression from Limited Unlabeled Data", ECCV 2018
(https://arxiv.org/abs/1808.00113): compression shifts every activation's distribution while each
BatchNorm still normalises with the original network's statistics; re-estimating the running mean
and variance on about 1,000 unlabeled images, with no labels and no training, recovers most of the
accuracy lost. Semantics (``../shared/docs/METHOD.md``, "BN re-estimation"):

- the whole model in eval mode (dropout, drop-path, drop-block off); only the ``_BatchNorm``
  modules in train mode, and only them: timm's ``BatchNormAct2d`` is a ``_BatchNorm`` with ``drop``
  and ``act`` children, which stay in eval mode;
- their statistics reset and averaged cumulatively (``momentum=None``) over equal-sized batches, so
  the running mean is the mean of the batch means and the running variance the mean of the batches'
  unbiased variances (what ``torch.optim.swa_utils.update_bn`` computes, without its dropout);
- every module's mode and every BatchNorm's momentum restored afterwards.

Why our own: ``update_bn`` puts the whole model in train mode; NNCF 3.x keeps the old statistics and
their moving average; timm has no such function.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pucli.errors import DataError
from pucli.progress import ProgressCallback, no_progress

__all__ = ["LayerShift", "RenormResult", "batchnorm_layers", "check_batchnorm", "reestimate_batchnorm"]


@dataclass
class LayerShift:
    """How much one BatchNorm's statistics moved. ``mean_shift``: mean over channels of
    ``|new_mean - old_mean| / sqrt(old_var + eps)`` (in units of the old standard deviation);
    ``var_ratio``: mean over channels of ``new_var / old_var``; ``channels``: the layer's width."""

    name: str
    channels: int
    mean_shift: float
    var_ratio: float


@dataclass
class RenormResult:
    """What :func:`reestimate_batchnorm` did: ``images`` and ``batches`` used, ``seconds`` of
    forward passes (wall-clock), and each BatchNorm's :class:`LayerShift`, in module order."""

    images: int
    batches: int
    seconds: float
    layers: list[LayerShift] = field(default_factory=list)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The re-estimable BatchNorms of ``model`` (``_BatchNorm`` with running statistics; timm's
    ``BatchNormAct2d`` included), as ``(qualified name, module)`` in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def check_batchnorm(model: nn.Module, where: str, *, parameter: str | None = None) -> list[tuple[str, _BatchNorm]]:
    """:func:`batchnorm_layers`, or an error naming the norm layers ``model`` has instead; the
    error opens with ``where`` (which names ``parameter``, if given, first).

    Raises:
        DataError: no BatchNorm with running statistics (LayerNorm, GroupNorm, FrozenBatchNorm2d,
            EvoNorm, BatchNorm without running statistics, or no norm layer at all).
    """
    layers = batchnorm_layers(model)
    if layers:
        return layers
    norms = Counter(type(m).__name__ for m in model.modules() if "norm" in type(m).__name__.lower())
    found = ", ".join(f"{count} {name}" for name, count in norms.most_common()) or "no norm layer at all"
    raise DataError(f"{where} has no BatchNorm with running statistics to re-estimate ({found}): "
                    "BN re-estimation needs a network with BatchNorm layers", parameter=parameter)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    progress: ProgressCallback = no_progress,
    total_images: int | None = None,
) -> RenormResult:
    """Replace every BatchNorm's running mean and variance of ``model`` by their cumulative
    average over ``batches`` (He & Cheng 2018, Section 3; semantics in the module docstring).

    Args:
        model: any module; only its BatchNorm buffers change (in place).
        batches: normalised model inputs, float32 (B, C, H, W) on the model's device; give batches
            of one size, so that each image weighs the same in the average.
        total_images: for ``progress("re-estimate", images_done, total_images)``.

    Raises:
        DataError: ``model`` has no BatchNorm (:func:`check_batchnorm`), or ``batches`` is empty.
    """
    layers = check_batchnorm(model, "the model")
    old = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in layers}
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for _, m in layers}
    images = count = 0
    started = time.perf_counter()
    try:
        model.eval()
        for _, m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.training = True  # the layer alone: BatchNormAct2d's drop / act children stay in eval
        for batch in batches:
            model(batch)
            count += 1
            images += len(batch)
            progress("re-estimate", images, total_images)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    if count == 0:
        for name, m in layers:  # nothing seen: give the old statistics back rather than reset ones
            m.running_mean.copy_(old[name][0])
            m.running_var.copy_(old[name][1])
        raise DataError("no image to re-estimate the BatchNorm statistics on: give a source with readable images")
    return RenormResult(images, count, time.perf_counter() - started, [_shift(n, m, *old[n]) for n, m in layers])


def _shift(name: str, layer: _BatchNorm, old_mean: Tensor, old_var: Tensor) -> LayerShift:
    old_std = (old_var + layer.eps).sqrt()
    mean_shift = ((layer.running_mean - old_mean).abs() / old_std).mean()
    var_ratio = (layer.running_var / old_var.clamp_min(layer.eps)).mean()
    return LayerShift(name, int(old_mean.numel()), float(mean_shift), float(var_ratio))
