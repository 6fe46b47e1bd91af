"""Materialise the ``cifar-pu`` benchmark scenario (issue 27; docs/BENCHMARKS.md, "Natural images").

Reads the natural-image tars of the shared data folder (``--data-dir``, else ``$PUCLI_SHARED_DATA``,
else ``<repo>/../shared/data``; its README, "Natural colour images"), checks each tar against the
folder's ``SHA256SUMS`` and each labels CSV against its tar (same members, labels that agree with the
paths and with ``tiny-imagenet/classes.csv``), and writes the scenario under the output root
(``--out``, default ``<pucli cache>/benchmarks/cifar-pu``; ``$PUCLI_CACHE_DIR`` moves the cache) in
mnist-pu's layout (``benchmarks/mnist_pu_data.py``). Every image keeps its bytes: the CIFAR files are
lossless 32 x 32 PNGs, the Tiny ImageNet files 64 x 64 JPEGs, and none is decoded or re-encoded.

Layout of the output root::

    classes.txt                                      the 10 CIFAR-10 class names in output order
                                                     (airplane ... truck: also their sorted order)
    train/<class>/<name>.png                 10,000  cifar10-train-10k.tar (1,000 a class): the
                                                     teacher's original data (KD-original's set)
    positive/nl<n>-seed<s>/<class>/<name>.png 10 x n the labeled subset L^t, n in {10, 20, 50, 100},
                                                     s in {0, 1, 2}; hard links to train/ files;
                                                     nested per seed (nl10 in nl20 in ... in nl100)
    test/<class>/<name>.png                  10,000  cifar10-test.tar, all of it
    pools/<pool>/<pool>-<k:06d>.tar                  the unlabeled pool as ustar tar shards of 5,000
                                                     members (the last holds the rest)
    pools/<pool>/shards.txt                          the shards' absolute paths, one a line: a path
                                                     list pucli reads with --unlabeled
    pools/<pool>/ground_truth.tsv                    one row per member, in the order pucli reads the
                                                     pool: path (``<shard>.tar#<member>``), positive
                                                     (1/0 by the class map), source (cifar100 |
                                                     tinyimagenet | cifar10), label (the source's
                                                     own: CIFAR-100 fine label, Tiny ImageNet wnid,
                                                     CIFAR-10 class), cifar10_class (the class map;
                                                     empty for none), original (the member's name in
                                                     its source tar); never read by pucli
    pools/<pool>/manifest.json                       the pool's counts, true class prior, shards (with
                                                     sha256), seeds, input sha256s, --unlabeled value
    manifest.json                                    written last: what is built, counts, seeds,
                                                     input sha256s, format version

The pools (``--pools``):

* ``mixed``: all 31,420 Tiny ImageNet + all 10,000 CIFAR-100 images (41,420); 11,500 are of CIFAR-10
  classes by the class map (the labels CSV's ``cifar10_class``), prior 0.278;
* ``webcrawl``: a pool of low prior (0.03): every image of no CIFAR-10 class (19,920 Tiny ImageNet,
  10,000 CIFAR-100) plus ``round(0.03 x 29,920 / 0.97)`` = 925 class-map positives drawn evenly
  across the 23 Tiny ImageNet classes that are CIFAR-10 classes (40 each, 5 classes one more);
* ``cifar100``: the 10,000 CIFAR-100 images alone (captured like CIFAR-10, no CIFAR-10 class);
* ``tinyimagenet``: the 31,420 Tiny ImageNet images alone (ImageNet capture, 11,500 positives).

Member names inside the shards are ``<position in the pool:06d>.<png|jpeg>``: they tell neither the
source nor the class (the extension follows the bytes' format); ``ground_truth.tsv`` maps each back
to its original name. The ground-truth columns start like mnist-pu's (path, positive, source, label),
so readers of that file (``benchmarks/_common.py``) read this one too.

Draws, every one seeded:

* labeled subsets: for each seed ``s`` one ``numpy.random.default_rng(s)`` draws one permutation per
  class (classes in output order) of that class's train files in sorted name order;
  ``nl<n>-seed<s>`` takes the first ``n`` of each (as mnist-pu);
* webcrawl positives: ``default_rng(WEBCRAWL_SEED)`` first picks which classes get one more than
  ``925 // 23`` (``rng.choice`` without replacement), then one permutation per positive Tiny ImageNet
  class (wnids sorted, files in sorted name order), taking the first ``n`` of each;
* pool order: the pool's images listed source by source (Tiny ImageNet, then CIFAR-100; each in
  sorted name order), permuted by ``default_rng(POOL_ORDER_SEED).permutation``.

Everything is built in a temporary sibling folder and renamed into place at the end; the root's
manifest is written last (atomically), so its presence means the build finished. A re-run whose
manifest matches (same inputs, seeds, output root) and covers the parts and pools asked for does
nothing unless ``--force``. It takes seconds: tar reading, file copies and tar writing.

Usage::

    python benchmarks/cifar_pu_data.py [--data-dir DIR] [--out DIR] [--only train,positive,test,pools]
                                       [--pools mixed,webcrawl,cifar100,tinyimagenet] [--force]

Progress goes to stderr; the output root is printed on stdout. Give pucli a pool as
``--unlabeled <root>/pools/<pool>/shards.txt`` (or the brace pattern its manifest names).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from _common import write_json_atomic
from mnist_pu_data import (
    _link_or_copy,
    _remove_abandoned_staging,
    _sha256_file,
    default_data_dir,
    read_sha256sums,
    verify_inputs,
)

from pucli.errors import DataError, PucliError, UsageError
from pucli.paths import atomic_write, cache_dir

__all__ = [
    "CIFAR10_CLASSES",
    "FORMAT_VERSION",
    "PARTS",
    "POOLS",
    "PoolItem",
    "default_out_dir",
    "load_pool_items",
    "materialise",
    "plan_pool",
    "positive_permutations",
    "read_tar",
    "webcrawl_positive_count",
]

FORMAT_VERSION = 1
SCENARIO = "cifar-pu"
PARTS = ("train", "positive", "test", "pools")
POOLS = ("mixed", "webcrawl", "cifar100", "tinyimagenet")
# CIFAR-10's output order (the pretrained teachers' and torchvision's); it is also the sorted order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
N_LABELED_PER_CLASS = (10, 20, 50, 100)
SUBSET_SEEDS = (0, 1, 2)
POOL_ORDER_SEED = 0
WEBCRAWL_SEED = 27
WEBCRAWL_PRIOR = 0.03
IMAGES_PER_SHARD = 5_000

# Inputs, relative to the data folder: the tars (checked against SHA256SUMS) and their labels CSVs.
TARS = {
    "cifar10-train": "cifar10/cifar10-train-10k.tar",
    "cifar10-test": "cifar10/cifar10-test.tar",
    "cifar100": "cifar100/cifar100-train-10k.tar",
    "tinyimagenet": "tiny-imagenet/tiny-imagenet-train-31k.tar",
}
LABELS = {name: rel.removesuffix(".tar") + ".labels.csv" for name, rel in TARS.items()}
TINY_CLASSES = "tiny-imagenet/classes.csv"
LABEL_COLUMNS = {"cifar10-train": ("member", "label"), "cifar10-test": ("member", "label"),
                 "cifar100": ("member", "fine_label"), "tinyimagenet": ("member", "wnid", "words", "cifar10_class")}
TRUTH_COLUMNS = ("path", "positive", "source", "label", "cifar10_class", "original")

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_out_dir() -> Path:
    """The scenario's root in pucli's cache: ``<cache>/benchmarks/cifar-pu``."""
    return cache_dir() / "benchmarks" / SCENARIO


# --------------------------------------------------------------------------------------- inputs


def read_tar(path: Path) -> dict[str, bytes]:
    """{member name: bytes} of every regular member of an uncompressed tar, in archive order.

    Raises:
        DataError: not a tar file, or a member name that appears twice.
    """
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isreg():
                    continue
                if info.name in members:
                    raise DataError(f"{path}: member {info.name} appears twice")
                handle = archive.extractfile(info)
                assert handle is not None  # a regular member always has data
                members[info.name] = handle.read()
    except tarfile.TarError as error:
        raise DataError(f"{path}: not an uncompressed tar file ({error})") from error
    return members


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in columns if column not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path}: no column(s) {', '.join(missing)} (has {reader.fieldnames})")
            return list(reader)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from error


def _labels(data_dir: Path, name: str, members: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """The labels CSV of tar ``name`` as {member: row}, checked to list exactly the tar's members."""
    path = data_dir / LABELS[name]
    rows = _read_csv(path, LABEL_COLUMNS[name])
    by_member = {row["member"]: row for row in rows}
    if len(by_member) != len(rows):
        raise DataError(f"{path}: a member is listed twice")
    if by_member.keys() != members.keys():
        extra, missing = sorted(by_member.keys() - members.keys()), sorted(members.keys() - by_member.keys())
        raise DataError(f"{path} does not match {data_dir / TARS[name]}: {len(extra)} row(s) name no member "
                        f"({extra[:3]}), {len(missing)} member(s) have no row ({missing[:3]})")
    return by_member


