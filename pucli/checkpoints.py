"""Teacher and student I/O: a timm architecture, a torchvision model or the user's own code, plus
weights; never unpickled code.

Formats read (:func:`load_model`; the files themselves: :mod:`pucli.model_files`):

- **safetensors** (``.safetensors``): the architecture comes from a sidecar config in timm's
  pretrained-config form (``<stem>.config.json``, else ``config.json`` in the same folder), else
  from the file's own metadata (pucli writes both), else from the ``arch`` given.
- **timm ``train.py`` checkpoints** (``.pth``/``.pth.tar``): a dict with ``state_dict`` and ``arch``
  (or ``args.model``); loaded with ``torch.load(weights_only=True)``, ``argparse.Namespace``
  being the only extra type allowed. Any other ``{'state_dict': ...}`` checkpoint reads the same way.
- **bare state dicts** (``.pth``/``.pt``/``.bin``/``.th``/``.safetensors``) plus an ``arch``.

The architecture is a timm name, ``torchvision:NAME`` or ``PATH.py:NAME`` (the user's file, imported
only when named: :mod:`pucli.architectures`). For timm models, class count and input channels are
read off the classifier and first-conv weights when no config gives them; a model of other code
gives its class count by its output on one image of its input size, which the config or the
given preprocessing (:class:`~pucli.architectures.ModelSpec`) must say.

Written (:func:`save_model`): ``.safetensors`` with the config in its metadata, plus the sidecar
config. For a timm model that is the config timm's own exporter writes, so
``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` and
``timm.create_model("local-dir:DIR")`` load it; for other code, the same form with a ``code``
section naming the code (:func:`pucli.architectures.code_record`) instead of a timm architecture.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pucli.architectures import ArchSpec, ModelSpec, build_network, code_record, spec_from_record, warn_if_changed
from pucli.compressed_files import is_compressed, read_compressed, rebuild
from pucli.errors import OptionError, TeacherFormatError, UsageError
from pucli.model_files import (
    CONFIG_METADATA_KEY,
    SAFETENSORS_SUFFIX,
    parse_config,
    read_safetensors,
    read_torch_file,
    sidecar_config_path,
    strip_prefixes,
)
from pucli.model_config import ModelConfig, output_width, resolve_code_config, resolve_timm_config, with_output_width
from pucli.paths import check_weights_file, output_stem, replace_atomically
from pucli.report import ModelFileLog

__all__ = [
    "CONFIG_METADATA_KEY",
    "SAFETENSORS_SUFFIX",
    "ModelConfig",
    "LoadedModel",
    "build_student",
    "config_text",
    "load_model",
    "save_model",
    "sidecar_config_path",
    "student_provenance",
    "check_architecture",
    "weights_digest",
]

@dataclass
class LoadedModel:
    """A model in eval mode on the CPU with its config and where it came from."""

    model: nn.Module
    config: ModelConfig
    path: Path
    file_bytes: int
    source_format: str  # "safetensors" | "timm-checkpoint" | "checkpoint" | "state-dict" | "pucli-compressed"

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


def load_model(path: str | os.PathLike[str], arch: str | ModelSpec | None = None, *,
               parameter: str = "teacher", model_files: ModelFileLog | None = None) -> LoadedModel:
    """Load a classifier from any supported file (module docstring) into eval mode on the CPU.

    Args:
        path: weights file.
        arch: the architecture (a timm name, ``torchvision:NAME`` or ``PATH.py:NAME``), or a
            :class:`~pucli.architectures.ModelSpec` that also gives its keyword arguments and the
            preprocessing; overrides what the file says, required for bare state dicts.
        parameter: the parameter that named ``path``, which errors name (and carry).
        model_files: the run's log of model files (:class:`pucli.report.ModelFileLog`), where the
            file is noted as read with the preprocessing its config declares; None: not noted.

    Raises:
        UsageError: missing file, unknown or missing architecture; a model of other code than
            timm whose input size nothing says (:class:`~pucli.errors.MissingOptionError`), or
            whose code the command line does not name.
        TeacherFormatError: pickled module, corrupt file, weights that do not fit the architecture.
        DataError: the user's code raises on import or when called.

    Warns:
        PucliWarning: the user's code file changed since the model was written (both digests named).
    """
    spec = arch if isinstance(arch, ModelSpec) else ModelSpec(arch=arch)
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise UsageError(f"{parameter} {path} {what}: give a .safetensors, .pth or .pth.tar file",
                         parameter=parameter, path=path)

    compression = None
    if is_compressed(path):  # pruned / quantized (docs/compress.md)
        state_dict, raw_config, compression = read_compressed(path, parameter=parameter)
        config_dict, source_format = parse_config(raw_config, path), "pucli-compressed"
    elif path.name.endswith(SAFETENSORS_SUFFIX):
        state_dict, config_dict, source_format = read_safetensors(path)
    else:
        state_dict, config_dict, source_format = read_torch_file(path)
    state_dict = strip_prefixes(state_dict)

    code = _code_spec(spec, config_dict, path)
    if code is None:
        architecture = spec.arch or config_dict.get("architecture")
        if not architecture:
            raise UsageError(f"{path} does not name its architecture: pass `arch=NAME` (a timm model name)", path=path)
        check_architecture(architecture)
        config = resolve_timm_config(architecture, _with_given(config_dict, spec), state_dict, path)
        model = build_model(config, path=path)
    else:
        config = resolve_code_config(code, _with_given(config_dict, spec), state_dict, path)
        model = build_network(code, num_classes=config.num_classes or None)
    if compression is not None:
        rebuild(model, config.input_size, compression)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise TeacherFormatError(_misfit(model, state_dict, path, config, spec.arch, source_format)) from exc
    model.eval()
    if code is not None:
        config = with_output_width(model, config, path)
    if model_files is not None:
        model_files.record(path, "read", config.architecture, config.data_config(), code=config.code)
    return LoadedModel(model, config, path, path.stat().st_size, source_format)


def _with_given(config: Mapping[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The file's config with what the command line gives on top: the preprocessing, and a timm
    architecture's keyword arguments as ``model_args``."""
    given = {**config, **spec.preprocessing()}
    if spec.arch_kwargs and (spec.arch is None or spec.architecture().kind == "timm") and "code" not in config:  # type: ignore[union-attr]
        given["model_args"] = {**(config.get("model_args") or {}), **spec.arch_kwargs}
    return given


