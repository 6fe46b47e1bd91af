"""The expanded-set format: ``L^l = L^t ∪ U^p`` with the teacher's soft targets (stage 2).

Xu et al., "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019
(https://arxiv.org/abs/1909.09757), Section 3: every image of the extended set, labeled or
selected from the pool, gets the teacher's soft target ``y_i^te = softmax(Z_i / T)`` as pseudo
ground truth; the soft class counts ``y = sum_i y_i^te`` give the class weights of Eq. 7, which
:mod:`pucli.kd` computes (:func:`pucli.kd.expand.build_expanded_set`) and this module stores.

This module is the only place that writes or reads the format (version 1). An expanded set is a
folder holding three files:

``manifest.tsv``
    Line 1 is the tag ``#pucli-manifest v1``, line 2 the header
    ``path<TAB>origin<TAB>label<TAB>score``, then one row per item in a fixed order:
    ``path`` (absolute, or relative to the folder), ``origin`` (``positive`` for ``L^t``,
    ``unlabeled`` for ``U^p``), ``label`` (the labeled class, a teacher output index, for positives;
    ``-1`` for unlabeled items), ``score`` (the PU selector's ``F(x)`` for unlabeled items, empty for
    positives).
``soft_targets.safetensors``
    One tensor ``soft_targets``: (N, K) float32, row i for manifest item i, each row sums to 1.
    Metadata: ``format`` (``pucli-soft-targets``), ``format_version``, ``temperature``,
    ``teacher_digest`` (``sha256:<hex>`` of the teacher file), ``num_items``.
``classes.json``
    ``format_version``, ``temperature``, ``teacher``, ``teacher_digest``, ``class_names`` (K),
    ``soft_counts`` (K, Eq. 7's ``y``), ``class_weights`` (K, Eq. 7's ``w_kd``, mean 1),
    ``counts`` with ``positive`` (per labeled class) and ``unlabeled`` (per teacher-argmax class).

Readers validate everything and raise :class:`pucli.errors.DataError` with one-line messages.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pucli.errors import DataError, UsageError
from pucli.paths import replace_atomically

__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "SOFT_TARGETS_NAME",
    "CLASSES_NAME",
    "ORIGINS",
    "ExpandedSet",
    "write_expanded_set",
    "read_expanded_set",
    "retemper",
]

MANIFEST_FORMAT_VERSION = 1
MANIFEST_TAG = f"#pucli-manifest v{MANIFEST_FORMAT_VERSION}"
MANIFEST_HEADER = ["path", "origin", "label", "score"]
MANIFEST_NAME = "manifest.tsv"
SOFT_TARGETS_NAME = "soft_targets.safetensors"
CLASSES_NAME = "classes.json"
SOFT_TARGETS_KEY = "soft_targets"
SOFT_TARGETS_FORMAT = "pucli-soft-targets"
ORIGINS = ("positive", "unlabeled")
# Rows of soft targets are probabilities; float32 softmax sums are exact to ~1e-6 per row.
_ROW_SUM_TOLERANCE = 1e-3


@dataclass
class ExpandedSet:
    """The extended set ``L^l`` in memory.

    ``paths[i]``, ``origins[i]`` (``positive``/``unlabeled``), ``labels[i]`` (labeled class or -1),
    ``scores[i]`` (selector score, ``None`` for positives) and ``soft_targets[i]`` describe item i.
    ``soft_targets``: (N, K) float32 ``softmax(teacher(x) / temperature)``. ``soft_counts`` and
    ``class_weights``: (K,) float64, Eq. 7. ``positive_counts`` / ``unlabeled_counts``: per class
    (labeled class for positives, teacher argmax for unlabeled items).
    """

    paths: list[Path]
    origins: list[str]
    labels: list[int]
    scores: list[float | None]
    soft_targets: Tensor
    temperature: float
    teacher_digest: str
    class_names: list[str]
    soft_counts: Tensor
    class_weights: Tensor
    positive_counts: list[int]
    unlabeled_counts: list[int]
    teacher: str = ""
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def assemble(
        cls,
        *,
        paths: Sequence[Path],
        origins: Sequence[str],
        labels: Sequence[int],
        scores: Sequence[float | None],
        soft_targets: Tensor,
        temperature: float,
        teacher_digest: str,
        class_names: Sequence[str],
        class_weights: Tensor,
        teacher: str = "",
    ) -> ExpandedSet:
        """An :class:`ExpandedSet` from its items, computing the soft counts and per-class counts.

        Args:
            soft_targets: (N, K) float, rows summing to 1.
            class_weights: (K,) float64, Eq. 7's ``w_kd`` of these soft targets
                (:func:`pucli.kd.losses.class_weights`; :func:`pucli.kd.expand.build_expanded_set`
                computes them).

        Raises:
            DataError: no items, or lengths that disagree with ``soft_targets``.
        """
        n = len(paths)
        if n == 0:
            raise DataError("the extended set is empty: no positive or selected image could be read")
        if not (len(origins) == len(labels) == len(scores) == n == soft_targets.shape[0]):
            raise DataError(f"extended set of {n} items has {soft_targets.shape[0]} soft-target rows")
        targets = soft_targets.detach().to("cpu", torch.float32).contiguous()
        num_classes = targets.shape[1]
        positive_counts = [0] * num_classes
        unlabeled_counts = [0] * num_classes
        argmax = targets.argmax(dim=1).tolist()
        for origin, label, top in zip(origins, labels, argmax):
            if origin == "positive":
                positive_counts[label] += 1
            else:
                unlabeled_counts[top] += 1
        return cls(
            paths=[Path(p) for p in paths],
            origins=list(origins),
            labels=[int(v) for v in labels],
            scores=list(scores),
            soft_targets=targets,
            temperature=float(temperature),
            teacher_digest=teacher_digest,
            class_names=list(class_names),
            soft_counts=targets.double().sum(dim=0),  # Eq. 7's y = sum_i y_i^te
            class_weights=class_weights.to(torch.float64),
            positive_counts=positive_counts,
            unlabeled_counts=unlabeled_counts,
            teacher=teacher,
        )

    @property
    def num_classes(self) -> int:
        return int(self.soft_targets.shape[1])

    def class_table(self) -> list[dict[str, Any]]:
        """One dict per class: name, positives, selected (unlabeled items the teacher puts in the
        class), soft count (Eq. 7's ``y^k``) and weight (``w_kd^k``)."""
        return [
            {
                "class": name,
                "positive": self.positive_counts[k],
                "selected": self.unlabeled_counts[k],
                "soft_count": float(self.soft_counts[k]),
                "weight": float(self.class_weights[k]),
            }
            for k, name in enumerate(self.class_names)
        ]


def write_expanded_set(expanded: ExpandedSet, folder: str | os.PathLike[str]) -> Path:
    """Write the three files of ``expanded`` into ``folder`` (which must exist and be empty, e.g. a
    temporary folder the caller renames into place, so the set appears whole or not at all).

    Raises:
        DataError: a path contains a tab or newline.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    lines = [MANIFEST_TAG, "\t".join(MANIFEST_HEADER)]
    for path, origin, label, score in zip(expanded.paths, expanded.origins, expanded.labels, expanded.scores):
        text = str(Path(path).absolute())
        if "\t" in text or "\n" in text or "\x00" in text:
            raise DataError(f"cannot write a path with a tab, newline or NUL byte to the manifest: {text!r}; rename the file")
        lines.append(f"{text}\t{origin}\t{label}\t{'' if score is None else repr(float(score))}")
    # surrogateescape: a file name that is not valid UTF-8 is written byte for byte and read back as itself.
    (folder / MANIFEST_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    metadata = {
        "format": SOFT_TARGETS_FORMAT,
        "format_version": str(MANIFEST_FORMAT_VERSION),
        "temperature": repr(expanded.temperature),
        "teacher_digest": expanded.teacher_digest,
        "num_items": str(len(expanded)),
    }
    soft_targets = {SOFT_TARGETS_KEY: expanded.soft_targets.contiguous()}
    # Through replace_atomically for its file mode: save_file makes 0600 files, not the umask's.
    replace_atomically(folder / SOFT_TARGETS_NAME, lambda tmp: save_file(soft_targets, str(tmp), metadata=metadata))
    classes = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "temperature": expanded.temperature,
        "teacher": expanded.teacher,
        "teacher_digest": expanded.teacher_digest,
        "class_names": expanded.class_names,
        "soft_counts": [float(v) for v in expanded.soft_counts],
        "class_weights": [float(v) for v in expanded.class_weights],
        "counts": {"positive": expanded.positive_counts, "unlabeled": expanded.unlabeled_counts},
    }
    (folder / CLASSES_NAME).write_text(json.dumps(classes, indent=2) + "\n", encoding="utf-8")
    return folder


def read_expanded_set(folder: str | os.PathLike[str], *, check_files: bool = True,
                      parameter: str = "data") -> ExpandedSet:
    """Read and validate an expanded set written by :func:`write_expanded_set`.

    Args:
        check_files: also check that every listed image file exists.
        parameter: the parameter that named ``folder``, which errors name (and carry).

    Raises:
        UsageError: ``folder`` is missing or not a folder.
        DataError: a file is missing, the version is unknown, a row is malformed, listed images
            are missing, or the row counts of manifest and soft targets differ.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{parameter} {folder} is not a folder: give the folder written by `pucli expand`",
                         parameter=parameter, path=folder)
    where = f"{parameter} {folder}"
    try:
        return _read_expanded_set(folder, where, check_files=check_files)
    except DataError as exc:
        if exc.parameter is None and str(exc).startswith(where):  # every message about the folder opens with it
            exc.parameter, exc.path = parameter, folder
        raise


