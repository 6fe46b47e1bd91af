"""Generate the two large sharded pools of issue 20 from ``../shared/data``, resumably, shard by shard.

- ``photo``: the mnist-pu pool (``benchmarks/mnist_pu_data.py``; 100,000 28 x 28 PNGs in the seeded
  order of its ``unlabeled.txt``) resized to 256 x 256 (bicubic) and written as RGB JPEG quality 90:
  photo-sized files (a few KB each) for a 28-pixel teacher, where decoding, not the teacher, sets the
  pace. True prior 0.30, as mnist-pu.
- ``million``: 1,000,000 28 x 28 grayscale PNGs, each a seeded random affine copy (rotation, scale,
  shear, translation; bilinear) of one of the 110,000 distinct images docs/BENCHMARKS.md allows in
  a pool: the 30,000 MNIST digits the teacher never saw (train 30,000..59,999; the positives) and
  the 80,000 negatives (Fashion-MNIST train + test, KMNIST test). ``round(prior * n)`` positives
  (30,000 at the default prior 0.03: each unseen digit once), the rest negatives (each negative
  source about 12 times), in a seeded random order. MNIST's teacher-training and test images
  never enter the pool.

Both are packed with pucli's own shard packer (:func:`pucli.data.shards.pack_folder`, what
``pucli shards pack`` runs), ``--shard-size`` images per shard, under
``<pucli cache>/benchmarks/scale/<name>/`` (``--out`` moves it)::

    settings.json         what the pool is made of (written first; a resume must match it)
    shards/pool-%06d.tar  the shards; member ``u<position:07d>.png`` / ``.jpg`` (position in the pool)
    pool-shards.txt       the shard paths, one a line: ``pucli select --unlabeled pool-shards.txt``
    ground_truth.tsv      member path, positive (1/0), source, source index, label; pool order;
                          benchmark-only knowledge, never read by pucli
    manifest.json         counts, true prior, bytes on disk, seconds; written last (its presence
                          means the pool is complete)

Resumable: each shard is built in a staging folder and renamed into place whole, and its content
depends only on the settings and its number (the per-shard generator is
``numpy.random.default_rng([seed, shard])``; member mtimes are fixed), so a re-run skips the
shards already there and writes byte-identical ones for the rest, in any order, with any
``--workers``.

Usage::

    python benchmarks/scale_pools.py photo   [--root MNIST_PU_ROOT] [--side 256] [--quality 90] [--n N]
    python benchmarks/scale_pools.py million [--data-dir DIR] [--n 1000000] [--prior 0.03] [--seed 0] [--format png]
        common: [--out DIR] [--shard-size 10000] [--workers 1] [--force]
    python benchmarks/scale_pools.py f1 POOL_DIR INDEX     precision, recall, F1 of a select index (JSON)

Progress goes to stderr; the pool's folder is printed on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pucli.errors import DataError, PucliError, UsageError
from pucli.paths import atomic_write, cache_dir

__all__ = ["FORMAT_VERSION", "AffinePool", "PhotoPool", "default_out", "generate"]

FORMAT_VERSION = 1
MEMBER_MTIME = 946_684_800  # 2000-01-01 UTC: fixed member mtimes make shards byte-reproducible
SHARD_PATTERN = "pool-%06d.tar"

# The distinct images a mnist-pu-style pool may hold (docs/BENCHMARKS.md, "Other scenarios").
POSITIVE_SOURCE = ("mnist", "train")
POSITIVE_RANGE = (30_000, 60_000)  # MNIST train positions the teacher never saw
NEGATIVE_SOURCES = (("fashion", "train"), ("fashion", "t10k"), ("kmnist", "test"))
IDX_FILES = {
    ("mnist", "train"): ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    ("fashion", "train"): ("fashion-mnist/train-images-idx3-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz"),
    ("fashion", "t10k"): ("fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    ("kmnist", "test"): ("kmnist/t10k-images-idx3-ubyte.gz", "kmnist/t10k-labels-idx1-ubyte.gz"),
}

# Affine ranges of the million-image pool: degrees, scale factor, degrees, pixels.
ROTATION, SCALE, SHEAR, TRANSLATE = 15.0, (0.85, 1.15), 10.0, 2.0

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_out(name: str) -> Path:
    """``<pucli cache>/benchmarks/scale/<name>``."""
    return cache_dir() / "benchmarks" / "scale" / name


# ------------------------------------------------------------------------------------- the pools


class PhotoPool:
    """The mnist-pu pool at photo size: item ``i`` is the ``i``-th line of ``unlabeled.txt``,
    resized to ``side`` x ``side`` (bicubic) and saved as an RGB JPEG of ``quality``."""

    suffix = ".jpg"

    def __init__(self, root: Path, side: int = 256, quality: int = 90, n: int | None = None,
                 shard_size: int = 10_000) -> None:
        self.shard_size = shard_size
        self.root = Path(os.path.abspath(root))
        if not (self.root / "manifest.json").is_file():
            raise UsageError(f"{self.root} is not a finished mnist-pu root: run benchmarks/mnist_pu_data.py first")
        rows = [line.split("\t") for line in (self.root / "ground_truth.tsv").read_text().splitlines()[1:] if line]
        self.rows = rows[:n] if n is not None else rows
        self.side, self.quality = side, quality

    def settings(self) -> dict:
        return {"kind": "photo", "format_version": FORMAT_VERSION, "mnist_pu_root": str(self.root),
                "mnist_pu_manifest": json.loads((self.root / "manifest.json").read_text()).get("inputs_sha256"),
                "n": len(self.rows), "side": self.side, "quality": self.quality, "resample": "bicubic",
                "mode": "RGB"}

    def __len__(self) -> int:
        return len(self.rows)

    def truth(self, position: int) -> tuple[int, str, str, int]:
        """(positive, source, source file, label) of item ``position``."""
        path, positive, source, label = self.rows[position][:4]
        return int(positive), source, Path(path).name, int(label)

    def encode(self, positions: range) -> list[bytes]:
        from PIL import Image

        encoded = []
        for position in positions:
            with Image.open(self.rows[position][0]) as image:
                photo = image.convert("RGB").resize((self.side, self.side), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            photo.save(buffer, format="JPEG", quality=self.quality)
            encoded.append(buffer.getvalue())
        return encoded


class AffinePool:
    """``n`` seeded affine copies of the 110,000 pool-eligible images, ``round(prior * n)`` of them
    copies of unseen MNIST digits (the positives). The plan (which source each position copies) is
    drawn once from ``default_rng(seed)``; the transform of each image from
    ``default_rng([seed, shard])``."""

    def __init__(self, data_dir: Path, n: int = 1_000_000, prior: float = 0.03, seed: int = 0,
                 image_format: str = "png", shard_size: int = 10_000,
                 positive_range: tuple[int, int] = POSITIVE_RANGE) -> None:
        from mnist_pu_data import read_idx, verify_inputs

        if image_format not in ("png", "jpeg"):
            raise UsageError(f"--format {image_format}: png or jpeg")
        if not 0 < prior < 1:
            raise UsageError(f"--prior {prior}: must be in (0, 1)")
        self.data_dir = Path(os.path.abspath(data_dir))
        self.n, self.prior, self.seed, self.format, self.shard_size = n, prior, seed, image_format, shard_size
        self.suffix = ".png" if image_format == "png" else ".jpg"
        relpaths = [rel for pair in IDX_FILES.values() for rel in pair]
        self.inputs = verify_inputs(self.data_dir, relpaths)
        images, labels, sources, indices = [], [], [], []
        lo, hi = positive_range
        for (dataset, part), positive in [(POSITIVE_SOURCE, True)] + [(s, False) for s in NEGATIVE_SOURCES]:
            image_file, label_file = IDX_FILES[(dataset, part)]
            these = read_idx(self.data_dir / image_file, 0x803)
            these_labels = read_idx(self.data_dir / label_file, 0x801)
            first, last = (lo, hi) if positive else (0, len(these))
            images.append(these[first:last])
            labels.append(these_labels[first:last])
            sources += [f"{dataset}-{part}"] * (last - first)
            indices.append(np.arange(first, last))
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels)
        self.sources = sources
        self.source_index = np.concatenate(indices)
        self.n_positive_sources = n_positive_sources = hi - lo
        self.positive_range = (lo, hi)
        self.n_positive = round(prior * n)
        rng = np.random.default_rng(seed)
        # Positives: each unseen digit once before any repeats; negatives likewise, cycling.
        positive_plan = _cycle(rng.permutation(n_positive_sources), self.n_positive)
        negative_plan = n_positive_sources + _cycle(rng.permutation(len(self.images) - n_positive_sources),
                                                    n - self.n_positive)
        self.plan = np.concatenate([positive_plan, negative_plan])[rng.permutation(n)]

    def settings(self) -> dict:
        return {"kind": "affine", "format_version": FORMAT_VERSION, "inputs_sha256": self.inputs, "n": self.n,
                "prior": self.prior, "n_positive": self.n_positive, "seed": self.seed, "format": self.format,
                "side": 28, "affine": {"rotation_deg": ROTATION, "scale": list(SCALE), "shear_deg": SHEAR,
                                       "translate_px": TRANSLATE, "interpolation": "bilinear", "fill": 0},
                "sources": {"positive": f"mnist train {self.positive_range[0]}..{self.positive_range[1] - 1}",
                            "negative": "fashion train + fashion t10k + kmnist test"}}

    def __len__(self) -> int:
        return self.n

    def truth(self, position: int) -> tuple[int, str, str, int]:
        source = int(self.plan[position])
        return int(source < self.n_positive_sources), self.sources[source], \
            str(int(self.source_index[source])), int(self.labels[source])

    def encode(self, positions: range) -> list[bytes]:
        from PIL import Image

        shard = positions.start // self.shard_size
        rng = np.random.default_rng([self.seed, shard])
        pixels = _random_affine(self.images[self.plan[positions.start:positions.stop]], rng)
        encoded = []
        for image in pixels:
            buffer = io.BytesIO()
            if self.format == "png":
                Image.fromarray(image, mode="L").save(buffer, format="PNG")
            else:
                Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
        return encoded


def _cycle(order: np.ndarray, count: int) -> np.ndarray:
    """``order`` repeated (and cut) to ``count`` entries."""
    return np.resize(order, count) if count else np.empty(0, dtype=order.dtype)


def _random_affine(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B, 28, 28) uint8 -> (B, 28, 28) uint8, each under its own random affine map about the
    centre (bilinear, black fill), computed in float64 so the bits do not depend on threads."""
    import torch
    import torch.nn.functional as F

    count, height, width = images.shape
    angle = np.deg2rad(rng.uniform(-ROTATION, ROTATION, count))
    scale = rng.uniform(*SCALE, count)
    shear = np.deg2rad(rng.uniform(-SHEAR, SHEAR, count))
    shift = rng.uniform(-TRANSLATE, TRANSLATE, (count, 2))
    # Forward map in normalised coordinates: A = R(angle) @ Shear(shear) * scale; grid_sample wants
    # the inverse (output -> input).
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.empty((count, 2, 2))
    forward[:, 0, 0], forward[:, 0, 1] = cos, -sin + cos * np.tan(shear)
    forward[:, 1, 0], forward[:, 1, 1] = sin, cos + sin * np.tan(shear)
    forward *= scale[:, None, None]
    inverse = np.linalg.inv(forward)
    offset = shift / (np.array([width, height]) / 2)  # pixels -> normalised
    theta = np.concatenate([inverse, -(inverse @ offset[:, :, None])], axis=2)
    grid = F.affine_grid(torch.from_numpy(theta), [count, 1, height, width], align_corners=False)
    source = torch.from_numpy(images.astype(np.float64))[:, None]
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------ generation