def _safe_parts(path: str, member: str) -> tuple[str, ...]:
    parts = PurePosixPath(member).parts
    if any(part in ("", ".", "..") for part in parts) or member.startswith("/") or "\t" in member or "\n" in member:
        raise DataError(f"{path}: member name {member!r} cannot be written out safely")
    return parts


def load_cifar10(data_dir: Path, name: str) -> dict[str, list[tuple[str, bytes]]]:
    """{class: [(file name, bytes)] in sorted name order} of ``cifar10-train`` or ``cifar10-test``.

    Members must be ``<split>/<class>/<name>.png`` with the CSV's ``label`` equal to ``<class>``.

    Raises:
        DataError: a member, label or class that breaks that rule.
    """
    members = read_tar(data_dir / TARS[name])
    labels = _labels(data_dir, name, members)
    split = name.removeprefix("cifar10-")
    by_class: dict[str, list[tuple[str, bytes]]] = {cls: [] for cls in CIFAR10_CLASSES}
    for member, data in members.items():
        parts = _safe_parts(TARS[name], member)
        label = labels[member]["label"]
        if len(parts) != 3 or parts[0] != split or parts[1] != label or label not in by_class \
                or not parts[2].lower().endswith(".png"):
            raise DataError(f"{TARS[name]}: member {member} (label {label!r}) is not "
                            f"{split}/<CIFAR-10 class>/<name>.png")
        by_class[label].append((parts[2], data))
    for files in by_class.values():
        files.sort()
    return by_class


