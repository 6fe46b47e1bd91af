"""What the benchmark scripts share: the mnist-pu scenario, selection metrics, JSON results, timing, load.

- :class:`Scenario`: the folders of ``benchmarks/mnist_pu_data.py`` (pool, positives, teacher) and
  the pool's ground truth, ``ground_truth.tsv``. Benchmark-only knowledge: pucli never reads it.
- :func:`prf` / :func:`precision_recall_f1` / :func:`kept_by_source`: a selection against that
  ground truth; :func:`group_by_nl` / :func:`mean`: per-seed rows summed up per n_l.
- :func:`write_json_atomic`: a results file written whole or not at all.
- :class:`Stopwatch`: the wall-clock seconds of a stage.
- :func:`load_average` / :func:`machine`: the machine and its load, recorded beside the figures
  (the benchmarks share their cores with other jobs).
- :func:`add_sweep_arguments` / :func:`add_root_argument`: the command-line options the scripts
  that sweep n_l and seeds have in common.

Scripts import it as ``from _common import ...``: they run as ``python benchmarks/<script>.py``,
which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_pu_data import default_out_dir as default_root  # the scenario's layout is defined there

from pucli.paths import atomic_write

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "TRUE_PRIOR",
    "Scenario",
    "Stopwatch",
    "add_root_argument",
    "add_sweep_arguments",
    "default_root",
    "group_by_nl",
    "kept_by_source",
    "load_average",
    "machine",
    "mean",
    "precision_recall_f1",
    "prf",
    "write_json_atomic",
]

TRUE_PRIOR = 0.30  # mnist-pu's class prior: 30,000 MNIST digits in a pool of 100,000


# --- the scenario ------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """The mnist-pu folders and the pool's ground truth (benchmark-only knowledge).

    ``root`` defaults to ``<pucli cache>/benchmarks/mnist-pu``, ``teacher_path`` to the LeNet-5 of
    ``benchmarks/train_teacher.py`` under it.
    """

    root: Path | None = None
    teacher_path: Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else default_root()
        self.teacher_path = Path(self.teacher_path) if self.teacher_path is not None else (
            self.root / "teacher" / "lenet5.safetensors")
        self._pool: list[Path] | None = None
        self._truth: Any = None
        self._sources: list[str] | None = None
        self._by_path: dict[str, tuple[bool, str]] | None = None

    def require(self) -> None:
        """Exit with what to run when the scenario or its teacher is not built yet."""
        if not (self.root / "manifest.json").is_file() or not self.teacher_path.is_file():
            sys.exit(f"mnist-pu data or teacher missing under {self.root}: "
                     "run benchmarks/mnist_pu_data.py and benchmarks/train_teacher.py")

    @property
    def pool_list(self) -> Path:
        """``unlabeled.txt``: the pool's paths, one a line, in the seeded order pucli reads."""
        return self.root / "unlabeled.txt"

    @property
    def pool(self) -> list[Path]:
        if self._pool is None:
            from pucli.data.sources import UnlabeledPool

            self._pool = UnlabeledPool.from_source(str(self.pool_list)).paths
        return self._pool

    def truth_by_path(self) -> dict[str, tuple[bool, str]]:
        """Pool path (as written in ``ground_truth.tsv``) -> (is a positive, source)."""
        if self._by_path is None:
            rows = [line.split("\t") for line in (self.root / "ground_truth.tsv").read_text().splitlines()[1:] if line]
            self._by_path = {r[0]: (r[1] == "1", r[2]) for r in rows}
        return self._by_path

    def ground_truth(self) -> tuple[Any, list[str]]:
        """(N,) bool tensor "is a positive" and the source of each pool item, in pool order."""
        if self._truth is None:
            import torch

            flags = [self.truth_by_path()[str(p)] for p in self.pool]
            self._truth = torch.tensor([f[0] for f in flags])
            self._sources = [f[1] for f in flags]
        return self._truth, self._sources  # type: ignore[return-value]

    def truth_of(self, paths: list[Path]) -> Any:
        """(len(paths),) bool tensor "is a positive" for pool items in any order (say, a result's readable ones)."""
        import torch

        by_path = self.truth_by_path()
        return torch.tensor([by_path[str(p)][0] for p in paths], dtype=torch.bool)

    def positive_dir(self, n_l: int, seed: int) -> Path:
        return self.root / "positive" / f"nl{n_l}-seed{seed}"

    def positives(self, n_l: int, seed: int, teacher: Any) -> Any:
        """The labeled subset L^t ``positive/nl<n_l>-seed<seed>`` as a ``pucli.data.sources.LabeledFolder``."""
        from pucli.data.sources import LabeledFolder

        return LabeledFolder.from_folder(self.positive_dir(n_l, seed), num_classes=teacher.config.num_classes,
                                         label_names=teacher.config.label_names)

    def teacher(self) -> Any:
        from pucli.checkpoints import load_model

        return load_model(self.teacher_path)


