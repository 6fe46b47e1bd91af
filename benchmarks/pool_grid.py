"""The pool grid (issue 15): PU selection on many pools, each measured against its own ceiling.

Every pool is built from ``../shared/data`` (the IDX files, read and checked with
``benchmarks/mnist_pu_data.py``'s readers) and written as image files in pucli's cache, since pucli
reads files. The task is MNIST digits; the labeled subset ``L^t`` is the mnist-pu scenario's
``positive/nl<n_l>-seed<seed>`` (MNIST train 0..29,999, the teacher's own training set).

Axes of a cell
--------------
``size``      pool size: 5,000 / 20,000 / 100,000 (any integer is accepted, e.g. the issue's 34,000).
``prior``     the pool's class prior: 0.02 / 0.05 / 0.10 / 0.20 / 0.30 / 0.50 (any value in (0, 1)).
``neg``       the negatives:

              ============  ===========================================================================
              fashion       Fashion-heavy: 7/8 Fashion-MNIST (train + t10k, 70,000), 1/8 KMNIST (t10k,
                            10,000); mnist-pu's own mix is 6/7 Fashion
              kmnist        KMNIST-heavy: 3/5 KMNIST, 2/5 Fashion
              even          an even mix: 1/2 KMNIST, 1/2 Fashion
              near          near-task: the task is the digits 0-4 (L^t keeps only those classes) and
                            the negatives are MNIST digits 5-9 (same domain, other classes: MNIST
                            train 0..59,999; those in 0..29,999 the teacher saw in training, as
                            digits 5-9, i.e. as the other classes they are)
              ============  ===========================================================================

              Pool positives are always MNIST train 30,000..59,999 (digits 0-4 of it for ``near``),
              images the teacher never saw.
``capture``   how the pool's images (positives and negatives alike) are stored; ``L^t`` stays as
              it is (28 x 28 grayscale PNG):

              ============  ===========================================================================
              as-is         28 x 28 grayscale PNG, the IDX pixels
              jpeg          grayscale, resized (bicubic) to a side of 64-240 px, JPEG quality 70-95
              tint          28 x 28 RGB PNG: ink in one random bright colour (each channel 150-255)
                            on a background in a random dark one (each channel 0-80), so the digits
                            keep their polarity (bright on dark)
              mixed         per image: a side of 28-240 px, tinted or not (1/2), PNG / JPEG / WebP
              ============  ===========================================================================

              Each image's style is drawn from a generator seeded by (capture, source, index), so a
              file is the same in every cell and is written once (``<work>/images/<capture>/``).
``nl``        labeled images per class: 1, 10.
``seed``      0, 1, 2: the draw of the pool's members (and of ``L^t``, the selector's seed).
``teacher``   ``lenet`` (LeNet-5, ``--teacher``), ``bn`` (a timm CNN with BatchNorm, ``--bn-teacher``;
              default the ``test_resnet`` of ``benchmarks/train_bn_teacher.py`` when it is there) or
              ``timm`` (``resnet10t`` at 28 x 28, one channel, trained by timm's own ``train.py``: its
              ``model_best.pth.tar`` as is, ``--timm-teacher``; default
              ``<pucli cache>/benchmarks/pool-grid/timm-teacher/resnet10t.pth.tar``, where
              ``benchmarks/train_timm_teacher.py`` puts it).

A cell asks for ``round(prior * size)`` positives and the rest split between the negative sources;
where a source has fewer images than the cell asks for, the cell is **infeasible** and reported as
such (nothing is copied or substituted): e.g. 100,000 images at a prior below 0.20 need more than
the 80,000 Fashion + KMNIST negatives there are, and 20,000 KMNIST-heavy images need a prior >= 0.2.

The design (``--design``)
-------------------------
Not the full product (~10,000 cells): a base cell, every axis swept alone from it, and pairs of
axes at the low priors where the selector is weakest:

* base: 20,000 images, prior 0.20, fashion-heavy, as-is, LeNet-5; n_l 1 and 10, seeds 0-2;
* one axis at a time from the base (n_l 1 and 10, seeds 0-2): size 5,000 / 100,000; prior 0.02 /
  0.05 / 0.10 / 0.30 / 0.50; negatives kmnist / even / near; capture jpeg / tint / mixed; teacher bn;
* pairs (n_l 10, seeds 0-2): prior {0.02, 0.05} x {capture mixed, teacher bn, negatives near,
  negatives even}; prior {0.02, 0.05} x size 5,000 (and x KMNIST-heavy at 5,000, the size where that
  mix is feasible); teacher bn x capture mixed; negatives near x capture mixed; size 100,000 x
  prior 0.30 (mnist-pu's composition, from other files);
* the issue's worst case: 34,000 images, prior 0.03, fashion-heavy, as-is, n_l 10, seeds 0-2;
* the timm ``train.py`` teacher (n_l 10, seeds 0-2): the base cell and prior 0.02 / 0.05 with
  teacher timm (listed last, so the cells before keep their order).

Per cell (one JSON file under ``<work>/cells-v2/``; version 1, before the propagation ranking, in ``cells/``)
------------------------------------------------
* ``pu_given``: PU-s1 of ``run_selection`` with the true prior (pucli's defaults: ``ranking="auto"``,
  i.e. label propagation keeping the top ``pi * N`` at n_l 10, the nnPU head at n_l 1);
* ``pu_auto``: PU-s1 with the prior estimated (``--prior auto``), and the estimate's absolute and
  relative error;
* ``pu_nnpu``: PU-s1 with the true prior and ``ranking="nnpu"`` (the nnPU head smoothed over the
  pool's graph, keeping the head's ``F(x) > 0`` count: pucli's default before 2026-12-01);
* ``confidence``: the top ``pi * N`` of the pool by the teacher's max softmax (``pi`` the true prior);
* ``pvu``: a plain class-balanced P-vs-U logistic classifier (``pucli.pu.mixture_proportion.logistic_fit``) on
  the same frozen descriptors, 5-fold cross-fitted (each pool image scored by a fold that did not
  train on it), keeping its top ``pi * N``;
* ``bound``: the supervised bound: a linear classifier (plain logistic regression on standardised
  descriptors, full batch, L-BFGS, L2 1e-4, no class weights) trained on the pool's *true* labels
  of the same descriptors, 5-fold cross-fitted, keeping the images it calls positive (logit > 0);
  ``top_k_f1`` is the F1 of the same held-out scores keeping their top ``pi * N``.

Precision / recall / F1 come from ``_common.prf`` against the ground truth, which pucli never sees.
The load average is recorded before and after each cell (the machine is shared).

Usage::

    python benchmarks/pool_grid.py --design                    # list the design's cells (feasibility)
    python benchmarks/pool_grid.py --cell size=5000,prior=0.2,nl=10,seed=0 --threads 1
    python benchmarks/pool_grid.py --cell size=34000,prior=0.03,nl=10,seed=0 --threads 1
    python benchmarks/pool_grid.py --threads 1                 # the whole design (resumable)
    python benchmarks/pool_grid.py --report                    # results JSON, markdown table, heat maps

A ``--cell`` spec is ``key=value`` pairs over size, prior, neg, capture, nl, seed, teacher; missing keys
take the base cell's values. Finished cells are skipped on a rerun (``--force`` reruns them).
``--report`` (also run after cells) writes ``benchmarks/results/pool_grid.json``, prints the markdown
table on stdout and draws ``docs/pool_grid_nl<n>.png`` (one heat map per n_l; matplotlib, the
``bench`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import Stopwatch, kept_by_source, load_average, machine, prf, write_json_atomic
from mnist_pu_data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    INPUT_FILES,
    default_data_dir,
    load_split,
    read_idx,
    verify_inputs,
)
from mnist_pu_data import default_out_dir as default_root

from pucli.paths import cache_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "pool_grid.json"
CACHE_VERSION = 2  # 2: the propagation ranking (pucli's default since 2026-12-01) and the nnpu row
NEGATIVE_MIXES = {"fashion": {"fashion": 7 / 8, "kmnist": 1 / 8}, "kmnist": {"fashion": 2 / 5, "kmnist": 3 / 5},
                  "even": {"fashion": 1 / 2, "kmnist": 1 / 2}, "near": {"mnist-other": 1.0}}
CAPTURES = ("as-is", "jpeg", "tint", "mixed")
TEACHERS = ("lenet", "bn", "timm")
NEAR_TASK_DIGITS = (0, 1, 2, 3, 4)
POOL_POSITIVE_RANGE = (30_000, 60_000)
FASHION_T10K = ("fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz")
FOLDS = 5
# The timm train.py teacher's cells (n_l 10, seeds 0-2), after the rest of the design.
TIMM_TEACHER_CELLS: tuple[dict[str, Any], ...] = ({"teacher": "timm"}, {"prior": 0.02, "teacher": "timm"},
                                                  {"prior": 0.05, "teacher": "timm"})


def log(message: str) -> None:
    print(f"[pool-grid {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- cells -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    size: int = 20_000
    prior: float = 0.20
    neg: str = "fashion"
    capture: str = "as-is"
    nl: int = 10
    seed: int = 0
    teacher: str = "lenet"

    def __post_init__(self) -> None:
        if self.neg not in NEGATIVE_MIXES:
            raise SystemExit(f"neg={self.neg}: one of {', '.join(NEGATIVE_MIXES)}")
        if self.capture not in CAPTURES:
            raise SystemExit(f"capture={self.capture}: one of {', '.join(CAPTURES)}")
        if self.teacher not in TEACHERS:
            raise SystemExit(f"teacher={self.teacher}: one of {', '.join(TEACHERS)}")
        if not 0 < self.prior < 1 or self.size < 100:
            raise SystemExit(f"prior={self.prior} size={self.size}: need 0 < prior < 1 and size >= 100")

    @property
    def name(self) -> str:
        return (f"n{self.size}-p{self.prior:g}-{self.neg}-{self.capture}-{self.teacher}-nl{self.nl}-s{self.seed}")

    @classmethod
    def parse(cls, spec: str) -> Cell:
        fields: dict[str, Any] = {}
        types = {"size": int, "prior": float, "neg": str, "capture": str, "nl": int, "seed": int, "teacher": str}
        for part in filter(None, spec.split(",")):
            key, _, value = part.partition("=")
            if key not in types:
                raise SystemExit(f"--cell {spec}: unknown key {key!r} (one of {', '.join(types)})")
            fields[key] = types[key](value)
        return cls(**fields)

    def composition(self) -> dict[str, int]:
        """How many images of each source the pool holds (positives first)."""
        positives = round(self.prior * self.size)
        negatives = self.size - positives
        mix = NEGATIVE_MIXES[self.neg]
        counts = {"mnist": positives}
        names = list(mix)
        for name in names[:-1]:
            counts[name] = round(mix[name] * negatives)
        counts[names[-1]] = negatives - sum(counts[n] for n in names[:-1])
        return counts


def design() -> list[Cell]:
    """The cells of the design, in the order they run (base and the worst case first)."""
    base = Cell()
    cells: list[Cell] = []

    def add(cell: Cell) -> None:
        if cell not in cells:
            cells.append(cell)

    sweeps: list[dict[str, Any]] = [{}]
    sweeps += [{"size": s} for s in (5_000, 100_000)]
    sweeps += [{"prior": p} for p in (0.02, 0.05, 0.10, 0.30, 0.50)]
    sweeps += [{"neg": n} for n in ("kmnist", "even", "near")]
    sweeps += [{"capture": c} for c in ("jpeg", "tint", "mixed")]
    sweeps += [{"teacher": "bn"}]
    pairs: list[dict[str, Any]] = []
    for prior in (0.02, 0.05):
        pairs += [{"prior": prior, "capture": "mixed"}, {"prior": prior, "teacher": "bn"},
                  {"prior": prior, "neg": "near"}, {"prior": prior, "neg": "even"},
                  {"prior": prior, "size": 5_000}, {"prior": prior, "size": 5_000, "neg": "kmnist"}]
    pairs += [{"teacher": "bn", "capture": "mixed"}, {"neg": "near", "capture": "mixed"},
              {"size": 100_000, "prior": 0.30}]
    for seed in (0, 1, 2):
        add(replace(base, seed=seed, nl=10))
        add(Cell(size=34_000, prior=0.03, nl=10, seed=seed))
    for change in sweeps:
        for nl in (10, 1):
            for seed in (0, 1, 2):
                add(replace(base, nl=nl, seed=seed, **change))
    for change in pairs:
        for seed in (0, 1, 2):
            add(replace(base, nl=10, seed=seed, **change))
    for change in TIMM_TEACHER_CELLS:
        for seed in (0, 1, 2):
            add(replace(base, nl=10, seed=seed, **change))
    return cells


def default_timm_teacher() -> Path:
    """``<pucli cache>/benchmarks/pool-grid/timm-teacher/resnet10t.pth.tar`` (``train_timm_teacher.py``'s)."""
    return cache_dir() / "benchmarks" / "pool-grid" / "timm-teacher" / "resnet10t.pth.tar"


def teacher_file(cell: Cell, args: argparse.Namespace) -> Path | None:
    """The model file of a cell's teacher axis value."""
    return {"lenet": args.teacher, "bn": args.bn_teacher, "timm": args.timm_teacher}[cell.teacher]


# --- the source images -------------------------------------------------------------------------------


class Sources:
    """The IDX arrays each pool draws from, checked against ``SHA256SUMS`` once."""

    def __init__(self, data_dir: Path) -> None:
        files = [f for pair in INPUT_FILES.values() for f in pair] + list(FASHION_T10K)
        verify_inputs(data_dir, files)
        mnist_x, mnist_y = load_split(data_dir, "mnist", "train")
        fashion_x, _ = load_split(data_dir, "fashion", "train")
        fashion_t10k = read_idx(data_dir / FASHION_T10K[0], IDX_IMAGES_MAGIC)
        read_idx(data_dir / FASHION_T10K[1], IDX_LABELS_MAGIC)  # checked, not needed
        kmnist_x, _ = load_split(data_dir, "kmnist", "test")
        self.images = {"mnist": mnist_x, "fashion": np.concatenate([fashion_x, fashion_t10k]), "kmnist": kmnist_x}
        self.mnist_labels = mnist_y
        lo, hi = POOL_POSITIVE_RANGE
        all_pool_digits = np.arange(lo, hi)
        near = np.isin(mnist_y, NEAR_TASK_DIGITS)
        # Candidate indices (positions in the source array) per role.
        self.positives = {"all": all_pool_digits, "near": all_pool_digits[near[lo:hi]]}
        self.near_negatives = np.flatnonzero(~near)  # digits 5-9 anywhere in MNIST train

    def candidates(self, source: str, near_task: bool) -> tuple[str, np.ndarray]:
        """(array the images come from, candidate indices) of a pool source."""
        if source == "mnist":
            return "mnist", self.positives["near" if near_task else "all"]
        if source == "mnist-other":
            return "mnist", self.near_negatives
        return source, np.arange(len(self.images[source]))


def _style(capture: str, source: str, index: int) -> dict[str, Any]:
    """The seeded capture style of one image: side, tint colours, format, quality."""
    rng = np.random.default_rng([CAPTURES.index(capture), int(hashlib.sha256(source.encode()).hexdigest()[:8], 16),
                                 index])
    if capture == "as-is":
        return {"side": 28, "tint": None, "format": "png"}
    if capture == "jpeg":
        return {"side": int(rng.integers(64, 241)), "tint": None, "format": "jpeg", "quality": int(rng.integers(70, 96))}
    # Tints keep the polarity of the digits (bright ink on a darker background), so a tinted image
    # converted to grey is still light-on-dark; only colour and contrast change.
    ink, paper = rng.integers(150, 256, 3), rng.integers(0, 81, 3)
    if capture == "tint":
        return {"side": 28, "tint": (ink.tolist(), paper.tolist()), "format": "png"}
    return {"side": int(rng.integers(28, 241)), "tint": (ink.tolist(), paper.tolist()) if rng.random() < 0.5 else None,
            "format": ("png", "jpeg", "webp")[int(rng.integers(0, 3))], "quality": int(rng.integers(70, 96))}


def write_image(pixels: np.ndarray, style: dict[str, Any], path: Path) -> None:
    """One 28 x 28 uint8 image written in its capture style (atomically: a temporary name, then rename)."""
    from PIL import Image

    if style["tint"] is not None:
        ink, paper = (np.array(c, dtype=np.float32) for c in style["tint"])
        alpha = pixels.astype(np.float32)[..., None] / 255.0  # ink where the IDX pixel is bright
        image = Image.fromarray((alpha * ink + (1 - alpha) * paper).round().clip(0, 255).astype(np.uint8), "RGB")
    else:
        image = Image.fromarray(pixels, "L")
    if style["side"] != 28:
        image = image.resize((style["side"], style["side"]), Image.BICUBIC)
    tmp = path.with_name(path.name + ".tmp")
    kwargs = {"quality": style["quality"]} if style["format"] in ("jpeg", "webp") else {}
    image.save(tmp, format=style["format"].upper(), **kwargs)
    os.replace(tmp, path)


def build_pool(cell: Cell, sources: Sources, work: Path) -> tuple[list[Path], np.ndarray, list[str]] | dict[str, Any]:
    """The cell's pool: paths (shuffled), truth (bool) and source of each item; or why it is infeasible."""
    rng = np.random.default_rng([cell.seed, cell.size, round(cell.prior * 1e6), list(NEGATIVE_MIXES).index(cell.neg)])
    near = cell.neg == "near"
    chosen: list[tuple[str, str, int, bool]] = []  # (role, array name, index, positive)
    for role, count in cell.composition().items():
        array, candidates = sources.candidates(role, near)
        if count > len(candidates):
            return {"infeasible": f"{role}: needs {count:,} images, {len(candidates):,} available"}
        picked = rng.choice(candidates, size=count, replace=False)
        chosen += [(role, array, int(i), role == "mnist") for i in sorted(picked.tolist())]
    order = rng.permutation(len(chosen))
    paths, truth, roles = [], [], []
    folder = work / "images" / cell.capture
    for j in order.tolist():
        role, array, index, positive = chosen[j]
        style = _style(cell.capture, array, index)
        path = folder / array / f"{array}-{index:05d}.{ {'jpeg': 'jpg'}.get(style['format'], style['format'])}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(sources.images[array][index], style, path)
        paths.append(path)
        truth.append(positive)
        roles.append(role)
    return paths, np.array(truth), roles


def positives_of(cell: Cell, root: Path) -> tuple[list[Path], list[int]]:
    """L^t: the scenario's nl<n>-seed<s> files (digits 0-4 only for near-task), and their classes."""
    folder = root / "positive" / f"nl{cell.nl}-seed{cell.seed}"
    digits = NEAR_TASK_DIGITS if cell.neg == "near" else range(10)
    paths, labels = [], []
    for digit in digits:
        files = sorted((folder / str(digit)).glob("*.png"))
        if len(files) != cell.nl:
            raise SystemExit(f"{folder / str(digit)}: {len(files)} files, expected {cell.nl}; run mnist_pu_data.py")
        paths += files
        labels += [digit] * len(files)
    return paths, labels


# --- one cell ------------------------------------------------------------------------------------------


def _top(scores: Any, k: int) -> Any:
    from pucli.pu.selection import select_indices

    return select_indices(scores, k)


def _fit_linear(x: Any, y: Any, *, l2: float = 1e-4, iterations: int = 300) -> Any:
    """A plain (unweighted) logistic regression on standardised descriptors, full batch, L-BFGS:
    the supervised bound's classifier. Returns a function descriptors -> logits."""
    import torch

    mean, std = x.mean(0), x.std(0, correction=0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")
    target = y.float()

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda d: ((d - mean) / std) @ weight + bias


def _cross_fitted_supervised(descriptors: Any, truth: Any, seed: int) -> Any:
    """The supervised bound's held-out logits: a linear classifier on the pool's true labels of the
    same descriptors, 5-fold cross-fitted (each image scored by the fold that did not train on it)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    fold = torch.randperm(len(truth), generator=generator) % FOLDS
    logits = torch.empty(len(truth))
    for k in range(FOLDS):
        train = fold != k
        head = _fit_linear(descriptors[train], truth[train])
        with torch.no_grad():
            logits[fold == k] = head(descriptors[fold == k])
    return logits


def run_cell(cell: Cell, args: argparse.Namespace, sources: Sources) -> dict[str, Any]:
    import torch

    from pucli.checkpoints import load_model
    from pucli.data.loading import Preprocess
    from pucli.kd.expand import teacher_soft_targets
    from pucli.pu.descriptors import load_or_extract_descriptors, resolve_positive_augmentation
    from pucli.pu.network import MultiScaleExtractor
    from pucli.pu.options import SelectorOptions
    from pucli.pu.mixture_proportion import cross_fitted_scores
    from pucli.pu.selection import run_selection

    record: dict[str, Any] = {"cell": asdict(cell), "name": cell.name, "composition": cell.composition(),
                              "load_avg_before": load_average(), "threads": torch.get_num_threads()}
    with Stopwatch() as build_watch:
        built = build_pool(cell, sources, args.work)
    if isinstance(built, dict):
        return {**record, **built}
    pool, truth_np, roles = built
    record["build_s"] = round(build_watch.seconds, 2)
    truth = torch.from_numpy(truth_np)
    teacher_path = teacher_file(cell, args)
    if teacher_path is None or not Path(teacher_path).is_file():
        return {**record, "not_run": f"teacher {cell.teacher} missing: {teacher_path}"}
    teacher = load_model(teacher_path)
    record["teacher_path"] = str(teacher_path)
    positive_paths, positive_labels = positives_of(cell, args.root)
    k = round(cell.prior * len(pool))
    timings: dict[str, float] = {}
    selections: dict[str, Any] = {}
    for label, prior, ranking in (("pu_given", cell.prior, "auto"), ("pu_auto", None, "auto"),
                                  ("pu_nnpu", cell.prior, "nnpu")):
        options = SelectorOptions(class_prior=prior, seed=cell.seed, ranking=ranking)
        with Stopwatch() as watch:
            result = run_selection(teacher, positive_paths, pool, options, workers=0, positive_labels=positive_labels)
        if len(result.paths) != len(pool):
            raise SystemExit(f"{cell.name}: {len(pool) - len(result.paths)} unreadable pool images")
        timings[label] = round(watch.seconds, 2)
        entry = {**prf(result.selected, truth), "kept_by_source": kept_by_source(result.selected, roles),
                 "class_prior": result.class_prior,
                 "timings_s": {n: round(v, 2) for n, v in result.timings.items()},
                 "final_risk": result.history[-1] if result.history else None,
                 "ranking": result.metadata["graph"].get("ranking", "nnpu"),
                 "descriptor_cache_hit": result.from_cache}
        if result.prior_estimate is not None:
            estimate = result.prior_estimate.class_prior
            entry["prior_estimate"] = result.prior_estimate.as_dict()
            entry["prior_error_abs"] = round(estimate - cell.prior, 4)
            entry["prior_error_rel"] = round((estimate - cell.prior) / cell.prior, 4)
        selections[label] = entry
        log(f"{cell.name} {label}: F1 {entry['f1']} (P {entry['precision']} R {entry['recall']}, "
            f"kept {entry['selected']}, prior {result.class_prior:.4f}) in {watch.seconds:.0f} s")
    # The same frozen descriptors as the selector's (from the descriptor cache it just wrote).
    options = SelectorOptions(class_prior=cell.prior, seed=cell.seed)
    with Stopwatch() as watch:
        extractor = MultiScaleExtractor(teacher.model, options.scales)
        augmentation = resolve_positive_augmentation(teacher.config, options.augment_positives, len(positive_paths),
                                                     options.seed)
        descriptors = load_or_extract_descriptors(teacher, extractor, positive_paths, pool, Preprocess(teacher.config),
                                                  scales=options.scales, device=torch.device("cpu"),
                                                  augmentation=augmentation)
        assert descriptors is not None and len(descriptors.unlabeled) == len(pool)
        pool_desc = descriptors.unlabeled
        _, pvu_scores = cross_fitted_scores(descriptors.positive, pool_desc, folds=FOLDS,
                                            positive_labels=torch.tensor(positive_labels), seed=cell.seed)
        selections["pvu"] = {**prf(_top(pvu_scores, k), truth), "budget": k}
        bound_logits = _cross_fitted_supervised(pool_desc, truth, cell.seed)
        selections["bound"] = {**prf(bound_logits > 0, truth), "top_k_f1": prf(_top(bound_logits, k), truth)["f1"]}
    timings["pvu_and_bound"] = round(watch.seconds, 2)
    with Stopwatch() as watch:
        kept, soft = teacher_soft_targets(teacher, pool, workers=0)
        assert len(kept) == len(pool)
        selections["confidence"] = {**prf(_top(soft.max(dim=1).values, k), truth), "budget": k}
    timings["confidence"] = round(watch.seconds, 2)
    for label in ("pvu", "bound", "confidence"):
        log(f"{cell.name} {label}: F1 {selections[label]['f1']}")
    record.update(selections)
    record.update({"pool": len(pool), "positives_in_pool": int(truth.sum()), "timings_s": timings,
                   "wall_s": round(sum(timings.values()) + record["build_s"], 2), "load_avg_after": load_average(),
                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return record


# --- the report --------------------------------------------------------------------------------------


METRICS = (("pu_given", "PU-s1 (pi given)"), ("pu_auto", "PU-s1 (auto)"), ("pu_nnpu", "nnPU ranking (pi given)"),
           ("confidence", "confidence"),
           ("pvu", "P-vs-U logistic"), ("bound", "supervised bound"))


def cells_dir(work: Path, version: int = CACHE_VERSION) -> Path:
    """Where the cells of this harness version live (version 1, the nnPU ranking alone: ``cells/``)."""
    return work / ("cells" if version == 1 else f"cells-v{version}")


def load_cells(work: Path, version: int = CACHE_VERSION) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(cells_dir(work, version).glob("*.json"))]


def markdown_table(records: list[dict[str, Any]]) -> str:
    head = ("| cell (size, prior, negatives, capture, teacher, n_l, seed) | PU-s1 F1 (pi given) | PU-s1 F1 (auto) "
            "| prior estimate (error) | nnPU ranking F1 (pi given) | confidence F1 | P-vs-U F1 | bound F1 | wall s "
            "| load before / after |")
    lines = [head, "|" + "---|" * 10]
    for r in records:
        c = r["cell"]
        label = f"{c['size']:,}, {c['prior']:g}, {c['neg']}, {c['capture']}, {c['teacher']}, {c['nl']}, {c['seed']}"
        if "pu_given" not in r:
            lines.append(f"| {label} | " + " | ".join(["not run"] * 7) + f" | - | {r.get('infeasible') or r.get('not_run')} |")
            continue
        g, a = r["pu_given"], r["pu_auto"]
        est = a.get("prior_estimate", {}).get("class_prior", a["class_prior"])
        lines.append(
            f"| {label} | {g['f1']:.3f} (P {g['precision']:.3f}, R {g['recall']:.3f}, {g['selected']:,} kept) "
            f"| {a['f1']:.3f} (P {a['precision']:.3f}, R {a['recall']:.3f}) | {est:.4f} ({a['prior_error_abs']:+.4f}, "
            f"{100 * a['prior_error_rel']:+.0f} %) | {r['pu_nnpu']['f1']:.3f} | {r['confidence']['f1']:.3f} | {r['pvu']['f1']:.3f} "
            f"| {r['bound']['f1']:.3f} | {r['wall_s']:.0f} | {r['load_avg_before'][0]:.2f} / {r['load_avg_after'][0]:.2f} |")
    return "\n".join(lines)


def heat_maps(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per n_l: rows the cells (mean F1 over the seeds run), columns the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    done = [r for r in records if "pu_given" in r]
    for nl in sorted({r["cell"]["nl"] for r in done}):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in done:
            if r["cell"]["nl"] == nl:
                c = r["cell"]
                groups.setdefault(f"{c['size']:,} · pi {c['prior']:g} · {c['neg']} · {c['capture']} · {c['teacher']}",
                                  []).append(r)
        rows = list(groups)
        values = np.array([[np.mean([r[m]["f1"] for r in groups[row]]) for m, _ in METRICS] for row in rows])
        fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(METRICS), 1.2 + 0.45 * len(rows)))
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(METRICS)), [name for _, name in METRICS], rotation=20, ha="right")
        ax.set_yticks(range(len(rows)), [f"{row} (seeds: {len(groups[row])})" for row in rows])
        for i in range(len(rows)):
            for j in range(len(METRICS)):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center",
                        color="black" if values[i, j] > 0.6 else "white", fontsize=9)
        ax.set_title(f"Pool grid, n_l = {nl}: selection F1 (mean over seeds run)")
        fig.colorbar(image, ax=ax, fraction=0.03)
        fig.tight_layout()
        path = out_dir / f"pool_grid_nl{nl}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(args: argparse.Namespace) -> None:
    records = load_cells(args.work)
    planned = {c.name for c in design()}
    ran = {r["name"] for r in records if "pu_given" in r}
    results = {"benchmark": "pool-grid (issue 15)", "design_cells": len(planned), "cells_run": sorted(ran),
               "design_cells_not_run": sorted(planned - ran), "machine": machine(), "cells": records}
    write_json_atomic(args.results, results)
    print(markdown_table(records))
    if records and not args.no_plots:
        for path in heat_maps(records, REPO / "docs"):
            log(f"wrote {path}")
    log(f"wrote {args.results}: {len(ran)} cells run, {len(planned - ran)} of the design's {len(planned)} not run")


# --- command line ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", action="append", default=[], help="a cell, key=value pairs (repeatable)")
    parser.add_argument("--design", action="store_true", help="list the design's cells and their feasibility")
    parser.add_argument("--report", action="store_true", help="only write the results JSON, table and heat maps")
    parser.add_argument("--force", action="store_true", help="rerun cells already finished")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", type=Path, default=None, help="the IDX files [default: ../shared/data]")
    parser.add_argument("--root", type=Path, default=None,
                        help="mnist-pu root (its positive/ subsets) [default: <pucli cache>/benchmarks/mnist-pu]")
    parser.add_argument("--teacher", type=Path, default=None, help="LeNet-5 teacher [default: <root>/teacher/lenet5.safetensors]")
    parser.add_argument("--bn-teacher", type=Path,
                        default=cache_dir() / "benchmarks" / "mnist-pu" / "bn-teacher" / "test_resnet.safetensors")
    parser.add_argument("--timm-teacher", type=Path, default=default_timm_teacher(),
                        help="timm train.py teacher (teacher=timm) [default: <pucli cache>/benchmarks/pool-grid/"
                             "timm-teacher/resnet10t.pth.tar, from benchmarks/train_timm_teacher.py]")
    parser.add_argument("--work", type=Path, default=cache_dir() / "benchmarks" / "pool-grid",
                        help="cache of images and cell results [default: <pucli cache>/benchmarks/pool-grid]")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.root = args.root or default_root()
    args.teacher = args.teacher or args.root / "teacher" / "lenet5.safetensors"
    args.data_dir = args.data_dir or default_data_dir()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.design:
        cells = design()
        print("| cell | composition | feasible |\n|---|---|---|")
        avail = {"fashion": 70_000, "kmnist": 10_000}
        for cell in cells:
            comp = cell.composition()
            need_pos = 15_000 if cell.neg == "near" else 30_000  # about: digits 0-4 of MNIST 30,000..59,999
            ok = comp["mnist"] <= need_pos and all(comp.get(s, 0) <= n for s, n in avail.items())
            print(f"| {cell.name} | {comp} | {'yes' if ok else 'no (about; exact counts when it runs)'} |")
        print(f"{len(cells)} cells", file=sys.stderr)
        return 0
    if args.report:
        report(args)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cells = [Cell.parse(spec) for spec in args.cell] or design()
    sources = Sources(args.data_dir)
    for cell in cells:
        out = cells_dir(args.work) / f"{cell.name}.json"
        if out.is_file() and not args.force:
            log(f"{cell.name}: done (cached)")
            continue
        log(f"{cell.name}: start, load {load_average()}")
        record = run_cell(cell, args, sources)
        record["cache_version"] = CACHE_VERSION
        if "not_run" not in record:  # a missing teacher is not a result: it runs once the teacher is there
            write_json_atomic(out, record)
        log(f"{cell.name}: {'finished' if 'pu_given' in record else record.get('infeasible') or record.get('not_run')}")
    report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
