"""Approximate against exact k-NN graphs on the ``mnist-pu`` pool (issue 20): recall@10, PU-s1 F1, search time.

pucli searches pools above ``--graph-exact-max`` (200,000 by default) with an IVF-Flat index
(faiss; ``pucli.pu.graph.approximate_knn_graph``) instead of the exact O(N^2 C) search. mnist-pu's
100,000-image pool stays below the threshold, so this script forces both searches on the same
graph features (``pucli.pu.graph.graph_features`` of the frozen pool descriptors) and compares:

- **recall@10**: the share of each image's 10 exact neighbours the approximate graph also finds,
  for the default settings (``ivf_settings``: sqrt(N) lists, 16 probes) and a few probe counts;
- **F1**: PU-s1 with the head's scores smoothed over each graph (pucli's default selection, true
  prior 0.30), against ``ground_truth.tsv`` (which only benchmarks read), per n_l and seed;
- **search time** of each, with the 1-minute load average right after it (the machine is shared);
- with ``--hnsw``, the same for faiss's HNSW index (the alternative pucli did not take).

Usage::

    python benchmarks/approx_graph_mnist_pu.py --threads 1 [--root DIR] [--teacher FILE] [--nl 1 10] [--seeds 0] [--hnsw]

Prints a markdown table; writes ``benchmarks/results/approx_graph_mnist_pu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from _common import TRUE_PRIOR, Scenario, Stopwatch, add_sweep_arguments, load_average, machine, prf, write_json_atomic

HERE = Path(__file__).resolve().parent


def _recall(approximate, exact) -> float:
    """recall@k: the share of the (N, k) exact neighbours that the approximate graph lists too."""
    return round(float((approximate[:, :, None] == exact[:, None, :]).any(2).sum()) / exact.numel(), 4)


def _hnsw_graph(features, neighbors: int, *, links: int, ef_search: int):
    """The k-NN graph from faiss's HNSW index (Malkov & Yashunin 2018), for comparison only: (N, k) int64."""
    import faiss
    import torch

    points = features.numpy()
    index = faiss.IndexHNSWFlat(points.shape[1], links)
    index.hnsw.efConstruction = 40
    index.add(points)
    index.hnsw.efSearch = ef_search
    _, found = index.search(points, neighbors + 1)
    found = torch.from_numpy(found)
    rows = torch.arange(len(found))[:, None]
    keep = (found != rows) & (found >= 0)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :neighbors]
    return found.gather(1, order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, nl=[1, 10], out=HERE / "results" / "approx_graph_mnist_pu.json")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher file [default: <root>/teacher/lenet5.safetensors]")
    parser.add_argument("--probes", type=int, nargs="+", default=[8, 32], help="probe counts to sweep besides the default")
    parser.add_argument("--hnsw", action="store_true", help="also measure faiss's HNSW index (M 32, efSearch 64), the alternative")
    parser.set_defaults(seeds=[0])
    args = parser.parse_args(argv)

    import torch

    from pucli.data.loading import Preprocess
    from pucli.device import configure_threads
    from pucli.pu.descriptors import load_or_extract_descriptors, resolve_positive_augmentation
    from pucli.pu.neighbors import approximate_knn_graph, graph_features, ivf_settings, knn_graph
    from pucli.pu.propagation import smooth_scores
    from pucli.pu.network import MultiScaleExtractor
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    scenario = Scenario(args.root, args.teacher)
    scenario.require()
    threads = configure_threads(args.threads)
    teacher = scenario.teacher()
    truth, _ = scenario.ground_truth()
    workers = 1

    def descriptors_of(options: SelectorOptions, positive) -> torch.Tensor:
        """The pool's frozen descriptors (N, C) float32, from the cache the selection just filled."""
        augmentation = resolve_positive_augmentation(teacher.config, options.augment_positives, len(positive.paths),
                                                     options.seed)
        found = load_or_extract_descriptors(
            teacher, MultiScaleExtractor(teacher.model, options.scales), positive.paths, scenario.pool,
            Preprocess(teacher.config), scales=options.scales, device=torch.device("cpu"),
            batch_size=options.batch_size, workers=workers, augmentation=augmentation)
        return found.unlabeled

    searches: dict[str, object] = {}
    rows = []
    graphs: dict[str, torch.Tensor] = {}
    for n_l in args.nl:
        for seed in args.seeds:
            positive = scenario.positives(n_l, seed, teacher)
            options = SelectorOptions(class_prior=TRUE_PRIOR, seed=seed)
            # The head's scores alone (graph_neighbors 0); the graphs are built below, timed.
            result = run_selection(teacher, positive.paths, scenario.pool,
                                   SelectorOptions(class_prior=TRUE_PRIOR, seed=seed, graph_neighbors=0),
                                   workers=workers)
            if len(result.paths) != len(scenario.pool):
                raise SystemExit("unreadable pool images: rebuild the scenario (benchmarks/mnist_pu_data.py)")
            if not graphs:  # the pool's descriptors, so its graphs, do not depend on the positives
                features = graph_features(descriptors_of(options, positive), seed=seed)
                with Stopwatch() as watch:
                    graphs["exact"] = knn_graph(features, options.graph_neighbors)
                searches["exact"] = {"seconds": round(watch.seconds, 1), "load_1min": load_average()[0]}
                default = ivf_settings(len(features), seed=seed)
                for probes in [default.probes, *args.probes]:
                    search = dataclasses.replace(default, probes=probes)
                    with Stopwatch() as watch:
                        found = approximate_knn_graph(features, options.graph_neighbors, search=search)
                    name = search.describe()
                    graphs[name] = found
                    searches[name] = {"seconds": round(watch.seconds, 1), "load_1min": load_average()[0],
                                      "recall_at_10": _recall(found, graphs["exact"]), "default": probes == default.probes}
                    print(f"{name}: recall@10 {searches[name]['recall_at_10']:.4f}, {watch.seconds:.1f} s "
                          f"(exact {searches['exact']['seconds']:.1f} s)", file=sys.stderr, flush=True)
                if args.hnsw:
                    with Stopwatch() as watch:
                        graphs["hnsw:M=32,efSearch=64"] = _hnsw_graph(features, options.graph_neighbors, links=32,
                                                                     ef_search=64)
                    searches["hnsw:M=32,efSearch=64"] = {
                        "seconds": round(watch.seconds, 1), "load_1min": load_average()[0],
                        "recall_at_10": _recall(graphs["hnsw:M=32,efSearch=64"], graphs["exact"])}
                    print(f"hnsw: recall@10 {searches['hnsw:M=32,efSearch=64']['recall_at_10']:.4f}, "
                          f"{watch.seconds:.1f} s", file=sys.stderr, flush=True)
                again = approximate_knn_graph(features, options.graph_neighbors, search=default)
                searches[default.describe()]["same_graph_on_a_second_build"] = bool(torch.equal(again, graphs[default.describe()]))
            row = {"n_l": n_l, "seed": seed, "head": prf(result.head_scores > 0, truth)}
            for name, found in graphs.items():
                smoothed = smooth_scores(result.head_scores, found, alpha=options.graph_alpha, steps=options.graph_steps)
                row[name] = prf(smoothed > 0, truth)
            rows.append(row)
            print(f"n_l {n_l} seed {seed}: " + ", ".join(f"{name} F1 {row[name]['f1']:.4f}" for name in graphs),
                  file=sys.stderr, flush=True)

    write_json_atomic(args.out, {"true_prior": TRUE_PRIOR, "threads": threads, "pool": len(scenario.pool),
                                 "searches": searches, "rows": rows,
                                 "machine": machine(torch=torch.__version__, omp_num_threads=os.environ.get("OMP_NUM_THREADS"))})
    print("| search | recall@10 | search time (s) | load (1 min) | " + " | ".join(
        f"F1 n_l={r['n_l']} seed {r['seed']}" for r in rows) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(rows))
    for name, figures in searches.items():
        recall = figures.get("recall_at_10", 1.0)
        print(f"| {name}{' (default)' if figures.get('default') else ''} | {recall:.4f} | {figures['seconds']:.1f} | "
              f"{figures['load_1min']:.2f} | " + " | ".join(f"{r[name]['f1']:.4f}" for r in rows) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
