"""The cifar-pu study (issue 27): which transfer set gives the best student on natural images.

Teacher: the pretrained CIFAR-10 ResNet-56 of ``../shared/models/resnet-cifar10`` (a model from the
user's own code, ``--arch resnet.py:resnet56``). Pool: the cifar-pu pools of
``benchmarks/cifar_pu_data.py`` (``mixed``: 31,420 Tiny ImageNet + 10,000 CIFAR-100 images, class prior
0.278 by the class map). Every row is a student trained on L^t (n_l labeled CIFAR-10 images per class)
plus a set of images, for the same number of optimizer steps (whole epochs nearest to ``--steps``):

============  ==========================================================================================
KD-original   the 10,000 CIFAR-10 train images (L^t + the 10,000 - 10 n_l others): the teacher's own data
Baseline-1    the pool's images of CIFAR-10 classes by the class map (the paper's Baseline-1)
KD-random     random pool images, as many as PU-s1 kept (the paper's Baseline-2)
KD-pool       the whole pool, no selection
PU-s1         what ``pucli select`` keeps (the pool's true class prior given)
PU-s2         the top 5,000 of the same ranking
confidence    the top-k pool images by the teacher's max-softmax, k = PU-s1's count
PU-weighted   the whole pool, drawn with probability sigmoid(score) (``distill --weighting pu-score``)
============  ==========================================================================================

**A row is a selection (an index file of pool images) plus how to expand and distill it** (:class:`Row`,
:class:`SelectionSpec`): a selection is made either by ``pucli select`` (a *variant*: the extra
``select`` arguments of :data:`SELECT_VARIANTS`; PU-s1, PU-s2 and the scored pool are views of one
``select --all`` index) or by the harness from the benchmark's own knowledge (class map, random,
teacher confidence, the train set). A new ``select`` criterion (issue 28) is one entry in
:data:`SELECT_VARIANTS` and one :class:`Row` in :data:`ROWS` naming it (``SelectionSpec("pu-s1",
variant="domain")``); nothing else changes.

Parts (``--parts``, run in the order given; every unit cached, so a part may be re-run or extended):

* ``main``: the rows above (``--rows``) for ``--pool``, ``--nl``, ``--seeds``, with ``--student``;
* ``loss``: PU-s1 with plain KD and weighted KD beside the main rows' robust KD (n_l 100, seed 0);
* ``timm``: the timm student (:data:`STUDENTS` ``resnet10t``) on KD-pool, KD-random, PU-s1 and Baseline-1;
* ``pools``: KD-pool on the CIFAR-100-only and Tiny-ImageNet-only pools (capture against class);
* ``webcrawl``: KD-pool, PU-s1 and KD-random on the web-crawl pool (prior 0.03);
* ``wallclock``: equal wall-clock: every row gets the whole epochs that KD-pool's wall-clock leaves it
  after its own teacher passes and selection (:data:`WALLCLOCK_FORMULA`).

pucli is driven through its **command line** only (``--pucli``, default ``$PUCLI_STUDY_CMD`` or
``<this python> -m pucli``; ``--pythonpath`` / ``$PUCLI_STUDY_PYTHONPATH`` is put in front of the
subprocesses' ``PYTHONPATH``; they run in the unit's folder, so the repository's own ``pucli`` folder
is never picked up by ``-m``). What each command prints with ``--json`` and the files it writes
(index, expanded set, run reports) are the record; the ground truth (``ground_truth.tsv``) is read
only here, to score selections and to make the class-map row.

Units (``--work``, default ``<pucli cache>/benchmarks/cifar-pu/study``): ``cells/<pool>-nl<n>-seed<s>/``
holds the ``select`` runs, the selections (``index.tsv``) and the expanded sets; ``students/`` the
students. A unit's folder is named by its parameters (a hash); a unit is done when its ``unit.json``
exists, so an interrupted run resumes (a student from its distill checkpoint). After every student the
results JSON (``--results``, default ``benchmarks/results/cifar_pu_study.json``) is rewritten from
every finished unit in ``--work``, whatever the plan.

Usage::

    python benchmarks/cifar_pu.py --estimate                      # the plan and its predicted wall-clock
    python benchmarks/cifar_pu.py --parts main --nl 100 --seeds 0 --threads 1
    PUCLI_STUDY_PYTHONPATH=/tmp/pucli-study python benchmarks/cifar_pu.py --parts main,loss,timm
    python benchmarks/cifar_pu.py --report                        # docs/benchmarks.md section + docs/cifar_pu_*.png

Needs ``benchmarks/cifar_pu_data.py`` to have built the roots (run it; seconds) and
``../shared/models/resnet-cifar10``; plots need the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE_VERSION = 1
DEFAULT_RESULTS = HERE / "results" / "cifar_pu_study.json"
DEFAULT_MODELS = REPO.parent / "shared" / "models" / "resnet-cifar10"
TEACHER_FILE = "resnet56-4bfd9763.th"
TEACHER_PREPROCESSING = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

BATCH_SIZE = 128  # distill's default
DEFAULT_STEPS = 1_000
PU_S2_SIZE = 5_000
NLS = (100, 10)
SEEDS = (0, 1, 2)
MAIN_LOSS = "robust-kd"
LOSSES = ("kd", "weighted-kd", "robust-kd")
RECOMMENDATION_TOLERANCE = 0.3  # points of top-1 within which a recommendation counts as the best


def log(message: str) -> None:
    print(f"[cifar-pu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- what a row is ---------------------------------------------------------------------------------------


#: ``pucli select`` variants: the extra arguments of each (the pool's true class prior, the seed and the
#: run options are always given). Issue 28 adds its criteria here.
SELECT_VARIANTS: dict[str, tuple[str, ...]] = {"default": ()}

#: Selection kinds. ``select-*`` kinds are views of one ``pucli select --all`` index of a variant; the
#: others are made by the harness.
SELECTION_KINDS = ("pu-s1", "pu-s2", "pool", "original", "class-map", "random", "confidence")


@dataclass(frozen=True)
class SelectionSpec:
    """Which pool images a row takes (besides L^t, which every row has).

    ``kind``: ``pu-s1`` (the images ``select`` keeps), ``pu-s2`` (its top ``size``), ``pool`` (every pool
    image; scored by the ``variant``'s ``select --all`` index when ``scored``, else score 0, so a pool
    without a selection needs no ``select``), ``original`` (the CIFAR-10 train images not in L^t),
    ``class-map`` (the pool's images of CIFAR-10 classes), ``random`` (as many random pool images as the
    ``variant``'s PU-s1 kept), ``confidence`` (the top-k by the teacher's max-softmax, k as for random).
    """

    kind: str
    variant: str = "default"
    size: int | None = None
    scored: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SELECTION_KINDS:
            raise ValueError(f"unknown selection kind {self.kind!r}; choose from {', '.join(SELECTION_KINDS)}")
        if self.variant not in SELECT_VARIANTS:
            raise ValueError(f"unknown select variant {self.variant!r}; add it to SELECT_VARIANTS")

    @property
    def needs_select(self) -> bool:
        """Does this selection read a ``pucli select`` run of its cell?"""
        return self.kind in ("pu-s1", "pu-s2", "random", "confidence") or (self.kind == "pool" and self.scored)

    @property
    def whole_pool(self) -> bool:
        """Expanded with ``expand --whole-pool`` (an index with a ``selected`` column, every row taken)."""
        return self.kind == "pool"

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"kind": self.kind}
        if self.needs_select:
            params["variant"] = self.variant
            params["select_args"] = list(SELECT_VARIANTS[self.variant])
        if self.size is not None:
            params["size"] = self.size
        if self.kind == "pool":
            params["scored"] = self.scored
        return params

    def name(self) -> str:
        name = self.kind
        if self.size is not None:
            name += f"{self.size}"
        if self.kind == "pool" and self.scored:
            name += "-scored"
        if self.needs_select and self.variant != "default":
            name += f"-{self.variant}"
        return name


@dataclass(frozen=True)
class Row:
    """A study row: a selection, expanded (``--whole-pool`` for a pool), distilled with ``weighting``."""

    name: str
    selection: SelectionSpec
    weighting: str = "uniform"


ROWS: dict[str, Row] = {row.name: row for row in (
    Row("KD-original", SelectionSpec("original")),
    Row("Baseline-1", SelectionSpec("class-map")),
    Row("KD-random", SelectionSpec("random")),
    Row("KD-pool", SelectionSpec("pool", scored=True)),
    Row("PU-s1", SelectionSpec("pu-s1")),
    Row("PU-s2", SelectionSpec("pu-s2", size=PU_S2_SIZE)),
    Row("confidence", SelectionSpec("confidence")),
    Row("PU-weighted", SelectionSpec("pool", scored=True), weighting="pu-score"),
)}
MAIN_ROWS = tuple(ROWS)
#: KD-pool without a ``select`` run (its pool's images unscored): for the pools with no class prior to give.
POOL_ONLY = Row("KD-pool", SelectionSpec("pool"))


@dataclass(frozen=True)
class Student:
    """A student architecture: ``distill --student`` (and ``--student-kwargs``); ``evaluate`` needs
    ``--arch`` again for a model of the user's code."""

    name: str
    arch: str
    kwargs: dict[str, Any] | None = None
    user_code: bool = False

    def distill_args(self) -> list[str]:
        args = ["--student", self.arch]
        if self.kwargs:
            args += ["--student-kwargs", json.dumps(self.kwargs, sort_keys=True)]
        return args

    def evaluate_args(self) -> list[str]:
        return ["--arch", self.arch] if self.user_code else []

    def params(self) -> dict[str, Any]:
        # The user's file is named by its file name (and digest, in the unit record), not its absolute path.
        if self.user_code:
            file, name = self.arch.rsplit(":", 1)
            return {"name": self.name, "arch": f"{Path(file).name}:{name}", "kwargs": self.kwargs}
        return {"name": self.name, "arch": self.arch, "kwargs": self.kwargs}


