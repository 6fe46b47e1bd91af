"""The run report: one JSON file per command run, written beside its output.

Format (``format_version`` 1)::

    {"format_version": 1, "command": "select", "pucli": "0.1.0", "torch": ..., "torchvision": ...,
     "timm": ..., "python": ..., "platform": ..., "started_at": ISO-8601 UTC, "arguments": {...},
     "seed": int|null, "device": "cpu", "threads": int, "counts": {...}, "results": {...},
     "skipped": {"count": int, "files": [{"path": ..., "reason": ...}]},
     "timings_s": {"stage": seconds, ..., "total": seconds}}
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
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from pucli import __version__
from pucli.paths import atomic_write, output_stem

__all__ = ["RunReport", "report_path_for", "REPORT_FORMAT_VERSION"]

REPORT_FORMAT_VERSION = 1
# Listing every bad file of a huge crawl would make the report huge; the count stays exact.
MAX_SKIPPED_LISTED = 10_000


def report_path_for(output: str | os.PathLike[str]) -> Path:
    """``out.tsv`` -> ``out.report.json``; ``student.safetensors`` -> ``student.report.json``;
    a folder ``expanded/`` -> ``expanded/report.json``."""
    output = Path(output)
    if output.is_dir():
        return output / "report.json"
    return output.with_name(output_stem(output) + ".report.json")


class RunReport:
    """Collects what a run did; :meth:`write` saves it atomically as JSON."""

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