@dataclass(frozen=True)
class PoolItem:
    """One image that may go into a pool: where it comes from, its labels and its bytes."""

    source: str  # cifar100 | tinyimagenet | cifar10
    original: str  # member name in the source tar
    label: str  # the source's own label: CIFAR-100 fine label, Tiny ImageNet wnid, CIFAR-10 class
    cifar10_class: str  # the class map: a CIFAR-10 class name, or "" for none
    data: bytes

    @property
    def positive(self) -> bool:
        return bool(self.cifar10_class)

    @property
    def extension(self) -> str:
        """``png`` or ``jpeg``: the format of the bytes, as the original name says."""
        return PurePosixPath(self.original).suffix.lower().lstrip(".")


def load_pool_items(data_dir: Path) -> dict[str, list[PoolItem]]:
    """{"tinyimagenet": [...], "cifar100": [...]}, each in sorted member-name order.

    Tiny ImageNet members must be ``tiny-imagenet-200/train/<wnid>/images/<name>.JPEG`` with the CSV's
    ``wnid`` equal to ``<wnid>``, and the CSV's ``cifar10_class`` must agree with ``classes.csv``
    (status ``cifar10`` exactly when it names a CIFAR-10 class). CIFAR-100 members must be
    ``train/<fine label>/<name>.png``, no fine label a CIFAR-10 class name.

    Raises:
        DataError: a member, label or class that breaks those rules.
    """
    classes = {row["wnid"]: row for row in _read_csv(data_dir / TINY_CLASSES, ("wnid", "cifar10_class", "status"))}
    members = read_tar(data_dir / TARS["tinyimagenet"])
    labels = _labels(data_dir, "tinyimagenet", members)
    tiny = []
    for member in sorted(members):
        parts = _safe_parts(TARS["tinyimagenet"], member)
        row = labels[member]
        wnid, mapped = row["wnid"], row["cifar10_class"].strip()
        if len(parts) != 5 or parts[:2] != ("tiny-imagenet-200", "train") or parts[2] != wnid or parts[3] != "images":
            raise DataError(f"{TARS['tinyimagenet']}: member {member} is not "
                            f"tiny-imagenet-200/train/{wnid}/images/<name>")
        if mapped and mapped not in CIFAR10_CLASSES:
            raise DataError(f"{LABELS['tinyimagenet']}: {member}: cifar10_class {mapped!r} is not a CIFAR-10 class")
        listed = classes.get(wnid)
        if (listed is None or listed["cifar10_class"].strip() != mapped
                or (listed["status"] == "cifar10") != bool(mapped)):
            raise DataError(f"{LABELS['tinyimagenet']}: {member}: class map {mapped!r} disagrees with {TINY_CLASSES} "
                            f"({None if listed is None else (listed['cifar10_class'], listed['status'])})")
        tiny.append(PoolItem("tinyimagenet", member, wnid, mapped, members[member]))
    members = read_tar(data_dir / TARS["cifar100"])
    labels = _labels(data_dir, "cifar100", members)
    cifar100 = []
    for member in sorted(members):
        parts = _safe_parts(TARS["cifar100"], member)
        fine = labels[member]["fine_label"]
        if len(parts) != 3 or parts[0] != "train" or parts[1] != fine:
            raise DataError(f"{TARS['cifar100']}: member {member} (fine label {fine!r}) is not "
                            "train/<fine label>/<name>")
        if fine in CIFAR10_CLASSES:
            raise DataError(f"{TARS['cifar100']}: fine label {fine!r} is a CIFAR-10 class; the pools assume none is")
        cifar100.append(PoolItem("cifar100", member, fine, "", members[member]))
    return {"tinyimagenet": tiny, "cifar100": cifar100}


