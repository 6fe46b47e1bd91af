"""The three compression steps as whole jobs, one per command: load, transform, write, summarise.

:func:`recalibrate` (``pucli recalibrate``), :func:`prune` (``pucli prune``) and :func:`quantize`
(``pucli quantize``) each read a model (a path, or ``-`` for stdin), do one thing and write the
result (a path, or ``-`` for stdout) in :mod:`pucli.compress.formats`. Every option is validated and
the model read before anything is written; on any error nothing is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, TextIO

import torch

from pucli.architectures import ModelSpec
from pucli.errors import OptionError, UsageError
from pucli.run_context import RunContext

__all__ = [
    "ModelFigures",
    "PruneResult",
    "QuantizeResult",
    "RecalibrateResult",
    "model_figures",
    "prune",
    "quantize",
    "recalibrate",
]


@dataclass
class ModelFigures:
    """``params`` (count), ``flops`` per image (2 per multiply-add, ``pucli.evaluate.count_flops``)
    and ``latency_ms`` (CPU, batch 1, median; ``pucli.evaluate.measure_latency``)."""

    params: int
    flops: int
    latency_ms: float


def model_figures(model: torch.nn.Module, input_size: tuple[int, int, int], *, latency: bool = True) -> ModelFigures:
    """:class:`ModelFigures` of ``model`` (on the CPU) for one (C, H, W) input."""
    from pucli.evaluate import count_flops, measure_latency

    model = model.to("cpu").eval()
    return ModelFigures(sum(p.numel() for p in model.parameters()), count_flops(model, input_size),
                        measure_latency(model, input_size, budget_s=0.5) if latency else float("nan"))


@dataclass
class RecalibrateResult:
    """``images`` / ``batches`` used, ``seconds`` of re-estimation (forward passes and decoding,
    wall-clock), the source's ``available`` images, per-layer shifts (``layers``: dicts of
    :class:`pucli.compress.renorm.LayerShift`), the model's ``compression`` (one line) and ``out``."""

    out: str
    images: int
    batches: int
    available: int
    seconds: float
    compression: str
    layers: list[dict[str, Any]] = field(default_factory=list)


def recalibrate(
    model_source: str,
    data: str,
    out: str,
    *,
    arch: str | ModelSpec | None = None,
    images: int = 1000,
    batch_size: int = 100,
    augment: str = "none",
    seed: int = 0,
    run: RunContext | None = None,
    stdin: BinaryIO | None = None,
    stdin_text: TextIO | None = None,
    stdout: BinaryIO | None = None,
) -> RecalibrateResult:
    """Re-estimate the BatchNorm statistics of the model at ``model_source`` on ``images`` images of
    ``data`` (:func:`pucli.compress.calibration.calibration_paths`) and write it to ``out``. ``run``:
    the device, loader processes and progress; unreadable images go to its ``skipped`` log.

    Raises:
        UsageError: bad options, ``-`` for both model and data, unreadable sources.
        DataError: a model without BatchNorm (names its norm layers), no readable image.
    """
    from pucli.compress.calibration import AUGMENTATIONS, calibration_batches, calibration_paths, calibration_plan
    from pucli.compress.formats import open_model, save_compressed
    from pucli.compress.renorm import check_batchnorm, reestimate_batchnorm
    from pucli.data.loading import Preprocess

    if images < 1:
        raise OptionError("images", images, "must be >= 1")
    if batch_size < 1:
        raise OptionError("batch_size", batch_size, "must be >= 1")
    if augment not in AUGMENTATIONS:
        raise OptionError("augment", augment, f"choose one of {', '.join(AUGMENTATIONS)}")
    if model_source == "-" and data == "-":
        raise UsageError("`model_source=-` and `data=-` both read stdin: give one of them as a file")
    run = run or RunContext()
    loaded, compression = open_model(model_source, arch, parameter="model_source", stdin=stdin,
                                     model_files=run.model_files)
    check_batchnorm(loaded.model, f"model_source {model_source}", parameter="model_source")
    paths = calibration_paths(data, stdin=stdin_text, parameter="data")
    started = time.perf_counter()
    model = loaded.model.to(run.device)
    total = calibration_plan(len(paths), images, batch_size)
    batches = calibration_batches(paths, Preprocess(loaded.config), images=images, batch_size=batch_size, seed=seed,
                                  augment=augment, device=run.device, workers=run.workers, skipped=run.skipped)
    result = reestimate_batchnorm(model, batches, progress=run.progress, total_images=total[0] * total[1])
    seconds = time.perf_counter() - started
    compression.reestimated_on = result.images
    save_compressed(model.to("cpu"), out, loaded.config, compression, stdout=stdout)
    return RecalibrateResult(out, result.images, result.batches, len(paths), seconds, compression.describe(),
                             [asdict(layer) for layer in result.layers])


