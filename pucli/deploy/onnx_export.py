"""Export a pucli/timm classifier to ONNX, with its preprocessing in the file's metadata.

The graph takes ``input``: float32 (N, C, H, W), already normalised as ``(pixels / 255 - mean) /
std`` at the model's input size, and returns ``logits``: float32 (N, K); the batch axis N is
dynamic. The model's preprocessing, class names, size and source go into the file's metadata
(:mod:`pucli.deploy.metadata`).

Exporter: PyTorch's TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (fast, no extra
dependency, exact for the convolutional networks timm builds), falling back to the ``torch.export``
based exporter (``dynamo=True``, needs onnxscript) for models the first cannot trace.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pucli.checkpoints import LoadedModel
from pucli.deploy.metadata import first_line, metadata_for, require_onnx, write_metadata
from pucli.errors import DataError
from pucli.paths import replace_atomically

__all__ = ["DEFAULT_OPSET", "DEFAULT_TOLERANCE", "OnnxCheck", "check_against_pytorch", "export_onnx"]

DEFAULT_OPSET = 17
# Float32 ONNX Runtime vs PyTorch on the CPU: both run the same kernels' maths in float32, so
# logits agree to ~1e-6; 1e-4 (absolute, plus 1e-4 relative to the logit) leaves room for
# reassociated sums in bigger networks while catching any real graph difference.
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME = "input"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the torch.export exporter colours its messages
OUTPUT_NAME = "logits"


@dataclass
class OnnxCheck:
    """ONNX Runtime against PyTorch on the same inputs: ``images`` compared, ``max_abs_diff`` of
    the logits, ``tolerance`` used, ``top1_agreement`` (fraction of images with the same argmax)
    and ``inputs`` (``"images"`` for real images, ``"random"`` for normal noise)."""

    images: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float
    inputs: str


def export_onnx(
    loaded: LoadedModel,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    check_inputs: torch.Tensor | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxCheck:
    """Write ``loaded`` as ONNX to ``out`` (atomically) and check ONNX Runtime against PyTorch.

    Args:
        loaded: the model (eval mode, CPU) and its config.
        out: the ``.onnx`` file to write.
        opset: ONNX opset of the graph.
        check_inputs: float32 (N, C, H, W) normalised images to compare on; None compares on 8
            images of normal noise (and says so in the result).
        tolerance: largest allowed ``|ort - torch|`` per logit, plus ``tolerance * |torch|``.

    Returns:
        the comparison (:class:`OnnxCheck`).

    Raises:
        DataError: the exporter cannot trace the model, or ONNX Runtime's logits differ from
            PyTorch's by more than ``tolerance`` (``out`` is then left as it was).
        OSError: ``out``'s folder is missing or not writable.
    """
    require_onnx()
    model = loaded.model.eval().to("cpu")
    inputs = "images" if check_inputs is not None else "random"
    if check_inputs is None:
        check_inputs = torch.randn(8, *loaded.config.input_size, generator=torch.Generator().manual_seed(0))
    metadata = metadata_for(loaded)
    result: dict[str, OnnxCheck] = {}

    def write(tmp: Path) -> None:
        _trace(model, loaded.config.input_size, tmp, opset=opset, name=str(loaded.path))
        write_metadata(tmp, metadata)
        result["check"] = check_against_pytorch(model, tmp, check_inputs, tolerance=tolerance, inputs_kind=inputs)

    replace_atomically(out, write)
    return result["check"]


def check_against_pytorch(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: torch.Tensor,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    inputs_kind: str = "images",
    batch_size: int = 64,
) -> OnnxCheck:
    """Run ``inputs`` (float32 (N, C, H, W)) through ``model`` and through ONNX Runtime (CPU) on
    ``onnx_path``, in batches of ``batch_size`` of varying size (so the dynamic batch axis is
    exercised), and compare the logits.

    Raises:
        DataError: some logit differs by more than ``tolerance + tolerance * |torch logit|``.
    """
    from pucli.deploy.onnx_runtime import OnnxRuntimeModule

    session = OnnxRuntimeModule(onnx_path)
    worst = 0.0
    agree = 0
    failed = False
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            expected = model(batch).float()
            got = session(batch)
            diff = (got - expected).abs()
            worst = max(worst, float(diff.max()))
            failed |= bool((diff > tolerance + tolerance * expected.abs()).any())
            agree += int((got.argmax(1) == expected.argmax(1)).sum())
    if failed:
        raise DataError(
            f"ONNX Runtime's logits differ from PyTorch's by up to {worst:.3g} (> {tolerance:g}) on "
            f"{onnx_path}: the export is not faithful; try another `opset`, or report the architecture"
        )
    return OnnxCheck(len(inputs), worst, tolerance, agree / max(1, len(inputs)), inputs_kind)


def _trace(model: torch.nn.Module, input_size: Sequence[int], out: Path, *, opset: int, name: str) -> None:
    """``torch.onnx.export`` with the batch axis dynamic: the TorchScript exporter, else the
    ``torch.export`` one. Their chatter (warnings, progress prints, logs, C++ graph dumps) is kept off
    the terminal. A graph that does not read its input (the trace lost it) counts as a failure.

    Raises:
        DataError: neither exporter gives a graph (both reasons, first lines, in one line).
    """
    example = (torch.zeros(2, *input_size),)
    errors: list[str] = []
    for dynamo in (False, True):
        options: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset, "dynamo": dynamo}
        if dynamo:
            options.update(dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True, external_data=False)
        else:
            options.update(dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        try:
            with warnings.catch_warnings(), _output_off(), _logging_off():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, example, str(out), **options)
        except Exception as exc:  # noqa: BLE001  (the exporters raise many types; the message is what helps)
            errors.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: {_ANSI.sub('', first_line(exc))}")
            continue
        if _reads_input(out):
            return
        # The trace lost the input (the forward left torch, e.g. through numpy): the graph is a constant.
        errors.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: the graph does not read its input "
                      "(the forward leaves torch, through numpy or Python numbers, so the trace holds constants)")
    raise DataError(f"cannot export {name} to ONNX ({'; '.join(errors)[:400]})")


@contextlib.contextmanager
def _output_off() -> Iterator[None]:
    """Nothing on stdout or stderr while an exporter runs, from Python or from C++: the exporters
    print progress, and the TorchScript one writes the whole graph to the C++ stdout when it fails
    (stdout carries pucli's data; the error pucli raises says what failed)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as devnull:
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def _logging_off() -> Iterator[None]:
    """No log records while an exporter runs: the ``torch.export`` one logs its opset and version
    conversion chatter (tracebacks included) through :mod:`logging`, on stderr."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _reads_input(path: Path) -> bool:
    """True when the ONNX graph at ``path`` takes the ``input`` it was exported with."""
    import onnx

    return any(value.name == INPUT_NAME for value in onnx.load(str(path), load_external_data=False).graph.input)

