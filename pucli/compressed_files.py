"""The stored form of pruned and weight-quantized models: one ``.safetensors`` file (never a pickle).

- tensors: the network's state dict, except that each quantized layer's ``<name>.weight`` is
  replaced by ``<name>.weight_codes`` (int8, the weight's shape) and ``<name>.weight_scale``
  (float32, (C_out,)); the float weight is ``codes * scale`` (:func:`dequantize`; the codes are
  made by :mod:`pucli.compress.quantize`);
- metadata ``pucli.config``: the timm config, as :func:`pucli.checkpoints.save_model` writes it;
- metadata ``pucli.compression``: JSON, version 1::

      {"format": "pucli-compression", "version": 1,
       "pruning": {"history": [[module, is_output_channels, [channel, ...]], ...],
                   "ratio": 0.5, "importance": "group-norm", "input_size": [C, H, W]} | null,
       "quantization": {"scheme": "symmetric-per-output-channel", "bits": {module: 4, ...}} | null,
       "batchnorm": {"reestimated_on": images} | null}

  ``pruning.history`` is Torch-Pruning's ``pruning_history()`` (Fang et al., "DepGraph: Towards
  Any Structural Pruning", CVPR 2023, https://github.com/VainF/Torch-Pruning; the ``compress``
  extra): replayed on a fresh model of the architecture (:func:`replay_pruning`, :func:`rebuild`)
  it gives the pruned shapes.

Beside :mod:`pucli.checkpoints`, which reads these files through :func:`read_compressed` and
:func:`rebuild`, so every command that loads models loads them (as timm keeps the format of its
pruned models, ``adapt_model_from_file``, in ``timm.models``); the compression steps above it
(:mod:`pucli.compress`) make them, and :func:`pucli.compress.formats.save_compressed` writes them.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pucli.errors import DataError, TeacherFormatError, UsageError

__all__ = ["CODES_SUFFIX", "COMPRESSION_KEY", "CONFIG_KEY", "SCALE_SUFFIX", "Compression", "PruningHistory",
           "dequantize", "is_compressed", "parse_compression", "read_compressed", "read_compression", "read_metadata",
           "rebuild", "replay_pruning", "torch_pruning"]

COMPRESSION_KEY = "pucli.compression"
CONFIG_KEY = "pucli.config"  # the same key as pucli.checkpoints.CONFIG_METADATA_KEY
COMPRESSION_FORMAT = "pucli-compression"
COMPRESSION_VERSION = 1
CODES_SUFFIX = ".weight_codes"
SCALE_SUFFIX = ".weight_scale"
QUANT_SCHEME = "symmetric-per-output-channel"
_SUFFIX = ".safetensors"

# One entry per pruning step: (module name, output channels? (else input), channel indices removed).
PruningHistory = list[tuple[str, bool, list[int]]]


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
        """One line for humans: ``pruned 50% (group-norm), 4/8-bit weights, BN re-estimated on 1,000 images``."""
        parts = []
        if self.pruning:
            parts.append(f"pruned {self.pruning['ratio']:.0%} ({self.pruning['importance']})")
        if self.quantization_bits:
            parts.append("/".join(map(str, sorted(set(self.quantization_bits.values())))) + "-bit weights")
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
    ``recalibrate`` (it carries ``pucli.compression`` metadata). Reads the header only; a broken
    file is not compressed (the plain reader then says what is wrong with it)."""
    path = Path(path)
    if not (path.name.endswith(_SUFFIX) and path.is_file()):
        return False
    try:
        return COMPRESSION_KEY in read_metadata(path)
    except TeacherFormatError:
        return False


