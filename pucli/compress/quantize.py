"""Low-bit weights: per-output-channel symmetric uniform quantization of conv and linear layers.

For a weight ``W`` of shape (C_out, ...) and ``b`` bits, with ``q = 2**(b-1) - 1`` (127, 7, 3, 1 for
8, 4, 3, 2 bits): ``scale[c] = max|W[c]| / q`` and ``codes[c] = clamp(round(W[c] / scale[c]), -q, q)``
(``torch.round``: halves to even); the float weight the network computes with is ``codes * scale``.
The grid is symmetric about zero (2 bits: the ternary {-1, 0, 1} x scale), one scale per output
channel, as in He & Cheng 2018's weight-quantized networks (ECCV 2018,
https://arxiv.org/abs/1808.00113) before BN re-estimation. A channel of zeros gets scale 1 and
codes 0. The first conv and the classifier stay at 8 bits unless told otherwise (the usual
practice: they hold few weights and cost most accuracy). Integer inference is the export's job; here
the model is a float model with quantized weights, for evaluation and BN re-estimation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pucli.compressed_files import dequantize
from pucli.errors import OptionError, UsageError

__all__ = ["WEIGHT_BITS", "QuantizedLayers", "check_bits", "quantizable_layers", "quantize_model", "quantize_tensor"]

WEIGHT_BITS = (8, 4, 3, 2)
_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class QuantizedLayers:
    """Which layers hold quantized weights: ``bits[name]`` (8, 4, 3 or 2) and ``scales[name]``
    ((C_out,) float32) per module name. Saved in the model file (:mod:`pucli.compressed_files`)."""

    bits: dict[str, int] = field(default_factory=dict)
    scales: dict[str, Tensor] = field(default_factory=dict)


def check_bits(bits: int, parameter: str = "weight_bits") -> int:
    """``bits`` if it is one of :data:`WEIGHT_BITS` (``parameter`` gave it).

    Raises:
        OptionError: any other value.
    """
    if bits not in WEIGHT_BITS:
        raise OptionError(parameter, bits, f"choose one of {', '.join(map(str, WEIGHT_BITS))}")
    return bits


def quantize_tensor(weight: Tensor, bits: int, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(codes, scale)`` of ``weight`` (C_out, ...) at ``bits`` (module docstring): codes int8 of
    ``weight``'s shape in [-q, q], scale float32 (C_out,). ``scale`` given: encode on that grid
    (exact for weights that are already ``codes * scale``).

    Raises:
        OptionError: ``bits`` not in :data:`WEIGHT_BITS`.
    """
    check_bits(bits)
    q = 2 ** (bits - 1) - 1
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    if scale is None:
        peak = flat.abs().amax(dim=1)
        scale = torch.where(peak > 0, peak / q, torch.ones_like(peak))
    codes = torch.clamp(torch.round(flat / scale.unsqueeze(1)), -q, q)
    return codes.to(torch.int8).reshape(weight.shape), scale.to(torch.float32)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers of ``model`` in module order, as ``(name, module)``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _QUANTIZABLE)]


def quantize_model(model: nn.Module, bits: int, *, first_last_bits: int = 8) -> QuantizedLayers:
    """Quantize every conv and linear weight of ``model`` in place to ``bits``; the first layer and
    the classifier (timm's ``first_conv`` / ``classifier`` of the model's pretrained config, else
    the first and last such layers in module order) to ``first_last_bits``.

    Raises:
        UsageError: bits not in :data:`WEIGHT_BITS`; a model with no conv or linear layer.
    """
    check_bits(bits)
    check_bits(first_last_bits, "first_last_bits")
    layers = quantizable_layers(model)
    if not layers:
        raise UsageError("the model has no conv or linear layer to quantize")
    edges = _edge_layers(model, [name for name, _ in layers])
    result = QuantizedLayers()
    with torch.no_grad():
        for name, module in layers:
            layer_bits = first_last_bits if name in edges else bits
            codes, scale = quantize_tensor(module.weight, layer_bits)
            module.weight.copy_(dequantize(codes, scale).to(module.weight.dtype))
            result.bits[name], result.scales[name] = layer_bits, scale
    return result


def _edge_layers(model: nn.Module, names: list[str]) -> set[str]:
    cfg: Mapping = getattr(model, "pretrained_cfg", None) or {}
    edges = set()
    for key, fallback in (("first_conv", names[0]), ("classifier", names[-1])):
        named = cfg.get(key)
        named = [named] if isinstance(named, str) else list(named or [])
        found = [n for n in named if n in names]
        edges.update(found or [fallback])
    return edges
