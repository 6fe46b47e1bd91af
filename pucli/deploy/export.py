"""``pucli export`` in one call: load a model, export it to ONNX, check it, and quantize it.

:func:`export_model` ties :mod:`pucli.deploy.onnx_export` and :mod:`pucli.deploy.int8` together:
the float32 graph goes to ``out`` (checked against PyTorch within ``tolerance`` on real images when
``calibration`` is given, else on noise); with ``int8`` an int8 copy goes to ``<stem>.int8.onnx``
beside it, calibrated on ``images`` images sampled from ``calibration``, and its top-1 agreement
with the float graph on those images is measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pucli.architectures import ModelSpec
from pucli.data.files import SkippedFile
from pucli.deploy.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, OnnxCheck
from pucli.errors import UsageError
from pucli.run_context import RunContext

if TYPE_CHECKING:
    import torch

__all__ = ["ExportResult", "export_model", "int8_path_for"]

# Real images for the float check: enough to cover the logits' range, few enough to be instant.
CHECK_IMAGES = 256


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured. Sizes in bytes; ``int8_top1_agreement`` is the
    fraction of calibration images whose argmax the int8 graph shares with the float one."""

    model: str
    onnx: str
    onnx_bytes: int
    check: OnnxCheck
    int8: str | None = None
    int8_bytes: int | None = None
    calibration_images: int = 0
    int8_top1_agreement: float | None = None
    skipped: list[SkippedFile] = field(default_factory=list)


def int8_path_for(out: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``, beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(out.suffix) + ".int8.onnx")


def export_model(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    arch: str | ModelSpec | None = None,
    int8: bool = False,
    calibration: str | None = None,
    images: int = 1000,
    calibration_method: str = "minmax",
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    run: RunContext | None = None,
    **legacy: Any,
) -> ExportResult:
    """Export ``model_path`` (any file :func:`pucli.checkpoints.load_model` reads) to ONNX.

    Raises:
        UsageError: ``int8`` without ``calibration``; a missing model or calibration source;
            ``pucli[export]`` not installed.
        TeacherFormatError, DataError, NoImagesError: from the model, the calibration images, or a
            failed ONNX-vs-PyTorch check (nothing is then written).
    """
    import torch

    from pucli.checkpoints import load_model
    from pucli.deploy.int8 import calibration_images, quantize_int8
    from pucli.deploy.metadata import require_onnx
    from pucli.deploy.onnx_export import export_onnx

    require_onnx()
    if int8 and calibration is None:
        raise UsageError(
            "`int8` needs `calibration=SRC`: unlabeled images to calibrate on (a selection index such as "
            "index.tsv, an expanded set, or a folder / list of images)"
        )
    run = RunContext.given(run, **legacy)
    progress = run.progress
    loaded = load_model(model_path, arch, parameter="model_path", model_files=run.model_files)
    inputs = None
    if calibration is not None:
        progress("calibration images", 0, images)
        inputs = calibration_images(calibration, loaded.config, images=images, seed=seed, run=run)
        progress("calibration images", len(inputs), images)
    progress("export", 0, 2 if int8 else 1)
    check = export_onnx(loaded, out, opset=opset, tolerance=tolerance,
                        check_inputs=inputs[:CHECK_IMAGES] if inputs is not None else None)
    result = ExportResult(str(model_path), str(out), Path(out).stat().st_size, check, skipped=list(run.skipped))
    if int8:
        assert inputs is not None
        int8_out = quantize_int8(out, int8_path_for(out), inputs, method=calibration_method)
        with torch.inference_mode():
            agreement = _top1_agreement(out, int8_out, inputs)
        result.int8, result.int8_bytes = str(int8_out), int8_out.stat().st_size
        result.calibration_images, result.int8_top1_agreement = len(inputs), agreement
    progress("export", 2 if int8 else 1, 2 if int8 else 1)
    return result


def _top1_agreement(float_onnx: str | os.PathLike[str], int8_onnx: Path, inputs: torch.Tensor) -> float:
    """Fraction of ``inputs`` (float32 (N, C, H, W)) on which both graphs pick the same class."""
    from pucli.deploy.onnx_runtime import OnnxRuntimeModule

    reference, quantized = OnnxRuntimeModule(float_onnx), OnnxRuntimeModule(int8_onnx)
    same = sum(int((reference(b).argmax(1) == quantized(b).argmax(1)).sum()) for b in inputs.split(256))
    return same / len(inputs)
