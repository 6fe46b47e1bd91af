"""Reading and writing pruned and weight-quantized models, also through ``-`` (stdin / stdout).

The stored form is defined in :mod:`pucli.compressed_files` (one ``.safetensors`` file: codes and
scales of quantized layers, the timm config and the ``pucli.compression`` record in its metadata);
:func:`pucli.checkpoints.load_model` reads it like any teacher. This module adds what the
compression commands need besides: :func:`open_model` (a model and its compression record, from a
path or ``-``) and :func:`save_compressed` (to a path, atomically, or ``-``). Since the file holds
its config, no sidecar config is written, so ``pucli prune ... --out - | pucli recalibrate - ...``
chains.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from torch import nn

from pucli.architectures import ModelSpec
from pucli.checkpoints import CONFIG_METADATA_KEY, SAFETENSORS_SUFFIX, LoadedModel, ModelConfig, config_text, load_model
from pucli.compressed_files import (
    CODES_SUFFIX,
    COMPRESSION_KEY,
    SCALE_SUFFIX,
    Compression,
    is_compressed,
    read_compression,
)
from pucli.errors import UsageError
from pucli.paths import check_weights_file
from pucli.report import ModelFileLog

__all__ = ["COMPRESSION_KEY", "Compression", "is_compressed", "load_student_init", "open_model", "save_compressed"]



def open_model(source: str | os.PathLike[str], arch: str | ModelSpec | None = None, *, parameter: str = "model",
               stdin: BinaryIO | None = None, model_files: ModelFileLog | None = None) -> tuple[LoadedModel, Compression]:
    """Load any model pucli reads, or a compressed one, from a path or ``-`` (a safetensors file
    on stdin), with what compression it already has (empty for a plain model). Errors name
    ``parameter``, the one that named ``source``; ``model_files`` as for
    :func:`pucli.checkpoints.load_model`.

    Raises:
        UsageError, TeacherFormatError: as :func:`pucli.checkpoints.load_model`; ``-`` with an
            empty stdin or a terminal on it.
    """
    if str(source) != "-":
        return _open_path(Path(source), arch, parameter, model_files)
    stream = stdin or sys.stdin.buffer
    if hasattr(stream, "isatty") and stream.isatty():
        raise UsageError(f"{parameter} -: stdin is a terminal; pipe a model in (`pucli prune ... out=-` | ...) or give "
                         "a file", parameter=parameter, path="-")
    with tempfile.TemporaryDirectory(prefix="pucli-model-") as folder:
        spooled = Path(folder) / f"stdin{SAFETENSORS_SUFFIX}"
        with spooled.open("wb") as handle:
            shutil.copyfileobj(stream, handle)
        if spooled.stat().st_size == 0:
            raise UsageError(f"{parameter} -: stdin is empty; pipe a .safetensors model in", parameter=parameter, path="-")
        loaded, compression = _open_path(spooled, arch, parameter, model_files)
    loaded.path = Path("-")  # the spooled copy is gone; everything was read into memory
    return loaded, compression


def _open_path(path: Path, arch: str | ModelSpec | None, parameter: str,
               model_files: ModelFileLog | None) -> tuple[LoadedModel, Compression]:
    # Pruned and quantized files too (pucli.compressed_files).
    loaded = load_model(path, arch, parameter=parameter, model_files=model_files)
    return loaded, (read_compression(path, parameter=parameter) if is_compressed(path) else Compression())


def save_compressed(model: nn.Module, out: str | os.PathLike[str], config: ModelConfig, compression: Compression,
                    *, stdout: BinaryIO | None = None) -> Path | None:
    """Write ``model`` in the format above to ``out`` (atomically) or, for ``-``, to stdout.
    Quantized layers are re-encoded on their saved grids (``compression.quantization_scales``), so
    codes survive a load / re-estimate / save unchanged. Returns the path written (None for ``-``).

    Raises:
        OptionError: ``out`` does not end in .safetensors, or its folder is missing / read-only
            (:func:`pucli.paths.check_weights_file`).
    """
    from safetensors.torch import save_file

    from pucli.compress.quantize import quantize_tensor
    from pucli.paths import replace_atomically

    to_stdout = str(out) == "-"
    path = Path(out)
    if not to_stdout:
        check_weights_file(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for name, bits in compression.quantization_bits.items():
        codes, scale = quantize_tensor(tensors.pop(name + ".weight"), bits, compression.quantization_scales.get(name))
        tensors[name + CODES_SUFFIX], tensors[name + SCALE_SUFFIX] = codes.contiguous(), scale.contiguous()
    # The config pucli.checkpoints.save_model writes: timm's exporter's for a timm model, the code
    # record for a model of other code (docs/models.md).
    text = config_text(model, config, label_names=config.label_names,
                       data_config=dict(config.data_config(), input_size=tuple(config.input_size)))
    metadata = {"format": "pt", "architecture": config.architecture, CONFIG_METADATA_KEY: text}
    if not compression.is_empty():
        metadata[COMPRESSION_KEY] = compression.to_json()

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)

    if not to_stdout:
        return replace_atomically(path, write)
    with tempfile.TemporaryDirectory(prefix="pucli-out-") as folder:
        spooled = Path(folder) / f"model{SAFETENSORS_SUFFIX}"
        write(spooled)
        sink = stdout or sys.stdout.buffer
        with spooled.open("rb") as handle:
            shutil.copyfileobj(handle, sink)
        sink.flush()
    return None


def load_student_init(path: str | os.PathLike[str], *, parameter: str = "student", arch: str | ModelSpec | None = None,
                      model_files: ModelFileLog | None = None) -> tuple[nn.Module, ModelConfig, Compression]:
    """A pruned (or any pucli) model file as the starting point of ``pucli distill --student FILE``:
    the network in train-ready form (float weights, CPU), its config and its compression (to save
    the fine-tuned student with :func:`save_compressed`, so that it loads again). ``arch``: as
    :func:`pucli.checkpoints.load_model` (a model of the user's code loads only when it names that code).

    Raises:
        UsageError, TeacherFormatError: as :func:`open_model`.
    """
    loaded, compression = open_model(path, arch, parameter=parameter, model_files=model_files)
    compression.quantization_bits.clear()  # fine-tuning moves weights off the grid: a float student
    compression.quantization_scales.clear()
    compression.reestimated_on = None
    return loaded.model, loaded.config, compression
