"""The run report: one JSON file per command run, written beside its output.

Where it goes (:func:`report_location`): ``--report PATH``; else beside the command's output
(:func:`report_path_for`); else, for commands with no output file (``evaluate``, ``prior``,
``select --out -``), ``<state dir>/runs/COMMAND-<time>.report.json``. Files written beside an
output or a report are named by :func:`side_file`.

Format (``format_version`` 1)::

    {"format_version": 1, "command": "select", "pucli": "0.1.0", "torch": ..., "torchvision": ...,
     "timm": ..., "python": ..., "platform": ..., "started_at": ISO-8601 UTC, "arguments": {...},
     "seed": int|null, "device": "cpu", "threads": int, "counts": {...}, "results": {...},
     "preprocessing": [{"file": ..., "role": "read"|"written", "architecture": ...,
                        "input_size": [C, H, W], "interpolation": ..., "crop_pct": ...,
                        "crop_mode": ..., "mean": [...], "std": [...],
                        "code": {"arch": ..., "sha256": ..., "kwargs": {...}}}],
     "skipped": {"count": int, "files": [{"path": ..., "reason": ...}]},
     "timings_s": {"stage": seconds, ..., "total": seconds}}

``preprocessing`` lists every model file the run read or wrote and the evaluation transform its
config declares: the one pucli fed it and the one ``timm.data.resolve_model_data_config`` gives.
The run keeps them in its :class:`ModelFileLog` (the report's ``model_files``), which the engine
fills as it reads and writes models (:func:`pucli.checkpoints.load_model`, ``save_model``; the
log travels in the run's :class:`pucli.run_context.RunContext`). Nothing is kept between runs.

:func:`read_report` reads a report back.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from pucli import __version__
from pucli.paths import atomic_write, output_stem, state_dir

__all__ = ["REPORT_FORMAT_VERSION", "ModelFileLog", "RunReport", "read_report", "report_location", "report_path_for",
           "side_file"]

REPORT_FORMAT_VERSION = 1
# How a run shows its results: they change no result, so the report leaves them out.
_OUTPUT_SETTINGS = frozenset({"json", "quiet", "force", "report"})
# Listing every bad file of a huge crawl would make the report huge; the count stays exact.
MAX_SKIPPED_LISTED = 10_000


@dataclass
class ModelFileLog:
    """The model files one run read or wrote, in order: what its report lists under
    ``preprocessing``. ``entries``: one dict each (the format above)."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def record(self, path: str | os.PathLike[str], role: str, architecture: str, data_config: Mapping[str, Any], *,
               code: Mapping[str, Any] | None = None) -> None:
        """Note that the run read (``role`` "read") or wrote ("written") the model file ``path`` of
        ``architecture`` whose config declares the preprocessing ``data_config`` (timm's
        data-config form). ``code``: what builds a model that is not a timm model
        (:func:`pucli.architectures.code_record`), listed with it."""
        entry = {"file": str(path), "role": role, "architecture": architecture,
                 **{k: _jsonable(v) for k, v in data_config.items()}}
        if code is not None:
            entry["code"] = _jsonable(code)
        self.entries.append(entry)


def read_report(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A run report :meth:`RunReport.write` wrote, as the dict of the format above; None when
    ``path`` cannot be read, is not a JSON object, or has a newer ``format_version`` (a report only
    adds to what its readers show: a missing or damaged one is not an error)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8
        return None
    if not isinstance(data, dict):
        return None
    version = data.get("format_version", REPORT_FORMAT_VERSION)
    return data if isinstance(version, int) and version <= REPORT_FORMAT_VERSION else None


def report_path_for(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.report.json``; ``student.safetensors`` -> ``student.report.json``;
    a folder ``expanded/`` -> ``expanded/report.json``."""
    output = Path(output)
    if output.is_dir():
        return output / "report.json"
    return output.with_name(output_stem(output) + ".report.json")


def report_location(command: str, output: str | os.PathLike[str] | None, given: str | os.PathLike[str] | None = None) -> Path:
    """Where ``command``'s run report goes: ``given`` (``--report``); else beside ``output``
    (:func:`report_path_for`); else, with no output file (``output`` None or ``-``),
    ``<state dir>/runs/COMMAND-<local time>.report.json``. Creates the report's folder, so that
    files beside the report (:func:`side_file`) can be written before it."""
    if given is not None:
        path = Path(given)
    elif output is not None and str(output) != "-":
        path = report_path_for(output)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = state_dir() / "runs" / f"{command.replace(' ', '-')}-{stamp}.report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def side_file(anchor: str | os.PathLike[str], suffix: str) -> Path:
    """A file written beside ``anchor`` (an output or a report), named by its stem:
    ``side_file("sel.tsv", ".selector.safetensors")`` -> ``sel.selector.safetensors``;
    ``side_file("run.report.json", ".selector.safetensors")`` -> ``run.selector.safetensors``;
    ``side_file("student.safetensors", ".ckpt.pt")`` -> ``student.ckpt.pt``."""
    anchor = Path(anchor)
    return anchor.with_name(output_stem(anchor).removesuffix(".report") + suffix)


class RunReport:
    """Collects what a run did; :meth:`write` saves it atomically as JSON. ``model_files`` is the
    run's :class:`ModelFileLog`: hand it to the engine (in a :class:`pucli.run_context.RunContext`)."""

    def __init__(self, command: str, arguments: Mapping[str, Any], *, seed: int | None = None) -> None:
        self.command = command
        self.arguments = {k: _jsonable(v) for k, v in arguments.items()}
        self.seed = seed
        self.device: str | None = None
        self.threads: int | None = None
        self.counts: dict[str, int] = {}
        self.results: dict[str, Any] = {}
        self.skipped: list[Any] = []
        self.timings: dict[str, float] = {}
        self.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._start = time.perf_counter()
        self.model_files = ModelFileLog()

    @classmethod
    def from_arguments(cls, command: str, arguments: Mapping[str, Any]) -> RunReport:
        """A report of ``command`` run with ``arguments`` (its parameters by name, as the user
        spelled them: ``{"positive": ..., "all": ..., "seed": 0}``). ``seed`` goes to its own field;
        settings of the output itself (``json``, ``quiet``, ``force``, ``report``) are not recorded."""
        recorded = {k: v for k, v in arguments.items() if k not in _OUTPUT_SETTINGS}
        return cls(command, recorded, seed=recorded.pop("seed", None))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name`` (seconds, accumulated if repeated)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def to_dict(self) -> dict[str, Any]:
        import timm
        import torch
        import torchvision

        listed = [_jsonable(s) for s in self.skipped[:MAX_SKIPPED_LISTED]]
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "command": self.command,
            "pucli": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "started_at": self.started_at,
            "arguments": self.arguments,
            "seed": self.seed,
            "device": self.device,
            "threads": self.threads,
            "counts": self.counts,
            "results": _jsonable(self.results),
            "preprocessing": list(self.model_files.entries),
            "skipped": {"count": len(self.skipped), "files": listed},
            "timings_s": {**{k: round(v, 4) for k, v in self.timings.items()},
                          "total": round(time.perf_counter() - self._start, 4)},
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` atomically and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        return path


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
