"""One versioned tensor cache: what every shortcut pucli keeps on disk is written and read here.

An entry is a safetensors file of named tensors plus JSON metadata, tagged with the kind of entry
(``"descriptors"``, ``"descriptor-part"``, ``"selector-state"``, ``"graph"``) and its format
version. Entries live under :func:`pucli.paths.cache_dir` and are only shortcuts:

- :func:`read_entry` returns None for a missing, damaged, foreign or outdated entry (the caller
  recomputes and overwrites it), never raises;
- :func:`write_entry` writes atomically (a crash never leaves half an entry) and reports a
  read-only cache folder by returning False instead of failing the run.

Entries never hold pickled objects, so reading one cannot run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pucli.paths import replace_atomically

__all__ = ["CacheEntry", "read_entry", "write_entry"]

_KIND_KEY = "pucli.cache"
_VERSION_KEY = "format_version"
_META_KEY = "meta"


@dataclass
class CacheEntry:
    """A cache entry read back: ``tensors`` by name (CPU) and the ``metadata`` written with them."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def read_entry(path: str | os.PathLike[str], *, kind: str, version: int,
               check: Callable[[CacheEntry], bool] | None = None) -> CacheEntry | None:
    """The entry at ``path`` if it exists, is whole, has this ``kind`` and ``version`` and passes
    ``check`` (e.g. the shapes the caller expects); None otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            if header.get(_KIND_KEY) != kind or header.get(_VERSION_KEY) != str(version):
                return None
            entry = CacheEntry({key: handle.get_tensor(key) for key in handle.keys()},
                               json.loads(header.get(_META_KEY, "{}")))
    except (SafetensorError, OSError, ValueError, TypeError, KeyError):
        return None
    if check is not None:
        try:
            if not check(entry):
                return None
        except (KeyError, ValueError, TypeError, IndexError):
            return None
    return entry


def write_entry(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *, kind: str, version: int,
                metadata: Mapping[str, Any] | None = None) -> bool:
    """Write an entry atomically (folders made as needed). Returns False, writing nothing, when the
    cache folder cannot be written: a read-only cache only costs the next run its shortcut."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {_KIND_KEY: kind, _VERSION_KEY: str(version), _META_KEY: json.dumps(dict(metadata or {}), default=str)}
    contiguous = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: save_file(contiguous, str(tmp), metadata=header))
    except OSError:
        return False
    return True
