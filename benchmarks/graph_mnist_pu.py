"""PU-s1 selection quality with and without graph smoothing on ``mnist-pu`` (issue 3).

For every n_l and subset seed, one ``pucli.pu.selection.run_selection`` with pucli's defaults and the
true class prior 0.30 on the whole 100,000-image pool. One run gives both figures: the nnPU head's
own rule (``head_scores > 0``) and the default selection (the head's scores smoothed over the
pool's k-NN graph, ``pucli.pu.graph``; same count). Beside them, the teacher-confidence baseline
(top-k by the teacher's max softmax, k = the PU-s1 count) and the graph stage's wall-clock
(the first run builds the graph; later runs read it from the cache: the pool is the same).

Precision / recall / F1 are against ``ground_truth.tsv``, which only this script reads.

Usage::

    python benchmarks/graph_mnist_pu.py [--nl 1 2 5 10 20] [--seeds 0 1 2] [--threads N]

Prints a markdown table; writes ``benchmarks/results/graph_mnist_pu.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (
    TRUE_PRIOR,
    Scenario,
    Stopwatch,
    add_sweep_arguments,
    group_by_nl,
    kept_by_source,
    mean,
    prf,
    write_json_atomic,
)

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, nl=[1, 2, 5, 10, 20], out=HERE / "results" / "graph_mnist_pu.json")
    args = parser.parse_args(argv)

    import torch

    from pucli.device import configure_threads, default_workers
    from pucli.kd.expand import teacher_soft_targets
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection, select_indices

    scenario = Scenario(args.root)
    scenario.require()
    threads = configure_threads(args.threads)
    teacher = scenario.teacher()
    truth, sources = scenario.ground_truth()
    workers = default_workers(len(scenario.pool))
    kept, soft = teacher_soft_targets(teacher, scenario.pool, workers=workers)
    if len(kept) != len(scenario.pool):
        raise SystemExit("unreadable pool images: rebuild the scenario (benchmarks/mnist_pu_data.py)")
    confidence = soft.max(1).values

    def metrics(keep: torch.Tensor) -> dict[str, object]:
        return {**prf(keep, truth), "missed": int((truth & ~keep).sum()), "kept_by_source": kept_by_source(keep, sources)}

    rows = []
    for n_l in args.nl:
        for seed in args.seeds:
            positive = scenario.positives(n_l, seed, teacher)
            with Stopwatch() as watch:
                result = run_selection(teacher, positive.paths, scenario.pool,
                                       SelectorOptions(class_prior=TRUE_PRIOR, seed=seed), workers=workers)
            head = metrics(select_indices(result.head_scores))  # every pool image is readable: pool order
            row = {"n_l": n_l, "seed": seed, "head": head, "graph": metrics(result.selected),
                   "confidence": metrics(select_indices(confidence, head["selected"])),
                   "graph_meta": result.metadata["graph"], "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
                   "wall_s": round(watch.seconds, 2)}
            rows.append(row)
            print(f"n_l {n_l:2d} seed {seed}: head F1 {head['f1']:.4f}, graph F1 {row['graph']['f1']:.4f}, "
                  f"confidence F1 {row['confidence']['f1']:.4f}; graph {row['timings_s'].get('graph', 0):.1f} s"
                  f"{' (cached)' if row['graph_meta'].get('cache_hit') else ''}, {row['graph_meta'].get('changed')} changed sides",
                  file=sys.stderr, flush=True)

    groups = group_by_nl(rows, args.nl)
    summary = {str(n_l): {**{key: mean(r[key]["f1"] for r in mine) for key in ("head", "graph", "confidence")},
                          "graph_min": min(r["graph"]["f1"] for r in mine)} for n_l, mine in groups.items()}
    write_json_atomic(args.out, {"true_prior": TRUE_PRIOR, "threads": threads, "rows": rows, "summary": summary})
    print("| n_l | head alone, F1 per seed | mean | with graph smoothing (default), F1 per seed | mean | teacher confidence, mean |")
    print("|---:|---|---:|---|---:|---:|")
    for n_l, mine in groups.items():
        s = summary[str(n_l)]
        head = " / ".join(f"{r['head']['f1']:.3f}" for r in mine)
        graph = " / ".join(f"{r['graph']['f1']:.3f}" for r in mine)
        print(f"| {n_l} | {head} | {s['head']:.3f} | {graph} | **{s['graph']:.3f}** | {s['confidence']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