# ------------------------------------------------------------------------------------ the plan


def positive_permutations(names_by_class: dict[str, Sequence[str]], seed: int) -> dict[str, list[str]]:
    """One permutation per class (CIFAR-10 output order) of the class's file names in sorted order.

    ``rng = numpy.random.default_rng(seed)``; the first ``n`` of each form ``nl<n>-seed<seed>``, so
    the subsets of one seed are nested.
    """
    rng = np.random.default_rng(seed)
    permutations = {}
    for cls in CIFAR10_CLASSES:
        names = sorted(names_by_class[cls])
        permutations[cls] = [names[i] for i in rng.permutation(len(names)).tolist()]
    return permutations


def webcrawl_positive_count(n_negative: int, prior: float = WEBCRAWL_PRIOR) -> int:
    """Positives to add to ``n_negative`` negatives for a class prior of about ``prior``."""
    return round(prior * n_negative / (1.0 - prior))


def _webcrawl_positives(positives: Sequence[PoolItem], count: int, seed: int) -> list[PoolItem]:
    """``count`` of ``positives`` spread evenly over their source classes (``label``), seeded."""
    groups: dict[str, list[PoolItem]] = {}
    for item in sorted(positives, key=lambda item: item.original):
        groups.setdefault(item.label, []).append(item)
    labels = sorted(groups)
    if not 1 <= count <= len(positives):
        raise DataError(f"webcrawl pool: {count} positives asked for, {len(positives)} available")
    rng = np.random.default_rng(seed)
    base, extra = divmod(count, len(labels))
    one_more = set(rng.choice(len(labels), size=extra, replace=False).tolist())
    chosen: list[PoolItem] = []
    for k, label in enumerate(labels):
        members = groups[label]
        take = base + (k in one_more)
        if take > len(members):
            raise DataError(f"webcrawl pool: {take} positives of class {label} asked for, {len(members)} available")
        chosen.extend(members[i] for i in sorted(rng.permutation(len(members))[:take].tolist()))
    return chosen


