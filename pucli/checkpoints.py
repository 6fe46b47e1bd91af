"""Teacher and student I/O: any timm architecture plus weights, never unpickled code.

Formats read (:func:`load_model`):

- **safetensors** (``.safetensors``): the architecture comes from a sidecar config in timm's
  pretrained-config form (``<stem>.config.json``, else ``config.json`` in the same folder), else
  from the file's own metadata (pucli writes both), else from ``--arch``.
- **timm ``train.py`` checkpoints** (``.pth``/``.pth.tar``): a dict with ``state_dict`` and ``arch``
  (or ``args.model``); loaded with ``torch.load(weights_only=True)``, ``argparse.Namespace``
  being the only extra type allowed.
- **bare state dicts** (``.pth``/``.pt``/``.bin``/``.safetensors``) plus ``--arch NAME``.

Class count and input channels are read off the classifier and first-conv weights when no config
gives them. Written (:func:`save_model`): ``.safetensors`` with the config in its metadata, plus the
sidecar config written by timm's own exporter, so ``timm.create_model(arch, pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` and ``timm.create_model("local-dir:DIR")`` load it.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pucli.errors import TeacherFormatError, UsageError
from pucli.paths import output_stem, replace_atomically

__all__ = [
    "ModelConfig",
    "LoadedModel",
    "load_model",
    "save_model",
    "sidecar_config_path",
    "student_provenance",
    "check_architecture",
    "weights_digest",
]

SAFETENSORS_SUFFIX = ".safetensors"
CONFIG_METADATA_KEY = "pucli.config"


@dataclass(frozen=True)
class ModelConfig:
    """What pucli needs to know about a classifier besides its weights.

    ``input_size`` is (channels, height, width) in pixels; ``mean``/``std`` have one entry per
    channel, on the 0-1 pixel scale; ``label_names[k]`` names output k.
    """

    architecture: str
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    label_names: tuple[str, ...] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    def data_config(self) -> dict[str, Any]:
        """The preprocessing in timm's data-config form (``input_size``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, ``crop_mode``): what ``timm.data.resolve_model_data_config``
        gives for this model and what :class:`pucli.data.loading.Preprocess` applies."""
        return {
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


@dataclass
class LoadedModel:
    """A model in eval mode on the CPU with its config and where it came from."""

    model: nn.Module
    config: ModelConfig
    path: Path
    file_bytes: int
    source_format: str  # "safetensors" | "timm-checkpoint" | "state-dict"

    @functools.cached_property
    def digest(self) -> str:
        """:func:`weights_digest` of the file, computed once."""
        return weights_digest(self.path)


# Hashing gigabytes on every run would cost more than it saves; bigger files are identified by
# their resolved path, size, mtime and first/last MiB.
_FULL_HASH_LIMIT = 64 * 2**20  # bytes


def weights_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` identifying a weights file: its whole content up to 64 MiB, else its resolved
    path, size, mtime and first and last MiB. Keys caches and ties outputs to the teacher they
    came from."""
    path = Path(path)
    digest = hashlib.sha256()
    stat = path.stat()
    with path.open("rb") as handle:
        if stat.st_size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
        else:
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
            digest.update(handle.read(2**20))
            handle.seek(-(2**20), os.SEEK_END)
            digest.update(handle.read(2**20))
    return f"sha256:{digest.hexdigest()}"


def check_architecture(name: str) -> str:
    """Return ``name`` if timm knows it, else raise with the closest known names.

    Raises:
        UsageError: unknown architecture (message lists up to 5 close timm names).
    """
    import timm

    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"closest timm names: {', '.join(close)}" if close else "see `timm.list_models()`"
    raise UsageError(f"unknown architecture '{name}': {hint}")


def sidecar_config_path(weights: Path) -> Path:
    """The config file written beside ``weights``: ``config.json`` for timm's ``model.safetensors``
    folder layout, else ``<stem>.config.json`` (so several models can share one folder)."""
    stem = weights.name.removesuffix(SAFETENSORS_SUFFIX)
    return weights.with_name("config.json" if stem == "model" else f"{stem}.config.json")


