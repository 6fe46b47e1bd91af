"""The file format of pruned and weight-quantized models, and reading and writing it (also via ``-``).

A compressed model is one ``.safetensors`` file (never a pickle), readable by
:func:`pucli.checkpoints.load_model` like any teacher:

- tensors: the network's state dict, except that each quantized layer's ``<name>.weight`` is
  replaced by ``<name>.weight_codes`` (int8, the weight's shape) and ``<name>.weight_scale``
  (float32, (C_out,)); the float weight is ``codes * scale`` (:mod:`pucli.compress.quantize`);
- metadata ``pucli.config``: the timm config, as :func:`pucli.checkpoints.save_model` writes it;
- metadata ``pucli.compression``: JSON, version 1::

      {"format": "pucli-compression", "version": 1,
       "pruning": {"history": [[module, is_output_channels, [channel, ...]], ...],
                   "ratio": 0.5, "importance": "group-norm", "input_size": [C, H, W]} | null,
       "quantization": {"scheme": "symmetric-per-output-channel", "bits": {module: 4, ...}} | null,
       "batchnorm": {"reestimated_on": images} | null}

  ``pruning.history`` is Torch-Pruning's ``pruning_history()``: replayed on a fresh timm model of
  the architecture (:func:`pucli.compress.prune.replay_pruning`) it gives the pruned shapes.

Since the file holds its config, no sidecar config is written; ``-`` reads the file from stdin or
writes it to stdout, so ``pucli prune ... --out - | pucli recalibrate - ...`` chains.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from pucli.checkpoints import CONFIG_METADATA_KEY, SAFETENSORS_SUFFIX, LoadedModel, ModelConfig, build_model, load_model
from pucli.errors import TeacherFormatError, UsageError

__all__ = [
    "COMPRESSION_KEY",
    "Compression",
    "is_compressed",
    "load_compressed_model",
    "load_student_init",
    "open_model",
    "save_compressed",
]

COMPRESSION_KEY = "pucli.compression"
COMPRESSION_FORMAT = "pucli-compression"
COMPRESSION_VERSION = 1
CODES_SUFFIX = ".weight_codes"
SCALE_SUFFIX = ".weight_scale"
QUANT_SCHEME = "symmetric-per-output-channel"


@dataclass
class Compression:
    """How a model file was compressed (module docstring): ``pruning`` (dict or None),
    ``quantization_bits`` / ``quantization_scales`` (per module name; empty: float weights) and
    ``reestimated_on`` (images the BatchNorm statistics were last re-estimated on, or None)."""

    pruning: dict[str, Any] | None = None
    quantization_bits: dict[str, int] = field(default_factory=dict)
    quantization_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    reestimated_on: int | None = None

    def is_empty(self) -> bool:
        return self.pruning is None and not self.quantization_bits and self.reestimated_on is None

    def to_json(self) -> str:
        return json.dumps({
            "format": COMPRESSION_FORMAT, "version": COMPRESSION_VERSION, "pruning": self.pruning,
            "quantization": {"scheme": QUANT_SCHEME, "bits": self.quantization_bits} if self.quantization_bits else None,
            "batchnorm": {"reestimated_on": self.reestimated_on} if self.reestimated_on is not None else None,
        })

    def describe(self) -> str:
        """One line for humans: ``pruned 50% (group-norm), 4-bit weights, BN re-estimated on 1,000 images``."""
        parts = []
        if self.pruning:
            parts.append(f"pruned {self.pruning['ratio']:.0%} ({self.pruning['importance']})")
        if self.quantization_bits:
            widths = sorted(set(self.quantization_bits.values()))
            parts.append("/".join(map(str, widths)) + "-bit weights")
        if self.reestimated_on is not None:
            parts.append(f"BN re-estimated on {self.reestimated_on:,} images")
        return ", ".join(parts) or "not compressed"


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading its header only.

    Raises:
        TeacherFormatError: not a safetensors file.
    """
    try:
        with path.open("rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > 100 * 2**20:
                raise ValueError("header larger than 100 MiB")
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise TeacherFormatError(f"{path} is not a valid safetensors file ({exc}): re-export it") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a safetensors file written by ``pucli prune`` / ``quantize`` /
    ``recalibrate`` (it carries ``pucli.compression`` metadata). Reads the header only."""
    path = Path(path)
    if not (path.name.endswith(SAFETENSORS_SUFFIX) and path.is_file()):
        return False
    try:
        return COMPRESSION_KEY in read_metadata(path)
    except TeacherFormatError:
        return False  # a broken file: the plain reader says what is wrong with it


def _parse_compression(text: str, path: Path) -> Compression:
    try:
        raw = json.loads(text)
        if raw.get("format") != COMPRESSION_FORMAT or int(raw.get("version", 0)) > COMPRESSION_VERSION:
            raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}")
        quant = raw.get("quantization") or {}
        if quant and quant.get("scheme") != QUANT_SCHEME:
            raise ValueError(f"quantization scheme {quant.get('scheme')!r}")
        batchnorm = raw.get("batchnorm") or {}
        return Compression(pruning=raw.get("pruning"), quantization_bits={k: int(v) for k, v in (quant.get("bits") or {}).items()},
                           reestimated_on=batchnorm.get("reestimated_on"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise TeacherFormatError(f"{path}: unreadable {COMPRESSION_KEY} metadata ({exc}); upgrade pucli or re-run the compression") from exc


def load_compressed_model(path: str | os.PathLike[str], arch: str | None = None, *, option: str = "MODEL") -> LoadedModel:
    """A pruned and/or quantized model file as a float model in eval mode on the CPU (what
    :func:`pucli.checkpoints.load_model` returns for such files).

    Raises:
        UsageError: unknown architecture, Torch-Pruning missing for a pruned file.
        TeacherFormatError: corrupt file or metadata, weights that do not fit the pruned shapes.
    """
    return _load_compressed(Path(path), arch, option)[0]


def _load_compressed(path: Path, arch: str | None, option: str) -> tuple[LoadedModel, Compression]:
    from safetensors import SafetensorError, safe_open

    from pucli.checkpoints import _parse_config, _resolve_config, check_architecture
    from pucli.compress.prune import replay_pruning
    from pucli.compress.quantize import dequantize

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise TeacherFormatError(f"{option} {path} is not a valid safetensors file ({exc}): re-export it") from exc
    compression = _parse_compression(metadata.get(COMPRESSION_KEY, "{}"), path)
    state_dict = {k: v for k, v in tensors.items() if not k.endswith((CODES_SUFFIX, SCALE_SUFFIX))}
    for name in compression.quantization_bits:
        codes, scale = tensors.get(name + CODES_SUFFIX), tensors.get(name + SCALE_SUFFIX)
        if codes is None or scale is None:
            raise TeacherFormatError(f"{option} {path}: quantized layer {name} has no codes or scale; re-run `pucli quantize`")
        state_dict[name + ".weight"] = dequantize(codes, scale)
        compression.quantization_scales[name] = scale.float()
    try:
        raw = _parse_config(json.loads(metadata[CONFIG_METADATA_KEY]), path)
    except (KeyError, json.JSONDecodeError) as exc:
        raise TeacherFormatError(f"{option} {path} has no readable {CONFIG_METADATA_KEY} metadata: re-run the compression") from exc
    architecture = check_architecture(arch or raw.get("architecture") or "")
    config = _resolve_config(architecture, raw, state_dict, path)
    model = build_model(config).eval()
    if compression.pruning:
        replay_pruning(model, tuple(compression.pruning.get("input_size") or config.input_size), compression.pruning["history"])
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise TeacherFormatError(f"{option} {path}: the weights do not fit the {'pruned ' if compression.pruning else ''}"
                                 f"'{architecture}' network; re-run the compression") from exc
    return LoadedModel(model.eval(), config, path, path.stat().st_size, "pucli-compressed"), compression


def open_model(source: str | os.PathLike[str], arch: str | None = None, *, option: str = "MODEL",
               stdin: BinaryIO | None = None) -> tuple[LoadedModel, Compression]:
    """Load any model pucli reads, or a compressed one, from a path or ``-`` (a safetensors file
    on stdin), with what compression it already has (empty for a plain model).

    Raises:
        UsageError, TeacherFormatError: as :func:`pucli.checkpoints.load_model`; ``-`` with an
            empty stdin or a terminal on it.
    """
    if str(source) != "-":
        path = Path(source)
        if is_compressed(path):
            return _load_compressed(path, arch, option)
        return load_model(path, arch, option=option), Compression()
    stream = stdin or sys.stdin.buffer
    if hasattr(stream, "isatty") and stream.isatty():
        raise UsageError(f"{option} -: stdin is a terminal; pipe a model in (pucli prune ... --out - | ...) or give a file")
    with tempfile.TemporaryDirectory(prefix="pucli-model-") as folder:
        spooled = Path(folder) / f"stdin{SAFETENSORS_SUFFIX}"
        with spooled.open("wb") as handle:
            shutil.copyfileobj(stream, handle)
        if spooled.stat().st_size == 0:
            raise UsageError(f"{option} -: stdin is empty; pipe a .safetensors model in")
        loaded, compression = (_load_compressed(spooled, arch, option) if is_compressed(spooled)
                               else (load_model(spooled, arch, option=option), Compression()))
    loaded.path = Path("-")  # the spooled copy is gone; everything was read into memory
    return loaded, compression


def save_compressed(model: nn.Module, out: str | os.PathLike[str], config: ModelConfig, compression: Compression,
                    *, stdout: BinaryIO | None = None) -> Path | None:
    """Write ``model`` in the format above to ``out`` (atomically) or, for ``-``, to stdout.
    Quantized layers are re-encoded on their saved grids (``compression.quantization_scales``), so
    codes survive a load / re-estimate / save unchanged. Returns the path written (None for ``-``).

    Raises:
        UsageError: ``out`` does not end in .safetensors, or its folder is missing / read-only.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # timm's exporter, as pucli.checkpoints.save_model

    from pucli.compress.quantize import quantize_tensor
    from pucli.paths import replace_atomically

    to_stdout = str(out) == "-"
    path = Path(out)
    if not to_stdout:
        if not path.name.endswith(SAFETENSORS_SUFFIX):
            raise UsageError(f"--out {path}: weights are written as safetensors, name the file *.safetensors")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise UsageError(f"--out {path}: folder {path.parent} is missing or not writable; choose another --out")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for name, bits in compression.quantization_bits.items():
        codes, scale = quantize_tensor(tensors.pop(name + ".weight"), bits, compression.quantization_scales.get(name))
        tensors[name + CODES_SUFFIX], tensors[name + SCALE_SUFFIX] = codes.contiguous(), scale.contiguous()
    with tempfile.TemporaryDirectory(prefix="pucli-config-") as folder:
        config_file = Path(folder) / "config.json"
        data = dict(config.data_config(), input_size=tuple(config.input_size))
        model_config = {"label_names": list(config.label_names)} if config.label_names else {}
        save_config_for_hf(model, str(config_file), model_config=model_config, data_config=data)
        config_text = config_file.read_text()
    metadata = {"format": "pt", "architecture": config.architecture, CONFIG_METADATA_KEY: config_text}
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


def load_student_init(path: str | os.PathLike[str], *, option: str = "--student") -> tuple[nn.Module, ModelConfig, Compression]:
    """A pruned (or any pucli) model file as the starting point of ``pucli distill --student FILE``:
    the network in train-ready form (float weights, CPU), its config and its compression (to save
    the fine-tuned student with :func:`save_compressed`, so that it loads again).

    Raises:
        UsageError, TeacherFormatError: as :func:`open_model`.
    """
    loaded, compression = open_model(path, option=option)
    compression.quantization_bits.clear()  # fine-tuning moves weights off the grid: a float student
    compression.quantization_scales.clear()
    compression.reestimated_on = None
    return loaded.model, loaded.config, compression