def plan_pool(name: str, items: dict[str, list[PoolItem]]) -> list[PoolItem]:
    """The images of pool ``name`` in pool order (see the module docstring for the draws).

    Raises:
        UsageError: an unknown pool name.
        DataError: the webcrawl pool cannot be drawn (too few positives).
    """
    tiny, cifar100 = items["tinyimagenet"], items["cifar100"]
    if name == "mixed":
        chosen = tiny + cifar100
    elif name == "cifar100":
        chosen = list(cifar100)
    elif name == "tinyimagenet":
        chosen = list(tiny)
    elif name == "webcrawl":
        everything = tiny + cifar100
        negatives = [item for item in everything if not item.positive]
        picked = {(item.source, item.original) for item in _webcrawl_positives(
            [item for item in everything if item.positive], webcrawl_positive_count(len(negatives)), WEBCRAWL_SEED)}
        chosen = [item for item in everything if not item.positive or (item.source, item.original) in picked]
    else:
        raise UsageError(f"unknown pool {name!r}; choose from {', '.join(POOLS)}")
    order = np.random.default_rng(POOL_ORDER_SEED).permutation(len(chosen))
    return [chosen[i] for i in order.tolist()]


# --------------------------------------------------------------------------------------- writing


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _write_shard(path: Path, members: Iterable[tuple[str, bytes]]) -> str:
    """A ustar tar of ``members`` (name, bytes), mtime 0, owner 0/0; returns its sha256."""
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return _sha256_file(path)


def _shard_pattern(shards: Sequence[Path]) -> str:
    if len(shards) == 1:
        return str(shards[0])
    first, last = str(shards[0]), str(shards[-1])
    match_first, match_last = re.search(r"(\d+)\.tar$", first), re.search(r"(\d+)\.tar$", last)
    assert match_first is not None and match_last is not None
    return f"{first[:match_first.start(1)]}{{{match_first.group(1)}..{match_last.group(1)}}}.tar"


def build_pool(name: str, pool: Sequence[PoolItem], staging_dir: Path, final_dir: Path, *, images_per_shard: int,
               inputs: dict[str, str], progress: Progress) -> dict:
    """Write pool ``name`` (shards, shards.txt, ground_truth.tsv, manifest.json) into ``staging_dir``,
    naming paths as they will be once ``staging_dir`` is renamed to ``final_dir``; returns its manifest."""
    staging_dir.mkdir(parents=True)
    width = max(6, len(str(len(pool) - 1)))
    shards, shard_rows, truth_rows = [], [], []
    for number, start in enumerate(range(0, len(pool), images_per_shard)):
        chunk = pool[start:start + images_per_shard]
        shard_name = f"{name}-{number:06d}.tar"
        members = [(f"{start + k:0{width}d}.{item.extension}", item) for k, item in enumerate(chunk)]
        sha = _write_shard(staging_dir / shard_name, ((member, item.data) for member, item in members))
        final_shard = final_dir / shard_name
        shards.append(final_shard)
        shard_rows.append({"path": str(final_shard), "images": len(chunk), "sha256": sha})
        truth_rows.extend((f"{final_shard}#{member}", str(int(item.positive)), item.source, item.label,
                           item.cifar10_class, item.original) for member, item in members)
    with open(staging_dir / "shards.txt", "w", encoding="utf-8") as handle:
        handle.writelines(f"{shard}\n" for shard in shards)
    with open(staging_dir / "ground_truth.tsv", "w", encoding="utf-8") as handle:
        handle.write("\t".join(TRUTH_COLUMNS) + "\n")
        handle.writelines("\t".join(row) + "\n" for row in truth_rows)

    n_positive = sum(item.positive for item in pool)
    by_source: dict[str, int] = {}
    positive_by_source: dict[str, int] = {}
    by_class = {cls: 0 for cls in CIFAR10_CLASSES}
    for item in pool:
        by_source[item.source] = by_source.get(item.source, 0) + 1
        if item.positive:
            positive_by_source[item.source] = positive_by_source.get(item.source, 0) + 1
            by_class[item.cifar10_class] += 1
    used = {"tinyimagenet", "cifar100"} & set(by_source)
    manifest = {
        "format_version": FORMAT_VERSION,
        "scenario": SCENARIO,
        "pool": name,
        "unlabeled": _shard_pattern(shards),
        "shard_list": str(final_dir / "shards.txt"),
        "ground_truth": str(final_dir / "ground_truth.tsv"),
        "true_class_prior": round(n_positive / len(pool), 6),
        "counts": {"images": len(pool), "positive": n_positive, "negative": len(pool) - n_positive,
                   "by_source": dict(sorted(by_source.items())),
                   "positive_by_source": dict(sorted(positive_by_source.items())),
                   "positive_by_cifar10_class": by_class},
        "images_per_shard": images_per_shard,
        "shards": shard_rows,
        "member_names": "<position in the pool, zero-padded>.<png|jpeg>; ground_truth.tsv names the original",
        "seeds": {"pool_order": POOL_ORDER_SEED,
                  **({"webcrawl_positives": WEBCRAWL_SEED} if name == "webcrawl" else {})},
        "inputs_sha256": {rel: sha for rel, sha in inputs.items()
                          if any(rel in (TARS[src], LABELS[src]) for src in used) or rel == TINY_CLASSES},
        "created_unix": int(time.time()),
    }
    if name == "webcrawl":
        manifest["webcrawl"] = {"target_prior": WEBCRAWL_PRIOR,
                                "rule": "all images of no CIFAR-10 class + round(prior x negatives / (1 - prior)) "
                                        "class-map positives, evenly across the positive Tiny ImageNet classes"}
    with atomic_write(staging_dir / "manifest.json") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
    progress(f"  pool {name}: {len(pool):,} images in {len(shards)} shard(s), {n_positive:,} positives "
             f"(prior {n_positive / len(pool):.4f})")
    return manifest


