"""PU-s1 on the whole mnist-pu pool with each ranking of ``pucli select`` (issue 15).

Runs :func:`pucli.pu.selection.run_selection` on the 100,000-image pool with ``--ranking`` auto,
propagation or nnpu, the prior given (0.30) or estimated, and prints one JSON line per run:
precision, recall and F1 against ``ground_truth.tsv`` (read here only), the count kept, the prior
used, the ranking used, whether the graph came from the cache, and seconds. The descriptor and
graph caches are pucli's, so a second run on the same pool trains and ranks in seconds.

Usage::

    python benchmarks/ranking_mnist_pu.py --root DIR --teacher FILE --nl 10 --seeds 0 1 2 --ranking auto nnpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import Scenario, load_average, prf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="mnist-pu root [default: <pucli cache>/benchmarks/mnist-pu]")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher [default: <root>/teacher/lenet5.safetensors]")
    parser.add_argument("--nl", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ranking", nargs="+", default=["auto"], choices=["auto", "propagation", "nnpu"])
    parser.add_argument("--prior", default="0.3", help="the class prior, or auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    torch.set_num_threads(args.threads)
    scenario = Scenario(root=args.root, teacher_path=args.teacher)
    scenario.require()
    teacher = scenario.teacher()
    prior = None if args.prior == "auto" else float(args.prior)
    for nl in args.nl:
        for seed in args.seeds:
            positives = scenario.positives(nl, seed, teacher)
            for ranking in args.ranking:
                load = load_average()
                start = time.perf_counter()
                result = run_selection(teacher, list(positives.paths), scenario.pool,
                                       SelectorOptions(class_prior=prior, seed=seed, ranking=ranking),
                                       positive_labels=list(positives.labels))
                truth = scenario.truth_of(result.paths)
                scores = prf(result.selected, truth)
                print(json.dumps({"nl": nl, "seed": seed, "ranking_asked": ranking,
                                  "ranking": result.metadata["graph"].get("ranking", "nnpu"), "prior": args.prior,
                                  "prior_used": round(float(result.class_prior), 4), **scores,
                                  "kept": int(result.selected.sum()),
                                  "graph_cache_hit": result.metadata["graph"].get("cache_hit"),
                                  "seconds": round(time.perf_counter() - start, 1), "load_before": load,
                                  "load_after": load_average()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