def parse_compression(text: str, where: str, *, parameter: str | None = None) -> Compression:
    """The :class:`Compression` of a ``pucli.compression`` metadata string (scales not included);
    ``where`` opens errors (it names ``parameter``, if given, first).

    Raises:
        TeacherFormatError: not that format, or a newer version.
    """
    try:
        raw = json.loads(text)
        if raw.get("format") != COMPRESSION_FORMAT or int(raw.get("version", 0)) > COMPRESSION_VERSION:
            raise ValueError(f"format {raw.get('format')!r} version {raw.get('version')!r}")
        quant = raw.get("quantization") or {}
        if quant and quant.get("scheme") != QUANT_SCHEME:
            raise ValueError(f"quantization scheme {quant.get('scheme')!r}")
        batchnorm = raw.get("batchnorm") or {}
        return Compression(pruning=raw.get("pruning"),
                           quantization_bits={k: int(v) for k, v in (quant.get("bits") or {}).items()},
                           reestimated_on=batchnorm.get("reestimated_on"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise TeacherFormatError(f"{where}: unreadable {COMPRESSION_KEY} metadata ({exc}); upgrade pucli or re-run the "
                                 "compression", parameter=parameter) from exc


def read_compressed(path: Path, *, parameter: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, Any], Compression]:
    """``(state_dict, config, compression)`` of a compressed file: float32 weights rebuilt from
    codes and scales (the scales kept in ``compression.quantization_scales``), the timm config
    as stored (unparsed JSON object). Errors name ``parameter``, the one that named ``path``.

    Raises:
        TeacherFormatError: corrupt file, metadata or codes.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise TeacherFormatError(f"{parameter} {path} is not a valid safetensors file ({exc}): re-export it",
                                 parameter=parameter, path=path) from exc
    compression = parse_compression(metadata.get(COMPRESSION_KEY, "{}"), f"{parameter} {path}", parameter=parameter)
    state_dict = {k: v for k, v in tensors.items() if not k.endswith((CODES_SUFFIX, SCALE_SUFFIX))}
    for name in compression.quantization_bits:
        codes, scale = tensors.get(name + CODES_SUFFIX), tensors.get(name + SCALE_SUFFIX)
        if codes is None or scale is None or codes.dtype != torch.int8 or scale.shape != codes.shape[:1]:
            raise TeacherFormatError(f"{parameter} {path}: quantized layer {name} has no usable codes and scale; "
                                     "re-run `pucli quantize`", parameter=parameter, path=path)
        state_dict[name + ".weight"] = dequantize(codes, scale)
        compression.quantization_scales[name] = scale.float()
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise TeacherFormatError(f"{parameter} {path} has no readable {CONFIG_KEY} metadata: re-run the compression",
                                 parameter=parameter, path=path) from exc
    return state_dict, config, compression


def read_compression(path: Path, *, parameter: str = "model") -> Compression:
    """The :class:`Compression` of a compressed file with its quantization scales, without reading
    the other tensors. Errors name ``parameter``, the one that named ``path``.

    Raises:
        TeacherFormatError: corrupt file or metadata.
    """
    from safetensors import SafetensorError, safe_open

    compression = parse_compression(read_metadata(path).get(COMPRESSION_KEY, "{}"), f"{parameter} {path}",
                                    parameter=parameter)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in compression.quantization_bits:
                compression.quantization_scales[name] = handle.get_tensor(name + SCALE_SUFFIX).float()
    except (SafetensorError, OSError, ValueError) as exc:
        raise TeacherFormatError(f"{parameter} {path}: unreadable quantization scales ({exc}); re-run `pucli quantize`",
                                 parameter=parameter, path=path) from exc
    return compression


def rebuild(model: nn.Module, input_size: tuple[int, int, int], compression: Compression) -> nn.Module:
    """Give a fresh ``model`` the shapes ``compression`` describes (replay the pruning history), in
    place, before its weights are loaded.

    Raises:
        UsageError: Torch-Pruning missing for a pruned file.
        DataError: the history does not fit the architecture.
    """
    if compression.pruning:
        replay_pruning(model, tuple(compression.pruning.get("input_size") or input_size), compression.pruning["history"])
    return model


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``codes * scale`` (codes (C_out, ...) int8, scale (C_out,) float32)."""
    return codes.float() * scale.view(-1, *([1] * (codes.dim() - 1)))


def torch_pruning() -> Any:
    """The ``torch_pruning`` module.

    Raises:
        UsageError: Torch-Pruning is not installed (the ``compress`` extra).
    """
    try:
        import torch_pruning as module
    except ImportError as exc:
        raise UsageError("pruning needs Torch-Pruning: pip install 'pucli[compress]' (or torch-pruning)") from exc
    return module


def replay_pruning(model: nn.Module, input_size: tuple[int, int, int], history: PruningHistory) -> nn.Module:
    """Apply a saved ``history`` to a fresh ``model`` of the same architecture (in place), giving
    the pruned network's shapes; load its weights afterwards.

    Raises:
        UsageError: Torch-Pruning missing.
        DataError: the history names modules or channels the model does not have.
    """
    tp = torch_pruning()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=torch.zeros(1, *input_size))
            graph.load_pruning_history([[name, out, list(idxs)] for name, out, idxs in history])
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
        raise DataError(f"the pruning history does not fit this architecture ({reason}); re-run `pucli prune`") from exc
    return model