# -------------------------------------------------------------------------------- materialise


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _verify(data_dir: Path) -> dict[str, str]:
    """sha256 of every input: the tars must match ``SHA256SUMS``; the CSVs must too where it lists them."""
    listed = read_sha256sums(data_dir)
    tars = list(TARS.values())
    csvs = [*LABELS.values(), TINY_CLASSES]
    inputs = verify_inputs(data_dir, tars + [rel for rel in csvs if rel in listed])
    for rel in csvs:
        if rel not in inputs:
            if not (data_dir / rel).is_file():
                raise DataError(f"missing input file {data_dir / rel}")
            inputs[rel] = _sha256_file(data_dir / rel)
    return dict(sorted(inputs.items()))


def _settings(out: Path, inputs: dict[str, str], images_per_shard: int) -> dict:
    """The manifest fields that must match for an existing build to be reused."""
    return {
        "format_version": FORMAT_VERSION,
        "scenario": SCENARIO,
        "root": str(out),
        "inputs_sha256": inputs,
        "class_names": list(CIFAR10_CLASSES),
        "n_labeled_per_class": list(N_LABELED_PER_CLASS),
        "subset_seeds": list(SUBSET_SEEDS),
        "pool_order_seed": POOL_ORDER_SEED,
        "webcrawl": {"prior": WEBCRAWL_PRIOR, "seed": WEBCRAWL_SEED},
        "images_per_shard": images_per_shard,
    }


def _entry(part: str, pool: str | None = None) -> str:
    return f"pools/{pool}" if part == "pools" else part