def students(models: Path) -> dict[str, Student]:
    """The study's students. ``resnet10t`` at output stride 16 is timm's smallest ResNet made to cost
    about what ResNet-20 costs at 32 x 32 (67 against 81 MFLOPs a forward pass; 4.9 M parameters against
    0.27 M: timm has no CIFAR-size ResNet, and its ImageNet ResNets at output stride 32 end at 1 x 1)."""
    return {
        "resnet20": Student("resnet20", f"{models}/resnet.py:resnet20", user_code=True),
        "resnet10t": Student("resnet10t", "resnet10t", {"output_stride": 16}),
    }


@dataclass(frozen=True)
class Cell:
    """One labeled subset against one pool."""

    pool: str
    n_l: int
    seed: int

    def name(self) -> str:
        return f"{self.pool}-nl{self.n_l}-seed{self.seed}"


def key_of(name: str, params: dict[str, Any]) -> str:
    """A unit's folder name: readable ``name`` plus a hash of every parameter (a changed parameter is a new unit)."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True, default=str).encode())
    return f"{name}-{digest.hexdigest()[:10]}"


# --- arithmetic --------------------------------------------------------------------------------------------


def steps_per_epoch(items: int, batch_size: int = BATCH_SIZE) -> int:
    """Optimizer steps of one ``pucli distill`` epoch (its rule: a small last batch is dropped once there
    are two full batches)."""
    if items >= 2 * batch_size:
        return items // batch_size
    return max(1, math.ceil(items / batch_size))


def epochs_for_steps(items: int, steps: int, batch_size: int = BATCH_SIZE) -> int:
    """Whole epochs whose steps come nearest ``steps`` (at least 1): ``distill`` takes ``--epochs`` only, so
    "equal steps" is equal to within half an epoch of each set (under 5 % for sets of 5,000+ at 1,000 steps)."""
    per_epoch = steps_per_epoch(items, batch_size)
    return max(1, math.floor(steps / per_epoch + 0.5))


def precision_recall_f1(selected: int, true_positive: int, positives: int) -> dict[str, Any]:
    """Precision, recall and F1 (4 places) of ``selected`` items, ``true_positive`` of them positives, out of
    ``positives``; 0 where a ratio has nothing to count."""
    precision = true_positive / selected if selected else 0.0
    recall = true_positive / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"selected": selected, "true_positive": true_positive, "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4)}


# --- the scenario (benchmark-only knowledge) -------------------------------------------------------------


def default_cache() -> Path:
    """pucli's cache folder (``$PUCLI_CACHE_DIR``, else the platform's user cache), found as pucli finds it."""
    override = os.environ.get("PUCLI_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_cache_path("pucli")


@dataclass
class Scenario:
    """The cifar-pu root of ``benchmarks/cifar_pu_data.py`` and its pools' ground truth."""

    root: Path
    _truth: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def require(self) -> dict[str, Any]:
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            sys.exit(f"no cifar-pu root at {self.root}: run benchmarks/cifar_pu_data.py")
        return json.loads(manifest.read_text())

    def pool_manifest(self, pool: str) -> dict[str, Any]:
        """The pool's ``manifest.json`` with its ``counts`` (images, positive, ...) at the top level."""
        manifest = json.loads((self.root / "pools" / pool / "manifest.json").read_text())
        return {**manifest, **manifest.get("counts", {})}

    def class_prior(self, pool: str) -> float:
        return round(float(self.pool_manifest(pool)["true_class_prior"]), 6)

    def shard_list(self, pool: str) -> Path:
        return self.root / "pools" / pool / "shards.txt"

    def truth(self, pool: str) -> list[dict[str, str]]:
        """The pool's ``ground_truth.tsv`` rows (path, positive, source, label, cifar10_class, original), in
        pool order."""
        if pool not in self._truth:
            self._truth[pool] = read_truth(self.root / "pools" / pool / "ground_truth.tsv")
        return self._truth[pool]

    def positive_dir(self, n_l: int, seed: int) -> Path:
        return self.root / "positive" / f"nl{n_l}-seed{seed}"

    def train_dir(self) -> Path:
        return self.root / "train"

    def test_dir(self) -> Path:
        return self.root / "test"