# --- metrics -----------------------------------------------------------------------------------------


def precision_recall_f1(selected: int, true_positive: int, positives: int) -> dict[str, float]:
    """Precision, recall and F1 (rounded to 4 places) of ``selected`` items, ``true_positive`` of them
    positives, out of ``positives`` in all; 0 where a ratio has nothing to count."""
    precision = true_positive / selected if selected else 0.0
    recall = true_positive / max(1, positives)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"selected": selected, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def prf(mask: Any, truth: Any) -> dict[str, float]:
    """:func:`precision_recall_f1` of a (N,) bool selection against the (N,) bool ground truth."""
    return precision_recall_f1(int(mask.sum()), int((mask & truth).sum()), int(truth.sum()))


def kept_by_source(mask: Any, sources: list[str]) -> dict[str, int]:
    """How many items of each source (mnist, fashion, kmnist) a (N,) bool selection keeps."""
    counts: dict[str, int] = {}
    for keep, source in zip(mask.tolist(), sources):
        if keep:
            counts[source] = counts.get(source, 0) + 1
    return counts


def group_by_nl(rows: list[dict[str, Any]], nls: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The rows (one per n_l and seed, each with an ``"n_l"``) of each n_l in ``nls``, in order."""
    return {n_l: [row for row in rows if row["n_l"] == n_l] for n_l in nls}


def mean(values: Iterable[float]) -> float:
    """The mean, rounded to 4 places (the precision of the metrics it sums up)."""
    values = list(values)
    return round(sum(values) / len(values), 4)


# --- results -----------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any, *, indent: int = 1) -> None:
    """Write ``data`` as JSON (plus a newline) to ``path``, creating its folder; a reader never sees
    half a file. Values JSON does not know are written as ``str()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(json.dumps(data, indent=indent, default=str) + "\n")


class Stopwatch:
    """Wall-clock seconds of a stage: ``with Stopwatch() as watch: ...``, then ``watch.seconds``
    (inside the block: the seconds so far)."""

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        self._stopped: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self._stopped if self._stopped is not None else time.perf_counter()) - self._started


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded to 2 places."""
    return [round(value, 2) for value in os.getloadavg()]


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a result was measured on: CPUs, platform, load average at the time of the call,
    and ``extra`` (say, torch's version)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_at_end": load_average(), **extra}


# --- command line ------------------------------------------------------------------------------------


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    """``--root``: the mnist-pu folder (None: :func:`default_root`)."""
    parser.add_argument("--root", type=Path, default=None, help="mnist-pu folder [default: <pucli cache>/benchmarks/mnist-pu]")


def add_sweep_arguments(parser: argparse.ArgumentParser, *, nl: list[int], out: Path) -> None:
    """``--nl``, ``--seeds`` (0 1 2), ``--threads``, ``--root`` and ``--out`` of a script that sweeps n_l and seeds."""
    parser.add_argument("--nl", type=int, nargs="+", default=nl)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    add_root_argument(parser)
    parser.add_argument("--out", type=Path, default=out)