def materialise(
    data_dir: Path,
    out: Path,
    parts: Sequence[str] = PARTS,
    pools: Sequence[str] = POOLS,
    *,
    force: bool = False,
    images_per_shard: int = IMAGES_PER_SHARD,
    progress: Progress = _stderr,
) -> dict | None:
    """Write the requested parts (and, for ``pools``, the requested pools) under ``out``; return the
    new root manifest, or None (changing nothing) when ``out/manifest.json`` already matches and
    covers them, unless ``force``. ``positive`` links to ``train`` files, so it pulls ``train`` in when
    no finished ``train/`` exists.

    Raises:
        DataError: an input is missing, corrupt, differs from SHA256SUMS or breaks the layout rules.
        UsageError: an unknown part or pool name, or ``images_per_shard`` < 1.
    """
    unknown = sorted(set(parts) - set(PARTS)) + sorted(set(pools) - set(POOLS))
    if unknown:
        raise UsageError(f"unknown part(s) or pool(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}; "
                         f"pools: {', '.join(POOLS)}")
    if images_per_shard < 1:
        raise UsageError(f"images per shard {images_per_shard}: must be >= 1")
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    data_dir = Path(os.path.abspath(data_dir))
    progress(f"verifying the inputs in {data_dir}")
    inputs = _verify(data_dir)
    settings = _settings(out, inputs, images_per_shard)

    old = _read_manifest(out)
    compatible = old is not None and all(old.get(key) == value for key, value in settings.items())
    finished_parts = {part for part in old.get("parts", []) if part != "pools" and (out / part).exists()
                      } if compatible else set()
    finished_pools = {pool for pool in old.get("pools", {}) if (out / _entry("pools", pool) / "manifest.json").is_file()
                      } if compatible else set()
    requested = set(parts)
    wanted_pools = set(pools) if "pools" in requested else set()
    if not force and requested - {"pools"} <= finished_parts and wanted_pools <= finished_pools:
        progress(f"already materialised: {out} (use --force to rebuild)")
        return None
    if not force:  # build only what is missing
        requested = {part for part in requested if part == "pools" or part not in finished_parts}
        wanted_pools -= finished_pools
    if "positive" in requested and "train" not in finished_parts:
        requested.add("train")
    if not wanted_pools:
        requested.discard("pools")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    manifest: dict = {**settings, "parts": [], "pools": {}}
    try:
        train = None
        if "train" in requested or "positive" in requested:
            train = load_cifar10(data_dir, "cifar10-train")
        if "train" in requested:
            for cls, files in train.items():
                (staging / "train" / cls).mkdir(parents=True)
                for file_name, data in files:
                    _write_bytes(staging / "train" / cls / file_name, data)
            manifest["train"] = {"images": sum(map(len, train.values())),
                                 "per_class": {cls: len(files) for cls, files in train.items()}}
            progress(f"  train: {manifest['train']['images']:,} PNGs ({time.perf_counter() - started:.1f} s)")

        if "test" in requested:
            test = load_cifar10(data_dir, "cifar10-test")
            for cls, files in test.items():
                (staging / "test" / cls).mkdir(parents=True)
                for file_name, data in files:
                    _write_bytes(staging / "test" / cls / file_name, data)
            manifest["test"] = {"images": sum(map(len, test.values())),
                                "per_class": {cls: len(files) for cls, files in test.items()}}
            progress(f"  test: {manifest['test']['images']:,} PNGs ({time.perf_counter() - started:.1f} s)")

        if "positive" in requested:
            assert train is not None
            train_root = staging if "train" in requested else out
            n_max = max(N_LABELED_PER_CLASS)
            short = {cls: len(files) for cls, files in train.items() if len(files) < n_max}
            if short:
                raise DataError(f"{TARS['cifar10-train']}: fewer than {n_max} images in class(es) {short}")
            subsets: dict[str, dict[str, list[str]]] = {}
            for seed in SUBSET_SEEDS:
                permutations = positive_permutations({cls: [n for n, _ in files] for cls, files in train.items()}, seed)
                subsets[f"seed{seed}"] = {cls: names[:n_max] for cls, names in permutations.items()}
                for n in N_LABELED_PER_CLASS:
                    for cls, names in permutations.items():
                        class_dir = staging / "positive" / f"nl{n}-seed{seed}" / cls
                        class_dir.mkdir(parents=True)
                        for file_name in names[:n]:
                            _link_or_copy(train_root / "train" / cls / file_name, class_dir / file_name)
            manifest["positive"] = {
                "subsets": {f"nl{n}-seed{s}": n * len(CIFAR10_CLASSES)
                            for s in SUBSET_SEEDS for n in N_LABELED_PER_CLASS},
                "rule": "numpy default_rng(seed).permutation of each class's train file names (sorted), classes in "
                        "output order; nl<n> takes the first n; files are hard links to train/",
                f"first_{n_max}_per_class": subsets,
            }
            progress(f"  positive: {len(SUBSET_SEEDS) * len(N_LABELED_PER_CLASS)} subsets")

        if wanted_pools:
            items = load_pool_items(data_dir)
            progress(f"  read {len(items['tinyimagenet']):,} Tiny ImageNet + {len(items['cifar100']):,} CIFAR-100 "
                     f"images ({time.perf_counter() - started:.1f} s)")
            for name in POOLS:
                if name in wanted_pools:
                    pool_manifest = build_pool(name, plan_pool(name, items), staging / "pools" / name,
                                               out / "pools" / name, images_per_shard=images_per_shard,
                                               inputs=inputs, progress=progress)
                    manifest["pools"][name] = _pool_summary(pool_manifest)

        # Swap the new parts in. The old manifest goes first so a crash mid-swap never leaves a tree
        # that claims to be complete.
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
        replaced = staging / ".replaced"
        replaced.mkdir()
        entries = [_entry(part) for part in sorted(requested - {"pools"})]
        entries += [_entry("pools", name) for name in sorted(wanted_pools)]
        for entry in entries:
            (out / entry).parent.mkdir(parents=True, exist_ok=True)
            if (out / entry).exists():
                os.replace(out / entry, replaced / entry.replace("/", "-"))
            os.replace(staging / entry, out / entry)
        with atomic_write(out / "classes.txt") as handle:
            handle.write("\n".join(CIFAR10_CLASSES) + "\n")

        # Carry over what the previous (compatible) manifest said about what was not rebuilt now.
        if compatible:
            for part in finished_parts - requested:
                if part in old:
                    manifest[part] = old[part]
            for name in finished_pools - wanted_pools:
                manifest["pools"][name] = old["pools"][name]
        manifest["parts"] = sorted(finished_parts | requested | ({"pools"} if manifest["pools"] else set()))
        manifest["pools"] = {name: manifest["pools"][name] for name in POOLS if name in manifest["pools"]}
        manifest["materialise_seconds"] = round(time.perf_counter() - started, 2)
        manifest["created_unix"] = int(time.time())
        write_json_atomic(out / "manifest.json", manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _pool_summary(pool_manifest: dict) -> dict:
    counts = pool_manifest["counts"]
    return {"unlabeled": pool_manifest["unlabeled"], "shard_list": pool_manifest["shard_list"],
            "ground_truth": pool_manifest["ground_truth"], "images": counts["images"],
            "positive": counts["positive"], "true_class_prior": pool_manifest["true_class_prior"],
            "by_source": counts["by_source"], "shards": len(pool_manifest["shards"])}


LAYOUT = """\
{root}/
  classes.txt                                 the CIFAR-10 class names in output order
  train/<class>/<name>.png                    cifar10-train-10k (10,000): KD-original's transfer set
  positive/nl<n>-seed<s>/<class>/<name>.png   L^t, n in {{10,20,50,100}}, s in {{0,1,2}} (hard links to train/)
  test/<class>/<name>.png                     cifar10-test (10,000)
  pools/<pool>/<pool>-<k>.tar                 ustar shards of the unlabeled pool (bytes as in the source tars)
  pools/<pool>/shards.txt                     the shard list: pucli --unlabeled <root>/pools/<pool>/shards.txt
  pools/<pool>/ground_truth.tsv               path, positive, source, label, cifar10_class, original
  pools/<pool>/manifest.json                  the pool's counts, prior, shards, seeds
  manifest.json                               what is built, counts, seeds, input sha256s"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Materialise the cifar-pu benchmark scenario in pucli's cache.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (default: $PUCLI_SHARED_DATA or <repo>/../shared/data)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output root (default: <pucli cache>/benchmarks/cifar-pu)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to build (default: all of {','.join(PARTS)})")
    parser.add_argument("--pools", default=",".join(POOLS),
                        help=f"comma-separated pools to build with the pools part (default: all of {','.join(POOLS)})")
    parser.add_argument("--images-per-shard", type=int, default=IMAGES_PER_SHARD,
                        help=f"members per pool shard (default: {IMAGES_PER_SHARD:,})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    args = parser.parse_args(argv)

    out = Path(os.path.abspath(args.out or default_out_dir()))
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    pools = [pool.strip() for pool in args.pools.split(",") if pool.strip()]
    try:
        manifest = materialise(args.data_dir or default_data_dir(), out, parts, pools, force=args.force,
                               images_per_shard=args.images_per_shard)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted; {out} is as it was before this run", file=sys.stderr)
        return 130
    if manifest is not None:
        _stderr(f"materialised {', '.join(manifest['parts'])} in {manifest['materialise_seconds']:.1f} s")
        _stderr(LAYOUT.format(root=out))
        for name, pool in manifest["pools"].items():
            _stderr(f"  {name}: {pool['images']:,} images, prior {pool['true_class_prior']:.4f}: "
                    f"--unlabeled {pool['shard_list']}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