def _read_expanded_set(folder: Path, where: str, *, check_files: bool) -> ExpandedSet:
    for name in (MANIFEST_NAME, SOFT_TARGETS_NAME, CLASSES_NAME):
        if not (folder / name).is_file():
            raise DataError(f"{where} has no {name}: give the folder written by `pucli expand`, or re-run it")
    paths, origins, labels, scores = _read_manifest(folder / MANIFEST_NAME, where)
    soft_targets, meta = _read_soft_targets(folder / SOFT_TARGETS_NAME, where)
    classes = _read_classes(folder / CLASSES_NAME, where)

    if soft_targets.shape[0] != len(paths):
        raise DataError(
            f"{where}: {MANIFEST_NAME} lists {len(paths)} items but {SOFT_TARGETS_NAME} has "
            f"{soft_targets.shape[0]} rows; re-run `pucli expand`"
        )
    num_classes = soft_targets.shape[1]
    class_names = classes["class_names"]
    if len(class_names) != num_classes:
        raise DataError(f"{where}: {CLASSES_NAME} names {len(class_names)} classes, soft targets have {num_classes}")
    weights = classes.get("class_weights")
    if not (isinstance(weights, list) and len(weights) == num_classes
            and all(type(w) in (int, float) and math.isfinite(w) and w > 0 for w in weights)):
        raise DataError(f"{where}: {CLASSES_NAME} must hold {num_classes} positive class_weights; re-run `pucli expand`")
    bad_label = next((i for i, v in enumerate(labels) if v >= num_classes), None)
    if bad_label is not None:
        raise DataError(f"{where}: {MANIFEST_NAME} row {bad_label + 1} has label {labels[bad_label]} >= {num_classes} classes")
    if check_files:
        from pucli.data.shards import member_exists  # a path may be a member of a tar shard

        missing = [p for p in paths if not member_exists(p)]
        if missing:
            raise DataError(
                f"{where}: {len(missing)} image(s) listed in {MANIFEST_NAME} do not exist (first: {missing[0]}); "
                "restore them or re-run `pucli expand`"
            )
    expanded = ExpandedSet.assemble(
        paths=paths,
        origins=origins,
        labels=labels,
        scores=scores,
        soft_targets=soft_targets,
        temperature=float(meta["temperature"]),
        teacher_digest=meta.get("teacher_digest", ""),
        class_names=class_names,
        class_weights=torch.tensor(weights, dtype=torch.float64),
        teacher=str(classes.get("teacher", "")),
    )
    expanded.root = folder
    return expanded


