"""PU-s1 selection quality with and without graph smoothing on ``mnist-pu`` (issue 3).

For every n_l and subset seed, one ``pucli.selector.run_selection`` with pucli's defaults and the
true class prior 0.30 on the whole 100,000-image pool. One run gives both figures: the nnPU head's
own rule (``head_scores > 0``) and the default selection (the head's scores smoothed over the
pool's k-NN graph, ``pucli.graph``; same count). Beside them, the teacher-confidence baseline
(top-k by the teacher's max softmax, k = the PU-s1 count) and the graph stage's wall-clock
(the first run builds the graph; later runs read it from the cache: the pool is the same).

Precision / recall / F1 are against ``ground_truth.tsv``, which only this script reads.

Usage::

    python benchmarks/graph_mnist_pu.py [--nl 1 2 5 10 20] [--seeds 0 1 2] [--threads N]

Prints a markdown table; writes ``benchmarks/results/graph_mnist_pu.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRUE_PRIOR = 0.30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nl", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--root", type=Path, default=None, help="mnist-pu folder [default: <pucli cache>/benchmarks/mnist-pu]")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "graph_mnist_pu.json")
    args = parser.parse_args(argv)

    import torch

    from pucli.checkpoints import load_model
    from pucli.device import configure_threads, default_workers
    from pucli.expand import teacher_soft_targets
    from pucli.paths import cache_dir
    from pucli.selector import SelectorOptions, run_selection, select_indices
    from pucli.sources import LabeledFolder, UnlabeledPool

    root = args.root or cache_dir() / "benchmarks" / "mnist-pu"
    threads = configure_threads(args.threads)
    teacher = load_model(root / "teacher" / "lenet5.safetensors", None, option="--teacher")
    pool = UnlabeledPool.from_source(str(root / "unlabeled.txt"))
    with open(root / "ground_truth.tsv", newline="") as handle:
        rows_by_path = {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}
    truth_by_path = {path: int(row["positive"]) for path, row in rows_by_path.items()}
    workers = default_workers(len(pool))
    kept, soft = teacher_soft_targets(teacher, pool.paths, workers=workers)
    confidence_by_path = {str(pool.paths[int(i)]): float(c) for i, c in zip(kept, soft.max(1).values.tolist())}

    def prf(paths: list[Path], keep: torch.Tensor) -> dict[str, float]:
        truth = torch.tensor([truth_by_path[str(p)] for p in paths], dtype=torch.bool)
        tp = int((keep & truth).sum())
        precision = tp / max(1, int(keep.sum()))
        recall = tp / max(1, int(truth.sum()))
        kept_by_source: dict[str, int] = {}
        for path, k in zip(paths, keep.tolist()):
            if k:
                source = rows_by_path[str(path)]["source"]
                kept_by_source[source] = kept_by_source.get(source, 0) + 1
        return {"selected": int(keep.sum()), "precision": round(precision, 4), "recall": round(recall, 4),
                "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
                "missed": int((truth & ~keep).sum()), "kept_by_source": kept_by_source}

    rows = []
    for n_l in args.nl:
        for seed in args.seeds:
            positive = LabeledFolder.from_folder(root / "positive" / f"nl{n_l}-seed{seed}", num_classes=10,
                                                 label_names=teacher.config.label_names)
            start = time.perf_counter()
            result = run_selection(teacher, positive.paths, pool.paths, SelectorOptions(class_prior=TRUE_PRIOR, seed=seed),
                                   workers=workers)
            wall = time.perf_counter() - start
            confidence = torch.tensor([confidence_by_path[str(p)] for p in result.paths])
            head = prf(result.paths, select_indices(result.head_scores))
            row = {"n_l": n_l, "seed": seed, "head": head, "graph": prf(result.paths, result.selected),
                   "confidence": prf(result.paths, select_indices(confidence, head["selected"])),
                   "graph_meta": result.metadata["graph"], "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
                   "wall_s": round(wall, 2)}
            rows.append(row)
            print(f"n_l {n_l:2d} seed {seed}: head F1 {head['f1']:.4f}, graph F1 {row['graph']['f1']:.4f}, "
                  f"confidence F1 {row['confidence']['f1']:.4f}; graph {row['timings_s'].get('graph', 0):.1f} s"
                  f"{' (cached)' if row['graph_meta'].get('cache_hit') else ''}, {row['graph_meta'].get('changed')} changed sides",
                  file=sys.stderr, flush=True)

    summary = {}
    for n_l in args.nl:
        mine = [r for r in rows if r["n_l"] == n_l]
        summary[str(n_l)] = {key: round(sum(r[key]["f1"] for r in mine) / len(mine), 4)
                             for key in ("head", "graph", "confidence")}
        summary[str(n_l)]["graph_min"] = min(r["graph"]["f1"] for r in mine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"true_prior": TRUE_PRIOR, "threads": threads, "rows": rows, "summary": summary}, indent=2) + "\n")
    tmp.replace(args.out)
    print("| n_l | head alone, F1 per seed | mean | with graph smoothing (default), F1 per seed | mean | teacher confidence, mean |")
    print("|---:|---|---:|---|---:|---:|")
    for n_l in args.nl:
        mine = [r for r in rows if r["n_l"] == n_l]
        s = summary[str(n_l)]
        head = " / ".join(f"{r['head']['f1']:.3f}" for r in mine)
        graph = " / ".join(f"{r['graph']['f1']:.3f}" for r in mine)
        print(f"| {n_l} | {head} | {s['head']:.3f} | {graph} | **{s['graph']:.3f}** | {s['confidence']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
