"""Materialise the ``webcrawl-pu`` scenario (issue 16): a web-crawl-like pool with a low class prior.

A real crawl holds few images of the teacher's task (1-5 %) and many near duplicates. This script
builds one root per class prior ``pi`` in the *same layout as mnist-pu* (``benchmarks/mnist_pu_data.py``),
so ``benchmarks/mnist_pu.py --root <root>`` runs the study on it::

    <out>/p<pi>/                                      (default <out>: <pucli cache>/benchmarks/webcrawl-pu)
      train/     -> <mnist-pu root>/train             symlink: MNIST train 0..29,999 (teacher's training set)
      positive/  -> <mnist-pu root>/positive          symlink: L^t, nl<n>-seed<s> (the same subsets as mnist-pu)
      test/      -> <mnist-pu root>/test              symlink: MNIST t10k
      unlabeled/mnist/mnist-train-<idx:05d>.png       round(pi x size) positives: a seeded random subset
                                                      of MNIST train 30,000..59,999 (never seen by the teacher)
      unlabeled/fashion/fashion-train-<idx:05d>.png   negatives used as they are: Fashion-MNIST train
      unlabeled/fashion/fashion-t10k-<idx:05d>.png    and t10k (70,000), KMNIST t10k (10,000); all 80,000
      unlabeled/kmnist/kmnist-test-<idx:05d>.png      when the pool needs that many, else a seeded subset
      unlabeled/fashion-aug/fashion-<split>-<idx:05d>-aug<c>.png   the top-up: seeded random-affine copies
      unlabeled/kmnist-aug/kmnist-test-<idx:05d>-aug<c>.png        (rotation, scale, shift) of negatives,
                                                      labelled as such (source ``fashion-aug`` / ``kmnist-aug``)
      unlabeled.txt                                   the pool (absolute paths, seeded random order)
      ground_truth.tsv                                path, positive (1/0), source, label (never read by pucli)
      manifest.json                                   counts, seeds, input sha256s, the true class prior

Draws (every one seeded, so the roots of different priors are nested):

* positives: the first ``round(pi x size)`` of ``default_rng(POSITIVE_SEED).permutation`` of MNIST train
  positions 30,000..59,999;
* negatives used as-is: all distinct negatives (Fashion train, Fashion t10k, KMNIST t10k, in that order)
  when the pool needs at least as many; else the first ``n`` of ``default_rng(NEGATIVE_SEED).permutation``;
* augmented copies: copy ``j`` (0, 1, ...) is of negative ``order[j mod 80,000]``, ``order`` =
  ``default_rng(AUGMENT_SEED).permutation(80,000)``, copy number ``c = j // 80,000``; its affine is drawn
  by ``default_rng([AUGMENT_SEED, negative, c])``: rotation U(-12, 12) degrees, scale U(0.9, 1.1), shift
  U(-2, 2) px on each axis, bilinear, zero fill (the background of both datasets);
* pool order: ``default_rng(UNLABELED_ORDER_SEED).permutation``.

Files: an image used as it is is a hard link to the mnist-pu root's PNG of the same image when that
root has it (``--ref-root``, default ``/root/.cache/pucli-ref-data`` if present, else mnist-pu's default
root), else it is written once into ``<out>/store/``; augmented copies and Fashion t10k are written once
into ``<out>/store/`` and hard-linked into every root. Every store file is written under a temporary
name and renamed. Each root's ``unlabeled/`` is built in a staging folder and renamed into place; the
manifest is written last (atomically), so its presence means the root is complete; a rerun whose
manifest matches does nothing unless ``--force``.

Usage::

    python benchmarks/webcrawl_pu_data.py                          # priors 0.02 0.05 0.10 0.20, 100,000 images
    python benchmarks/webcrawl_pu_data.py --prior 0.02 --size 100000 [--out DIR] [--ref-root DIR] [--force]

The roots are printed on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from mnist_pu_data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    POOL_POSITIVE_RANGE,
    _link_or_copy,
    _remove_abandoned_staging,
    default_data_dir,
    load_split,
    read_idx,
    verify_inputs,
)
from mnist_pu_data import default_out_dir as mnist_pu_default_root

from pucli.errors import DataError, PucliError, UsageError
from pucli.paths import atomic_write, cache_dir

__all__ = [
    "FORMAT_VERSION",
    "PRIORS",
    "SCENARIO",
    "augment",
    "augment_params",
    "default_out_dir",
    "default_ref_root",
    "materialise",
    "plan_pool",
]

FORMAT_VERSION = 1
SCENARIO = "webcrawl-pu"
PRIORS = (0.02, 0.05, 0.10, 0.20)
POOL_SIZE = 100_000
POSITIVE_SEED, NEGATIVE_SEED, AUGMENT_SEED, UNLABELED_ORDER_SEED = 16, 17, 18, 0
ROTATION_DEG, SCALE_RANGE, SHIFT_PX = 12.0, (0.9, 1.1), 2.0
LINKED_PARTS = ("train", "positive", "test")
REF_ROOT = Path("/root/.cache/pucli-ref-data")

# (array name, IDX files relative to the data folder, file stem, source folder / ground-truth source)
INPUTS: dict[str, tuple[str, str]] = {
    "mnist-train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "fashion-train": ("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz"),
    "fashion-t10k": ("fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    "kmnist-test": ("kmnist/t10k-images-idx3-ubyte.gz", "kmnist/t10k-labels-idx1-ubyte.gz"),
}
NEGATIVE_ARRAYS = ("fashion-train", "fashion-t10k", "kmnist-test")
SOURCE_OF = {"mnist-train": "mnist", "fashion-train": "fashion", "fashion-t10k": "fashion", "kmnist-test": "kmnist"}

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_out_dir() -> Path:
    """``<pucli cache>/benchmarks/webcrawl-pu``: one ``p<prior>`` root per class prior below it."""
    return cache_dir() / "benchmarks" / SCENARIO


def default_ref_root() -> Path:
    """The mnist-pu root whose train/, positive/, test/ (and unlabeled PNGs) are reused."""
    return REF_ROOT if (REF_ROOT / "manifest.json").is_file() else mnist_pu_default_root()


def root_name(prior: float) -> str:
    return f"p{prior:.2f}" if round(prior, 2) == prior else f"p{prior:g}"


# ------------------------------------------------------------------------------------------- plan


def load_arrays(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Images and labels of the four IDX pairs (not checksum-verified here; see :func:`verify_inputs`)."""
    images, labels = {}, {}
    for name, (images_rel, labels_rel) in INPUTS.items():
        if name == "fashion-t10k":  # not one of mnist_pu_data's splits
            x = read_idx(data_dir / images_rel, IDX_IMAGES_MAGIC)
            y = read_idx(data_dir / labels_rel, IDX_LABELS_MAGIC)
            if len(x) != len(y):
                raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
        else:
            dataset, split = {"mnist-train": ("mnist", "train"), "fashion-train": ("fashion", "train"),
                              "kmnist-test": ("kmnist", "test")}[name]
            x, y = load_split(data_dir, dataset, split)
        images[name], labels[name] = x, y
    return images, labels