def read_truth(path: Path) -> list[dict[str, str]]:
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def labeled_files(folder: Path) -> list[tuple[str, Path]]:
    """(class, file) of a labeled folder (one subfolder per class), sorted."""
    return [(cls.name, file) for cls in sorted(p for p in Path(folder).iterdir() if p.is_dir())
            for file in sorted(p for p in cls.iterdir() if p.is_file())]


def selection_metrics(paths: Sequence[str], truth: Sequence[dict[str, str]]) -> dict[str, Any]:
    """A pool selection against the class map: precision / recall / F1, its makeup by source, and how
    many of its class-map positives come from each source. ``paths`` as written in the index."""
    by_path = {row["path"]: row for row in truth}
    positives = sum(row["positive"] == "1" for row in truth)
    by_source: dict[str, int] = {}
    positive_by_source: dict[str, int] = {}
    true_positive = 0
    for path in paths:
        row = by_path[path]
        by_source[row["source"]] = by_source.get(row["source"], 0) + 1
        if row["positive"] == "1":
            true_positive += 1
            positive_by_source[row["source"]] = positive_by_source.get(row["source"], 0) + 1
    return {**precision_recall_f1(len(paths), true_positive, positives), "by_source": dict(sorted(by_source.items())),
            "positives_by_source": dict(sorted(positive_by_source.items()))}


# --- index files (the format of pucli's docs/formats.md, written here without importing pucli) ------------


INDEX_TAG = "#pucli-index v1"


def write_index(path: Path, entries: Iterable[tuple[str, float]], *, with_selected: bool = False) -> int:
    """Write an index (``#pucli-index v1``; path, score[, selected 1]) atomically; returns the row count."""
    lines = [INDEX_TAG, "path\tscore" + ("\tselected" if with_selected else "")]
    for item_path, score in entries:
        lines.append(f"{item_path}\t{score:.6g}" + ("\t1" if with_selected else ""))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return len(lines) - 2