def load_model(path: str | os.PathLike[str], arch: str | None = None, *, option: str = "--teacher") -> LoadedModel:
    """Load a classifier from any supported file (module docstring) into eval mode on the CPU.

    Args:
        path: weights file.
        arch: timm architecture name; overrides what the file says, required for bare state dicts.
        option: the CLI option that named ``path``, quoted in error messages.

    Raises:
        UsageError: missing file, unknown or missing architecture.
        TeacherFormatError: pickled module, corrupt file, weights that do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise UsageError(f"{option} {path} {what}: give a .safetensors, .pth or .pth.tar file")
    from pucli.compress.stored import is_compressed, read_compressed, rebuild  # pruned / quantized (docs/compress.md)

    compression = None
    if is_compressed(path):
        state_dict, raw_config, compression = read_compressed(path, option=option)
        config_dict, source_format = _parse_config(raw_config, path), "pucli-compressed"
    elif path.name.endswith(SAFETENSORS_SUFFIX):
        state_dict, config_dict, source_format = _read_safetensors(path)
    else:
        state_dict, config_dict, source_format = _read_torch_file(path)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}

    architecture = arch or config_dict.get("architecture")
    if not architecture:
        raise UsageError(f"{path} does not name its architecture: pass --arch NAME (a timm model name)")
    check_architecture(architecture)
    config = _resolve_config(architecture, config_dict, state_dict, path)
    model = build_model(config, path=path)
    if compression is not None:
        rebuild(model, config.input_size, compression)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_mismatch(model.state_dict(), state_dict)
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                "shapes differ" if not missing and not unexpected else "",
            )
            if part
        )
        raise TeacherFormatError(
            f"weights in {path} do not fit architecture '{architecture}'{_described(config)} ({detail}): "
            f"{_fit_advice(path, arch, source_format)}"
        ) from exc
    model.eval()
    from pucli.report import record_model_file

    record_model_file(path, "read", architecture, config.data_config())
    return LoadedModel(model, config, path, path.stat().st_size, source_format)


def build_model(config: ModelConfig, *, path: Path | None = None) -> nn.Module:
    """A freshly initialised timm model for ``config`` (no weights loaded): ``timm.create_model``
    with the architecture, class count, input channels and ``model_args``.

    Raises:
        TeacherFormatError: ``model_args`` the architecture does not take (``path``: the file
            they came from, for the message).
    """
    import timm

    kwargs = {k: v for k, v in config.model_args.items() if k not in {"num_classes", "in_chans"}}
    try:
        return timm.create_model(config.architecture, num_classes=config.num_classes, in_chans=config.in_chans, **kwargs)
    except TypeError as exc:
        where = f"{path}: " if path is not None else ""
        raise TeacherFormatError(
            f"{where}architecture '{config.architecture}' does not take model_args {_json(kwargs)} "
            f"({_first_line(exc)}): fix model_args in its config"
        ) from exc


def _described(config: ModelConfig) -> str:
    return f" with model_args {_json(config.model_args)}" if config.model_args else ""


def _fit_advice(path: Path, arch: str | None, source_format: str) -> str:
    """What to do when weights do not fit: depends on who named the architecture."""
    if arch:
        return "check --arch"
    sidecar = sidecar_config_path(path.with_name(output_stem(path) + SAFETENSORS_SUFFIX))
    if source_format == "timm-checkpoint":
        return (f"the checkpoint's args do not say everything the model was built with; give the rest under "
                f"model_args in {sidecar} (docs/models.md#timm-trainpy-checkpoints)")
    return f"the file's config does not describe these weights; fix architecture or model_args in {sidecar}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) and its timm config beside it.

    The config (timm's export format, written by timm's own ``save_config_for_hf``) goes both into
    the safetensors metadata and into :func:`sidecar_config_path`. ``data_config`` overrides the
    preprocessing (a student declares the one it was trained with: its teacher's). ``provenance``
    (:func:`student_provenance`) marks weights pucli trained: the architecture's own weight
    provenance (``tag``, ``license``, papers, notes: those of its ImageNet weights) is left out,
    and the config says where these weights come from instead (``pretrained_cfg.description``,
    ``notes`` and a ``pucli`` section). Both files are written atomically with the mode a plain
    ``open`` gives (0666 less the umask).

    Raises:
        UsageError: ``path`` does not end in .safetensors, or its folder is missing / read-only.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # timm's exporter; not re-exported publicly

    path = Path(path)
    if not path.name.endswith(SAFETENSORS_SUFFIX):
        raise UsageError(f"--out {path}: weights are written as safetensors, name the file *.safetensors")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"--out {path}: folder {path.parent} is not writable; choose another --out")
    model_config: dict[str, Any] = {}
    if label_names:
        model_config["label_names"] = list(label_names)
    data = dict(data_config) if data_config else None
    if data is not None:
        data["input_size"] = tuple(data["input_size"])
    with tempfile.TemporaryDirectory() as scratch:
        save_config_for_hf(model, f"{scratch}/config.json", model_config=model_config, data_config=data)
        config_text = Path(scratch, "config.json").read_text()
    if provenance is not None:
        config_text = _with_provenance(config_text, provenance)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "architecture": json.loads(config_text)["architecture"], CONFIG_METADATA_KEY: config_text}
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    replace_atomically(sidecar_config_path(path), lambda tmp: tmp.write_text(config_text))
    from pucli.report import record_model_file

    written = _parse_config(json.loads(config_text), path)
    record_model_file(path, "written", metadata["architecture"],
                      {k: written.get(k) for k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")})
    return path


# What an architecture's pretrained config says about its published weights, not about weights
# trained by pucli: left out of a student's config.
_WEIGHT_PROVENANCE_KEYS = ("tag", "license", "description", "origin_url", "paper_name", "paper_ids", "notes", "url",
                           "hf_hub_id", "hf_hub_filename")


def student_provenance(*, student: str, teacher: str | os.PathLike[str], teacher_digest: str,
                       data: str | os.PathLike[str], loss: str) -> dict[str, Any]:
    """Where a student's weights come from, for :func:`save_model`'s ``provenance``."""
    from pucli import __version__

    return {"made_by": f"pucli {__version__} distill", "student": student, "teacher": str(teacher),
            "teacher_digest": teacher_digest, "data": str(data), "loss": loss}


def _with_provenance(config_text: str, provenance: Mapping[str, Any]) -> str:
    config = json.loads(config_text)
    pretrained = config.setdefault("pretrained_cfg", {})
    for key in _WEIGHT_PROVENANCE_KEYS:
        pretrained.pop(key, None)
    teacher = Path(str(provenance["teacher"])).name
    pretrained["description"] = (f"{provenance['student']} student of teacher {teacher}, trained by "
                                 f"{provenance['made_by']} ({provenance['loss']}) on {provenance['data']}")
    pretrained["notes"] = [f"teacher: {provenance['teacher']} ({provenance['teacher_digest']})",
                           f"data: {provenance['data']}", f"made by: {provenance['made_by']}"]
    config["pucli"] = dict(provenance)
    return json.dumps(config, indent=2)


# --- reading ---------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise TeacherFormatError(
            f"{path} is not a valid safetensors file ({_first_line(exc)}): re-export or re-download it"
        ) from exc
    config: dict[str, Any] = {}
    sidecar = sidecar_config_path(path)
    if not sidecar.is_file() and (path.parent / "config.json").is_file():
        sidecar = path.parent / "config.json"
    if sidecar.is_file():
        config = _read_json_config(sidecar)
    elif CONFIG_METADATA_KEY in metadata:
        config = _parse_config(json.loads(metadata[CONFIG_METADATA_KEY]), path)
    elif "architecture" in metadata:
        config = {"architecture": metadata["architecture"]}
    return state_dict, config, "safetensors"


def _read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TeacherFormatError(
            f"{path} holds a pickled Python object, which pucli never unpickles (it could run code): "
            "save a state dict instead, torch.save(model.state_dict(), 'teacher.pth'), and pass --arch NAME "
            "(or save the state dict with safetensors)"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise TeacherFormatError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)}): check the file is complete"
        ) from exc
    if not isinstance(obj, Mapping):
        raise TeacherFormatError(f"{path} holds a {type(obj).__name__}, not a state dict: save model.state_dict()")
    config: dict[str, Any] = {}
    source_format = "state-dict"
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        source_format = "timm-checkpoint"
        args = obj.get("args")
        # timm's train.py stores the variant name in args.model; "arch" is only the class name.
        arch = getattr(args, "model", None) or obj.get("arch")
        if arch:
            config["architecture"] = arch
        config.update(_train_args_config(args))
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise TeacherFormatError(f"{path} holds no weight tensors: save model.state_dict()")
    sidecar = sidecar_config_path(path.with_name(output_stem(path) + SAFETENSORS_SUFFIX))
    if sidecar.is_file():
        # The sidecar adds what the checkpoint's args do not record; its model_args win (they are
        # the user's fix for a build the args describe wrongly or not at all).
        written = _read_json_config(sidecar)
        model_args = {**(config.get("model_args") or {}), **(written.get("model_args") or {})}
        config = {**written, **config}
        if model_args:
            config["model_args"] = model_args
    return tensors, config, source_format


# timm train.py's arguments that it passes to timm.create_model, and the keyword each becomes;
# args.model_kwargs (--model-kwargs) is passed as it is. None means "not set" (train.py's default).
_TRAIN_MODEL_ARGS = {
    "gp": "global_pool",
    "drop": "drop_rate",
    "drop_path": "drop_path_rate",
    "drop_block": "drop_block_rate",
    "bn_momentum": "bn_momentum",
    "bn_eps": "bn_eps",
}
# train.py's arguments that describe the data (resolve_data_config reads them the same way).
_TRAIN_DATA_ARGS = ("num_classes", "in_chans", "input_size", "mean", "std", "interpolation", "crop_pct")


def _train_args_config(args: Any) -> dict[str, Any]:
    """The config part of a timm ``train.py`` checkpoint's ``args`` (an ``argparse.Namespace``):
    its data arguments, ``img_size`` as ``input_size``, and ``model_args``, the keywords train.py
    gave ``timm.create_model`` (``--model-kwargs``, ``--gp``, ``--drop*``, ``--bn-*``)."""
    if args is None:
        return {}
    config: dict[str, Any] = {}
    for key in _TRAIN_DATA_ARGS:
        value = getattr(args, key, None)
        if value is not None and value != "":
            config[key] = value
    img_size = getattr(args, "img_size", None)
    if "input_size" not in config and isinstance(img_size, int):
        config["input_size"] = (config.get("in_chans") or 3, img_size, img_size)
    model_args = dict(getattr(args, "model_kwargs", None) or {})
    for name, keyword in _TRAIN_MODEL_ARGS.items():
        value = getattr(args, name, None)
        # A drop rate of 0 is every timm model's default (and no rate acts in eval mode): left out.
        if value is not None and not (keyword.endswith("_rate") and value == 0) and keyword not in model_args:
            model_args[keyword] = value
    if model_args:
        config["model_args"] = model_args
    return config


def _read_json_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TeacherFormatError(f"{path} is not valid JSON ({_first_line(exc)}): fix or delete it") from exc
    if not isinstance(raw, dict):
        raise TeacherFormatError(f"{path} must hold a JSON object in timm's config form")
    return _parse_config(raw, path)


def _parse_config(raw: dict[str, Any], source: Path) -> dict[str, Any]:
    """Flatten timm's config form ({architecture, num_classes, pretrained_cfg: {...}}) or the flat
    form ({architecture, num_classes, input_size, mean, std, label_names}) to one flat dict."""
    flat = dict(raw.get("pretrained_cfg") or {})
    flat.update({k: v for k, v in raw.items() if k != "pretrained_cfg"})
    if "labels" in flat and "label_names" not in flat:
        flat["label_names"] = flat.pop("labels")
    if isinstance(flat.get("label_names"), dict):
        names = flat["label_names"]
        try:
            flat["label_names"] = [names[k] for k in sorted(names, key=int)]
        except ValueError as exc:
            raise TeacherFormatError(f"{source}: label_names keys must be class indices") from exc
    return flat


def _resolve_config(architecture: str, raw: dict[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> ModelConfig:
    import timm

    default = timm.models.get_pretrained_cfg(architecture)
    default_cfg = default.to_dict() if default is not None else {}
    model_args = dict(raw.get("model_args") or {})
    num_classes = raw.get("num_classes") or model_args.get("num_classes")
    if num_classes is None:
        num_classes = _classifier_width(default_cfg.get("classifier"), state_dict)
    if num_classes is None:
        # No classifier weight where the architecture keeps it: the load below reports the mismatch.
        num_classes = default_cfg.get("num_classes") or 1000
    in_chans = model_args.get("in_chans") or raw.get("in_chans")
    if in_chans is None:
        in_chans = _first_conv_channels(default_cfg.get("first_conv"), state_dict)
    if in_chans is None:
        in_chans = (raw.get("input_size") or default_cfg.get("input_size") or (3,))[0]
    size = raw.get("input_size") or default_cfg.get("input_size") or (3, 224, 224)
    input_size = (int(in_chans), int(size[-2]), int(size[-1]))
    mean = _per_channel(raw.get("mean") or default_cfg.get("mean") or (0.485, 0.456, 0.406), in_chans)
    std = _per_channel(raw.get("std") or default_cfg.get("std") or (0.229, 0.224, 0.225), in_chans)
    labels = raw.get("label_names")
    if labels is not None and len(labels) != int(num_classes):
        raise TeacherFormatError(
            f"{path}: label_names lists {len(labels)} names for {num_classes} classes; fix the config"
        )
    return ModelConfig(
        architecture=architecture,
        num_classes=int(num_classes),
        in_chans=int(in_chans),
        input_size=input_size,
        mean=mean,
        std=std,
        # With neither the file nor timm saying, timm's own defaults (resolve_data_config).
        interpolation=str(raw.get("interpolation") or default_cfg.get("interpolation") or "bicubic"),
        crop_pct=float(raw.get("crop_pct") or default_cfg.get("crop_pct") or 0.875),
        crop_mode=_crop_mode(raw.get("crop_mode") or default_cfg.get("crop_mode") or "center", path),
        label_names=tuple(str(n) for n in labels) if labels is not None else None,
        model_args={k: v for k, v in model_args.items() if k not in {"num_classes", "in_chans"}},
    )


def _crop_mode(value: Any, path: Path) -> str:
    if value not in _CROP_MODES:
        raise TeacherFormatError(f"{path}: crop_mode {value!r} is not one of timm's {', '.join(_CROP_MODES)}; fix the config")
    return str(value)


_CROP_MODES = ("center", "squash", "border")


def _classifier_width(classifier: str | Sequence[str] | None, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    if not classifier:
        return None
    name = classifier if isinstance(classifier, str) else classifier[0]
    weight = state_dict.get(f"{name}.weight")
    return int(weight.shape[0]) if weight is not None else None


def _first_conv_channels(first_conv: str | Sequence[str] | None, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    if not first_conv:
        return None
    name = first_conv if isinstance(first_conv, str) else first_conv[0]
    weight = state_dict.get(f"{name}.weight")
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def _per_channel(values: Sequence[float] | float, channels: int) -> tuple[float, ...]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == channels:
        return tuple(values)
    if len(values) == 1:
        return tuple(values * channels)
    # timm does the same when a model is built for other channels than its pretrained config.
    return tuple([sum(values) / len(values)] * channels)


def _key_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
