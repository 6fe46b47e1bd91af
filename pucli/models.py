"""LeNet-5 and LeNet-5-half as timm models.

LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE
1998) in the form used by the MNIST experiments of Xu et al., "Positive-Unlabeled Compression on
the Cloud", NeurIPS 2019 (https://arxiv.org/abs/1909.09757): conv 5x5 -> 6 maps (padding 2) ->
ReLU -> 2x2 max-pool -> conv 5x5 -> 16 -> ReLU -> 2x2 max-pool -> FC 120 -> ReLU -> FC 84 -> ReLU
-> FC 10. The half-size student halves every layer: 3 and 8 maps, FC 60 and 42.

Both are registered in timm's model registry (``timm.create_model("lenet5")``) and follow timm's
model interface, so pucli treats them like any timm model: ``features_only=True`` and
``forward_intermediates`` give the two convolutional stages, ``forward_head(pre_logits=True)``
gives the 84-d (42-d) penultimate features, ``reset_classifier`` swaps the head.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["LeNet5"]


class LeNetStage(nn.Module):
    """conv kxk (same padding) -> ReLU -> 2x2 max-pool. Input (B, C_in, H, W) float32."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 5, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, padding=padding)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x)))


class LeNet5(nn.Module):
    """LeNet-5 with timm's model interface.

    Args:
        num_classes: outputs of the classifier head (0 removes it: the model returns pre-logits).
        in_chans: input channels (1 for digits, 3 for colour images).
        conv_chans: channels of the two convolutional stages ((6, 16); half size (3, 8)).
        hidden: widths of the two hidden fully connected layers ((120, 84); half size (60, 42)).
        drop_rate: dropout before the classifier (0 in the paper).

    The stage-2 maps are average-pooled to 5x5 before the FC layers, an identity on the usual
    28x28 input that lets any input size through.

    Shapes: ``forward`` (B, in_chans, H, W) float32 -> (B, num_classes) float32 logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        conv_chans: tuple[int, int] = (6, 16),
        hidden: tuple[int, int] = (120, 84),
        drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            # timm passes a few generic kwargs (e.g. global_pool) that LeNet has no use for.
            unknown = sorted(k for k in kwargs if k not in {"global_pool", "drop_path_rate"})
            if unknown:
                raise TypeError(f"LeNet5 got unexpected arguments: {', '.join(unknown)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.stage1 = LeNetStage(in_chans, conv_chans[0], padding=2)
        self.stage2 = LeNetStage(conv_chans[0], conv_chans[1])
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.fc1 = nn.Linear(conv_chans[1] * 25, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = self.head_hidden_size = hidden[1]
        self.head = nn.Linear(hidden[1], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=conv_chans[0], reduction=2, module="stage1"),
            # 28 -> 14 -> 5 on MNIST: the unpadded 5x5 conv makes the true stride a little over 4.
            dict(num_chs=conv_chans[1], reduction=4, module="stage2"),
        ]

    # timm model interface -------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> stage-2 maps (B, conv_chans[1], h, w)."""
        return self.stage2(self.stage1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Stage-2 maps -> logits (B, num_classes), or the (B, num_features) penultimate features."""
        x = torch.flatten(self.pool(x), 1)
        x = self.act(self.fc2(self.act(self.fc1(x))))
        x = self.drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API over the two convolutional stages.

        ``indices``: None for both stages, an int n for the last n, or a list of stage indices
        (0 or 1, negative counts from the end). Returns the list of (B, C, h, w) maps, preceded by
        the final stage-2 maps unless ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise ValueError("LeNet5.forward_intermediates supports output_fmt='NCHW' only")
        stages = [self.stage1, self.stage2]
        take = _take_indices(len(stages), indices)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
            if stop_early and i >= max(take):
                break
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 2, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what follows the last stage in ``indices`` (timm API); returns the kept indices."""
        take = _take_indices(2, indices)
        if prune_head:
            self.reset_classifier(0)
            self.fc1 = self.fc2 = nn.Identity()  # type: ignore[assignment]
        if max(take) == 0:
            self.stage2 = nn.Identity()  # type: ignore[assignment]
        return sorted(take)


def _take_indices(num_stages: int, indices: int | list[int] | None) -> list[int]:
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        return list(range(num_stages - indices, num_stages))
    return [i % num_stages for i in indices]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.1307,),
        "std": (0.3081,),
        "first_conv": "stage1.conv",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"lenet5": _cfg(), "lenet5_half": _cfg()})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> LeNet5:
    return build_model_with_cfg(
        LeNet5,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1)),
        **kwargs,
    )


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 (conv 6, 16; FC 120, 84): the MNIST teacher of Xu et al. 2019."""
    return _create("lenet5", pretrained, **kwargs)


@register_model
def lenet5_half(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 half size (conv 3, 8; FC 60, 42): the MNIST student of Xu et al. 2019."""
    return _create("lenet5_half", pretrained, **dict(dict(conv_chans=(3, 8), hidden=(60, 42)), **kwargs))