def _code_spec(spec: ModelSpec, config: Mapping[str, Any], path: Path) -> ArchSpec | None:
    """The torchvision or file code that builds the model (None: a timm architecture): the one
    the command line names, else the one the file's config records (file code only when the
    command line names that file too). Keyword arguments: those given, else the recorded ones.

    Raises:
        OptionError, MissingOptionError: as :func:`pucli.architectures.parse_arch`,
            :func:`~pucli.architectures.spec_from_record`.
    """
    record = config.get("code") if isinstance(config.get("code"), Mapping) else None
    if spec.arch is not None:
        given = spec.architecture()
        assert given is not None
        if given.kind == "timm":
            return None
        if spec.arch_kwargs is None and record is not None:
            given = dataclasses.replace(given, kwargs=dict(record.get("kwargs") or {}))
        warn_if_changed(given, record, path)
        return given
    if record is None:
        return None
    recorded = spec_from_record(record, spec, path)
    return recorded if spec.arch_kwargs is None else dataclasses.replace(recorded, kwargs=dict(spec.arch_kwargs))


def _misfit(model: nn.Module, state_dict: Mapping[str, Any], path: Path, config: ModelConfig, arch: str | None,
            source_format: str) -> str:
    """The one-line error for weights that do not fit: the first missing and unexpected keys, and what to fix."""
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
    if config.code is not None:
        return (f"weights in {path} do not fit {config.architecture}{_described(config)} ({detail}): check that "
                "this code, with these keyword arguments, made them")
    return (f"weights in {path} do not fit architecture '{config.architecture}'{_described(config)} ({detail}): "
            f"{_fit_advice(path, arch, source_format)}")


