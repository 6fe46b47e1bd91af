"""Model files as pucli finds them: the weight tensors and whatever config the file carries.

- **safetensors** (``.safetensors``): the config is a sidecar in timm's pretrained-config form
  (``<stem>.config.json``, else ``config.json`` in the same folder), else the file's own metadata
  (pucli writes both).
- **PyTorch files** (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``, ``.th``): read with
  ``torch.load(weights_only=True)`` (``argparse.Namespace`` the only extra type allowed), so no
  pickle ever runs code; a bare state dict, or a dict with ``state_dict`` (a timm ``train.py``
  checkpoint, whose ``arch`` / ``args`` say how it was built, or any ``{'state_dict': ...}``
  checkpoint such as those of akamaster/pytorch_resnet_cifar10).

Key prefixes left by wrappers are removed (:func:`strip_prefixes`): ``module.`` (DataParallel,
DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``). :mod:`pucli.checkpoints` turns
tensors and config into a model.
"""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pucli.errors import TeacherFormatError
from pucli.paths import output_stem

__all__ = ["CONFIG_METADATA_KEY", "SAFETENSORS_SUFFIX", "WRAPPER_PREFIXES", "parse_config", "read_safetensors",
           "read_torch_file", "sidecar_config_path", "strip_prefixes"]

SAFETENSORS_SUFFIX = ".safetensors"
CONFIG_METADATA_KEY = "pucli.config"
# Prefixes wrappers add to every key: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def sidecar_config_path(weights: Path) -> Path:
    """The config file written beside ``weights``: ``config.json`` for timm's ``model.safetensors``
    folder layout, else ``<stem>.config.json`` (so several models can share one folder)."""
    stem = weights.name.removesuffix(SAFETENSORS_SUFFIX)
    return weights.with_name("config.json" if stem == "model" else f"{stem}.config.json")



def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(tensors, flat config, "safetensors")`` of a safetensors file: the config from its sidecar,
    else its metadata (:func:`parse_config`'s flat form; empty when neither says anything).

    Raises:
        TeacherFormatError: not a valid safetensors file; a sidecar that is not a JSON object.
    """
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
        config = read_json_config(sidecar)
    elif CONFIG_METADATA_KEY in metadata:
        config = parse_config(json.loads(metadata[CONFIG_METADATA_KEY]), path)
    elif "architecture" in metadata:
        config = {"architecture": metadata["architecture"]}
    return state_dict, config, "safetensors"


def read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """``(tensors, flat config, source format)`` of a PyTorch file read with ``weights_only=True``:
    a bare state dict (``"state-dict"``), a timm ``train.py`` checkpoint (``"timm-checkpoint"``,
    its ``arch`` / ``args`` in the config) or another ``{'state_dict': ...}`` checkpoint
    (``"checkpoint"``); a sidecar config beside it adds what they do not say.

    Raises:
        TeacherFormatError: a pickled object other than tensors (never unpickled), a truncated or
            unreadable file, no weight tensors.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TeacherFormatError(
            f"{path} holds a pickled Python object, which pucli never unpickles (it could run code): "
            "save a state dict instead, torch.save(model.state_dict(), 'teacher.pth'), and pass `arch=NAME` "
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
        args = obj.get("args")
        # timm's train.py stores the variant name in args.model; "arch" is only the class name.
        arch = getattr(args, "model", None) or obj.get("arch")
        # Without either it is some other training script's {'state_dict': ...} checkpoint.
        source_format = "timm-checkpoint" if args is not None or arch else "checkpoint"
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
        written = read_json_config(sidecar)
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


def read_json_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TeacherFormatError(f"{path} is not valid JSON ({_first_line(exc)}): fix or delete it") from exc
    if not isinstance(raw, dict):
        raise TeacherFormatError(f"{path} must hold a JSON object in timm's config form")
    return parse_config(raw, path)


def parse_config(raw: Mapping[str, Any], source: Path) -> dict[str, Any]:
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


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with every leading ``module.`` and ``_orig_mod.`` removed from its keys (in
    any order and number: ``module._orig_mod.conv.weight`` -> ``conv.weight``)."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
