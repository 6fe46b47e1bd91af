"""Materialise the ``mnist-pu`` benchmark scenario (docs/BENCHMARKS.md) as PNG folders.

Reads the gzip IDX files of MNIST, Fashion-MNIST and KMNIST (test) from the shared data folder
(``--data-dir``, else ``$PUCLI_SHARED_DATA``, else ``<repo>/../shared/data``), checks each against
the folder's ``SHA256SUMS`` and IDX header, and writes 8-bit grayscale 28x28 PNGs under the output
root (``--out``, default ``<pucli cache>/benchmarks/mnist-pu``; ``$PUCLI_CACHE_DIR`` moves the
cache). Indices in file names are positions in the IDX files.

Layout of the output root::

    train/<digit>/mnist-train-<idx:05d>.png          30,000  MNIST train 0..29,999: the teacher's
                                                             original training set
    positive/nl<n>-seed<s>/<digit>/mnist-train-<idx:05d>.png
                                                     10 x n  the user's labeled subset L^t, n in
                                                             {1, 2, 5, 10, 20}, s in {0, 1, 2};
                                                             hard links to train/ files; nested per
                                                             seed (nl1 in nl2 in ... in nl20)
    unlabeled/mnist/mnist-train-<idx:05d>.png        30,000  MNIST train 30,000..59,999 (positives)
    unlabeled/fashion/fashion-train-<idx:05d>.png    60,000  Fashion-MNIST train (negatives)
    unlabeled/kmnist/kmnist-test-<idx:05d>.png       10,000  KMNIST test (negatives)
    unlabeled.txt                                   100,000  absolute paths of unlabeled/ in a seeded
                                                             random order: the pool pucli reads
    ground_truth.tsv                                100,000  path, positive (1/0), source
                                                             (mnist|fashion|kmnist), label; same
                                                             order as unlabeled.txt; never read by
                                                             pucli
    test/<digit>/mnist-t10k-<idx:05d>.png            10,000  MNIST t10k
    manifest.json                                            counts, seeds, input sha256s, the true
                                                             class prior 0.30, format version

The folder names under ``unlabeled/`` reveal each image's source; that is fine for a benchmark,
and pucli is pointed at ``unlabeled.txt``. Subset draws: for each seed ``s`` one
``numpy.random.default_rng(s)`` draws one permutation per class (digits 0..9 in order) of that
class's indices in the original training set; ``nl<n>-seed<s>`` takes the first ``n`` of each.

Everything is built in a temporary sibling folder and renamed into place at the end; the manifest
is written last (atomically), so its presence means the materialisation finished. A re-run whose
manifest matches (same inputs, seeds, output root and parts) does nothing unless ``--force``.

Usage::

    python benchmarks/mnist_pu_data.py [--data-dir DIR] [--out DIR] [--only train,positive,...]
                                       [--force] [--workers N]

Progress goes to stderr; the output root is printed on stdout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from pucli.errors import DataError, PucliError, UsageError
from pucli.paths import atomic_write, cache_dir

__all__ = [
    "FORMAT_VERSION",
    "PARTS",
    "default_data_dir",
    "default_out_dir",
    "load_split",
    "materialise",
    "positive_permutations",
    "read_idx",
    "read_sha256sums",
    "verify_inputs",
]

FORMAT_VERSION = 1
SCENARIO = "mnist-pu"
PARTS = ("train", "positive", "unlabeled", "test")
N_LABELED_PER_CLASS = (1, 2, 5, 10, 20)
SUBSET_SEEDS = (0, 1, 2)
UNLABELED_ORDER_SEED = 0
TRAIN_RANGE = (0, 30_000)  # MNIST train positions of the teacher's original training set
POOL_POSITIVE_RANGE = (30_000, 60_000)  # MNIST train positions that go into the unlabeled pool
IMAGE_SIDE = 28
IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim
PNG_TASK_SIZE = 2_000  # images per pool task: large enough to amortise pickling

# (dataset, split) -> (images file, labels file), relative to the data folder.
INPUT_FILES: dict[tuple[str, str], tuple[str, str]] = {
    ("mnist", "train"): ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    ("mnist", "t10k"): ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
    ("fashion", "train"): (
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "fashion-mnist/train-labels-idx1-ubyte.gz",
    ),
    ("kmnist", "test"): ("kmnist/t10k-images-idx3-ubyte.gz", "kmnist/t10k-labels-idx1-ubyte.gz"),
}

# Paths under the output root that each part owns.
PART_ENTRIES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "positive": ("positive",),
    "unlabeled": ("unlabeled", "unlabeled.txt", "ground_truth.tsv"),
    "test": ("test",),
}

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_data_dir() -> Path:
    """The shared data folder: ``$PUCLI_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    override = os.environ.get("PUCLI_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_out_dir() -> Path:
    """The scenario's root in pucli's cache: ``<cache>/benchmarks/mnist-pu``."""
    return cache_dir() / "benchmarks" / SCENARIO


# --------------------------------------------------------------------------------------- inputs


def read_sha256sums(data_dir: Path) -> dict[str, str]:
    """Parse ``data_dir/SHA256SUMS`` (``sha256sum`` format) into {relative path: hex digest}.

    Raises:
        DataError: the file is missing or a line is malformed.
    """
    sums_path = data_dir / "SHA256SUMS"
    try:
        text = sums_path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read {sums_path}: {error.strerror}; is --data-dir the shared data folder?") from error
    sums: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise DataError(f"{sums_path}:{line_number}: not a sha256sum line: {line!r}")
        sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_inputs(data_dir: Path, relpaths: Iterable[str]) -> dict[str, str]:
    """Check each file's sha256 against ``SHA256SUMS``; return {relative path: sha256}.

    Raises:
        DataError: a file is missing, not listed in SHA256SUMS, or its checksum differs.
    """
    expected = read_sha256sums(data_dir)
    verified: dict[str, str] = {}
    for relpath in relpaths:
        path = data_dir / relpath
        if relpath not in expected:
            raise DataError(f"{relpath} is not listed in {data_dir / 'SHA256SUMS'}")
        if not path.is_file():
            raise DataError(f"missing input file {path}")
        actual = _sha256_file(path)
        if actual != expected[relpath]:
            raise DataError(f"{path}: sha256 {actual} differs from SHA256SUMS ({expected[relpath]}); re-copy the file")
        verified[relpath] = actual
    return verified


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzip IDX file of uint8 data whose header starts with ``magic``.

    Returns (N, 28, 28) uint8 for images (magic 0x803), (N,) uint8 for labels (magic 0x801).

    Raises:
        DataError: wrong magic, shape or length.
    """
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    n_dims = magic & 0xFF
    header_size = 4 + 4 * n_dims
    if len(raw) < header_size or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{path}: not an IDX file with magic {magic:#010x}")
    dims = struct.unpack(f">{n_dims}I", raw[4:header_size])
    if n_dims == 3 and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    expected_length = header_size + int(np.prod(dims))
    if len(raw) != expected_length:
        raise DataError(f"{path}: {len(raw)} bytes after decompression, header says {expected_length}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def load_split(data_dir: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one split, e.g. ``("mnist", "train")``.

    Does not verify checksums (see :func:`verify_inputs`).

    Raises:
        DataError: malformed files, mismatched counts, or labels outside 0..9.
    """
    images_rel, labels_rel = INPUT_FILES[(dataset, split)]
    images = read_idx(data_dir / images_rel, IDX_IMAGES_MAGIC)
    labels = read_idx(data_dir / labels_rel, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{dataset} {split}: {len(images)} images but {len(labels)} labels")
    if labels.max(initial=0) > 9:
        raise DataError(f"{data_dir / labels_rel}: labels outside 0..9")
    return images, labels


# ------------------------------------------------------------------------------------ the plan


def positive_permutations(train_labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """One permutation per class (0..9 in order) of the class's indices in ``train_labels``.

    ``rng = numpy.random.default_rng(seed)``; the first ``n`` entries of each permutation form the
    ``nl<n>-seed<seed>`` subset, so subsets of one seed are nested. Returns {digit: (M,) int64}.
    """
    rng = np.random.default_rng(seed)
    return {digit: rng.permutation(np.flatnonzero(train_labels == digit)) for digit in range(10)}


def _png_tasks(rel_paths: Sequence[str], images: np.ndarray, root: Path) -> list[tuple[list[str], np.ndarray]]:
    """Split (paths, images) into Pool tasks of ``PNG_TASK_SIZE`` images each."""
    return [
        ([str(root / rel) for rel in rel_paths[start : start + PNG_TASK_SIZE]], images[start : start + PNG_TASK_SIZE])
        for start in range(0, len(rel_paths), PNG_TASK_SIZE)
    ]


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle (it terminates the pool and cleans up)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_pngs(task: tuple[list[str], np.ndarray]) -> int:
    """Pool worker: save each (28, 28) uint8 image as an 8-bit grayscale PNG. Returns the count."""
    from PIL import Image

    paths, images = task
    for path, pixels in zip(paths, images):
        Image.fromarray(pixels, mode="L").save(path, format="PNG")
    return len(paths)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# -------------------------------------------------------------------------------- materialise


def _remove_abandoned_staging(out: Path) -> None:
    """Delete staging folders of earlier runs that were killed (their process is gone)."""
    for staging in out.parent.glob(f".{out.name}.partial-*"):
        try:
            os.kill(int(staging.name.rpartition("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(staging, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scenario_settings(out: Path, inputs: dict[str, str]) -> dict:
    """The manifest fields that must match for an existing materialisation to be reused."""
    return {
        "format_version": FORMAT_VERSION,
        "scenario": SCENARIO,
        "root": str(out),
        "inputs_sha256": inputs,
        "n_labeled_per_class": list(N_LABELED_PER_CLASS),
        "subset_seeds": list(SUBSET_SEEDS),
        "unlabeled_order_seed": UNLABELED_ORDER_SEED,
    }


def materialise(
    data_dir: Path,
    out: Path,
    parts: Sequence[str] = PARTS,
    force: bool = False,
    workers: int | None = None,
    progress: Progress = _stderr,
) -> dict | None:
    """Write the requested parts of the scenario under ``out``; return the new manifest.

    Returns None (and changes nothing) when ``out/manifest.json`` already matches and covers
    ``parts``, unless ``force``. ``positive`` is built from ``train`` files, so it pulls ``train``
    in when no finished ``train/`` exists. ``workers`` defaults to the CPUs this process may use.

    Raises:
        DataError: an input file is missing, corrupt or differs from SHA256SUMS.
        UsageError: an unknown part name.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UsageError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    data_dir = Path(os.path.abspath(data_dir))
    input_relpaths = [rel for pair in INPUT_FILES.values() for rel in pair]
    progress(f"verifying {len(input_relpaths)} input files in {data_dir}")
    inputs = verify_inputs(data_dir, input_relpaths)
    settings = _scenario_settings(out, inputs)

    old_manifest = _read_manifest(out)
    compatible = old_manifest is not None and all(old_manifest.get(k) == v for k, v in settings.items())
    finished_parts = set(old_manifest.get("parts", [])) if compatible else set()
    requested = set(parts)
    if requested <= finished_parts and not force:
        progress(f"already materialised: {out} (use --force to rebuild)")
        return None
    if "positive" in requested and "train" not in finished_parts:
        requested.add("train")

    mnist_train_images, mnist_train_labels = load_split(data_dir, "mnist", "train")
    train_lo, train_hi = TRAIN_RANGE
    train_labels = mnist_train_labels[train_lo:train_hi]

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    manifest: dict = {**settings, "true_class_prior": None, "counts": {}, "parts": []}
    try:
        tasks: list[tuple[list[str], np.ndarray]] = []
        new_dirs: set[Path] = set()

        def plan(rel_paths: list[str], images: np.ndarray) -> None:
            new_dirs.update((staging / rel).parent for rel in rel_paths)
            tasks.extend(_png_tasks(rel_paths, images, staging))

        if "train" in requested:
            indices = range(train_lo, train_hi)
            plan([f"train/{mnist_train_labels[i]}/mnist-train-{i:05d}.png" for i in indices],
                 mnist_train_images[train_lo:train_hi])
            manifest["counts"]["train"] = train_hi - train_lo
            manifest["counts"]["train_per_class"] = np.bincount(train_labels, minlength=10).tolist()

        if "test" in requested:
            test_images, test_labels = load_split(data_dir, "mnist", "t10k")
            plan([f"test/{label}/mnist-t10k-{i:05d}.png" for i, label in enumerate(test_labels)], test_images)
            manifest["counts"]["test"] = len(test_labels)
            manifest["counts"]["test_per_class"] = np.bincount(test_labels, minlength=10).tolist()

        pool_rows: list[tuple[str, int, str, int]] = []  # (relative path, positive, source, label)
        if "unlabeled" in requested:
            pool_lo, pool_hi = POOL_POSITIVE_RANGE
            fashion_images, fashion_labels = load_split(data_dir, "fashion", "train")
            kmnist_images, kmnist_labels = load_split(data_dir, "kmnist", "test")
            for source, file_stem, first, images, labels, positive in (
                ("mnist", "mnist-train", pool_lo, mnist_train_images[pool_lo:pool_hi],
                 mnist_train_labels[pool_lo:pool_hi], 1),
                ("fashion", "fashion-train", 0, fashion_images, fashion_labels, 0),
                ("kmnist", "kmnist-test", 0, kmnist_images, kmnist_labels, 0),
            ):
                rel_paths = [f"unlabeled/{source}/{file_stem}-{first + k:05d}.png" for k in range(len(labels))]
                plan(rel_paths, images)
                pool_rows.extend((rel, positive, source, int(label)) for rel, label in zip(rel_paths, labels))
            n_positive = sum(row[1] for row in pool_rows)
            manifest["true_class_prior"] = n_positive / len(pool_rows)
            manifest["counts"]["unlabeled"] = len(pool_rows)
            manifest["counts"]["unlabeled_by_source"] = {
                "mnist": pool_hi - pool_lo, "fashion": len(fashion_labels), "kmnist": len(kmnist_labels),
            }
            manifest["counts"]["unlabeled_positive"] = n_positive

        for folder in sorted(new_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        total = sum(len(paths) for paths, _ in tasks)
        workers = workers or len(os.sched_getaffinity(0))
        progress(f"writing {total:,} PNGs with {workers} worker(s) into {staging}")
        written = 0
        next_report = 0.0
        with Pool(workers, initializer=_ignore_sigint) as pool:
            for count in pool.imap_unordered(_write_pngs, tasks):
                written += count
                fraction = written / total
                if fraction >= next_report:
                    progress(f"  {written:>7,} / {total:,} PNGs ({time.perf_counter() - started:.1f} s)")
                    next_report = fraction + 0.1

        if "unlabeled" in requested:
            order = np.random.default_rng(UNLABELED_ORDER_SEED).permutation(len(pool_rows))
            with open(staging / "unlabeled.txt", "w", encoding="utf-8") as pool_list, \
                    open(staging / "ground_truth.tsv", "w", encoding="utf-8") as truth:
                truth.write("path\tpositive\tsource\tlabel\n")
                for position in order:
                    rel, positive, source, label = pool_rows[position]
                    pool_list.write(f"{out / rel}\n")
                    truth.write(f"{out / rel}\t{positive}\t{source}\t{label}\n")

        if "positive" in requested:
            # Link to the train/ files of this run if it built them, else to the finished ones.
            train_root = staging if "train" in requested else out
            subsets: dict[str, dict[str, list[int]]] = {}
            n_max = max(N_LABELED_PER_CLASS)
            for seed in SUBSET_SEEDS:
                permutations = positive_permutations(train_labels, seed)
                subsets[f"seed{seed}"] = {
                    str(digit): (perm[:n_max] + train_lo).tolist() for digit, perm in permutations.items()
                }
                for n in N_LABELED_PER_CLASS:
                    for digit, perm in permutations.items():
                        class_dir = staging / "positive" / f"nl{n}-seed{seed}" / str(digit)
                        class_dir.mkdir(parents=True, exist_ok=True)
                        for i in perm[:n] + train_lo:
                            name = f"mnist-train-{i:05d}.png"
                            _link_or_copy(train_root / "train" / str(digit) / name, class_dir / name)
            manifest["counts"]["positive"] = {
                f"nl{n}-seed{s}": 10 * n for s in SUBSET_SEEDS for n in N_LABELED_PER_CLASS
            }
            manifest["positive_subsets"] = {
                "rule": "numpy default_rng(seed).permutation of each class's train indices, digits 0..9 "
                        "in order; nl<n> takes the first n (MNIST train positions)",
                "first_20_per_class": subsets,
            }

        # Swap the new parts in. The old manifest goes first so a crash mid-swap never leaves a
        # tree that claims to be complete.
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
        replaced = staging / ".replaced"
        replaced.mkdir()
        for part in sorted(requested):
            for entry in PART_ENTRIES[part]:
                if (out / entry).exists():
                    os.replace(out / entry, replaced / entry)
                os.replace(staging / entry, out / entry)

        # Carry over what the previous (compatible) manifest said about parts not rebuilt now.
        if compatible:
            for part in finished_parts - requested:
                for key, value in old_manifest.get("counts", {}).items():
                    if key.startswith(part):
                        manifest["counts"].setdefault(key, value)
                if part == "positive":
                    manifest["positive_subsets"] = old_manifest.get("positive_subsets")
                if part == "unlabeled":
                    manifest["true_class_prior"] = old_manifest.get("true_class_prior")
        manifest["parts"] = sorted(finished_parts | requested)
        manifest["materialise_seconds"] = round(time.perf_counter() - started, 2)
        manifest["created_unix"] = int(time.time())
        with atomic_write(out / "manifest.json") as handle:
            json.dump(manifest, handle, indent=2)
            handle.write("\n")
        os.chmod(out / "manifest.json", 0o644)  # atomic_write's temporary file is private (0600)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


LAYOUT = """\
{root}/
  train/<digit>/mnist-train-<idx>.png                 MNIST train 0..29,999 (teacher's training set)
  positive/nl<n>-seed<s>/<digit>/mnist-train-<idx>.png  L^t, n in {{1,2,5,10,20}}, s in {{0,1,2}} (hard links)
  unlabeled/{{mnist,fashion,kmnist}}/*.png              U: 30,000 + 60,000 + 10,000 images
  unlabeled.txt                                       U as absolute paths, seeded random order
  ground_truth.tsv                                    path, positive, source, label (not for pucli)
  test/<digit>/mnist-t10k-<idx>.png                   MNIST t10k (10,000)
  manifest.json                                       counts, seeds, input sha256s, class prior"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Materialise the mnist-pu benchmark scenario as PNG folders in pucli's cache.",
    )
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (default: $PUCLI_SHARED_DATA or <repo>/../shared/data)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output root (default: <pucli cache>/benchmarks/mnist-pu)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to build (default: all of {','.join(PARTS)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    parser.add_argument("--workers", type=int, default=None, help="PNG writer processes (default: all CPUs)")
    args = parser.parse_args(argv)

    out = Path(os.path.abspath(args.out or default_out_dir()))
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    try:
        manifest = materialise(args.data_dir or default_data_dir(), out, parts, force=args.force,
                               workers=args.workers)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted; {out} is as it was before this run", file=sys.stderr)
        return 130
    if manifest is not None:
        _stderr(f"materialised {', '.join(manifest['parts'])} in {manifest['materialise_seconds']:.1f} s")
        _stderr(LAYOUT.format(root=out))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
