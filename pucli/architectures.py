"""Where a model's code comes from: a timm name, ``torchvision:NAME``, or ``PATH.py:NAME`` (the user's file).

An architecture is named one of three ways (:func:`parse_arch`):

- a **timm** name (``resnet18``, ``lenet5``): built by ``timm.create_model`` (:mod:`pucli.checkpoints`);
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, **kwargs)``, random
  weights (the file's are loaded afterwards), e.g. ``torchvision:resnet18``;
- ``PATH.py:NAME``: pucli imports the Python file ``PATH.py`` (under a module name of its own,
  with the file's folder on ``sys.path`` while it runs, so it can import its neighbours) and calls
  ``NAME(**kwargs)``, which must return a ``torch.nn.Module`` classifier: (B, C, H, W) float32 in,
  (B, K) logits out. The CIFAR ResNets of akamaster/pytorch_resnet_cifar10 are
  ``resnet.py:resnet56``.

Security: pucli imports a Python file only when the command line names it (:class:`ModelSpec`'s
``arch``, or a file in its ``code_files``). A model file never makes pucli import code: the config
pucli writes for a model built from the user's code names that code (:func:`code_record`: the
file, its sha256, the keyword arguments) but does not hold it, and loading the model again needs
the same file named again (:func:`spec_from_record`); a file whose digest has changed since is
loaded with a :class:`~pucli.errors.PucliWarning` naming both digests.

This module imports no torch at import time, so the command line can check its options at once.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pucli.errors import DataError, MissingOptionError, OptionError, PucliWarning

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["INTERPOLATIONS", "TORCHVISION_PREFIX", "ArchSpec", "ModelSpec", "build_network", "code_digest",
           "code_record", "parse_arch", "parse_kwargs", "spec_from_record", "torchvision_num_classes", "warn_if_changed"]

TORCHVISION_PREFIX = "torchvision:"
# timm's names of the resize interpolations its eval transform takes (timm.data.transforms.str_to_interp_mode).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ArchSpec:
    """One named architecture (module docstring).

    ``kind`` is ``"timm"``, ``"torchvision"`` or ``"file"``; ``name`` the timm name, torchvision
    model or factory; ``file`` the Python file (``"file"`` only); ``kwargs`` what the factory is
    called with; ``parameter`` the engine parameter that named it (``arch``, ``student``), quoted
    in errors, its keyword arguments being ``<parameter>_kwargs``.
    """

    kind: str
    name: str
    file: Path | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    parameter: str = "arch"

    @property
    def text(self) -> str:
        """The spelling that names it: ``resnet18``, ``torchvision:resnet18``, ``/abs/resnet.py:resnet56``."""
        if self.kind == "file":
            return f"{self.file}:{self.name}"
        return f"{TORCHVISION_PREFIX}{self.name}" if self.kind == "torchvision" else self.name

    @property
    def label(self) -> str:
        """A short name for tables and configs: ``resnet.py:resnet56`` (the file's name, not its path)."""
        return f"{self.file.name}:{self.name}" if self.kind == "file" and self.file is not None else self.text

    @property
    def kwargs_parameter(self) -> str:
        return f"{self.parameter}_kwargs"


def parse_arch(text: str, *, parameter: str = "arch", kwargs: Mapping[str, Any] | None = None) -> ArchSpec:
    """The :class:`ArchSpec` ``text`` names: ``torchvision:NAME``, ``PATH.py:NAME``, else a timm name
    (not checked here: :func:`pucli.checkpoints.check_architecture`). Imports nothing.

    Raises:
        OptionError: ``PATH.py`` without ``:NAME``, a NAME that is not a Python identifier, a file
            that does not exist, or keyword arguments for a timm name given here.
    """
    text = text.strip()
    given = dict(kwargs or {})
    if text.startswith(TORCHVISION_PREFIX):
        name = text[len(TORCHVISION_PREFIX):]
        if not _IDENTIFIER.match(name):
            raise OptionError(parameter, text, "give torchvision:NAME with a torchvision.models name, e.g. torchvision:resnet18")
        return ArchSpec("torchvision", name, kwargs=given, parameter=parameter)
    head, colon, name = text.rpartition(":")
    if text.endswith(".py") or (colon and head.endswith(".py")):
        if not colon or not head.endswith(".py"):
            raise OptionError(parameter, text, "name the function or class that builds the model too: PATH.py:NAME")
        if not _IDENTIFIER.match(name):
            raise OptionError(parameter, text, f"{name!r} is not a Python name: give PATH.py:NAME, NAME a function or class in the file")
        file = Path(head).expanduser()
        if not file.is_file():
            what = "is a folder" if file.is_dir() else "does not exist"
            raise OptionError(parameter, text, f"{file} {what}: give the Python file that defines {name}")
        return ArchSpec("file", name, file=file.resolve(), kwargs=given, parameter=parameter)
    return ArchSpec("timm", text, kwargs=given, parameter=parameter)


def parse_kwargs(text: str | None, *, parameter: str = "arch_kwargs") -> dict[str, Any]:
    """Keyword arguments given as a JSON object (``'{"num_classes": 10}'``); None or empty: ``{}``.

    Raises:
        OptionError: not JSON, or JSON that is not an object.
    """
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(parameter, text, f"not valid JSON ({exc.msg}); give an object such as '{{\"num_classes\": 10}}'") from None
    if not isinstance(value, dict):
        raise OptionError(parameter, text, "give a JSON object of keyword arguments, such as '{\"num_classes\": 10}'")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """What a command line says about a model besides its weights file: the architecture, its
    keyword arguments, and the preprocessing (timm's data-config names) to declare or override.

    Attributes:
        arch: a timm name, ``torchvision:NAME`` or ``PATH.py:NAME`` (:func:`parse_arch`); None: what
            the file says.
        arch_kwargs: the keyword arguments of a torchvision or file architecture; None: those the
            file's config records (none for a bare state dict).
        input_size: (C, H, W) in pixels; needed for a model that is not a timm model unless its file says.
        mean, std: per channel (or one for all), on the 0-1 pixel scale.
        interpolation: one of :data:`INTERPOLATIONS`; crop_pct: in (0, 1].
        code_files: Python files (resolved paths) the command line names besides ``arch`` (a
            student's architecture): a model file whose config names code in one of them is built from it.

    Raises (when built):
        OptionError: a value out of range (names the parameter: ``input_size``, ``mean``, ...).
    """

    arch: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    code_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        size = self.input_size
        if size is not None and (len(size) != 3 or min(size) < 1):
            raise OptionError("input_size", " ".join(map(str, size)), "give C H W, three numbers >= 1 (e.g. 3 32 32)")
        for parameter, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and (not values or (size is not None and len(values) not in (1, size[0]))):
                raise OptionError(parameter, " ".join(map(str, values)), "give one number per input channel, or one for all")
        if self.std is not None and min(self.std) <= 0:
            raise OptionError("std", " ".join(map(str, self.std)), "every std must be > 0")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise OptionError("interpolation", self.interpolation, f"choose one of {', '.join(INTERPOLATIONS)}")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise OptionError("crop_pct", self.crop_pct, "must be in (0, 1]; 1.0 resizes the shorter side to the input size and crops nothing")

    def architecture(self) -> ArchSpec | None:
        """:func:`parse_arch` of ``arch`` with ``arch_kwargs`` (None without ``arch``).

        Raises:
            OptionError: as :func:`parse_arch`.
        """
        if self.arch is None:
            return None
        return parse_arch(self.arch, kwargs=self.arch_kwargs)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing given, in timm's data-config names (only the fields that were given)."""
        given = {"input_size": self.input_size, "mean": self.mean, "std": self.std,
                 "interpolation": self.interpolation, "crop_pct": self.crop_pct}
        return {key: value for key, value in given.items() if value is not None}

    def trusts(self, file: str | Path) -> bool:
        """True when the command line named the Python file ``file`` (``arch`` or ``code_files``)."""
        wanted = str(Path(file).expanduser().resolve())
        named = set(self.code_files)
        spec = self.architecture() if self.arch is not None else None
        if spec is not None and spec.file is not None:
            named.add(str(spec.file))
        return wanted in named


def code_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a Python file's bytes."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_record(spec: ArchSpec) -> dict[str, Any]:
    """What a model's config says about the code that builds it: ``arch`` (``/abs/path.py:NAME`` or
    ``torchvision:NAME``), ``sha256`` of the file (file code only) and ``kwargs``. Never the code itself."""
    record: dict[str, Any] = {"arch": spec.text}
    if spec.kind == "file" and spec.file is not None:
        record["sha256"] = code_digest(spec.file)
    record["kwargs"] = dict(spec.kwargs)
    return record


def spec_from_record(record: Mapping[str, Any], given: ModelSpec, where: str | Path) -> ArchSpec:
    """The :class:`ArchSpec` a model's config names (:func:`code_record`), when the command line
    allows it: torchvision models always; file code only when ``given`` names the file. A file
    whose digest differs from the recorded one gives a :class:`~pucli.errors.PucliWarning`.

    Raises:
        MissingOptionError: file code the command line does not name (``arch``).
        DataError: a record pucli cannot read.
    """
    arch = record.get("arch")
    if not isinstance(arch, str) or not arch:
        raise DataError(f"{where}: its config names code without an 'arch' entry; write the model again with pucli")
    kwargs = record.get("kwargs") or {}
    if arch.startswith(TORCHVISION_PREFIX):
        return parse_arch(arch, kwargs=kwargs)
    head, _, name = arch.rpartition(":")
    if not given.trusts(head):
        raise MissingOptionError("arch", f"{where} was built by the code {arch} ({record.get('sha256', 'no digest')}); "
                                 f"pucli imports code only when it is named on the command line: name it again, "
                                 f"PATH.py:{name}")
    spec = parse_arch(arch, kwargs=kwargs)
    warn_if_changed(spec, record, where)
    return spec


def warn_if_changed(spec: ArchSpec, record: Mapping[str, Any] | None, where: str | Path) -> None:
    """A :class:`~pucli.errors.PucliWarning` when ``spec``'s file is not the one ``record`` (the
    model's config) was written with: their sha256 digests differ."""
    recorded = (record or {}).get("sha256")
    if spec.kind != "file" or spec.file is None or not recorded:
        return
    current = code_digest(spec.file)
    if current != recorded:
        warnings.warn(PucliWarning(f"{where} was written with {record.get('arch')} at {recorded}, but {spec.file} "
                                   f"is now {current}: the code changed since; check that it still builds that model"),
                      stacklevel=2)


# --- building -------------------------------------------------------------------------------


def build_network(spec: ArchSpec, *, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised network of a torchvision or file ``spec`` (not timm), in eval mode.

    torchvision: ``get_model(name, weights=None, **kwargs)``, with ``num_classes`` unless the
    kwargs give it. File: ``NAME(**kwargs)`` exactly (``num_classes`` is not passed: a factory need
    not take it).

    Raises:
        OptionError: an unknown torchvision model, a file that does not define ``NAME``, keyword
            arguments the factory does not take.
        DataError: the file raises on import, or ``NAME`` does not return a ``torch.nn.Module``.
    """
    from torch import nn

    kwargs = dict(spec.kwargs)
    if spec.kind == "torchvision":
        import torchvision

        _check_torchvision_name(spec)
        if num_classes is not None:
            kwargs.setdefault("num_classes", num_classes)
        factory: Callable[..., Any] = functools.partial(torchvision.models.get_model, spec.name, weights=None)
    elif spec.kind == "file":
        factory = _factory(spec)
    else:
        raise ValueError(f"build_network builds torchvision and file architectures, not {spec.kind}")
    with _folder_on_path(spec.file):
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise OptionError(spec.kwargs_parameter, json.dumps(kwargs), f"{spec.label} does not take them ({_first_line(exc)})") from exc
        except Exception as exc:  # noqa: BLE001  (the user's code may raise anything; the message is what helps)
            raise DataError(f"{spec.label}({_call_text(kwargs)}) raised {type(exc).__name__}: {_first_line(exc)}"
                            f"{_line_in(exc, spec.file)}; fix the code or its keyword arguments") from exc
    if not isinstance(model, nn.Module):
        raise DataError(f"{spec.label}({_call_text(kwargs)}) returned a {type(model).__name__}, not a torch.nn.Module: "
                        "name the function or class that builds the network")
    return model.eval()


def torchvision_num_classes(spec: ArchSpec, state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of torchvision ``spec``'s weights ``state_dict``: the rows of the classifier
    weight (the last weight of two or more dimensions, as torchvision orders them); None when the
    kwargs give ``num_classes`` or the state dict lacks that weight."""
    import torch
    import torchvision

    if spec.kind != "torchvision" or "num_classes" in spec.kwargs:
        return None
    _check_torchvision_name(spec)
    with torch.device("meta"):
        reference = torchvision.models.get_model(spec.name, weights=None, **spec.kwargs)
    keys = [k for k, v in reference.state_dict().items() if k.endswith(".weight") and v.ndim >= 2]
    weight = state_dict.get(keys[-1]) if keys else None
    return int(weight.shape[0]) if weight is not None else None


def _check_torchvision_name(spec: ArchSpec) -> None:
    """Raises OptionError (the closest names listed) unless torchvision has the model ``spec`` names."""
    import torchvision

    known = torchvision.models.list_models()
    if spec.name not in known:
        close = difflib.get_close_matches(spec.name, known, n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise OptionError(spec.parameter, spec.text, f"torchvision has no model {spec.name} ({hint})")


def _factory(spec: ArchSpec) -> Callable[..., Any]:
    """Import ``spec.file`` (once per content: a module ``pucli_code_<stem>_<digest>``) and return its ``NAME``.

    Raises:
        DataError: the file raises on import (its first line, and the line of the file it came from).
        OptionError: the file defines no callable ``NAME`` (the closest names it defines are listed).
    """
    import importlib.util

    assert spec.file is not None
    digest = code_digest(spec.file)
    stem = re.sub(r"\W", "_", spec.file.stem)
    module_name = f"pucli_code_{stem}_{digest[7:19]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, spec.file)
        if loader_spec is None or loader_spec.loader is None:
            raise OptionError(spec.parameter, spec.text, f"{spec.file} cannot be imported as Python; give a .py file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            with _folder_on_path(spec.file):
                loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (SyntaxError, ImportError, anything the file raises)
            del sys.modules[module_name]
            raise DataError(f"{spec.file}: importing it raised {type(exc).__name__}: {_first_line(exc)}"
                            f"{_line_in(exc, spec.file)}; fix the file (python {spec.file} shows the traceback)") from exc
    factory = getattr(module, spec.name, None)
    if not callable(factory):
        defined = sorted(name for name, value in vars(module).items()
                         if callable(value) and not name.startswith("_") and getattr(value, "__module__", None) == module_name)
        close = difflib.get_close_matches(spec.name, defined, n=3, cutoff=0.5)
        listed = ", ".join(defined[:12]) + (", ..." if len(defined) > 12 else "") if defined else "no function or class"
        what = "defines no" if factory is None else "has a non-callable"
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise OptionError(spec.parameter, spec.text, f"{spec.file.name} {what} {spec.name} (it defines {listed}{hint})")
    return factory


@contextlib.contextmanager
def _folder_on_path(file: Path | None) -> Iterator[None]:
    """The user file's folder first on ``sys.path`` while its code runs (so it imports its neighbours)."""
    if file is None:
        yield
        return
    folder = str(file.parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _line_in(exc: BaseException, file: Path | None) -> str:
    """`` (line N of FILE)``: where in the user's file an exception came from, if it did."""
    if file is None:
        return ""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == file and exc.lineno:
        return f" (line {exc.lineno})"
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line} of {file.name})" if line is not None else ""


def _call_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
