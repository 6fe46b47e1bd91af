"""Class-prior estimation on mnist-pu (issue 6): estimate vs the true 0.30, and PU-s1 with it.

For each n_l and seed: ``pucli.selector.estimate_prior`` (what ``pucli prior`` and
``pucli select --prior auto`` run) on the positives ``positive/nl<n>-seed<s>`` and the whole
100,000-image pool, then PU-s1 selections trained with the estimate and with the true prior,
scored against ``ground_truth.tsv`` (which pucli never reads).

    .venv/bin/python benchmarks/prior_mnist_pu.py [--nl 1 5 10 20] [--seeds 0 1 2] [--threads N]

Prints a table and writes benchmarks/results/prior_mnist_pu.json. Descriptors come from pucli's
cache (shared with ``benchmarks/select_mnist_pu.py``), so the figures time estimation and training,
not image decoding.
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
    parser.add_argument("--nl", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--root", type=Path, default=None, help="mnist-pu folder [default: <pucli cache>/benchmarks/mnist-pu]")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prior_mnist_pu.json")
    args = parser.parse_args(argv)

    import torch

    from pucli.checkpoints import load_model
    from pucli.device import configure_threads, default_workers
    from pucli.paths import cache_dir
    from pucli.selector import SelectorOptions, estimate_prior, run_selection
    from pucli.sources import LabeledFolder, UnlabeledPool

    root = args.root or cache_dir() / "benchmarks" / "mnist-pu"
    threads = configure_threads(args.threads)
    teacher = load_model(root / "teacher" / "lenet5.safetensors", None, option="--teacher")
    pool = UnlabeledPool.from_source(str(root / "unlabeled.txt"))
    with open(root / "ground_truth.tsv", newline="") as handle:
        truth_by_path = {row["path"]: int(row["positive"]) for row in csv.DictReader(handle, delimiter="\t")}
    workers = default_workers(len(pool))

    def f1(result: object) -> dict[str, float]:
        truth = torch.tensor([truth_by_path[str(p)] for p in result.paths], dtype=torch.bool)
        kept = result.selected.bool()
        tp = int((kept & truth).sum())
        precision = tp / max(1, int(kept.sum()))
        recall = tp / max(1, int(truth.sum()))
        return {"selected": int(kept.sum()), "precision": round(precision, 4), "recall": round(recall, 4),
                "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4)}

    rows = []
    for n_l in args.nl:
        for seed in args.seeds:
            positive = LabeledFolder.from_folder(root / "positive" / f"nl{n_l}-seed{seed}", num_classes=10,
                                                 label_names=teacher.config.label_names)
            start = time.perf_counter()
            prior = estimate_prior(teacher, positive.paths, pool.paths, seed=seed, workers=workers,
                                   positive_labels=positive.labels)
            estimate_s = time.perf_counter() - start
            row = {"n_l": n_l, "seed": seed, **{k: v for k, v in prior.estimate.as_dict().items() if k != "method"},
                   "abs_error": round(abs(prior.estimate.class_prior - TRUE_PRIOR), 4),
                   "estimate_s": round(estimate_s, 2), "prior_s": round(prior.timings.get("prior", 0.0), 2)}
            for name, value in (("estimated", prior.estimate.class_prior), ("true", TRUE_PRIOR)):
                result = run_selection(teacher, positive.paths, pool.paths, SelectorOptions(class_prior=value, seed=seed),
                                       workers=workers)
                row[f"pu_s1_{name}"] = f1(result)
            rows.append(row)
            print(f"n_l {n_l:2d} seed {seed}: estimate {row['class_prior']:.4f} (error {row['abs_error']:.4f}, "
                  f"90% {row['low']:.3f}-{row['high']:.3f}, initial {row['initial']:.4f}) in {row['prior_s']:.1f} s; "
                  f"PU-s1 F1 {row['pu_s1_estimated']['f1']:.4f} (true prior {row['pu_s1_true']['f1']:.4f})",
                  file=sys.stderr, flush=True)

    summary = {}
    for n_l in args.nl:
        mine = [r for r in rows if r["n_l"] == n_l]
        summary[str(n_l)] = {
            "mean_estimate": round(sum(r["class_prior"] for r in mine) / len(mine), 4),
            "mean_abs_error": round(sum(r["abs_error"] for r in mine) / len(mine), 4),
            "max_abs_error": round(max(r["abs_error"] for r in mine), 4),
            "mean_f1_estimated": round(sum(r["pu_s1_estimated"]["f1"] for r in mine) / len(mine), 4),
            "mean_f1_true": round(sum(r["pu_s1_true"]["f1"] for r in mine) / len(mine), 4),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"true_prior": TRUE_PRIOR, "threads": threads, "rows": rows, "summary": summary},
                              indent=2) + "\n")
    tmp.replace(args.out)
    print("| n_l | estimate (mean of seeds) | abs. error mean / max | PU-s1 F1, estimated prior | PU-s1 F1, true prior |")
    print("|---:|---:|---:|---:|---:|")
    for n_l, s in summary.items():
        print(f"| {n_l} | {s['mean_estimate']:.4f} | {s['mean_abs_error']:.4f} / {s['max_abs_error']:.4f} | "
              f"{s['mean_f1_estimated']:.4f} | {s['mean_f1_true']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