@dataclass
class PruneResult:
    """``before`` / ``after``: :class:`ModelFigures`; ``channels``: pruned layer -> [before, after]
    output channels; ``batchnorm``: whether the model has BatchNorm to re-estimate next."""

    out: str
    ratio: float
    importance: str
    before: ModelFigures
    after: ModelFigures
    channels: dict[str, tuple[int, int]]
    batchnorm: bool


def prune(model_source: str, out: str, *, ratio: float, importance: str = "group-norm", ignore: tuple[str, ...] = (),
          arch: str | ModelSpec | None = None, measure_latency: bool = True, run: RunContext | None = None,
          stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> PruneResult:
    """Prune ``ratio`` of the channels of the model at ``model_source`` (:mod:`pucli.compress.prune`)
    and write it to ``out`` (the model read is noted in ``run``'s ``model_files``).

    Raises:
        UsageError: ratio outside (0, 1), unknown importance or ``ignore`` name, an already
            quantized or pruned model, Torch-Pruning missing.
        DataError: an architecture Torch-Pruning cannot prune.
    """
    from pucli.compress.formats import open_model, save_compressed
    from pucli.compress.prune import check_importance, check_ratio, prune_channels
    from pucli.compress.renorm import batchnorm_layers

    check_ratio(ratio)
    check_importance(importance)
    loaded, compression = open_model(model_source, arch, parameter="model_source", stdin=stdin,
                                     model_files=(run or RunContext()).model_files)
    if compression.quantization_bits:
        raise UsageError(f"model_source {model_source} has quantized weights: prune the float model first, then "
                         "quantize", parameter="model_source", path=model_source)
    if compression.pruning:
        raise UsageError(f"model_source {model_source} is already pruned: prune the original model with the total "
                         "`ratio`", parameter="model_source", path=model_source)
    input_size = loaded.config.input_size
    before = model_figures(loaded.model, input_size, latency=measure_latency)
    outcome = prune_channels(loaded.model, input_size, ratio=ratio, importance=importance, ignore=ignore,
                             architecture=loaded.config.architecture)
    after = model_figures(loaded.model, input_size, latency=measure_latency)
    compression.pruning = {"history": outcome.history, "ratio": ratio, "importance": importance,
                           "input_size": list(input_size)}
    compression.reestimated_on = None
    save_compressed(loaded.model, out, loaded.config, compression, stdout=stdout)
    return PruneResult(out, ratio, importance, before, after, outcome.channels, bool(batchnorm_layers(loaded.model)))


@dataclass
class QuantizeResult:
    """``bits``: layer -> weight bits; ``weight_bytes``: float32 bytes of the quantized weights
    before, and their packed size after (bits / 8 per weight plus one float32 scale per channel)."""

    out: str
    weight_bits: int
    first_last_bits: int
    layers: int
    bits: dict[str, int]
    weight_bytes_before: int
    weight_bytes_after: int
    batchnorm: bool


def quantize(model_source: str, out: str, *, bits: int, first_last_bits: int = 8, arch: str | ModelSpec | None = None,
             run: RunContext | None = None, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> QuantizeResult:
    """Quantize the conv and linear weights of the model at ``model_source``
    (:mod:`pucli.compress.quantize`) and write it to ``out`` (the model read is noted in ``run``'s
    ``model_files``).

    Raises:
        UsageError: bits outside 8/4/3/2, an already quantized model.
    """
    from pucli.compress.formats import open_model, save_compressed
    from pucli.compress.quantize import check_bits, quantize_model
    from pucli.compress.renorm import batchnorm_layers

    check_bits(bits)
    check_bits(first_last_bits, "first_last_bits")
    loaded, compression = open_model(model_source, arch, parameter="model_source", stdin=stdin,
                                     model_files=(run or RunContext()).model_files)
    if compression.quantization_bits:
        raise UsageError(f"model_source {model_source} already has quantized weights: quantize the float model",
                         parameter="model_source", path=model_source)
    layers = quantize_model(loaded.model, bits, first_last_bits=first_last_bits)
    modules = dict(loaded.model.named_modules())
    counts = {name: modules[name].weight.numel() for name in layers.bits}
    before = 4 * sum(counts.values())
    after = sum((counts[name] * layer_bits + 7) // 8 + 4 * len(layers.scales[name]) for name, layer_bits in layers.bits.items())
    compression.quantization_bits, compression.quantization_scales = layers.bits, layers.scales
    compression.reestimated_on = None
    save_compressed(loaded.model, out, loaded.config, compression, stdout=stdout)
    return QuantizeResult(out, bits, first_last_bits, len(layers.bits), layers.bits, before, after,
                          bool(batchnorm_layers(loaded.model)))
