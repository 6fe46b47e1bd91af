"""Shared fixtures: tiny PNG folders and tiny models written by the tests themselves."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pucli  # noqa: F401  (registers lenet5 / lenet5_half in timm)


def write_png(path: Path, *, size: tuple[int, int] = (28, 28), mode: str = "L", seed: int = 0, value: int | None = None) -> Path:
    """A small random (or constant) image file; the format follows the suffix."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    pixels = np.full(shape, value, dtype=np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def write_idx_data(root: Path, files: Iterable[tuple[str, str, int]], *, seed: int = 0) -> Path:
    """A tiny stand-in for ``../shared/data``: for each (images, labels, count) relative path pair,
    gzip IDX files of ``count`` random 28 x 28 uint8 images and labels 0-9, plus ``SHA256SUMS``."""
    rng = np.random.default_rng(seed)
    sums = []
    for images_rel, labels_rel, count in files:
        for rel, array in ((images_rel, rng.integers(0, 256, (count, 28, 28))), (labels_rel, rng.integers(0, 10, count))):
            magic = 0x803 if array.ndim == 3 else 0x801
            header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))
            sums.append(f"{hashlib.sha256((root / rel).read_bytes()).hexdigest()}  {rel}")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


@pytest.fixture
def make_class_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_class_folder("pos", classes=["0", "1"], per_class=3)`` -> folder of class subfolders."""

    def make(name: str, classes: Sequence[str] = ("0", "1", "2"), per_class: int = 3, **image_kwargs: object) -> Path:
        root = tmp_path / name
        for k, cls in enumerate(classes):
            for i in range(per_class):
                write_png(root / cls / f"img{i}.png", seed=100 * k + i, **image_kwargs)  # type: ignore[arg-type]
        return root

    return make


@pytest.fixture
def make_pool(tmp_path: Path) -> Callable[..., Path]:
    """``make_pool("pool", count=8)`` -> folder of unlabeled PNGs in nested subfolders."""

    def make(name: str = "pool", count: int = 8, **image_kwargs: object) -> Path:
        root = tmp_path / name
        for i in range(count):
            write_png(root / f"part{i % 2}" / f"u{i:03d}.png", seed=1000 + i, **image_kwargs)  # type: ignore[arg-type]
        return root

    return make


@pytest.fixture
def tiny_teacher(tmp_path: Path) -> Path:
    """A randomly initialised LeNet-5 with 3 classes, saved as safetensors + sidecar config."""
    import timm
    import torch

    from pucli.checkpoints import save_model

    torch.manual_seed(0)
    model = timm.create_model("lenet5", num_classes=3, in_chans=1)
    return save_model(model, tmp_path / "teacher.safetensors", label_names=["0", "1", "2"])


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and the CI machine is shared: no thread contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep reports and caches of unit tests out of the user's folders."""
    monkeypatch.setenv("PUCLI_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


# The real cache, read before any test redirects PUCLI_CACHE_DIR: slow tests use the mnist-pu data there.
from pucli.paths import cache_dir as _cache_dir  # noqa: E402

REAL_CACHE_DIR = _cache_dir()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _run_benchmark_script(script: str, *args: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PUCLI_CACHE_DIR": str(REAL_CACHE_DIR)}
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def mnist_pu() -> Path:
    """The materialised mnist-pu scenario (docs/BENCHMARKS.md), made on first use (~20-45 s)."""
    if not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("../shared/data is not present")
    root = REAL_CACHE_DIR / "benchmarks" / "mnist-pu"
    if not (root / "manifest.json").is_file():
        _run_benchmark_script("mnist_pu_data.py", "--out", str(root))
    return root


@pytest.fixture(scope="session")
def mnist_teacher(mnist_pu: Path) -> Path:
    """The LeNet-5 teacher trained on mnist-pu's 30,000-image training set, trained on first use (~1-2 min)."""
    path = mnist_pu / "teacher" / "lenet5.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run_benchmark_script("train_teacher.py", "--out", str(path))
    return path