def retemper(soft_targets: Tensor, from_temperature: float, to_temperature: float) -> Tensor:
    """Soft targets at another temperature, exactly: ``softmax(z / T2) = softmax(log p * T1 / T2)``
    for ``p = softmax(z / T1)``.

    Args:
        soft_targets: (N, K) float probabilities at ``from_temperature``.

    Returns:
        (N, K) float32 probabilities at ``to_temperature`` (the input itself when T1 == T2).
    """
    if from_temperature == to_temperature:
        return soft_targets
    log_probs = soft_targets.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    return torch.softmax(log_probs * (from_temperature / to_temperature), dim=1).float()


# --- reading ---------------------------------------------------------------------------------


def _read_manifest(path: Path, where: str) -> tuple[list[Path], list[str], list[int], list[float | None]]:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if "\x00" in text:
        raise DataError(f"{where}: {MANIFEST_NAME} holds NUL bytes, it is not a text manifest; re-run `pucli expand`")
    # Split on "\n" alone (str.splitlines also splits on \x85, \u2028, ... which paths may hold).
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].startswith("#pucli-manifest"):
        raise DataError(f"{where}: {MANIFEST_NAME} does not start with '{MANIFEST_TAG}'; re-run `pucli expand`")
    if lines[0] != MANIFEST_TAG:
        raise DataError(f"{where}: {MANIFEST_NAME} has unsupported version {lines[0][1:]!r}; upgrade pucli")
    if len(lines) < 2 or lines[1].split("\t") != MANIFEST_HEADER:
        raise DataError(f"{where}: {MANIFEST_NAME} line 2 must be the header {'<TAB>'.join(MANIFEST_HEADER)}")
    folder = path.parent
    paths: list[Path] = []
    origins: list[str] = []
    labels: list[int] = []
    scores: list[float | None] = []
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        fields = line.split("\t")
        prefix = f"{where}: {MANIFEST_NAME} line {number}"
        if len(fields) != len(MANIFEST_HEADER):
            raise DataError(f"{prefix}: expected {len(MANIFEST_HEADER)} tab-separated fields, got {len(fields)}")
        text_path, origin, text_label, text_score = fields
        if not text_path:
            raise DataError(f"{prefix}: empty path")
        if origin not in ORIGINS:
            raise DataError(f"{prefix}: origin must be positive or unlabeled, got {origin[:20]!r}")
        try:
            label = int(text_label)
        except ValueError:
            raise DataError(f"{prefix}: label {text_label[:20]!r} is not an integer") from None
        if origin == "positive" and label < 0:
            raise DataError(f"{prefix}: a positive needs its class index, got {label}")
        if origin == "unlabeled" and label != -1:
            raise DataError(f"{prefix}: an unlabeled item has label -1, got {label}")
        score: float | None = None
        if text_score:
            try:
                score = float(text_score)
            except ValueError:
                raise DataError(f"{prefix}: score {text_score[:20]!r} is not a number") from None
            if math.isnan(score):
                raise DataError(f"{prefix}: score is NaN")
        elif origin == "unlabeled":
            raise DataError(f"{prefix}: an unlabeled item needs its selector score")
        item = Path(text_path)
        paths.append(item if item.is_absolute() else folder / item)
        origins.append(origin)
        labels.append(label)
        scores.append(score)
    if not paths:
        raise DataError(f"{where}: {MANIFEST_NAME} lists no item; re-run `pucli expand`")
    return paths, origins, labels, scores