def augment_params(negative: int, copy: int) -> dict[str, float]:
    """The affine of augmented copy ``copy`` of negative number ``negative`` (its place in the 80,000)."""
    rng = np.random.default_rng([AUGMENT_SEED, negative, copy])
    return {"rotation_deg": float(rng.uniform(-ROTATION_DEG, ROTATION_DEG)), "scale": float(rng.uniform(*SCALE_RANGE)),
            "shift_x": float(rng.uniform(-SHIFT_PX, SHIFT_PX)), "shift_y": float(rng.uniform(-SHIFT_PX, SHIFT_PX))}


def augment(pixels: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """(28, 28) uint8 -> the same image rotated, scaled and shifted about its centre (bilinear, zero fill)."""
    from PIL import Image

    side = pixels.shape[0]
    centre = (side - 1) / 2.0
    theta = math.radians(params["rotation_deg"])
    s = params["scale"]
    # Output pixel (x, y) samples input at A^-1 ((x, y) - c - t) + c, A = s R(theta).
    cos, sin = math.cos(theta) / s, math.sin(theta) / s
    ox, oy = centre + params["shift_x"], centre + params["shift_y"]
    a, b, d, e = cos, sin, -sin, cos
    c = centre - a * ox - b * oy
    f = centre - d * ox - e * oy
    image = Image.fromarray(pixels, mode="L").transform((side, side), Image.AFFINE, (a, b, c, d, e, f),
                                                        resample=Image.BILINEAR, fillcolor=0)
    return np.asarray(image, dtype=np.uint8)


def plan_pool(prior: float, size: int, negatives_available: Sequence[tuple[str, int]],
              positive_range: tuple[int, int]) -> dict:
    """Which images make the pool: positives (MNIST train positions), negatives as-is and augmented copies.

    ``negatives_available``: (array name, index) of every distinct negative, in their fixed order.
    Returns {"positives": [mnist train positions], "negatives": [(array, index)],
    "augmented": [(array, index, negative number, copy)], "n_positive", "n_negative"}.

    Raises:
        UsageError: the prior or size cannot be built (too many positives asked for).
    """
    if not 0 < prior < 1:
        raise UsageError(f"prior {prior}: must be in (0, 1)")
    n_positive = round(prior * size)
    lo, hi = positive_range
    if n_positive < 1 or n_positive > hi - lo:
        raise UsageError(f"prior {prior} x {size:,} = {n_positive:,} positives; between 1 and {hi - lo:,} are available")
    n_negative = size - n_positive
    positives = (np.random.default_rng(POSITIVE_SEED).permutation(np.arange(lo, hi))[:n_positive]).tolist()
    m = len(negatives_available)
    if n_negative <= m:
        chosen = sorted(np.random.default_rng(NEGATIVE_SEED).permutation(m)[:n_negative].tolist())
        negatives = [negatives_available[k] for k in chosen]
        augmented: list[tuple[str, int, int, int]] = []
    else:
        negatives = list(negatives_available)
        order = np.random.default_rng(AUGMENT_SEED).permutation(m)
        augmented = []
        for j in range(n_negative - m):
            number = int(order[j % m])
            array, index = negatives_available[number]
            augmented.append((array, index, number, j // m))
    return {"positives": positives, "negatives": negatives, "augmented": augmented,
            "n_positive": n_positive, "n_negative": n_negative}


# ------------------------------------------------------------------------------------------ files


def _write_png_atomic(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def _file_name(array: str, index: int, copy: int | None = None) -> str:
    return f"{array}-{index:05d}" + ("" if copy is None else f"-aug{copy}") + ".png"


class Store:
    """Where each image file of the pools comes from: the mnist-pu root's PNG (as-is images it has)
    or ``<out>/store/`` (written once, atomically)."""

    def __init__(self, out: Path, ref_root: Path | None, images: dict[str, np.ndarray]) -> None:
        self.dir = out / "store"
        self.ref_root = ref_root
        self.images = images
        self.written = self.reused_ref = self.reused_store = 0

    def _ref_file(self, array: str, index: int) -> Path | None:
        if self.ref_root is None:
            return None
        candidate = self.ref_root / "unlabeled" / SOURCE_OF[array] / _file_name(array, index)
        return candidate if candidate.is_file() else None

    def as_is(self, array: str, index: int) -> Path:
        ref = self._ref_file(array, index)
        if ref is not None:
            self.reused_ref += 1
            return ref
        return self._stored(SOURCE_OF[array], _file_name(array, index), lambda: self.images[array][index])

    def augmented(self, array: str, index: int, number: int, copy: int) -> Path:
        params = augment_params(number, copy)
        return self._stored(f"{SOURCE_OF[array]}-aug", _file_name(array, index, copy),
                            lambda: augment(self.images[array][index], params))

    def _stored(self, folder: str, name: str, pixels: Callable[[], np.ndarray]) -> Path:
        path = self.dir / folder / name
        if path.is_file():
            self.reused_store += 1
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_png_atomic(pixels(), path)
        self.written += 1
        return path


def _check_ref_pngs(ref_root: Path, images: dict[str, np.ndarray], samples: int = 20) -> int:
    """Decode a few of the mnist-pu root's unlabeled PNGs and compare them with the IDX pixels.

    Raises:
        DataError: a PNG differs (the reference root was built from other data).
    """
    from PIL import Image

    checked = 0
    rng = np.random.default_rng(0)
    for array in ("mnist-train", "fashion-train", "kmnist-test"):
        lo = POOL_POSITIVE_RANGE[0] if array == "mnist-train" else 0
        hi = min(len(images[array]), POOL_POSITIVE_RANGE[1] if array == "mnist-train" else len(images[array]))
        if hi <= lo:
            continue
        for index in rng.integers(lo, hi, samples // 3 + 1).tolist():
            path = ref_root / "unlabeled" / SOURCE_OF[array] / _file_name(array, index)
            if not path.is_file():
                continue
            if not np.array_equal(np.asarray(Image.open(path).convert("L")), images[array][index]):
                raise DataError(f"{path} differs from the IDX image {array}[{index}]: --ref-root was built from other data")
            checked += 1
    return checked


# ------------------------------------------------------------------------------------ materialise


def _settings(out: Path, prior: float, size: int, inputs: dict[str, str], ref_root: Path, ref_manifest_sha: str,
              positive_range: tuple[int, int]) -> dict:
    return {
        "format_version": FORMAT_VERSION, "scenario": SCENARIO, "root": str(out), "prior_requested": prior,
        "size": size, "inputs_sha256": inputs, "ref_root": str(ref_root), "ref_manifest_sha256": ref_manifest_sha,
        "positive_range": list(positive_range),
        "seeds": {"positive": POSITIVE_SEED, "negative": NEGATIVE_SEED, "augment": AUGMENT_SEED,
                  "unlabeled_order": UNLABELED_ORDER_SEED},
        "augmentation": {"rotation_deg": [-ROTATION_DEG, ROTATION_DEG], "scale": list(SCALE_RANGE),
                         "shift_px": [-SHIFT_PX, SHIFT_PX], "resample": "bilinear", "fill": 0},
    }


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def materialise(prior: float, *, size: int = POOL_SIZE, data_dir: Path | None = None, out_base: Path | None = None,
                ref_root: Path | None = None, force: bool = False, positive_range: tuple[int, int] = POOL_POSITIVE_RANGE,
                progress: Progress = _stderr) -> tuple[Path, dict | None]:
    """Build (or find finished) the root of one class prior; returns (root, new manifest or None if it was there).

    Raises:
        DataError: an input differs from SHA256SUMS, the mnist-pu root is missing or was built from
            other data.
        UsageError: a prior / size that cannot be built.
    """
    started = time.perf_counter()
    data_dir = Path(os.path.abspath(data_dir or default_data_dir()))
    ref_root = Path(os.path.abspath(ref_root or default_ref_root()))
    out_base = Path(os.path.abspath(out_base or default_out_dir()))
    out = out_base / root_name(prior)
    ref_manifest = ref_root / "manifest.json"
    if not ref_manifest.is_file() or not all((ref_root / part).is_dir() for part in LINKED_PARTS):
        raise DataError(f"{ref_root} is not a finished mnist-pu root (manifest.json, train/, positive/, test/): "
                        "run benchmarks/mnist_pu_data.py or give --ref-root")
    ref_sha = hashlib.sha256(ref_manifest.read_bytes()).hexdigest()
    relpaths = [rel for pair in INPUTS.values() for rel in pair]
    inputs = verify_inputs(data_dir, relpaths)
    settings = _settings(out, prior, size, inputs, ref_root, ref_sha, positive_range)
    old = _read_manifest(out)
    if old is not None and all(old.get(k) == v for k, v in settings.items()) and not force:
        progress(f"already materialised: {out} (use --force to rebuild)")
        return out, None

    images, labels = load_arrays(data_dir)
    checked = _check_ref_pngs(ref_root, images)
    available = [(array, i) for array in NEGATIVE_ARRAYS for i in range(len(images[array]))]
    plan = plan_pool(prior, size, available, positive_range)
    progress(f"{out.name}: {plan['n_positive']:,} positives, {len(plan['negatives']):,} negatives as-is, "
             f"{len(plan['augmented']):,} augmented copies")

    store = Store(out_base, ref_root, images)
    rows: list[tuple[str, int, str, int, Path]] = []  # (relative path, positive, source, label, file)
    for index in plan["positives"]:
        rows.append((f"unlabeled/mnist/{_file_name('mnist-train', index)}", 1, "mnist",
                     int(labels["mnist-train"][index]), store.as_is("mnist-train", index)))
    for array, index in plan["negatives"]:
        source = SOURCE_OF[array]
        rows.append((f"unlabeled/{source}/{_file_name(array, index)}", 0, source, int(labels[array][index]),
                     store.as_is(array, index)))
    for k, (array, index, number, copy) in enumerate(plan["augmented"]):
        source = f"{SOURCE_OF[array]}-aug"
        rows.append((f"unlabeled/{source}/{_file_name(array, index, copy)}", 0, source, int(labels[array][index]),
                     store.augmented(array, index, number, copy)))
        if (k + 1) % 5000 == 0:
            progress(f"  {k + 1:,} / {len(plan['augmented']):,} augmented copies ({time.perf_counter() - started:.0f} s)")

    out_base.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out_base / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for folder in sorted({(staging / rel).parent for rel, *_ in rows}):
            folder.mkdir(parents=True, exist_ok=True)
        for rel, _, _, _, source_file in rows:
            _link_or_copy(source_file, staging / rel)
        order = np.random.default_rng(UNLABELED_ORDER_SEED).permutation(len(rows))
        with open(staging / "unlabeled.txt", "w", encoding="utf-8") as pool_list, \
                open(staging / "ground_truth.tsv", "w", encoding="utf-8") as truth:
            truth.write("path\tpositive\tsource\tlabel\n")
            for position in order.tolist():
                rel, positive, source, label, _ = rows[position]
                pool_list.write(f"{out / rel}\n")
                truth.write(f"{out / rel}\t{positive}\t{source}\t{label}\n")
        for part in LINKED_PARTS:
            os.symlink(ref_root / part, staging / part, target_is_directory=True)

        # Swap in: the old manifest goes first, so a crash mid-swap never leaves a root that claims to be complete.
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
        replaced = staging / ".replaced"
        replaced.mkdir()
        for entry in ("unlabeled", "unlabeled.txt", "ground_truth.tsv", *LINKED_PARTS):
            if (out / entry).is_symlink() or (out / entry).exists():
                os.replace(out / entry, replaced / entry)
            os.replace(staging / entry, out / entry)
        by_source: dict[str, int] = {}
        for _, _, source, _, _ in rows:
            by_source[source] = by_source.get(source, 0) + 1
        manifest = {
            **settings, "true_class_prior": plan["n_positive"] / len(rows),
            "counts": {"unlabeled": len(rows), "unlabeled_positive": plan["n_positive"],
                       "unlabeled_negative_as_is": len(plan["negatives"]),
                       "unlabeled_negative_augmented": len(plan["augmented"]),
                       "unlabeled_by_source": by_source, "distinct_negatives_available": len(available)},
            "parts": ["positive", "test", "train", "unlabeled"],
            "linked": {part: str(ref_root / part) for part in LINKED_PARTS},
            "files": {"hard_links_to_ref_root": store.reused_ref, "written_to_store": store.written,
                      "reused_from_store": store.reused_store, "store": str(store.dir),
                      "ref_pngs_checked_against_idx": checked},
            "materialise_seconds": round(time.perf_counter() - started, 2), "created_unix": int(time.time()),
        }
        with atomic_write(out / "manifest.json") as handle:
            json.dump(manifest, handle, indent=2)
            handle.write("\n")
        os.chmod(out / "manifest.json", 0o644)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"{out}: done in {manifest['materialise_seconds']:.1f} s ({store.written:,} PNGs written, "
             f"{store.reused_ref:,} linked from {ref_root})")
    return out, manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise the webcrawl-pu scenario (one root per class prior).")
    parser.add_argument("--prior", type=float, nargs="+", default=list(PRIORS), help="class priors [default: 0.02 0.05 0.10 0.20]")
    parser.add_argument("--size", type=int, default=POOL_SIZE, help="pool size [default: 100,000]")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder [default: mnist_pu_data's]")
    parser.add_argument("--ref-root", type=Path, default=None,
                        help=f"finished mnist-pu root to link train/positive/test from [default: {REF_ROOT} if present]")
    parser.add_argument("--out", type=Path, default=None, help="folder of the roots [default: <pucli cache>/benchmarks/webcrawl-pu]")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    args = parser.parse_args(argv)
    try:
        for prior in args.prior:
            root, _ = materialise(prior, size=args.size, data_dir=args.data_dir, out_base=args.out,
                                  ref_root=args.ref_root, force=args.force)
            print(root, flush=True)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished roots are complete, the one in progress is as it was", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
