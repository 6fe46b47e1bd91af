"""What storing the frozen pool descriptors in half precision or reduced by PCA costs in F1 (issue 20, item 5).

A wide teacher's descriptors may not fit: ResNet-50's C = 5,952 channels are 23.8 KB per image in
float32 (docs/scaling.md, "Memory per image"), 23.8 GB for a million images. This script measures,
on the ``mnist-pu`` benchmark's 100,000-image pool and its LeNet-5 teacher (C = 106), what two
cheaper stores cost in PU-s1 F1 of pucli's default selection (label propagation from the labeled
positives, true prior 0.30), against float32:

- ``float16``: every descriptor rounded to float16 and back (:func:`float16_round_trip`), C x 2 bytes;
- ``pca<d>``: the descriptors reduced to their d leading principal components and decoded back to
  C channels for the selection (:class:`PCACodec`): d x 4 bytes per image, plus the mean, scale and
  C x d components once. The PCA is an exact, deterministic eigendecomposition of the covariance of
  the pool's standardised descriptors (each channel centred and divided by the pool's std, as the
  graph search itself standardises them), signs fixed, so the same pool gives the same bits; the
  labeled positives are encoded and decoded with the pool's codec;
- ``pca<d>-coef`` (not in the default list): the d coefficients themselves fed to pucli (so the
  graph search standardises each component: a whitened metric), what a store that is never decoded gives.

Each variant's pool descriptors go through what ``pucli.pu.selection.run_selection`` does for the
default ranking with a given prior: ``pool_graph`` (the graph rebuilt from the transformed
descriptors, ``use_cache=False`` so no cache mixes variants), ``positive_walk``,
``rank_by_propagation``, ``select_indices`` (PU-s1). Reported per variant (and seed): bytes per
image, F1 / precision / recall against ``ground_truth.tsv`` (benchmark-only), delta F1 against
float32, recall@10 of its graph against the float32 graph, search seconds and the 1-minute load
before and after each measurement (the machine is shared). At C <= 128 and an exact search the pool
graph does not depend on the seed, so each variant's graph is built once and serves every seed.
``--check`` also runs ``run_selection`` itself for the first seed and records whether its selection
is bit-identical to the float32 row's.

Usage (the command of the measured run, 2026-12-02 04:03-04:13 UTC)::

    .venv/bin/python benchmarks/descriptor_precision.py --root /root/.cache/pucli-ref-data \\
        --teacher /root/.cache/pucli-ref-teacher/lenet5.safetensors --threads 1 --seeds 0 1 2 --check

Prints a markdown table; writes ``benchmarks/results/descriptor_precision.json`` (atomically,
after every variant, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from _common import (TRUE_PRIOR, Scenario, Stopwatch, add_root_argument, load_average, machine, mean, prf,
                     write_json_atomic)

HERE = Path(__file__).resolve().parent

DEFAULT_VARIANTS = ["float32", "float16", "pca64", "pca32", "pca16"]
RESNET50_CHANNELS = 5952  # docs/scaling.md, "Memory per image": ResNet-50's multi-scale descriptor at 224 px
MILLION = 1_000_000
STD_FLOOR = 1e-6  # as pucli.pu.graph.graph_transform


# --- the stores ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to store the descriptors: ``kind`` is ``float32``, ``float16``, ``pca`` (decoded back
    to C channels) or ``pca-coef`` (the d coefficients fed as they are); ``dims`` is d for the PCA kinds."""

    name: str
    kind: str
    dims: int | None = None

    def bytes_per_image(self, channels: int) -> int:
        """Stored bytes per pool image at C = ``channels`` (the PCA's side information, held once, aside)."""
        if self.kind == "float32":
            return 4 * channels
        if self.kind == "float16":
            return 2 * channels
        assert self.dims is not None
        return 4 * self.dims

    def side_bytes(self, channels: int) -> int:
        """Bytes stored once for the whole pool: the PCA's mean, scale and C x d components (float32)."""
        return 4 * channels * (self.dims + 2) if self.dims is not None else 0


def parse_variant(text: str) -> Variant:
    """``float32``, ``float16``, ``pca<d>`` or ``pca<d>-coef`` (d >= 1) -> :class:`Variant`."""
    if text in ("float32", "float16"):
        return Variant(text, text)
    match = re.fullmatch(r"pca(\d+)(-coef)?", text)
    if match is None or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r}: float32, float16, pca<d> or pca<d>-coef")
    return Variant(text, "pca-coef" if match.group(2) else "pca", int(match.group(1)))


