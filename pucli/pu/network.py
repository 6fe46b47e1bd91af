"""Network ``N_A`` of the PU selector (Xu et al. 2019, Eq. 4-6): multi-scale extractor, SE head, ensemble.

The teacher's feature maps at several scales are global-average-pooled to channel descriptors
``o^j`` and concatenated to ``o`` (C channels); a squeeze-and-excitation gate
``w = sigmoid(W2 relu(W1 o))`` (timm's :class:`timm.layers.SEModule`) rescales it, ``o~ = w * o``,
and a linear head gives the score ``F(x)``.

Scales (:class:`~pucli.pu.options.Scales`): the stages of timm's feature API
(``forward_intermediates`` where the model has it, else forward hooks on the modules its
``feature_info`` names, which is what ``features_only`` wraps) plus, by default, the penultimate
features ``forward_head(x, pre_logits=True)``. The pre-logits scale matters for small backbones
such as LeNet-5, whose conv stages have only 6 and 16 channels while its 84-d penultimate layer
holds the class evidence; for ResNets it equals the pooled last stage, so it only repeats that scale.
A model without timm's feature API (torchvision's, the user's own), or any model with named
``Scales.taps``, is tapped where :mod:`pucli.pu.taps` says: the stages torch.fx finds (the last node
at each spatial resolution) and the penultimate features, or the named layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pucli.errors import MissingOptionError, OptionError, UsageError
from pucli.pu.options import Scales
from pucli.pu.taps import Tap, find_taps, pool_tap

__all__ = ["MultiScaleExtractor", "AttentionScoreHead", "ScoreEnsemble", "PUSelectorNet"]


class MultiScaleExtractor(nn.Module):
    """The backbone part of ``N_A``: images -> concatenated pooled descriptors ``o`` (Eq. 4).

    Wraps a classifier (the teacher, or a copy of it for fine-tuning). For a timm model, stage
    maps come from ``model.forward_intermediates`` when the model has it, else from forward hooks
    on the modules named by ``model.feature_info`` (the modules timm's ``features_only`` wrapper
    taps). Any other model, or ``scales.taps``, is tapped by :func:`pucli.pu.taps.find_taps`
    (``input_size`` (C, H, W) is then needed to find the taps' shapes); ``taps`` lists them.

    Shapes: ``forward`` (B, C_in, H, W) float32 normalised images -> (B, C) float32, where
    ``C = sum(scale_channels)``.

    Raises:
        UsageError: ``scales.stages`` names a stage the model lacks.
        MissingOptionError: a model tapped by :mod:`pucli.pu.taps` without ``input_size``.
        OptionError: as :func:`pucli.pu.taps.find_taps`.
    """

    def __init__(self, model: nn.Module, scales: Scales = Scales(), *, input_size: Sequence[int] | None = None) -> None:
        super().__init__()
        self.scales = scales
        self.taps: list[Tap] | None = None
        info = _feature_info(model)
        if scales.taps is not None or not info:
            if input_size is None:
                raise MissingOptionError("input_size", f"{type(model).__name__} has no feature stages of timm's; "
                                         "the stages to tap are found on one image of the model's input size")
            # The tapped graph shares the model's layers and weights; it is the only copy registered.
            self.model, self.taps = find_taps(model, input_size, scales.taps, stages=scales.stages,
                                              pre_logits=scales.pre_logits)
            self.stage_indices = list(range(len(self.taps)))
            self.scale_channels = [tap.channels for tap in self.taps]
            self.channels = sum(self.scale_channels)
            self._use_intermediates, self._hook_modules = False, []
            return
        self.model = model
        count = len(info)
        requested = range(count) if scales.stages is None else scales.stages
        stages: list[int] = []
        for index in requested:
            if not -count <= index < count:
                raise UsageError(f"scale stage {index} does not exist: the model has stages 0..{count - 1}")
            stages.append(index % count)
        self.stage_indices = sorted(set(stages))
        self.scale_channels = [int(info[i]["num_chs"]) for i in self.stage_indices]
        if scales.pre_logits:
            self.scale_channels.append(int(getattr(model, "num_features", 0) or getattr(model, "head_hidden_size")))
        self.channels = sum(self.scale_channels)
        self._use_intermediates = hasattr(model, "forward_intermediates")
        self._hook_modules = [info[i]["module"] for i in self.stage_indices]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.taps is not None:
            return torch.cat([pool_tap(value) for value in self.model(images)], dim=1)
        maps, final = self._stage_maps(images)
        pooled = [m.float().mean(dim=(2, 3)) for m in maps]
        if self.scales.pre_logits:
            pooled.append(self.model.forward_head(final, pre_logits=True).float().flatten(1))
        return torch.cat(pooled, dim=1)

    def _stage_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self._use_intermediates:
            final, maps = self.model.forward_intermediates(images, indices=self.stage_indices)
            return list(maps), final
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = [
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
            for name in self._hook_modules
        ]
        try:
            final = self.model.forward_features(images)
        finally:
            for handle in handles:
                handle.remove()
        return [captured[name] for name in self._hook_modules], final


    def tap_summary(self, input_size: Sequence[int]) -> list[dict[str, object]]:
        """Which nodes are tapped and what each gives per image, for run reports: ``[{"node": name,
        "shape": [C, H, W] or [F]}, ...]``. A timm model's stages are named by their ``feature_info``
        module and its penultimate features ``forward_head(pre_logits=True)``; their shapes come
        from one zero image of ``input_size`` (C, H, W), run in eval mode (the mode is restored)."""
        if self.taps is not None:
            return [tap.as_dict() for tap in self.taps]
        info = _feature_info(self.model)
        names = [str(info[i].get("module", f"stage {i}")) for i in self.stage_indices]
        device = next(self.model.parameters()).device
        training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                maps, final = self._stage_maps(torch.zeros(1, *input_size, device=device))
                shapes = [list(m.shape[1:]) for m in maps]
                if self.scales.pre_logits:
                    names.append("forward_head(pre_logits=True)")
                    shapes.append(list(self.model.forward_head(final, pre_logits=True).flatten(1).shape[1:]))
        finally:
            self.model.train(training)
        return [{"node": name, "shape": shape} for name, shape in zip(names, shapes)]


def _feature_info(model: nn.Module) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    # timm keeps either a list of dicts or a FeatureInfo object (which has .info).
    return list(getattr(info, "info", info))


class AttentionScoreHead(nn.Module):
    """The gate and head of ``N_A``: descriptor ``o`` -> score ``F(x)`` (Eq. 5-6).

    ``o`` is first standardised with fixed statistics (buffers ``mean``/``std``, set from the
    unlabeled pool by :meth:`set_statistics`), so scales of very different magnitude (a 6-channel
    conv stage next to an 84-d FC layer) start on an equal footing. Then timm's
    :class:`~timm.layers.SEModule` on ``o`` viewed as (B, C, 1, 1) computes
    ``o~ = sigmoid(W2 relu(W1 o)) * o`` with ``W1: C/r x C`` (Eq. 5; see :meth:`excite`), and a
    linear layer gives
    ``F(x) = v . o~ + b`` (Eq. 6).

    Args:
        channels: C, the descriptor width.
        reduction: r, the SE reduction ratio (16 in the official code).
        min_rd_channels: floor on ``C/r`` so that tiny descriptors still get a useful bottleneck.
        attention: False drops the SE gate (``o~ = o``: plain concatenation of the scales, the
            ablation of Eq. 5); the module then has no ``gate`` parameters.

    Shapes: ``forward`` (B, C) float32 -> (B,) float32.
    """

    def __init__(self, channels: int, reduction: int = 16, min_rd_channels: int = 8, attention: bool = True) -> None:
        super().__init__()
        from timm.layers import SEModule

        if reduction < 1:
            raise OptionError("reduction", reduction, "must be >= 1")
        self.channels = channels
        self.reduction = reduction
        self.rd_channels = max(min_rd_channels, channels // reduction)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.attention = attention
        self.gate = SEModule(channels, rd_channels=self.rd_channels) if attention else None
        self.linear = nn.Linear(channels, 1)

    def set_statistics(self, descriptors: torch.Tensor) -> None:
        """Standardise with the mean and std of ``descriptors`` (N, C), floor 1e-6 on std."""
        self.mean.copy_(descriptors.mean(0))
        self.std.copy_(descriptors.std(0).clamp(min=1e-6))

    def standardize(self, descriptors: torch.Tensor) -> torch.Tensor:
        return (descriptors - self.mean) / self.std

    def excite(self, standardized: torch.Tensor) -> torch.Tensor:
        """``o~ = sigmoid(W2 relu(W1 o)) * o`` (Eq. 5): (B, C) -> (B, C).

        Numerically the same as ``self.gate(o.view(B, C, 1, 1))``, but with the SE module's 1x1
        convolutions applied as matrix products: on 1x1 maps the CPU convolution kernels (and
        their backward) cost one to two orders of magnitude more than the equivalent ``linear``
        and dominated training time when measured. Without attention, ``o`` unchanged.
        """
        gate = self.gate
        if gate is None:
            return standardized
        hidden = F.linear(standardized, gate.fc1.weight.flatten(1), gate.fc1.bias)
        hidden = gate.act(gate.bn(hidden))
        weights = gate.gate(F.linear(hidden, gate.fc2.weight.flatten(1), gate.fc2.bias))
        return standardized * weights

    def forward_standardized(self, standardized: torch.Tensor) -> torch.Tensor:
        """(B, C) already standardised -> (B,) scores (training adds noise in this space)."""
        return self.linear(self.excite(standardized)).squeeze(1)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.forward_standardized(self.standardize(descriptors))


class ScoreEnsemble(nn.Module):
    """Mean score of several :class:`AttentionScoreHead` members. (B, C) -> (B,) float32."""

    def __init__(self, members: Sequence[AttentionScoreHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(descriptors) for member in self.members]).mean(0)


class PUSelectorNet(nn.Module):
    """The whole ``N_A``: extractor then head. (B, C_in, H, W) float32 -> (B,) float32 scores."""

    def __init__(self, extractor: MultiScaleExtractor, head: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(images))