def read_index(path: Path) -> list[tuple[str, float, bool]]:
    """(path, score, selected) of an index, in file order (``selected`` True where the column is absent)."""
    rows = []
    header: list[str] | None = None
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
            continue
        record = dict(zip(header, fields))
        rows.append((record["path"], float(record["score"]), record.get("selected", "1") == "1"))
    return rows


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# --- the command line of pucli --------------------------------------------------------------------------


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@dataclass
class PucliCommand:
    """How to run pucli: a command prefix (``python -m pucli``) and an optional ``PYTHONPATH`` in front."""

    prefix: list[str]
    pythonpath: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def run(self, args: Sequence[str], *, cwd: Path, log_name: str) -> dict[str, Any]:
        """Run ``prefix + args`` in ``cwd`` (stderr to ``cwd/<log_name>.log``); returns its stdout, exit
        status, wall-clock seconds and the load averages before and after. Raises ``RuntimeError`` on a
        non-zero exit, with the log's tail."""
        cwd.mkdir(parents=True, exist_ok=True)
        argv = [*self.prefix, *map(str, args)]
        load_before = load_average()
        started = time.perf_counter()
        with open(cwd / f"{log_name}.log", "w") as err:
            err.write("$ " + shlex.join(argv) + "\n")
            err.flush()
            process = subprocess.run(argv, cwd=cwd, env=self.env(), stdout=subprocess.PIPE, stderr=err, text=True)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            tail = (cwd / f"{log_name}.log").read_text().splitlines()[-15:]
            raise RuntimeError(f"pucli failed (exit {process.returncode}): {shlex.join(argv)}\n" + "\n".join(tail))
        return {"command": shlex.join(argv), "stdout": process.stdout, "wall_s": round(wall, 2),
                "load_before": load_before, "load_after": load_average()}

    def run_json(self, args: Sequence[str], *, cwd: Path, log_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`run` with ``--json``: (the parsed stdout, the run record without stdout)."""
        record = self.run([*args, "--json"], cwd=cwd, log_name=log_name)
        return json.loads(record.pop("stdout")), record

    def provenance(self) -> dict[str, Any]:
        """Which pucli the prefix imports (file, git commit of its tree, uncommitted changes) and its version."""
        info: dict[str, Any] = {"prefix": shlex.join(self.prefix), "pythonpath": self.pythonpath}
        if len(self.prefix) >= 3 and self.prefix[-2:] == ["-m", "pucli"]:
            probe = subprocess.run([*self.prefix[:-2], "-c", "import pucli; print(pucli.__file__)"],
                                   cwd=tempfile.gettempdir(), env=self.env(), capture_output=True, text=True)
            if probe.returncode == 0:
                package = Path(probe.stdout.strip()).parent
                info["imports"] = str(package)
                tree = package.parent
                git = ["git", "-C", str(tree)]
                commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
                if commit.returncode == 0:
                    info["commit"] = commit.stdout.strip()
                    status = subprocess.run([*git, "status", "--porcelain", "--", "pucli"], capture_output=True,
                                            text=True)
                    info["pucli_tree_modified"] = bool(status.stdout.strip())
        version = subprocess.run([*self.prefix, "--version"], cwd=tempfile.gettempdir(), env=self.env(),
                                 capture_output=True, text=True)
        info["version"] = version.stdout.strip() or None
        return info


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every unit of one run shares."""

    scenario: Scenario
    work: Path
    pucli: PucliCommand
    models: Path
    steps: int = DEFAULT_STEPS
    threads: int = 1
    workers: int = 1
    teacher: Path | None = None
    #: ``pucli distill --precision``; ``auto`` (float32 on the CPU) keeps the unit names of earlier runs.
    precision: str = "auto"

    @property
    def teacher_arch(self) -> str:
        return f"{self.models}/resnet.py:resnet56"

    def teacher_args(self) -> list[str]:
        assert self.teacher is not None
        return [str(self.teacher), "--arch", self.teacher_arch]

    def run_args(self) -> list[str]:
        return ["--threads", str(self.threads), "--workers", str(self.workers)]


def prepare_teacher(scenario: Scenario, models: Path) -> Path:
    """The teacher's weights copied into ``<root>/teacher/`` beside a flat-form sidecar config holding its
    preprocessing (docs/models.md), so every command needs only ``--arch``. Returns the weights' path."""
    folder = scenario.root / "teacher"
    weights = folder / TEACHER_FILE
    sidecar = folder / (Path(TEACHER_FILE).stem + ".config.json")
    if not weights.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{TEACHER_FILE}.tmp"
        shutil.copyfile(models / TEACHER_FILE, staging)
        os.replace(staging, weights)
    if not sidecar.is_file():
        write_json_atomic(sidecar, TEACHER_PREPROCESSING)
    return weights


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Study:
    """The units of one run, made on demand and cached in ``settings.work``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scenario = settings.scenario

    # -- pucli select ----------------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return self.settings.work / "cells" / cell.name()

    def select_unit(self, cell: Cell, variant: str) -> dict[str, Any]:
        """``pucli select --all`` of one cell and variant, with the pool's true class prior and no descriptor
        cache (every run pays its own teacher pass: the equal-wall-clock part counts it)."""
        extra = list(SELECT_VARIANTS[variant])
        prior = self.scenario.class_prior(cell.pool)
        params = {"cell": asdict(cell), "variant": variant, "args": extra, "prior": prior}
        folder = self.cell_dir(cell) / key_of(f"select-{variant}", params)
        if (folder / "unit.json").is_file():
            return read_json(folder / "unit.json")
        log(f"{cell.name()}: pucli select ({variant}), prior {prior}")
        positive = self.scenario.positive_dir(cell.n_l, cell.seed)
        args = ["select", *self.settings.teacher_args(), "--positive", positive,
                "--unlabeled", self.scenario.shard_list(cell.pool), "--out", "all.tsv", "--all",
                "--prior", repr(prior), "--seed", str(cell.seed), "--no-cache", "--force",
                "--report", "select.report.json", *self.settings.run_args(), *extra]
        output, record = self.settings.pucli.run_json(args, cwd=folder, log_name="select")
        index = read_index(folder / "all.tsv")
        kept = [path for path, _, selected in index if selected]
        unit = {"unit": "select", "cell": asdict(cell), "variant": variant, "params": params, "run": record,
                "prior": prior, "pool_images": len(index), "kept": len(kept), "index": str(folder / "all.tsv"),
                "output": output, "trust": output.get("trust"), "recommendation": output.get("recommendation"),
                "warnings": output.get("warnings"), "ranking": output.get("ranking")}
        write_json_atomic(folder / "unit.json", unit)
        log(f"{cell.name()}: select kept {len(kept):,} of {len(index):,} ({record['wall_s']:.0f} s); "
            f"recommendation {(unit['recommendation'] or {}).get('action')}")
        return unit

    # -- selections --------------------------------------------------------------------------------

    def selection_unit(self, cell: Cell, spec: SelectionSpec) -> dict[str, Any]:
        """The index file of one selection (``index.tsv``) and its metrics against the class map."""
        params = {"cell": asdict(cell), "selection": spec.params()}
        folder = self.cell_dir(cell) / "selections" / key_of(spec.name(), params)
        if (folder / "unit.json").is_file():
            return read_json(folder / "unit.json")
        started = time.perf_counter()
        entries, derived_from = self._entries(cell, spec)
        folder.mkdir(parents=True, exist_ok=True)
        count = write_index(folder / "index.tsv", entries, with_selected=spec.whole_pool)
        paths = [path for path, _ in entries]
        unit: dict[str, Any] = {"unit": "selection", "cell": asdict(cell), "selection": spec.params(),
                                "name": spec.name(), "images": count, "index": str(folder / "index.tsv"),
                                "derived_from": derived_from, "build_s": round(time.perf_counter() - started, 2)}
        if spec.kind == "original":
            unit["metrics"] = {"selected": count, "by_source": {"cifar10-train": count}}
        else:
            unit["metrics"] = selection_metrics(paths, self.scenario.truth(cell.pool))
        write_json_atomic(folder / "unit.json", unit)
        return unit

    def _entries(self, cell: Cell, spec: SelectionSpec) -> tuple[list[tuple[str, float]], dict[str, Any]]:
        """(path, score) rows of a selection, best first, and what they were derived from."""
        truth = self.scenario.truth(cell.pool) if spec.kind != "original" else []
        if spec.kind == "original":
            lt = {(cls, file.name) for cls, file in labeled_files(self.scenario.positive_dir(cell.n_l, cell.seed))}
            files = [str(file) for cls, file in labeled_files(self.scenario.train_dir()) if (cls, file.name) not in lt]
            return [(path, 0.0) for path in files], {"train": str(self.scenario.train_dir())}
        if spec.kind == "class-map":
            return [(row["path"], 1.0) for row in truth if row["positive"] == "1"], {"truth": "class map"}
        if spec.kind == "pool" and not spec.scored:
            return [(row["path"], 0.0) for row in truth], {"truth": "every pool image"}
        select = self.select_unit(cell, spec.variant)
        index = read_index(Path(select["index"]))
        source = {"select": select["index"]}
        if spec.kind == "pu-s1":
            return [(path, score) for path, score, selected in index if selected], source
        if spec.kind == "pu-s2":
            return [(path, score) for path, score, _ in index[: spec.size]], source  # the index is best first
        if spec.kind == "pool":
            return [(path, score) for path, score, _ in index], source
        k = select["kept"]
        if spec.kind == "random":
            rng = random.Random(f"cifar-pu random {cell.name()} {spec.variant}")
            chosen = sorted(rng.sample(range(len(truth)), k))
            return [(truth[i]["path"], 0.0) for i in chosen], {**source, "k": k}
        if spec.kind == "confidence":
            confidence = self.pool_confidence(cell, spec.variant)
            ranked = sorted(confidence.items(), key=lambda item: (-item[1], item[0]))[:k]
            return [(path, value) for path, value in ranked], {**source, "k": k, "confidence": "max softmax, T = 1"}
        raise ValueError(spec.kind)

    def pool_confidence(self, cell: Cell, variant: str = "default") -> dict[str, float]:
        """The teacher's max-softmax on every pool image, from the soft targets ``pucli expand`` wrote for the
        cell's whole pool (KD-pool's set): the teacher pass the confidence row pays."""
        from safetensors.numpy import load_file

        pool_set = self.set_unit(cell, pool_set_spec(variant))
        folder = Path(pool_set["folder"])
        manifest = [line.split("\t") for line in (folder / "manifest.tsv").read_text().splitlines()
                    if line and not line.startswith("#")]
        header, rows = manifest[0], manifest[1:]
        soft = load_file(str(folder / "soft_targets.safetensors"))["soft_targets"]
        if len(rows) != len(soft):
            raise SystemExit(f"{folder}: {len(rows)} manifest rows but {len(soft)} soft targets")
        path_column, origin_column = header.index("path"), header.index("origin")
        return {row[path_column]: float(soft[i].max()) for i, row in enumerate(rows)
                if row[origin_column] == "unlabeled"}

    # -- expanded sets -------------------------------------------------------------------------------

    def set_unit(self, cell: Cell, spec: SelectionSpec) -> dict[str, Any]:
        """``pucli expand`` of L^t + a selection: the set, the teacher's class histogram of its pool images."""
        selection = self.selection_unit(cell, spec)
        params = {"cell": asdict(cell), "selection": spec.params()}
        folder = self.cell_dir(cell) / "sets" / key_of(spec.name(), params)
        if (folder / "unit.json").is_file():
            return read_json(folder / "unit.json")
        log(f"{cell.name()}: pucli expand {spec.name()} ({selection['images']:,} images + L^t)")
        args = ["expand", *self.settings.teacher_args(), "--positive", self.scenario.positive_dir(cell.n_l, cell.seed),
                "--index", selection["index"], "--out", "expanded", "--force", "--report", "expand.report.json",
                *self.settings.run_args()]
        if spec.whole_pool:
            args.append("--whole-pool")
        output, record = self.settings.pucli.run_json(args, cwd=folder, log_name="expand")
        classes = output.get("classes", [])
        unit = {"unit": "set", "cell": asdict(cell), "selection": spec.params(), "name": spec.name(),
                "folder": str(folder / "expanded"), "items": output["items"], "skipped": output.get("skipped"),
                "run": record, "class_names": [c["class"] for c in classes],
                "teacher_histogram": [c["selected"] for c in classes],
                "positives_per_class": [c["positive"] for c in classes],
                "class_weights": [round(c["weight"], 4) for c in classes]}
        write_json_atomic(folder / "unit.json", unit)
        return unit

    # -- students ---------------------------------------------------------------------------------------

    def student_folder(self, cell: Cell, row: Row, student: Student, *, loss: str, epochs: int,
                       augment: str) -> tuple[Path, dict[str, Any]]:
        """A student unit's folder and the parameters its name hashes."""
        params = {"cell": asdict(cell), "selection": row.selection.params(), "weighting": row.weighting,
                  "student": student.params(), "loss": loss, "epochs": epochs, "batch_size": BATCH_SIZE,
                  "seed": cell.seed, "augment": augment}
        if self.settings.precision != "auto":
            params["precision"] = self.settings.precision
        name = f"{cell.name()}-{row.selection.name()}-{student.name}"
        return self.settings.work / "students" / key_of(name, params), params

    def student_unit(self, cell: Cell, row: Row, student: Student, *, loss: str = MAIN_LOSS,
                     epochs: int | None = None, budget: str = "steps", augment: str = "auto",
                     steps: int | None = None) -> dict[str, Any]:
        """``pucli distill`` + ``pucli evaluate`` of one student. ``epochs``: None for the equal-steps budget
        (``steps``, default ``--steps``); ``augment``: distill's ``--augment`` (``auto``: flip-crop here, the
        teacher run on every augmented batch; ``none``: the soft targets ``expand`` cached)."""
        train_set = self.set_unit(cell, row.selection)
        nominal_steps = steps or self.settings.steps
        if epochs is None:
            epochs = epochs_for_steps(train_set["items"], nominal_steps)
        folder, params = self.student_folder(cell, row, student, loss=loss, epochs=epochs, augment=augment)
        if (folder / "unit.json").is_file():
            return read_json(folder / "unit.json")
        steps = epochs * steps_per_epoch(train_set["items"])
        log(f"{cell.name()}: {row.name} {student.name} {loss} {row.weighting}: {epochs} epochs of "
            f"{train_set['items']:,} = {steps:,} steps ({budget})")
        args = ["distill", *self.settings.teacher_args(), "--data", train_set["folder"], *student.distill_args(),
                "--out", "student.safetensors", "--epochs", str(epochs), "--loss", loss, "--weighting", row.weighting,
                "--batch-size", str(BATCH_SIZE), "--seed", str(cell.seed), "--augment", augment,
                "--report", "distill.report.json",
                *(["--precision", self.settings.precision] if self.settings.precision != "auto" else []),
                *self.settings.run_args()]
        checkpoint = folder / "student.ckpt.pt"
        resumed = checkpoint.is_file()
        try:
            output, record = self.settings.pucli.run_json(args + (["--resume"] if resumed else ["--force"]),
                                                          cwd=folder, log_name="distill")
        except RuntimeError:
            if not resumed:
                raise
            log("resuming failed; training from the start")
            resumed = False
            output, record = self.settings.pucli.run_json(args + ["--force"], cwd=folder, log_name="distill")
        evaluation, eval_record = self.settings.pucli.run_json(
            ["evaluate", "student.safetensors", *student.evaluate_args(), "--data", self.scenario.test_dir(),
             "--report", "evaluate.report.json", *self.settings.run_args()], cwd=folder, log_name="evaluate")
        model = evaluation["models"][0]
        history = output.get("history") or []
        unit = {"unit": "student", "row": row.name, "cell": asdict(cell), "selection": row.selection.params(),
                "set_name": row.selection.name(), "weighting": row.weighting, "student": student.name,
                "loss": loss, "params": params, "items": output["items"], "epochs": output["epochs"],
                "steps": output["epochs"] * steps_per_epoch(output["items"]), "top1": model["top1"],
                "top5": model["top5"], "student_params": model["params"], "flops_per_image": model["flops_per_image"],
                "train_s": round(sum(h.get("train_s", 0.0) for h in history), 2), "distill": record,
                "evaluate": eval_record, "augment": output.get("augment"), "images_per_s": output.get("images_per_s"),
                "final_loss": output.get("final_loss"), "resumed": resumed, "threads": self.settings.threads,
                "precision": output.get("precision", params.get("precision", "float32")),
                "budget_when_made": budget, "augment_option": augment, "nominal_steps": nominal_steps}
        write_json_atomic(folder / "unit.json", unit)
        checkpoint.unlink(missing_ok=True)
        log(f"{cell.name()}: {row.name} {student.name} {loss}: top-1 {unit['top1']:.2f} % "
            f"({unit['steps']:,} steps, distill {record['wall_s']:.0f} s, load {record['load_after'][0]})")
        return unit


