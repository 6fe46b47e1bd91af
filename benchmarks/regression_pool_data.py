"""Draw the issue-30 regression pool: 20,000 images, 4,000 MNIST digits among Fashion-MNIST and KMNIST.

An independent pool for checking the default student (issue 30, ``benchmarks/student_guard.py``):
smaller than mnist-pu's 100,000-image pool and with another class prior (0.20 instead of 0.30),
drawn from the PNGs that ``benchmarks/mnist_pu_data.py`` already writes, so it costs no decoding
of IDX files and no new images.

- positives: 4,000 MNIST digits drawn from ``unlabeled/mnist/`` of the mnist-pu root, i.e. MNIST
  train positions 30,000..59,999, which the mnist-pu teacher (trained on 0..29,999) never saw;
- negatives: 16,000 images drawn from ``unlabeled/fashion/`` (Fashion-MNIST train) and
  ``unlabeled/kmnist/`` (KMNIST test) together, uniformly, so about 86 % Fashion and 14 % KMNIST;
- order: shuffled.

The draw reads ``ground_truth.tsv`` of the mnist-pu root (its rows, in its order, are the
candidates) and uses one ``numpy.random.default_rng(seed)``: ``rng.choice`` of the positive rows
without replacement, then of the negative rows, then ``rng.permutation`` of the 20,000. The default
``--seed 0`` is the issue-30 pool; ``--seed 1`` is a second pool built the same way (held out).

Writes, under ``--out`` (default ``<pucli cache>/benchmarks/regression-pool``)::

    issue30-seed<s>.txt          20,000 absolute paths, the pool pucli reads (--unlabeled)
    issue30-seed<s>.truth.tsv    path, positive (1/0), source, label: same order; never for pucli
    issue30-seed<s>.json         counts, seed, the mnist-pu root and its manifest's input sha256s,
                                 sha256 of the pool list

A re-run with the same root and seed rewrites the same bytes. The path of the pool list is printed
on stdout.

Usage::

    python benchmarks/regression_pool_data.py [--root MNIST_PU_ROOT] [--out DIR] [--seed 0]
                                              [--positives 4000] [--negatives 16000]

``--root`` defaults to mnist-pu's root in pucli's cache (``benchmarks/mnist_pu_data.py`` builds it;
run that first).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pucli.paths import atomic_write, cache_dir

__all__ = ["POOL_NAME", "draw_pool", "pool_paths", "read_ground_truth", "write_pool"]

POOL_NAME = "issue30"
N_POSITIVES = 4_000
N_NEGATIVES = 16_000
POSITIVE_SOURCE = "mnist"
NEGATIVE_SOURCES = ("fashion", "kmnist")


def default_root() -> Path:
    """mnist-pu's root in pucli's cache (what ``benchmarks/mnist_pu_data.py`` writes by default)."""
    return cache_dir() / "benchmarks" / "mnist-pu"


def default_out_dir() -> Path:
    """``<pucli cache>/benchmarks/regression-pool``."""
    return cache_dir() / "benchmarks" / "regression-pool"


def pool_paths(out: Path, seed: int) -> dict[str, Path]:
    """The three files of the pool drawn with ``seed`` under ``out``."""
    stem = out / f"{POOL_NAME}-seed{seed}"
    return {"pool": stem.with_suffix(".txt"), "truth": stem.with_suffix(".truth.tsv"),
            "record": stem.with_suffix(".json")}


def read_ground_truth(root: Path) -> list[dict[str, str]]:
    """Rows of ``root/ground_truth.tsv`` (path, positive, source, label), in file order."""
    path = root / "ground_truth.tsv"
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
    except OSError as error:
        raise SystemExit(f"error: cannot read {path}: {error.strerror}; "
                         "build mnist-pu first (python benchmarks/mnist_pu_data.py)") from error


def draw_pool(rows: Sequence[dict[str, str]], seed: int, n_positives: int = N_POSITIVES,
              n_negatives: int = N_NEGATIVES) -> list[dict[str, str]]:
    """The seeded draw of this module's docstring: ``n_positives`` MNIST rows and ``n_negatives``
    Fashion/KMNIST rows, without replacement, in a shuffled order."""
    positives = [i for i, row in enumerate(rows) if row["source"] == POSITIVE_SOURCE]
    negatives = [i for i, row in enumerate(rows) if row["source"] in NEGATIVE_SOURCES]
    if n_positives > len(positives) or n_negatives > len(negatives):
        raise ValueError(f"asked for {n_positives} positives / {n_negatives} negatives; "
                         f"the root has {len(positives)} / {len(negatives)}")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.asarray(positives), size=n_positives, replace=False),
                             rng.choice(np.asarray(negatives), size=n_negatives, replace=False)])
    return [rows[int(i)] for i in chosen[rng.permutation(len(chosen))]]


def write_pool(root: Path, out: Path, seed: int, n_positives: int = N_POSITIVES,
               n_negatives: int = N_NEGATIVES) -> dict[str, Path]:
    """Draw the pool from ``root`` and write its three files under ``out``; returns their paths."""
    root = Path(os.path.abspath(root))
    rows = read_ground_truth(root)
    drawn = draw_pool(rows, seed, n_positives, n_negatives)
    out.mkdir(parents=True, exist_ok=True)
    paths = pool_paths(out, seed)
    pool_text = "".join(f"{row['path']}\n" for row in drawn)
    with atomic_write(paths["pool"]) as handle:
        handle.write(pool_text)
    with atomic_write(paths["truth"]) as handle:
        handle.write("path\tpositive\tsource\tlabel\n")
        handle.writelines(f"{r['path']}\t{r['positive']}\t{r['source']}\t{r['label']}\n" for r in drawn)
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    sources: dict[str, int] = {}
    for row in drawn:
        sources[row["source"]] = sources.get(row["source"], 0) + 1
    record = {
        "pool": POOL_NAME, "seed": seed, "size": len(drawn), "positives": n_positives,
        "negatives": n_negatives, "true_class_prior": n_positives / len(drawn), "sources": sources,
        "mnist_pu_root": str(root), "mnist_pu_inputs_sha256": manifest.get("inputs_sha256"),
        "pool_list_sha256": hashlib.sha256(pool_text.encode("utf-8")).hexdigest(),
        "draw": "numpy default_rng(seed): choice(positive rows), choice(negative rows), permutation",
    }
    with atomic_write(paths["record"]) as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the issue-30 regression pool from the mnist-pu PNGs.")
    parser.add_argument("--root", type=Path, default=None,
                        help="mnist-pu root (default: <pucli cache>/benchmarks/mnist-pu)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <pucli cache>/benchmarks/regression-pool)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0, the issue-30 pool)")
    parser.add_argument("--positives", type=int, default=N_POSITIVES, help=f"MNIST images (default: {N_POSITIVES})")
    parser.add_argument("--negatives", type=int, default=N_NEGATIVES,
                        help=f"Fashion-MNIST + KMNIST images (default: {N_NEGATIVES})")
    args = parser.parse_args(argv)
    paths = write_pool(args.root or default_root(), Path(os.path.abspath(args.out or default_out_dir())),
                       args.seed, args.positives, args.negatives)
    print(paths["pool"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
