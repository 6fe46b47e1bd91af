"""Where pucli keeps caches and run state (platformdirs), and atomic file writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import platformdirs

from pucli.errors import OptionError

APP_NAME = "pucli"


def cache_dir() -> Path:
    """pucli's cache folder: ``$PUCLI_CACHE_DIR`` if set, else the platform's user cache dir.

    Holds descriptor caches and the benchmark data; safe to delete. Not created here.
    """
    override = os.environ.get("PUCLI_CACHE_DIR")
    return Path(override) if override else platformdirs.user_cache_path(APP_NAME)


def state_dir() -> Path:
    """pucli's state folder (run reports of commands without an output file):
    ``$PUCLI_STATE_DIR`` if set, else the platform's user state dir. Not created here."""
    override = os.environ.get("PUCLI_STATE_DIR")
    return Path(override) if override else platformdirs.user_state_path(APP_NAME)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8",
                 errors: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` when the block succeeds.

    A crash, Ctrl-C or SIGTERM inside the block leaves ``path`` as it was (never half written).
    ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes); ``errors`` as for :func:`open` (text only).

    Raises:
        OSError: the folder is missing or not writable (callers turn it into a UsageError).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, encoding=encoding if text else None, errors=errors if text else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        make_world_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def output_stem(path: str | os.PathLike[str]) -> str:
    """A file's name without its format suffix (``.pth.tar`` counts as one): ``run.v2.tsv`` ->
    ``run.v2``, ``model_best.pth.tar`` -> ``model_best``. Names files written beside it."""
    name = Path(path).name
    return name[: -len(".pth.tar")] if name.endswith(".pth.tar") else Path(name).stem


def make_world_readable(path: str | os.PathLike[str]) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode a plain ``open`` would: 0666 less umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def temporary_path_beside(path: str | os.PathLike[str]) -> Path:
    """A fresh, unused file name in ``path``'s folder, for writers that want a path, not a handle
    (rename it over ``path`` with ``os.replace`` once written). The file has the mode a plain
    ``open`` would give it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    make_world_readable(tmp)
    return Path(tmp)


def replace_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` all at once: ``write(tmp)`` fills a fresh temporary file beside ``path``,
    which then gets the mode a plain ``open`` would give it (0666 less the umask: writers such as
    safetensors' ``save_file`` replace the file and lose any mode set before) and is renamed over
    ``path``. On any error or interrupt the temporary file is removed and ``path`` is left as it
    was. Returns ``path``.

    Raises:
        OSError: the folder is missing or not writable, or ``write`` failed on the disk.
    """
    path = Path(path)
    tmp = temporary_path_beside(path)
    try:
        write(tmp)
        make_world_readable(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def check_weights_file(path: str | os.PathLike[str], *, parameter: str = "out") -> Path:
    """Where model weights are to be written (``parameter`` named it): a ``*.safetensors`` name in a
    folder that exists and may be written. Checked before any work, and again by every writer.
    Returns ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OptionError: another suffix, or a missing or read-only folder (``parameter`` and ``path``
            named, as fields and in the message).
    """
    path = Path(path)
    folder = path.parent if path.parent != Path("") else Path(".")
    if not path.name.endswith(".safetensors"):
        raise OptionError(parameter, path, "weights are written as safetensors, name the file *.safetensors", path=path)
    if not folder.is_dir():
        raise OptionError(parameter, path, f"folder {folder} does not exist; create it first", path=path)
    if not os.access(folder, os.W_OK):
        raise OptionError(parameter, path, f"folder {folder} is not writable; choose another `{parameter}`", path=path)
    return path
