"""Image files: the extensions pucli reads, folder scans, path lists, and skipped-file records.

A leaf module: every other data module (sources, shards, decoding) imports it, it imports none of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS as _TV_EXTENSIONS

from pucli.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "SkippedFile", "is_image_file", "read_path_list", "scan_images"]

# torchvision's ImageFolder list, plus GIF which PIL decodes.


IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted({*_TV_EXTENSIONS, ".gif"}))


def is_image_file(name: str) -> bool:
    """True when ``name`` ends in a known image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class SkippedFile:
    """An input image that could not be used, and why (one line)."""

    path: str
    reason: str


def scan_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, following symlinks), sorted by path."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.extend(Path(folder, name) for name in sorted(files) if is_image_file(name) and not name.startswith("."))
    return found


def read_path_list(lines: Iterable[str], base: Path, *, name: str = "the path list",
                   parameter: str | None = None) -> list[Path]:
    """Paths from a list, one per line; blank lines and ``#`` comments skipped; relative paths are
    taken from ``base`` (the list file's folder, or the working directory for stdin); ``~`` and
    ``~user`` are expanded. ``name`` (e.g. ``unlabeled list.txt``) is quoted in errors, which carry
    ``parameter`` (the one that named the list, with which ``name`` opens).

    Raises:
        DataError: a line holds a NUL byte (not a text list), or a ``~user`` that does not exist.
    """
    paths = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "\x00" in entry:
            raise DataError(f"{name} line {number} holds a NUL byte: give a text file with one image path per line",
                            parameter=parameter)
        try:
            path = Path(entry).expanduser()
        except RuntimeError:  # ~user of no such user
            raise DataError(f"{name} line {number}: cannot expand {entry.split('/')[0][:40]!r}; write the path out",
                            parameter=parameter) from None
        paths.append(path if path.is_absolute() else base / path)
    return paths