def build_student(spec: ArchSpec, teacher: ModelConfig) -> tuple[nn.Module, ModelConfig]:
    """A fresh student of ``spec`` for ``teacher``: the teacher's class count, input channels and
    preprocessing, and ``spec``'s keyword arguments (timm: ``model_args``; torchvision: with the
    teacher's ``num_classes`` unless given; file code: exactly ``NAME(**kwargs)``).

    Raises:
        UsageError: an unknown timm architecture (:func:`check_architecture`).
        OptionError: as :func:`pucli.architectures.build_network`; a student whose output width is
            not the teacher's class count (names the student's keyword arguments).
        DataError: the user's code raises.
    """
    if spec.kind == "timm":
        check_architecture(spec.name)
        config = dataclasses.replace(teacher, architecture=spec.name, model_args=dict(spec.kwargs), code=None)
        return build_model(config), config
    model = build_network(spec, num_classes=teacher.num_classes)
    config = dataclasses.replace(teacher, architecture=spec.label, model_args=dict(spec.kwargs), code=code_record(spec))
    width = output_width(model, config)
    if width != teacher.num_classes:
        raise OptionError(spec.kwargs_parameter, _json(dict(spec.kwargs)),
                          f"{spec.label} builds {width} outputs but the teacher has {teacher.num_classes} classes: "
                          f"make it build {teacher.num_classes} (e.g. {{\"num_classes\": {teacher.num_classes}}})")
    return model, config


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
        return "check `arch`"
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
    config: ModelConfig | None = None,
    model_files: ModelFileLog | None = None,
) -> Path:
    """Write ``model``'s weights to ``path`` (.safetensors) and its config beside it; note it as
    written in ``model_files`` (the run's :class:`pucli.report.ModelFileLog`), if given.

    The config (:func:`config_text`: timm's export format, written by timm's own
    ``save_config_for_hf``; for a model of other code, ``config``'s code record in the same form)
    goes both into the safetensors metadata and into :func:`sidecar_config_path`. ``data_config``
    overrides the preprocessing (a student declares the one it was trained with: its teacher's).
    ``provenance`` (:func:`student_provenance`) marks weights pucli trained: the architecture's
    own weight provenance (``tag``, ``license``, papers, notes: those of its ImageNet weights) is
    left out, and the config says where these weights come from instead
    (``pretrained_cfg.description``, ``notes`` and a ``pucli`` section). Both files are written
    atomically with the mode a plain ``open`` gives (0666 less the umask).

    Raises:
        UsageError: ``path`` does not end in .safetensors, or its folder is missing / read-only.
    """
    from safetensors.torch import save_file

    path = check_weights_file(path)
    text = config_text(model, config, label_names=label_names, data_config=data_config)
    if provenance is not None:
        text = _with_provenance(text, provenance)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "architecture": json.loads(text)["architecture"], CONFIG_METADATA_KEY: text}
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    replace_atomically(sidecar_config_path(path), lambda tmp: tmp.write_text(text))
    if model_files is not None:
        written = parse_config(json.loads(text), path)
        model_files.record(path, "written", metadata["architecture"],
                           {k: written.get(k) for k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")},
                           code=written.get("code"))
    return path


def config_text(model: nn.Module, config: ModelConfig | None = None, *, label_names: Sequence[str] | None = None,
                data_config: Mapping[str, Any] | None = None) -> str:
    """The JSON config saved with ``model`` (timm's config form).

    A timm model: what timm's own exporter ``save_config_for_hf`` writes, with ``label_names`` and
    the preprocessing ``data_config`` (None: the model's own). A model of other code (``config.code``
    set): ``architecture`` (its short name), ``num_classes``, ``label_names``, ``code`` (the code
    record: file, sha256, kwargs; never the code) and ``pretrained_cfg`` with the preprocessing
    (``data_config``, else ``config``'s), which :func:`load_model` reads back.
    """
    if config is not None and config.code is not None:
        data = dict(data_config or config.data_config())
        out: dict[str, Any] = {"architecture": config.architecture, "num_classes": config.num_classes}
        if label_names:
            out["label_names"] = list(label_names)
        out["code"] = dict(config.code)
        out["pretrained_cfg"] = {
            "input_size": [int(v) for v in data["input_size"]],
            "interpolation": str(data.get("interpolation") or config.interpolation),
            "crop_pct": float(data.get("crop_pct") or config.crop_pct),
            "crop_mode": str(data.get("crop_mode") or config.crop_mode),
            "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]],
            "num_classes": config.num_classes,
        }
        return json.dumps(out, indent=2)
    from timm.models._hub import save_config_for_hf  # timm's exporter; not re-exported publicly

    model_config: dict[str, Any] = {}
    if label_names:
        model_config["label_names"] = list(label_names)
    data = dict(data_config) if data_config else None
    if data is not None:
        data["input_size"] = tuple(data["input_size"])
    with tempfile.TemporaryDirectory() as scratch:
        save_config_for_hf(model, f"{scratch}/config.json", model_config=model_config, data_config=data)
        return Path(scratch, "config.json").read_text()


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



def _key_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