# --- the plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One student to train: its part, cell, row, student and loss (equal steps unless ``wallclock``)."""

    part: str
    cell: Cell
    row: Row
    student: str
    loss: str = MAIN_LOSS
    augment: str = "auto"
    steps: int | None = None  # None: --steps


PARTS = ("main", "loss", "timm", "pools", "webcrawl", "noaug", "wallclock")
NOAUG_ROWS = ("PU-s1", "KD-pool", "KD-random", "Baseline-1")
TIMM_ROWS = ("KD-pool", "KD-random", "PU-s1", "Baseline-1")
WEBCRAWL_ROWS = ("KD-pool", "PU-s1", "KD-random")
CAPTURE_POOLS = ("cifar100", "tinyimagenet")
ABLATION_CELL = Cell("mixed", 100, 0)


def make_plan(parts: Sequence[str], *, rows: Sequence[str], pool: str, nls: Sequence[int], seeds: Sequence[int],
              student: str = "resnet20", timm_student: str = "resnet10t", steps_hint: int = DEFAULT_STEPS) -> list[Job]:
    """The equal-steps students of ``parts``, in the order given (``wallclock`` students depend on these
    and are planned when they run: :func:`wallclock_jobs`)."""
    jobs: list[Job] = []

    def add(job: Job) -> None:
        # The same student asked by two parts (loss's robust-kd PU-s1 is main's) is planned once, under the first.
        if all((job.cell, job.row, job.student, job.loss, job.augment, job.steps)
               != (other.cell, other.row, other.student, other.loss, other.augment, other.steps) for other in jobs):
            jobs.append(job)

    for part in parts:
        if part == "main":
            for n_l in nls:
                for seed in seeds:
                    for name in rows:
                        add(Job("main", Cell(pool, n_l, seed), ROWS[name], student))
        elif part == "loss":
            for loss in LOSSES:
                add(Job("loss", ABLATION_CELL, ROWS["PU-s1"], student, loss))
        elif part == "timm":
            for name in TIMM_ROWS:
                add(Job("timm", ABLATION_CELL, ROWS[name], timm_student))
        elif part == "pools":
            for capture_pool in CAPTURE_POOLS:
                add(Job("pools", Cell(capture_pool, 100, 0), POOL_ONLY, student))
        elif part == "webcrawl":
            for name in WEBCRAWL_ROWS:
                add(Job("webcrawl", Cell("webcrawl", 100, 0), ROWS[name], student))
        elif part == "noaug":
            # A second budget: cached soft targets (no teacher pass a step) and twice the steps, in about the
            # wall-clock of the main rows.
            for name in NOAUG_ROWS:
                add(Job("noaug", ABLATION_CELL, ROWS[name], student, augment="none", steps=2 * steps_hint))
        elif part != "wallclock":
            raise ValueError(f"unknown part {part!r}")
    return jobs