def _read_soft_targets(path: Path, where: str) -> tuple[Tensor, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            if SOFT_TARGETS_KEY not in handle.keys():
                raise DataError(f"{where}: {SOFT_TARGETS_NAME} holds no '{SOFT_TARGETS_KEY}' tensor; re-run `pucli expand`")
            targets = handle.get_tensor(SOFT_TARGETS_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:80] if str(exc) else exc.__class__.__name__
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} is not a valid safetensors file ({first}); re-run `pucli expand`") from exc
    if meta.get("format") != SOFT_TARGETS_FORMAT:
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} was not written by `pucli expand` (no format tag)")
    if meta.get("format_version") != str(MANIFEST_FORMAT_VERSION):
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} has unsupported version {meta.get('format_version')!r}; upgrade pucli")
    try:
        temperature = float(meta["temperature"])
    except (KeyError, ValueError):
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} metadata lacks a numeric temperature") from None
    if not (math.isfinite(temperature) and temperature > 0):
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} temperature must be > 0, got {temperature}")
    if targets.ndim != 2 or targets.shape[1] == 0 or targets.dtype != torch.float32:
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} must hold an (N, K) float32 tensor, got {tuple(targets.shape)} {targets.dtype}")
    if not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()):
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} holds negative or non-finite values; re-run `pucli expand`")
    row_error = (targets.double().sum(dim=1) - 1.0).abs()
    if targets.shape[0] and float(row_error.max()) > _ROW_SUM_TOLERANCE:
        row = int(row_error.argmax())
        raise DataError(f"{where}: {SOFT_TARGETS_NAME} row {row} does not sum to 1; re-run `pucli expand`")
    return targets, meta


def _read_classes(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, huge numbers
        raise DataError(f"{where}: {CLASSES_NAME} is not valid JSON; re-run `pucli expand`") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if type(version) is not int or version != MANIFEST_FORMAT_VERSION:
        raise DataError(f"{where}: {CLASSES_NAME} has no or an unsupported format_version; upgrade pucli or re-run expand")
    names = data.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: {CLASSES_NAME} must list class_names as strings")
    return data