def float16_round_trip(descriptors: torch.Tensor) -> torch.Tensor:
    """(N, C) float32 -> the same values rounded to float16 (round to nearest even) and back to float32."""
    return descriptors.to(torch.float16).to(torch.float32)


@dataclass(frozen=True)
class PCACodec:
    """The d leading principal components of the pool's standardised descriptors.

    ``encode``: ((x - mean) / scale) @ components, (N, C) -> (N, d); ``decode``: z @ components.T
    * scale + mean, (N, d) -> (N, C). ``explained``: the share of the standardised pool's variance
    the d components keep.
    """

    mean: torch.Tensor  # (C,) float32
    scale: torch.Tensor  # (C,) float32, the pool's std floored at STD_FLOOR
    components: torch.Tensor  # (C, d) float32, orthonormal columns, leading first
    explained: float

    def encode(self, descriptors: torch.Tensor) -> torch.Tensor:
        return ((descriptors.float() - self.mean) / self.scale) @ self.components

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        return (coefficients.float() @ self.components.T) * self.scale + self.mean


def fit_pca(pool: torch.Tensor, dims: int) -> PCACodec:
    """Fit :class:`PCACodec` on the (N, C) pool descriptors: an exact eigendecomposition (float64) of
    the standardised pool's covariance; each component's sign makes its largest-magnitude entry
    positive, so the codec is deterministic (no random draw, no seed needed).

    Raises:
        ValueError: ``dims`` outside 1..C.
    """
    channels = pool.shape[1]
    if not 1 <= dims <= channels:
        raise ValueError(f"PCA to {dims} dimensions needs 1 <= d <= C = {channels}")
    data = pool.double()
    mean = data.mean(0)
    scale = data.std(0).clamp(min=STD_FLOOR)
    standard = (data - mean) / scale
    covariance = standard.T @ standard / max(1, len(data) - 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(values, descending=True, stable=True)
    values, vectors = values[order].clamp(min=0.0), vectors[:, order[:dims]]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    explained = float(values[:dims].sum() / values.sum()) if float(values.sum()) > 0 else 1.0
    return PCACodec(mean.float(), scale.float(), vectors.float().contiguous(), explained)


def fit_store(variant: Variant, pool: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """The map from float32 descriptors to what ``variant`` stores and hands back (fitted on the
    (N, C) ``pool``: the PCA; applied to the pool and to the labeled positives alike), and how far
    the pool moves: ``relative_error`` ||X - X'||_F / ||X||_F (raw channels; None for ``pca-coef``,
    which has no C channels), ``max_abs_error``, ``explained`` (PCA), ``non_finite`` (float16
    overflow: values float16 cannot hold)."""
    info: dict[str, Any] = {}
    store: Callable[[torch.Tensor], torch.Tensor]
    if variant.kind == "float32":
        store = _as_float32
    elif variant.kind == "float16":
        store = float16_round_trip
    else:
        assert variant.dims is not None
        codec = fit_pca(pool, variant.dims)
        info["explained"] = round(codec.explained, 6)
        store = (lambda x: codec.decode(codec.encode(x))) if variant.kind == "pca" else (
            lambda x: codec.encode(x).contiguous())
    out = store(pool)
    info["non_finite"] = int((~torch.isfinite(out)).sum())
    if out.shape == pool.shape:
        info["relative_error"] = round(float(torch.linalg.norm(out - pool) / torch.linalg.norm(pool)), 8)
        info["max_abs_error"] = round(float((out - pool).abs().max()), 8) if out.numel() else 0.0
    else:
        info["relative_error"] = info["max_abs_error"] = None
    return store, info


def _as_float32(descriptors: torch.Tensor) -> torch.Tensor:
    return descriptors.float()


# --- measures ----------------------------------------------------------------------------------------


def graph_recall(found: torch.Tensor, reference: torch.Tensor, *, rows: int = 16384) -> float:
    """recall@k: the share of the (N, k) ``reference`` neighbour lists that ``found`` lists too
    (rounded to 4 places), in row blocks."""
    hits = 0
    for start in range(0, len(reference), rows):
        a, b = found[start:start + rows], reference[start:start + rows]
        hits += int((a[:, :, None] == b[:, None, :]).any(1).sum())
    return round(hits / max(1, reference.numel()), 4)


def report_rows(measurements: list[dict[str, Any]], *, baseline: str = "float32") -> list[dict[str, Any]]:
    """Add ``delta_f1`` (F1 minus that of the ``baseline`` variant with the same seed, 4 places) to
    each measurement (dicts with ``variant``, ``seed``, ``f1``); None where the seed has no baseline."""
    reference = {m["seed"]: m["f1"] for m in measurements if m["variant"] == baseline}
    rows = []
    for m in measurements:
        base = reference.get(m["seed"])
        rows.append({**m, "delta_f1": round(m["f1"] - base, 4) if base is not None else None})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (in first-seen order): the means over its seeds of F1, precision, recall,
    delta F1 and graph recall@10, the seeds, and the bytes per image."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    out = []
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        deltas = [r["delta_f1"] for r in mine if r["delta_f1"] is not None]
        out.append({"variant": name, "seeds": [r["seed"] for r in mine], "bytes_per_image": mine[0]["bytes_per_image"],
                    "f1": mean(r["f1"] for r in mine), "precision": mean(r["precision"] for r in mine),
                    "recall": mean(r["recall"] for r in mine), "delta_f1": mean(deltas) if deltas else None,
                    "delta_f1_range": [min(deltas), max(deltas)] if deltas else None,
                    "graph_recall_at_10": mine[0]["graph_recall_at_10"]})
    return out


def extrapolate(variants: list[Variant], *, channels: int = RESNET50_CHANNELS,
                images: int = MILLION) -> list[dict[str, Any]]:
    """Bytes per image and for ``images`` images at C = ``channels`` (ResNet-50 by default): an
    extrapolation of the storage arithmetic only; no F1 is measured for that teacher."""
    return [{"variant": v.name, "channels": channels, "bytes_per_image": v.bytes_per_image(channels),
             "side_bytes": v.side_bytes(channels), "images": images,
             "total_gb": round((v.bytes_per_image(channels) * images + v.side_bytes(channels)) / 1e9, 3)}
            for v in variants]


def markdown_table(summary: list[dict[str, Any]], channels: int, resnet: list[dict[str, Any]]) -> str:
    """The results as a markdown table (means over seeds; delta F1 range over seeds in brackets)."""
    by_name = {r["variant"]: r for r in resnet}
    lines = [f"| store | bytes / image (C = {channels}) | F1 | precision | recall | delta F1 vs float32 [range] | "
             "graph recall@10 vs float32 | ResNet-50 bytes / image (C = 5,952; extrapolation) | "
             "1 M ResNet-50 images (extrapolation) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        delta = "" if row["delta_f1"] is None else (
            f"{row['delta_f1']:+.4f} [{row['delta_f1_range'][0]:+.4f}, {row['delta_f1_range'][1]:+.4f}]")
        ext = by_name.get(row["variant"], {})
        lines.append(f"| {row['variant']} | {row['bytes_per_image']:,} | {row['f1']:.4f} | {row['precision']:.4f} | "
                     f"{row['recall']:.4f} | {delta} | {row['graph_recall_at_10']:.4f} | "
                     f"{ext.get('bytes_per_image', 0):,} | {ext.get('total_gb', 0):.2f} GB |")
    return "\n".join(lines)


# --- the selection on one store ---------------------------------------------------------------------


def select_on(pool: torch.Tensor, positive: torch.Tensor, options: Any, *, graph: Any = None,
              device: torch.device | None = None) -> tuple[Any, torch.Tensor]:
    """What ``run_selection`` does for the default ranking with a given prior, on these descriptors:
    the pool's graph (built here with ``use_cache=False`` unless given), the walk over pool and
    positives, label propagation, PU-s1. Returns (the pool graph, the (N,) bool selection)."""
    from pucli.pu.neighbors import pool_graph
    from pucli.pu.propagation import positive_walk
    from pucli.pu.ranking import rank_by_propagation
    from pucli.pu.selection import select_indices

    if graph is None:
        graph = pool_graph(pool, neighbors=options.graph_neighbors, seed=options.seed,
                           device=device or torch.device("cpu"), use_cache=False, exact_max=options.graph_exact_max)
    walk = positive_walk(graph, pool, positive, seed=options.seed)
    scores, _ = rank_by_propagation(graph, pool, positive, options, walk=walk)
    return graph, select_indices(scores, options.budget)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_root_argument(parser)
    parser.add_argument("--teacher", type=Path, default=None,
                        help="teacher file [default: <root>/teacher/lenet5.safetensors]")
    parser.add_argument("--nl", type=int, default=10, help="labeled images per class (positive/nl<n>-seed<s>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", type=parse_variant, nargs="+",
                        default=[parse_variant(v) for v in DEFAULT_VARIANTS])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--workers", type=int, default=0,
                        help="loader processes for a descriptor extraction (cache miss)")
    parser.add_argument("--check", action="store_true",
                        help="also run run_selection for the first seed and compare its selection with the float32 row")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "descriptor_precision.json")
    args = parser.parse_args(argv)
    variants: list[Variant] = list(dict.fromkeys(args.variants))
    if variants[0].name != "float32":
        variants = [parse_variant("float32"), *[v for v in variants if v.name != "float32"]]

    from pucli.data.loading import Preprocess
    from pucli.device import configure_threads
    from pucli.pu.descriptors import load_or_extract_descriptors, resolve_positive_augmentation
    from pucli.pu.neighbors import MAX_GRAPH_CHANNELS, pool_graph
    from pucli.pu.network import MultiScaleExtractor
    from pucli.pu.options import SelectorOptions
    from pucli.pu.ranking import ranks_by_propagation, readable_labels

    scenario = Scenario(args.root, args.teacher)
    scenario.require()
    threads = configure_threads(args.threads)
    teacher = scenario.teacher()
    started = {"utc": _utc(), "load": load_average()}

    # The descriptors of each seed's positives, and of the pool (the same for every seed).
    inputs: dict[int, dict[str, Any]] = {}
    pool: torch.Tensor | None = None
    truth: torch.Tensor | None = None
    extraction = []
    for seed in args.seeds:
        positive = scenario.positives(args.nl, seed, teacher)
        options = SelectorOptions(class_prior=TRUE_PRIOR, seed=seed)
        augmentation = resolve_positive_augmentation(teacher.config, options.augment_positives, len(positive.paths),
                                                     seed)
        before = load_average()
        with Stopwatch() as watch:
            found = load_or_extract_descriptors(
                teacher, MultiScaleExtractor(teacher.model, options.scales), positive.paths, scenario.pool,
                Preprocess(teacher.config), scales=options.scales, device=torch.device("cpu"),
                batch_size=options.batch_size, workers=args.workers, augmentation=augmentation)
        extraction.append({"seed": seed, "seconds": round(watch.seconds, 1), "from_cache": found.from_cache,
                           "load_before": before, "load_after": load_average()})
        if len(found.unlabeled) != len(scenario.pool):
            raise SystemExit("unreadable pool images: rebuild the scenario (benchmarks/mnist_pu_data.py)")
        labels = readable_labels(positive.labels, found.positive_index)
        if not ranks_by_propagation(options, len(found.positive), labels):
            raise SystemExit(f"n_l {args.nl} is ranked by the nnPU head, not by propagation: use n_l >= 5")
        if pool is None:
            pool = found.unlabeled
            truth = scenario.truth_of([scenario.pool[int(i)] for i in found.unlabeled_index])
        elif not torch.equal(pool, found.unlabeled):
            raise SystemExit(f"seed {seed}: the pool's descriptors differ from the first seed's")
        inputs[seed] = {"positive": found.positive_set, "paths": positive.paths, "labels": positive.labels,
                        "options": options}
    assert pool is not None and truth is not None
    channels = int(pool.shape[1])
    # The pool graph depends on the seed only through a PCA (C > 128) or the approximate search.
    seed_free_graph = channels <= MAX_GRAPH_CHANNELS and len(pool) <= inputs[args.seeds[0]]["options"].graph_exact_max
    print(f"pool {len(pool):,} x C = {channels}; seeds {args.seeds}; variants {[v.name for v in variants]}",
          file=sys.stderr, flush=True)

    measurements: list[dict[str, Any]] = []
    searches: dict[str, Any] = {}
    references: dict[int, torch.Tensor] = {}
    check: dict[str, Any] | None = None
    float32_selection: dict[int, torch.Tensor] = {}

    def write() -> list[dict[str, Any]]:
        rows = report_rows(measurements)
        summary = summarise(rows)
        write_json_atomic(args.out, {
            "issue": "20, item 5", "scenario": str(scenario.root), "teacher": str(scenario.teacher_path),
            "n_l": args.nl, "true_prior": TRUE_PRIOR, "pool": len(pool), "channels": channels, "threads": threads,
            "ranking": "propagation (pucli default, class_prior given)", "selection": "PU-s1",
            "graph_seed_independent": seed_free_graph, "started": started,
            "finished": {"utc": _utc(), "load": load_average()},
            "extraction": extraction, "searches": searches, "rows": rows, "summary": summary,
            "resnet50_extrapolation": {"note": "extrapolation of the bytes only; no F1 measured for ResNet-50",
                                       "rows": extrapolate(variants)},
            "check_run_selection": check,
            "machine": machine(torch=torch.__version__, omp_num_threads=os.environ.get("OMP_NUM_THREADS"))})
        return summary

    for variant in variants:
        before = load_average()
        with Stopwatch() as watch:
            store, info = fit_store(variant, pool)
            pool_v = store(pool)
        transform_seconds = watch.seconds
        graph = None
        for seed in args.seeds:
            options = inputs[seed]["options"]
            positive_v = store(inputs[seed]["positive"])
            if graph is None or not seed_free_graph:
                if graph is not None:
                    before = load_average()
                with Stopwatch() as watch:
                    graph = pool_graph(pool_v, neighbors=options.graph_neighbors, seed=seed, device=torch.device("cpu"),
                                       use_cache=False, exact_max=options.graph_exact_max)
                assert graph is not None
                if variant.name == "float32":
                    references[seed] = graph.neighbors
                reference = references[seed if not seed_free_graph else args.seeds[0]]
                searches.setdefault(variant.name, []).append({
                    "seed": seed, "transform_seconds": round(transform_seconds, 2),
                    "search_seconds": round(watch.seconds, 1), "graph_channels": graph.channels, "method": graph.method,
                    "graph_recall_at_10": graph_recall(graph.neighbors, reference),
                    "load_before": before, "load_after": load_average(), **info})
            before = load_average()
            with Stopwatch() as watch:
                _, selected = select_on(pool_v, positive_v, options, graph=graph)
            figures = prf(selected, truth)
            if variant.name == "float32":
                float32_selection[seed] = selected
            measurements.append({
                "variant": variant.name, "seed": seed, "bytes_per_image": variant.bytes_per_image(channels),
                "side_bytes": variant.side_bytes(channels), **figures,
                "changed_vs_float32": int((selected != float32_selection[seed]).sum()),
                "graph_recall_at_10": searches[variant.name][-1]["graph_recall_at_10"],
                "rank_seconds": round(watch.seconds, 1), "load_before": before, "load_after": load_average()})
            print(f"{variant.name} seed {seed}: F1 {figures['f1']:.4f} (P {figures['precision']:.4f}, "
                  f"R {figures['recall']:.4f}), graph recall@10 {measurements[-1]['graph_recall_at_10']:.4f}, "
                  f"search {searches[variant.name][-1]['search_seconds']:.0f} s, load {load_average()[0]:.2f}",
                  file=sys.stderr, flush=True)
            write()

    if args.check:
        from pucli.pu.selection import run_selection

        seed = args.seeds[0]
        before = load_average()
        with Stopwatch() as watch:
            result = run_selection(teacher, inputs[seed]["paths"], scenario.pool, inputs[seed]["options"],
                                   workers=args.workers, positive_labels=inputs[seed]["labels"])
        check = {"seed": seed, "seconds": round(watch.seconds, 1), "load_before": before, "load_after": load_average(),
                 "same_paths": [str(p) for p in result.paths] == [str(p) for p in scenario.pool],
                 "identical_selection": bool(torch.equal(result.selected, float32_selection[seed])),
                 "ranking": result.metadata.get("graph", {}).get("ranking"), **prf(result.selected, truth)}
        print(f"run_selection seed {seed}: identical to the float32 row: {check['identical_selection']} "
              f"(F1 {check['f1']:.4f})", file=sys.stderr, flush=True)

    summary = write()
    print(f"C = {channels}, pool {len(pool):,}, n_l {args.nl}, seeds {args.seeds}, threads {threads}")
    print(markdown_table(summary, channels, extrapolate(variants)))
    return 0


def _utc() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


if __name__ == "__main__":
    raise SystemExit(main())