WALLCLOCK_FORMULA = (
    "cost(row) = its pucli select wall-clock (PU-s1, PU-s2, PU-weighted: the rows that use the selector's "
    "ranking; KD-random and confidence only borrow PU-s1's count) + its pucli expand wall-clock(s) (confidence: "
    "the whole pool's, to rank it, and its own set's) + its pucli distill wall-clock; budget = cost(KD-pool) at "
    "the equal-steps budget (KD-pool needs no selection: the select --all index only gives its set the scores "
    "PU-weighted draws by); "
    "epochs(row) = floor((budget - overhead(row) - distill's fixed cost) / (steps per epoch x seconds per step)), "
    "the fixed cost (start, decode) and seconds per step from the row's own equal-steps student; no student "
    "where that is under one epoch. Evaluation is not counted; the class map (Baseline-1) costs nothing here."
)


def row_overhead(row: Row, select: dict[str, Any] | None, sets: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The seconds a row pays before distilling (:data:`WALLCLOCK_FORMULA`). ``sets``: set units by
    selection name (the row's own, and ``pool`` for confidence)."""
    overhead: dict[str, float] = {}
    spec = row.selection
    if spec.kind in ("pu-s1", "pu-s2") or row.weighting == "pu-score":
        if select is None:
            raise ValueError(f"{row.name} needs its select run")
        overhead["select_s"] = select["run"]["wall_s"]
    if spec.kind == "confidence":
        overhead["expand_pool_s"] = sets[pool_set_spec(spec.variant).name()]["run"]["wall_s"]
    overhead["expand_s"] = sets[spec.name()]["run"]["wall_s"]
    return overhead


def pool_set_spec(variant: str = "default") -> SelectionSpec:
    """The whole pool scored by a variant's ``select --all``: KD-pool's and PU-weighted's set, whose soft
    targets also rank the pool for the confidence row."""
    return SelectionSpec("pool", variant=variant, scored=True)


def wallclock_epochs(budget_s: float, overhead_s: float, fixed_s: float, seconds_per_step: float, items: int) -> int:
    """Whole epochs a row can train in what the budget leaves it (0: not even one)."""
    per_epoch = steps_per_epoch(items) * seconds_per_step
    left = budget_s - overhead_s - fixed_s
    return max(0, math.floor(left / per_epoch)) if per_epoch > 0 else 0


def student_costs(unit: dict[str, Any]) -> tuple[float, float]:
    """(fixed seconds, seconds per step) of a student's ``pucli distill``: the wall-clock minus the training."""
    wall = unit["distill"]["wall_s"]
    seconds_per_step = unit["train_s"] / unit["steps"] if unit["steps"] else 0.0
    return max(0.0, wall - unit["train_s"]), seconds_per_step


def wallclock_cell(study: Study, cell: Cell, rows: Sequence[str], student: Student) -> dict[str, Any]:
    """The equal-wall-clock students of one cell (trains what is missing); the record of each row."""
    equal = {name: study.student_unit(cell, ROWS[name], student) for name in rows}
    if "KD-pool" not in equal:
        raise SystemExit("--parts wallclock needs KD-pool among --rows")
    select = study.select_unit(cell, "default")
    sets = {ROWS[name].selection.name(): study.set_unit(cell, ROWS[name].selection) for name in rows}
    if any(ROWS[name].selection.kind == "confidence" for name in rows):
        sets[pool_set_spec().name()] = study.set_unit(cell, pool_set_spec())
    budget = row_overhead(ROWS["KD-pool"], select, sets)["expand_s"] + equal["KD-pool"]["distill"]["wall_s"]
    entries = []
    for name in rows:
        row = ROWS[name]
        overhead = row_overhead(row, select, sets)
        fixed, per_step = student_costs(equal[name])
        entry: dict[str, Any] = {"row": name, "cell": asdict(cell), "student": student.name,
                                 "budget_s": round(budget, 1),
                                 "overhead_s": overhead, "overhead_total_s": round(sum(overhead.values()), 1),
                                 "fixed_s": round(fixed, 1), "seconds_per_step": round(per_step, 4),
                                 "equal_steps_top1": equal[name]["top1"], "equal_steps": equal[name]["steps"]}
        if name == "KD-pool":
            epochs = equal[name]["epochs"]
        else:
            epochs = wallclock_epochs(budget, sum(overhead.values()), fixed, per_step, equal[name]["items"])
        entry["epochs"] = epochs
        if epochs < 1:
            entry.update(top1=None, steps=0, not_trainable="the overhead leaves under one epoch of the budget")
        else:
            unit = study.student_unit(cell, row, student, epochs=epochs, budget="wallclock")
            entry.update(top1=unit["top1"], steps=unit["steps"],
                         used_s=round(sum(overhead.values()) + unit["distill"]["wall_s"], 1),
                         load_after=unit["distill"]["load_after"])
        entries.append(entry)
    record = {"unit": "wallclock", "cell": asdict(cell), "student": student.name, "formula": WALLCLOCK_FORMULA,
              "budget_s": round(budget, 1), "entries": entries}
    write_json_atomic(study.cell_dir(cell) / f"wallclock-{student.name}.json", record)
    return record


# --- estimate ---------------------------------------------------------------------------------------------


#: Rates measured on the project's 2-core machine under other jobs' load, 1 thread (issue 27's brief and the
#: first units), used where no finished unit gives a rate of its own.
DEFAULT_RATES = {"select_img_s": 60.0, "select_fixed_s": 120.0, "expand_img_s": 150.0, "expand_fixed_s": 15.0,
                 "resnet20_s_per_step": 1.1, "resnet10t_s_per_step": 0.9, "distill_fixed_s": 60.0, "evaluate_s": 40.0,
                 "noaug_step_factor": 0.55}


def measured_rates(work: Path) -> dict[str, float]:
    """:data:`DEFAULT_RATES` updated with the medians of finished units in ``work``."""
    rates = dict(DEFAULT_RATES)
    samples: dict[str, list[float]] = {}
    for path in work.glob("cells/*/select-*/unit.json"):
        unit = read_json(path)
        samples.setdefault("select_img_s", []).append(unit["pool_images"] / max(1.0, unit["run"]["wall_s"] - 60))
    for path in work.glob("cells/*/sets/*/unit.json"):
        unit = read_json(path)
        samples.setdefault("expand_img_s", []).append(unit["items"] / max(1.0, unit["run"]["wall_s"] - 15))
    for path in work.glob("students/*/unit.json"):
        unit = read_json(path)
        fixed, per_step = student_costs(unit)
        if unit["params"].get("augment", "auto") == "auto":
            samples.setdefault(f"{unit['student']}_s_per_step", []).append(per_step)
        samples.setdefault("distill_fixed_s", []).append(fixed)
        samples.setdefault("evaluate_s", []).append(unit["evaluate"]["wall_s"])
    for key, values in samples.items():
        values = sorted(v for v in values if v > 0)
        if values:
            rates[key] = round(values[len(values) // 2], 3)
    return rates


def expected_images(scenario: Scenario, cell: Cell, spec: SelectionSpec) -> int:
    """A selection's image count before it is made (for the estimate): its pool's manifest and prior."""
    manifest = scenario.pool_manifest(cell.pool)
    pool = manifest["images"]
    if spec.kind == "original":
        return 10_000 - 10 * cell.n_l
    if spec.kind == "class-map":
        return manifest["positive"]
    if spec.kind == "pool":
        return pool
    if spec.kind == "pu-s2":
        return min(spec.size or 0, pool)
    return round(scenario.class_prior(cell.pool) * pool)


def estimate_plan(study: Study, jobs: Sequence[Job], student_table: dict[str, Student],
                  wallclock_cells: Sequence[Cell] = ()) -> dict[str, Any]:
    """Predicted wall-clock of what is not cached yet, unit by unit (rates: :func:`measured_rates`)."""
    rates = measured_rates(study.settings.work)
    seen: set[str] = set()
    lines = []
    total = 0.0

    def add(kind: str, label: str, seconds: float, cached: bool) -> None:
        nonlocal total
        if label in seen:
            return
        seen.add(label)
        lines.append({"unit": kind, "label": label, "seconds": 0.0 if cached else round(seconds, 1), "cached": cached})
        total += 0.0 if cached else seconds

    for job in jobs:
        cell, spec = job.cell, job.row.selection
        cell_dir = study.cell_dir(cell)
        pool_images = study.scenario.pool_manifest(cell.pool)["images"]
        lt = 10 * cell.n_l
        needs = [spec] + ([pool_set_spec(spec.variant)] if spec.kind == "confidence" else [])
        if any(s.needs_select for s in needs):
            cached = any(cell_dir.glob(f"select-{spec.variant}-*/unit.json"))
            add("select", f"{cell.name()} select {spec.variant}",
                pool_images / rates["select_img_s"] + rates["select_fixed_s"], cached)
        for s in needs:
            items = expected_images(study.scenario, cell, s) + lt
            cached = any(cell_dir.glob(f"sets/{s.name()}-*/unit.json"))
            add("expand", f"{cell.name()} expand {s.name()}",
                items / rates["expand_img_s"] + rates["expand_fixed_s"], cached)
        student = student_table[job.student]
        items = expected_images(study.scenario, cell, spec) + lt
        nominal = job.steps or study.settings.steps
        steps = epochs_for_steps(items, nominal) * steps_per_epoch(items)
        per_step = rates.get(f"{student.name}_s_per_step", DEFAULT_RATES["resnet20_s_per_step"])
        if job.augment == "none":
            per_step *= DEFAULT_RATES["noaug_step_factor"]
        pattern = f"students/{cell.name()}-{spec.name()}-{student.name}-*/unit.json"
        cached = any(u["loss"] == job.loss and u["weighting"] == job.row.weighting
                     and u["params"].get("augment", "auto") == job.augment
                     and u["epochs"] == epochs_for_steps(u["items"], nominal)
                     for u in map(read_json, study.settings.work.glob(pattern)))
        label = f"{cell.name()} {job.row.name} {student.name} {job.loss} augment {job.augment} ({steps:,} steps)"
        add("student", label,
            steps * per_step + rates["distill_fixed_s"] + rates["evaluate_s"], cached)
    for cell in wallclock_cells:
        # About one more student per row but KD-pool, at the steps the budget leaves it: KD-pool's cost each.
        pool_items = study.scenario.pool_manifest(cell.pool)["images"] + 10 * cell.n_l
        pool_steps = epochs_for_steps(pool_items, study.settings.steps) * steps_per_epoch(pool_items)
        per_row = pool_steps * rates["resnet20_s_per_step"] + rates["distill_fixed_s"] + rates["evaluate_s"]
        add("wallclock", f"{cell.name()} equal wall-clock (7 students, about KD-pool's cost each)", 7 * per_row,
            (study.cell_dir(cell) / "wallclock-resnet20.json").is_file())
    return {"rates": rates, "units": lines, "total_s": round(total, 1)}


def print_estimate(estimate: dict[str, Any]) -> None:
    pending = [line for line in estimate["units"] if not line["cached"]]
    print(f"{len(estimate['units'])} units, {len(estimate['units']) - len(pending)} cached, {len(pending)} to run")
    for line in pending:
        print(f"  {line['seconds'] / 60:7.1f} min  {line['unit']:9s} {line['label']}")
    hours = estimate["total_s"] / 3600
    print(f"predicted wall-clock: {estimate['total_s'] / 60:.0f} min ({hours:.1f} h) at "
          + ", ".join(f"{k} {v}" for k, v in estimate["rates"].items()))


# --- results ----------------------------------------------------------------------------------------------


def collect(work: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The results JSON: every finished unit in ``work`` (whatever plan made it), plus ``meta``."""
    def units(pattern: str) -> list[dict[str, Any]]:
        return [read_json(p) for p in sorted(work.glob(pattern))]

    students_ = units("students/*/unit.json")
    for unit in students_:
        nominal = unit.get("nominal_steps", meta["steps"])
        unit["equal_steps"] = unit["epochs"] == epochs_for_steps(unit["items"], nominal)
    return {**meta, "selects": units("cells/*/select-*/unit.json"),
            "selections": units("cells/*/selections/*/unit.json"),
            "sets": units("cells/*/sets/*/unit.json"), "students": students_,
            "wallclock": units("cells/*/wallclock-*.json"), "collected": time.strftime("%Y-%m-%d %H:%M:%S")}


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="main",
                        help=f"comma list of {', '.join(PARTS)}, run in that order [default: main]")
    parser.add_argument("--rows", default=",".join(MAIN_ROWS), help="rows of main and wallclock [default: all 8]")
    parser.add_argument("--pool", default="mixed", help="pool of main and wallclock [default: mixed]")
    parser.add_argument("--nl", type=int, nargs="+", default=[100], help="n_l values [default: 100]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds [default: 0]")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps of 128 per student, rounded to whole epochs [default: {DEFAULT_STEPS}]")
    parser.add_argument("--threads", type=int, default=1, help="pucli --threads [default: 1]")
    parser.add_argument("--workers", type=int, default=1, help="pucli --workers [default: 1]")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="pucli distill --precision [default: auto, float32 on the CPU]")
    parser.add_argument("--pucli", default=os.environ.get("PUCLI_STUDY_CMD", f"{shlex.quote(sys.executable)} -m pucli"),
                        help="command prefix that runs pucli [default: $PUCLI_STUDY_CMD, else this python -m pucli]")
    parser.add_argument("--pythonpath", default=os.environ.get("PUCLI_STUDY_PYTHONPATH"),
                        help="put in front of PYTHONPATH for pucli (a snapshot's tree) "
                             "[default: $PUCLI_STUDY_PYTHONPATH]")
    parser.add_argument("--root", type=Path, default=None,
                        help="cifar-pu root [default: <pucli cache>/benchmarks/cifar-pu]")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                        help="resnet-cifar10 folder [default: %(default)s]")
    parser.add_argument("--work", type=Path, default=None, help="unit cache [default: <root>/study]")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results JSON [default: %(default)s]")
    parser.add_argument("--estimate", action="store_true", help="only print the plan's predicted wall-clock")
    parser.add_argument("--report", action="store_true",
                        help="only write docs/benchmarks.md's section and docs/cifar_pu_*.png from --results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help="docs folder of --report [default: %(default)s]")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.rows = [r for r in args.rows.split(",") if r]
    for value, allowed, what in ((args.parts, PARTS, "--parts"), (args.rows, MAIN_ROWS, "--rows")):
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            parser.error(f"{what}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        from _cifar_pu_report import write_report

        write_report(read_json(args.results), docs=args.docs, results_path=args.results)
        return 0
    scenario = Scenario(args.root or default_cache() / "benchmarks" / "cifar-pu")
    scenario.require()
    settings = Settings(scenario=scenario, work=args.work or scenario.root / "study",
                        pucli=PucliCommand(shlex.split(args.pucli), args.pythonpath), models=args.models.resolve(),
                        steps=args.steps, threads=args.threads, workers=args.workers,
                        precision=args.precision)
    table = students(settings.models)
    study = Study(settings)
    jobs = make_plan(args.parts, rows=args.rows, pool=args.pool, nls=args.nl, seeds=args.seeds, steps_hint=args.steps)
    wallclock_cells = ([Cell(args.pool, n_l, seed) for n_l in args.nl for seed in args.seeds]
                       if "wallclock" in args.parts else [])
    if args.estimate:
        print_estimate(estimate_plan(study, jobs, table, wallclock_cells))
        return 0
    settings.teacher = prepare_teacher(scenario, settings.models)
    meta = {"scenario": "cifar-pu", "issue": 27, "root": str(scenario.root), "work": str(settings.work),
            "teacher": str(settings.teacher), "teacher_sha256": file_sha256(settings.teacher),
            "teacher_arch": settings.teacher_arch,
            "models_sha256": {"resnet.py": file_sha256(settings.models / "resnet.py")},
            "students": {name: s.params() for name, s in table.items()}, "steps": settings.steps,
            "batch_size": BATCH_SIZE,
            "pu_s2_size": PU_S2_SIZE, "main_loss": MAIN_LOSS, "threads": settings.threads, "workers": settings.workers,
            "pucli": settings.pucli.provenance(),
            "rows": {name: {"selection": r.selection.params(), "weighting": r.weighting} for name, r in ROWS.items()},
            "wallclock_formula": WALLCLOCK_FORMULA, "recommendation_tolerance": RECOMMENDATION_TOLERANCE,
            "cpus": os.cpu_count()}
    pucli_info = meta["pucli"]
    log(f"pucli: {pucli_info.get('imports')} at {pucli_info.get('commit')} "
        f"(modified: {pucli_info.get('pucli_tree_modified')}); work {settings.work}")
    estimate = estimate_plan(study, jobs, table, wallclock_cells)
    log(f"plan: {len(jobs)} equal-steps students ({sum(1 for u in estimate['units'] if not u['cached'])} units to run, "
        f"about {estimate['total_s'] / 3600:.1f} h)")

    def save() -> None:
        write_json_atomic(args.results, collect(settings.work, meta))

    for job in jobs:
        study.student_unit(job.cell, job.row, table[job.student], loss=job.loss, augment=job.augment, steps=job.steps)
        if job.part == "main" and job.row.name in ("PU-s1", "KD-pool", "PU-weighted"):
            study.select_unit(job.cell, job.row.selection.variant)  # the cell's trust and recommendation
        save()
    for cell in wallclock_cells:
        wallclock_cell(study, cell, args.rows, table["resnet20"])
        save()
    save()
    log(f"results: {args.results}; then: python benchmarks/cifar_pu.py --report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