def _member_name(position: int, suffix: str) -> str:
    return f"u{position:07d}{suffix}"


def _write_shard(pool: PhotoPool | AffinePool, out: Path, shard: int, shard_size: int) -> int:
    """Build shard ``shard`` in a staging folder with pucli's packer and rename it into place."""
    from pucli.data.shards import pack_folder

    final = out / "shards" / (SHARD_PATTERN % shard)
    positions = range(shard * shard_size, min(len(pool), (shard + 1) * shard_size))
    staging = Path(tempfile.mkdtemp(prefix=f".shard-{shard:06d}-", dir=out))
    # The loose files live only until they are packed: in memory (tmpfs) where there is one.
    images = Path(tempfile.mkdtemp(prefix=f"pucli-scale-{shard:06d}-", dir=_scratch_dir()))
    try:
        files = []
        for position, data in zip(positions, pool.encode(positions)):
            file = images / _member_name(position, pool.suffix)
            file.write_bytes(data)
            os.utime(file, (MEMBER_MTIME, MEMBER_MTIME))
            files.append(file)
        packed = pack_folder(images, str(staging / SHARD_PATTERN), images_per_shard=len(files), paths=files)
        os.replace(packed.shards[0], final)
    finally:
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return len(positions)


def _scratch_dir() -> str | None:
    """``/dev/shm`` when it is a writable folder (writing 10,000 small files there costs no disk
    I/O), else the system's temporary folder."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


_WORKER_POOL: PhotoPool | AffinePool | None = None


def _init_worker(pool: PhotoPool | AffinePool) -> None:
    global _WORKER_POOL
    import torch

    torch.set_num_threads(1)  # one process per core
    _WORKER_POOL = pool


def _worker_shard(task: tuple[Path, int, int]) -> int:
    out, shard, shard_size = task
    assert _WORKER_POOL is not None
    return _write_shard(_WORKER_POOL, out, shard, shard_size)


def generate(pool: PhotoPool | AffinePool, out: Path, *, workers: int = 1,
             force: bool = False, progress: Progress = _stderr, stop_after: int | None = None) -> dict | None:
    """Write the shards of ``pool`` (``pool.shard_size`` images each) that are missing under ``out``, then the pool list, the ground
    truth and the manifest. Returns the manifest, or None when ``stop_after`` shards were written
    and others are still missing (an interrupted run, for tests).

    Raises:
        UsageError: ``out`` holds a pool with other settings (unless ``force``, which removes it).
    """
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    shard_size = pool.shard_size
    settings = {**pool.settings(), "shard_size": shard_size}
    settings_file = out / "settings.json"
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        if old != json.loads(json.dumps(settings)):
            if not force:
                raise UsageError(f"{out} holds a pool with other settings; --force removes it, or choose another --out")
            shutil.rmtree(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for abandoned in out.glob(".shard-*"):  # staging of a killed run
        shutil.rmtree(abandoned, ignore_errors=True)
    if not settings_file.is_file():
        with atomic_write(settings_file) as handle:
            json.dump(settings, handle, indent=1)
    count = math.ceil(len(pool) / shard_size)
    missing = [s for s in range(count) if not (out / "shards" / (SHARD_PATTERN % s)).is_file()]
    if stop_after is not None:
        missing = missing[:stop_after]
    progress(f"{out}: {count - len(missing) if stop_after is None else '?'} of {count} shards there, "
             f"writing {len(missing)} with {workers} worker(s)")
    tasks = [(out, shard, shard_size) for shard in missing]
    done = 0
    if workers <= 1:
        results = (_write_shard(pool, out, shard, shard_size) for _, shard, _ in tasks)
        for images in results:
            done += 1
            progress(f"  shard {done}/{len(tasks)} ({images} images, {time.perf_counter() - started:.0f} s)")
    else:
        # spawn, not fork: a forked child of a process whose OpenMP pool has run (torch's
        # grid_sample) can hang in its first parallel region.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(pool,)) as workers_pool:
            for images in workers_pool.imap_unordered(_worker_shard, tasks):
                done += 1
                progress(f"  shard {done}/{len(tasks)} ({images} images, {time.perf_counter() - started:.0f} s)")
    shards = [out / "shards" / (SHARD_PATTERN % s) for s in range(count)]
    if not all(shard.is_file() for shard in shards):
        return None
    with atomic_write(out / "pool-shards.txt") as handle:
        handle.writelines(f"{shard}\n" for shard in shards)
    n_positive = 0
    with atomic_write(out / "ground_truth.tsv") as handle:
        handle.write("path\tpositive\tsource\tsource_index\tlabel\n")
        for position in range(len(pool)):
            positive, source, source_index, label = pool.truth(position)
            n_positive += positive
            shard = shards[position // shard_size]
            handle.write(f"{shard}#{_member_name(position, pool.suffix)}\t{positive}\t{source}\t{source_index}\t{label}\n")
    bytes_on_disk = sum(shard.stat().st_size for shard in shards)
    manifest = {**settings, "shards": count, "images": len(pool), "positives": n_positive,
                "true_class_prior": n_positive / len(pool), "bytes": bytes_on_disk,
                "seconds_this_run": round(time.perf_counter() - started, 1), "pattern": str(
                    out / "shards" / f"pool-{{{0:06d}..{count - 1:06d}}}.tar")}
    with atomic_write(out / "manifest.json") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
    progress(f"{len(pool):,} images in {count} shards, {bytes_on_disk / 1e9:.2f} GB, prior {manifest['true_class_prior']:.4f}")
    return manifest


def task_images(pool_dir: Path) -> set[str]:
    """The member paths of the task images of the pool generated in ``pool_dir`` (its
    ``ground_truth.tsv``, which only benchmarks read)."""
    positives = set()
    with open(pool_dir / "ground_truth.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            path, positive = line.split("\t", 2)[:2]
            if positive == "1":
                positives.add(path)
    return positives


def selection_quality(pool_dir: Path, index: Path) -> dict:
    """Precision, recall and F1 of the selection index ``index`` (``pucli select --out``) against
    the ground truth of the pool generated in ``pool_dir``."""
    from _common import precision_recall_f1

    from pucli.data.index import read_index

    positives = task_images(pool_dir)
    rows = read_index(index)
    selected = [str(row.path) for row in rows if row.selected]
    true_positive = sum(path in positives for path in selected)
    return precision_recall_f1(len(selected), true_positive, len(positives))


def main(argv: Sequence[str] | None = None) -> int:
    from mnist_pu_data import default_data_dir
    from mnist_pu_data import default_out_dir as mnist_pu_root

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "f1":  # scale_pools.py f1 POOL_DIR INDEX
        print(json.dumps(selection_quality(Path(argv[1]), Path(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["photo", "million"])
    parser.add_argument("--out", type=Path, default=None, help="pool folder [default: <pucli cache>/benchmarks/scale/<name>]")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="shard-writing processes")
    parser.add_argument("--force", action="store_true", help="remove a pool with other settings at --out")
    parser.add_argument("--n", type=int, default=None, help="images [default: 100,000 photo / 1,000,000 million]")
    parser.add_argument("--root", type=Path, default=None, help="photo: the mnist-pu root [default: its cache folder]")
    parser.add_argument("--side", type=int, default=256, help="photo: side in pixels")
    parser.add_argument("--quality", type=int, default=90, help="photo: JPEG quality")
    parser.add_argument("--data-dir", type=Path, default=None, help="million: the shared data folder")
    parser.add_argument("--prior", type=float, default=0.03, help="million: share of positives")
    parser.add_argument("--seed", type=int, default=0, help="million: plan and transform seed")
    parser.add_argument("--format", default="png", choices=["png", "jpeg"], help="million: image format")
    args = parser.parse_args(argv)
    try:
        if args.kind == "photo":
            pool: PhotoPool | AffinePool = PhotoPool(args.root or mnist_pu_root(), args.side, args.quality, args.n,
                                                args.shard_size)
            name = f"photo{args.side}" + (f"-{args.n}" if args.n else "")
        else:
            n = args.n or 1_000_000
            pool = AffinePool(args.data_dir or default_data_dir(), n, args.prior, args.seed, args.format,
                              args.shard_size)
            name = f"affine-{n}" + ("" if args.format == "png" else "-jpeg")
        out = args.out or default_out(name)
        manifest = generate(pool, out, workers=args.workers, force=args.force)
    except (PucliError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; the finished shards stay, a re-run writes the rest", file=sys.stderr)
        return 130
    assert manifest is not None
    print(Path(os.path.abspath(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
