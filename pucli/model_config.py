"""What pucli knows about a classifier besides its weights (:class:`ModelConfig`), and how it is
worked out from a model file's config, the options given and the weights themselves.

- A **timm** architecture (:func:`resolve_timm_config`): class count and input channels from the
  config, else read off the classifier and first-conv weights; the preprocessing from the
  config, else timm's pretrained config of the architecture, else timm's defaults.
- **Other code** (torchvision, the user's file; :func:`resolve_code_config`): no pretrained
  config to fall back on, so the input size must be given or recorded; mean and std default to
  ImageNet's (as timm's), ``interpolation`` bilinear and ``crop_pct`` 1.0, so that an image of the
  input size goes in untouched, as in a plain ``ToTensor(), Normalize(mean, std)`` loop; the class
  count is what the model's output on one image says (:func:`with_output_width`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pucli.architectures import ArchSpec, code_record, torchvision_num_classes
from pucli.errors import MissingOptionError, OptionError, TeacherFormatError

__all__ = ["ModelConfig", "output_width", "resolve_code_config", "resolve_timm_config", "with_output_width"]


@dataclass(frozen=True)
class ModelConfig:
    """What pucli needs to know about a classifier besides its weights.

    ``input_size`` is (channels, height, width) in pixels; ``mean``/``std`` have one entry per
    channel, on the 0-1 pixel scale; ``label_names[k]`` names output k. ``model_args`` are the
    keyword arguments the architecture is built with. ``code`` is None for a timm model, else what
    builds it (:func:`pucli.architectures.code_record`: ``arch``, the file's ``sha256``, ``kwargs``);
    ``architecture`` is then its short name (``resnet.py:resnet56``, ``torchvision:resnet18``).
    """

    architecture: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    label_names: tuple[str, ...] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] | None = None

    def data_config(self) -> dict[str, Any]:
        """The preprocessing in timm's data-config form (``input_size``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, ``crop_mode``): what ``timm.data.resolve_model_data_config``
        gives for this model and what :class:`pucli.data.loading.Preprocess` applies."""
        return {
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }



def resolve_timm_config(architecture: str, raw: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> ModelConfig:
    import timm

    default = timm.models.get_pretrained_cfg(architecture)
    default_cfg = default.to_dict() if default is not None else {}
    model_args = dict(raw.get("model_args") or {})
    num_classes = raw.get("num_classes") or model_args.get("num_classes")
    if num_classes is None:
        num_classes = _classifier_width(default_cfg.get("classifier"), state_dict)
    if num_classes is None:
        # No classifier weight where the architecture keeps it: the load below reports the mismatch.
        num_classes = default_cfg.get("num_classes") or 1000
    in_chans = model_args.get("in_chans") or raw.get("in_chans")
    if in_chans is None:
        in_chans = _first_conv_channels(default_cfg.get("first_conv"), state_dict)
    if in_chans is None:
        in_chans = (raw.get("input_size") or default_cfg.get("input_size") or (3,))[0]
    size = raw.get("input_size") or default_cfg.get("input_size") or (3, 224, 224)
    input_size = (int(in_chans), int(size[-2]), int(size[-1]))
    mean = _per_channel(raw.get("mean") or default_cfg.get("mean") or (0.485, 0.456, 0.406), in_chans)
    std = _per_channel(raw.get("std") or default_cfg.get("std") or (0.229, 0.224, 0.225), in_chans)
    labels = raw.get("label_names")
    if labels is not None and len(labels) != int(num_classes):
        raise TeacherFormatError(
            f"{path}: label_names lists {len(labels)} names for {num_classes} classes; fix the config"
        )
    return ModelConfig(
        architecture=architecture,
        num_classes=int(num_classes),
        in_chans=int(in_chans),
        input_size=input_size,
        mean=mean,
        std=std,
        # With neither the file nor timm saying, timm's own defaults (resolve_data_config).
        interpolation=str(raw.get("interpolation") or default_cfg.get("interpolation") or "bicubic"),
        crop_pct=float(raw.get("crop_pct") or default_cfg.get("crop_pct") or 0.875),
        crop_mode=_crop_mode(raw.get("crop_mode") or default_cfg.get("crop_mode") or "center", path),
        label_names=tuple(str(n) for n in labels) if labels is not None else None,
        model_args={k: v for k, v in model_args.items() if k not in {"num_classes", "in_chans"}},
    )


def _crop_mode(value: Any, path: Path) -> str:
    if value not in _CROP_MODES:
        raise TeacherFormatError(f"{path}: crop_mode {value!r} is not one of timm's {', '.join(_CROP_MODES)}; fix the config")
    return str(value)


_CROP_MODES = ("center", "squash", "border")


def _classifier_width(classifier: str | Sequence[str] | None, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    if not classifier:
        return None
    name = classifier if isinstance(classifier, str) else classifier[0]
    weight = state_dict.get(f"{name}.weight")
    return int(weight.shape[0]) if weight is not None else None


def _first_conv_channels(first_conv: str | Sequence[str] | None, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    if not first_conv:
        return None
    name = first_conv if isinstance(first_conv, str) else first_conv[0]
    weight = state_dict.get(f"{name}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def _per_channel(values: Sequence[float] | float, channels: int) -> tuple[float, ...]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values * channels)
    # timm does the same when a model is built for other channels than its pretrained config.
    return tuple([sum(values) / len(values)] * channels)



def resolve_code_config(code: ArchSpec, raw: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                         path: Path) -> ModelConfig:
    """The config of a torchvision or file model: the preprocessing given or recorded (the input
    size must be one of them; mean and std default to ImageNet's, as timm's; ``interpolation``
    bilinear and ``crop_pct`` 1.0, so an image of the input size goes in untouched, as in a plain
    ``ToTensor(), Normalize(mean, std)`` loop). The class count is provisional until the model's
    output on one image gives it (:func:`with_output_width`).

    Raises:
        MissingOptionError: no input size.
        TeacherFormatError: a bad ``crop_mode`` in the file's config.
    """
    size = raw.get("input_size")
    if not size or len(size) != 3:
        raise MissingOptionError("input_size", f"{code.label} is not a timm model, so nothing says what images "
                                 f"{path.name} takes: give them as C H W (e.g. 3 32 32), and mean and std unless "
                                 "ImageNet's")
    in_chans = int(size[0])
    labels = raw.get("label_names")
    num_classes = torchvision_num_classes(code, state_dict) or raw.get("num_classes") or code.kwargs.get("num_classes") or 0
    return ModelConfig(
        architecture=code.label,
        num_classes=int(num_classes),
        in_chans=in_chans,
        input_size=(in_chans, int(size[1]), int(size[2])),
        mean=_per_channel(raw.get("mean") or (0.485, 0.456, 0.406), in_chans),
        std=_per_channel(raw.get("std") or (0.229, 0.224, 0.225), in_chans),
        interpolation=str(raw.get("interpolation") or "bilinear"),
        crop_pct=float(raw.get("crop_pct") or 1.0),
        crop_mode=_crop_mode(raw.get("crop_mode") or "center", path),
        label_names=tuple(str(n) for n in labels) if labels is not None else None,
        model_args=dict(code.kwargs),
        code=code_record(code),
    )


def with_output_width(model: nn.Module, config: ModelConfig, path: Path) -> ModelConfig:
    """``config`` with the class count the model's output on one image says.

    Raises:
        TeacherFormatError: ``label_names`` of another length.
        OptionError: the model fails on an image of the input size, or gives no (1, K) logits.
    """
    width = output_width(model, config)
    labels = config.label_names
    if labels is not None and len(labels) != width:
        raise TeacherFormatError(f"{path}: label_names lists {len(labels)} names for {width} outputs; fix the config")
    return dataclasses.replace(config, num_classes=width)


def output_width(model: nn.Module, config: ModelConfig) -> int:
    """K of the (1, K) logits ``model`` gives for one zero image of ``config.input_size``.

    Raises:
        OptionError: the forward pass fails, or gives something other than (1, K) logits (names ``input_size``).
    """
    size = " ".join(map(str, config.input_size))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.zeros(1, *config.input_size))
    except Exception as exc:  # noqa: BLE001  (the user's code may raise anything)
        raise OptionError("input_size", size, f"{config.architecture} fails on one image of this size "
                          f"({type(exc).__name__}: {_first_line(exc)}); check the size and the code") from exc
    finally:
        model.train(training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise OptionError("input_size", size, f"{config.architecture} gives {shape} for one image, not (1, K) logits: "
                          "pucli needs a classifier that returns its logits")
    return int(logits.shape[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
