"""Static int8 quantization of an exported ONNX classifier with ONNX Runtime's tools.

``onnxruntime.quantization.quantize_static`` in the QDQ format (QuantizeLinear/DequantizeLinear
pairs around each quantized operator, which ORT's CPU provider fuses into integer kernels),
int8 weights quantized symmetrically per output channel and uint8 activations (asymmetric, per
tensor), with ranges calibrated (MinMax by default) on unlabeled images: the images a user
already has, no labels needed. Unsigned activations with signed weights (U8S8) are what ORT
recommends on x86-64 CPUs, and much faster there than int8 activations (docs/benchmarks.md has
the figures). On x86 CPUs without VNNI, ORT notes that U8S8 can saturate; its ``reduce_range``
option is the remedy there. The graph is first run through ``quant_pre_process`` (shape inference and the
optimisations the quantizer expects). Reference: ONNX Runtime, "Quantize ONNX models",
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html

Calibration images (:func:`calibration_images`) come from any source pucli reads: a selection
index (``index.tsv``: its kept images), an expanded set (its images), or a pool (folder, path
list, tar shards); a seeded random sample of them is decoded, never the whole pool.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pucli.errors import DataError, NoImagesError, OptionError
from pucli.model_config import ModelConfig
from pucli.paths import replace_atomically
from pucli.run_context import RunContext

__all__ = ["CALIBRATION_METHODS", "calibration_images", "quantize_int8"]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def calibration_images(
    source: str,
    config: ModelConfig,
    *,
    images: int = 1000,
    seed: int = 0,
    parameter: str = "calibration",
    run: RunContext | None = None,
) -> torch.Tensor:
    """``images`` images drawn from ``source`` in a seeded random order, decoded with ``config``'s
    evaluation transform: float32 (N, C, H, W), N <= ``images``.

    ``source`` is anything :func:`pucli.compress.calibration.calibration_paths` reads (the kept
    images of a selection index, an expanded set, a folder, a path list, ``-``, tar shards); the
    draw is :func:`pucli.compress.calibration.calibration_batches` (unreadable files go to
    ``run.skipped`` and are replaced by the next ones; ``run.workers`` decode), the images BN
    re-estimation uses too. Errors name ``parameter``, the one that named ``source``.

    Raises:
        UsageError: ``source`` does not exist; ``images`` < 1.
        NoImagesError: it names no image, or none could be decoded.
        DataError: a malformed index or expanded set.
    """
    from pucli.compress.calibration import calibration_batches, calibration_paths
    from pucli.data.loading import Preprocess

    if images < 1:
        raise OptionError("images", images, "give at least 1 calibration image")
    run = run or RunContext()
    paths = calibration_paths(source, parameter=parameter)
    batches = list(calibration_batches(paths, Preprocess(config), images=images, batch_size=256, seed=seed,
                                       workers=run.workers, skipped=run.skipped))
    if not batches:
        raise NoImagesError(f"{parameter} {source}: none of its images could be decoded; give other images",
                            parameter=parameter, path=source)
    return torch.cat(batches)


def quantize_int8(
    float_onnx: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: torch.Tensor,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activations: str = "uint8",
    batch_size: int = 32,
) -> Path:
    """Write an int8 QDQ copy of the float ONNX model ``float_onnx`` to ``out`` (atomically).

    Args:
        calibration: float32 (N, C, H, W) normalised images; activation ranges are taken from
            them in equal batches of at most ``batch_size`` (so at most a batch's count - 1 of
            them are left out).
        method: ``minmax`` (the full observed range), ``entropy`` (KL-divergence optimal) or
            ``percentile`` (99.999th percentile), ORT's calibration methods.
        per_channel: one weight scale per output channel (else per tensor).
        activations: ``uint8`` (U8S8, ORT's choice for x86-64) or ``int8`` (S8S8).

    The pucli metadata of ``float_onnx`` is carried over, with ``pucli.precision`` ``"int8"``.

    Raises:
        UsageError: unknown ``method`` or ``activations``.
        DataError: ONNX Runtime's quantizer failed (``out`` is then left as it was).
    """
    import json

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pucli.deploy.metadata import write_metadata

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise OptionError("method", method, f"choose one of {', '.join(CALIBRATION_METHODS)}")
    activation_types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activations not in activation_types:
        raise OptionError("activations", repr(activations), "choose uint8 or int8")

    # Equal batches (at most batches - 1 images left out): ORT's histogram calibrators (entropy,
    # percentile) stack the batches' activations and need them all of one shape.
    batches = math.ceil(len(calibration) / batch_size)
    per_batch = len(calibration) // batches

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.name = name
            self.batches: Iterator[torch.Tensor] = iter(calibration[: batches * per_batch].split(per_batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {self.name: batch.contiguous().numpy()}

    import onnx

    source = onnx.load(str(float_onnx))
    metadata = {p.key: p.value for p in source.metadata_props if p.key.startswith("pucli.")}
    metadata["pucli.precision"] = json.dumps("int8")
    input_name = source.graph.input[0].name

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="pucli-int8-") as work:
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
            try:  # the histogram calibrators print progress: keep stdout for pucli's data
                with contextlib.redirect_stdout(io.StringIO()):
                    quantize_static(
                        str(prepared), str(tmp), Reader(input_name),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=activation_types[activations], weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                    )
            except (ValueError, RuntimeError, KeyError) as exc:  # ORT's quantizer raises plain Python errors
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise DataError(f"ONNX Runtime could not quantize {float_onnx} ({text}); try `method=minmax`") from None
        write_metadata(tmp, metadata)

    return replace_atomically(out, write)

