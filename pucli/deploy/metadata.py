"""The ``pucli.*`` entries of an ONNX file's metadata: what they hold, written and read in one place.

``onnx.ModelProto.metadata_props`` (read by ONNX Runtime as
``InferenceSession(...).get_modelmeta().custom_metadata_map``), every value JSON:

==========================  =======================================================================
``pucli.format``            ``pucli-onnx v1``
``pucli.architecture``      the timm architecture (``lenet5_half``); ``pucli.num_classes``: K
``pucli.input_size``        ``[C, H, W]`` in pixels
``pucli.mean``, ``.std``    per channel, on the 0-1 pixel scale
``pucli.interpolation``     resize interpolation (``bilinear``); ``pucli.crop_pct``: centre-crop
``pucli.class_names``       output k's name, or null when the model has none
``pucli.precision``         ``float32`` or ``int8`` (:mod:`pucli.deploy.int8`)
``pucli.params``            parameters of the PyTorch model; ``pucli.flops_per_image``: its FLOPs
``pucli.source``            the file exported and its ``sha256:`` digest
==========================  =======================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pucli.checkpoints import LoadedModel, ModelConfig
from pucli.errors import DataError, UsageError

__all__ = ["FORMAT_TAG", "config_from_metadata", "first_line", "metadata_for", "read_metadata", "require_onnx", "write_metadata"]

FORMAT_TAG = "pucli-onnx v1"


def require_onnx() -> None:
    """Fail with the install command when onnx or onnxruntime is missing.

    Raises:
        UsageError: ``pip install 'pucli[export]'`` has not been run.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"ONNX support needs {exc.name}: pip install 'pucli[export]'") from None


def metadata_for(loaded: LoadedModel, *, precision: str = "float32", flops_per_image: int | None = None) -> dict[str, str]:
    """The ``pucli.*`` metadata entries (module docstring) of ``loaded``, values JSON-encoded."""
    config = loaded.config
    params = sum(p.numel() for p in loaded.model.parameters())
    if flops_per_image is None:
        from pucli.evaluate import count_flops

        flops_per_image = count_flops(loaded.model, config.input_size)
    values: dict[str, Any] = {
        "format": FORMAT_TAG,
        "architecture": config.architecture,
        "num_classes": config.num_classes,
        "input_size": list(config.input_size),
        "mean": list(config.mean),
        "std": list(config.std),
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
        "class_names": list(config.label_names) if config.label_names is not None else None,
        "precision": precision,
        "params": params,
        "flops_per_image": int(flops_per_image),
        "source": {"file": loaded.path.name, "digest": loaded.digest},
    }
    return {f"pucli.{key}": json.dumps(value) for key, value in values.items()}


def write_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Set ``metadata`` (key -> string) in the ONNX file ``path`` in place, replacing keys it has."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``pucli.*`` metadata of an ONNX file written by :func:`export_onnx`, decoded, without the
    ``pucli.`` prefix.

    Raises:
        UsageError: ``path`` does not exist.
        DataError: not an ONNX file, or not one pucli wrote (no ``pucli.format`` entry).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist: give an .onnx file written by `pucli export`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise DataError(f"{path} is not a readable ONNX file ({first_line(exc)}); export it again") from None
    raw = {p.key: p.value for p in model.metadata_props if p.key.startswith("pucli.")}
    if raw.get("pucli.format") != json.dumps(FORMAT_TAG):
        raise DataError(
            f"{path} has no pucli metadata (input size, mean, std): export it with `pucli export MODEL format=onnx`"
        )
    try:
        return {key.removeprefix("pucli."): json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed pucli metadata ({exc.msg}); export it again") from None


def config_from_metadata(metadata: Mapping[str, Any]) -> ModelConfig:
    """The :class:`~pucli.checkpoints.ModelConfig` (preprocessing, class names) an ONNX file's
    decoded metadata describes (:func:`read_metadata`)."""
    input_size = tuple(int(v) for v in metadata["input_size"])
    names = metadata.get("class_names")
    return ModelConfig(
        architecture=str(metadata["architecture"]),
        num_classes=int(metadata["num_classes"]),
        in_chans=input_size[0],
        input_size=input_size,  # type: ignore[arg-type]
        mean=tuple(float(v) for v in metadata["mean"]),
        std=tuple(float(v) for v in metadata["std"]),
        interpolation=str(metadata.get("interpolation", "bilinear")),
        crop_pct=float(metadata.get("crop_pct", 1.0)),
        label_names=tuple(str(n) for n in names) if names is not None else None,
    )


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (200 characters), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
