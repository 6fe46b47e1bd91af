"""An ONNX file written by ``pucli export`` as a model ``pucli.evaluate`` can measure.

:class:`OnnxRuntimeModule` wraps an ``onnxruntime.InferenceSession`` on the CPU execution
provider in a ``torch.nn.Module``: it takes and returns torch tensors, so the accuracy loop,
latency and throughput of :func:`pucli.evaluate.evaluate_model` run on it unchanged (the tensor
<-> NumPy hand-over shares memory; it adds microseconds, not copies). :func:`load_onnx` reads the
preprocessing and class names from the file's metadata (:mod:`pucli.deploy.onnx_export`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pucli.model_config import ModelConfig
from pucli.errors import DataError

__all__ = ["OnnxLoadedModel", "OnnxRuntimeModule", "is_onnx_file", "load_onnx"]

ONNX_SUFFIX = ".onnx"


def is_onnx_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.onnx`` name (any case): what ``pucli evaluate`` runs on ONNX Runtime."""
    return str(path).lower().endswith(ONNX_SUFFIX)


class OnnxRuntimeModule(nn.Module):
    """An ONNX classifier on ONNX Runtime's CPU execution provider, called like a torch module.

    ``forward(images)``: float32 (N, C, H, W) normalised images (on any device) -> float32 (N, K)
    logits on the same device. Intra-op threads: ``threads``, else ``torch.get_num_threads()`` at
    construction (so ``--threads`` governs both runtimes alike); graph optimisations all on.

    Raises:
        DataError: ONNX Runtime cannot load the file (corrupt, or an operator it lacks).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings would land on the user's terminal
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own Fail/InvalidGraph/... types)
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DataError(f"ONNX Runtime cannot load {path} ({text}); export it again") from None
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(images.device)


@dataclass
class OnnxLoadedModel:
    """An ONNX model ready for :func:`pucli.evaluate.evaluate_model` (a
    :class:`pucli.evaluate.PrecountedModel`): the fields of :class:`pucli.checkpoints.LoadedModel`
    (``source_format`` is ``"onnx"``), plus what the graph
    cannot tell by itself: ``params`` and ``flops_per_image`` of the PyTorch model it was exported
    from, and ``precision`` (``float32`` or ``int8``), from the file's metadata."""

    model: OnnxRuntimeModule
    config: ModelConfig
    path: Path
    file_bytes: int
    params: int
    flops_per_image: int
    precision: str
    source_format: str = "onnx"


def load_onnx(path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxLoadedModel:
    """Open an ONNX file written by ``pucli export`` on ONNX Runtime (CPU).

    Raises:
        UsageError: ``path`` does not exist, or ``pucli[export]`` is not installed.
        DataError: not an ONNX file pucli wrote (no preprocessing metadata), or ORT cannot load it.
    """
    from pucli.deploy.metadata import config_from_metadata, read_metadata, require_onnx

    require_onnx()
    path = Path(path)
    metadata = read_metadata(path)
    config = config_from_metadata(metadata)
    precision = str(metadata.get("precision", "float32"))
    if precision != "float32":
        config = dataclasses.replace(config, architecture=f"{config.architecture} ({precision})")
    return OnnxLoadedModel(
        model=OnnxRuntimeModule(path, threads=threads),
        config=config,
        path=path,
        file_bytes=path.stat().st_size,
        params=int(metadata.get("params", 0)),
        flops_per_image=int(metadata.get("flops_per_image", 0)),
        precision=precision,
    )
