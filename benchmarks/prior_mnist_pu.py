"""Class-prior estimation on mnist-pu (issue 6): estimate vs the true 0.30, and PU-s1 with it.

For each n_l and seed: ``pucli.pu.selection.estimate_prior`` (what ``pucli prior`` and
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
import sys
from pathlib import Path

from _common import TRUE_PRIOR, Scenario, Stopwatch, add_sweep_arguments, group_by_nl, mean, prf, write_json_atomic

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_arguments(parser, nl=[1, 5, 10, 20], out=HERE / "results" / "prior_mnist_pu.json")
    args = parser.parse_args(argv)

    from pucli.device import configure_threads, default_workers
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import estimate_prior, run_selection

    scenario = Scenario(args.root)
    scenario.require()
    threads = configure_threads(args.threads)
    teacher = scenario.teacher()
    pool = scenario.pool
    workers = default_workers(len(pool))

    rows = []
    for n_l in args.nl:
        for seed in args.seeds:
            positive = scenario.positives(n_l, seed, teacher)
            with Stopwatch() as watch:
                prior = estimate_prior(teacher, positive.paths, pool, seed=seed, workers=workers,
                                       positive_labels=positive.labels)
            row = {"n_l": n_l, "seed": seed, **{k: v for k, v in prior.estimate.as_dict().items() if k != "method"},
                   "abs_error": round(abs(prior.estimate.class_prior - TRUE_PRIOR), 4),
                   "estimate_s": round(watch.seconds, 2), "prior_s": round(prior.timings.get("prior", 0.0), 2)}
            for name, value in (("estimated", prior.estimate.class_prior), ("true", TRUE_PRIOR)):
                result = run_selection(teacher, positive.paths, pool, SelectorOptions(class_prior=value, seed=seed),
                                       workers=workers)
                row[f"pu_s1_{name}"] = prf(result.selected.bool(), scenario.truth_of(result.paths))
            rows.append(row)
            print(f"n_l {n_l:2d} seed {seed}: estimate {row['class_prior']:.4f} (error {row['abs_error']:.4f}, "
                  f"90% {row['low']:.3f}-{row['high']:.3f}, initial {row['initial']:.4f}) in {row['prior_s']:.1f} s; "
                  f"PU-s1 F1 {row['pu_s1_estimated']['f1']:.4f} (true prior {row['pu_s1_true']['f1']:.4f})",
                  file=sys.stderr, flush=True)

    summary = {str(n_l): {"mean_estimate": mean(r["class_prior"] for r in mine),
                          "mean_abs_error": mean(r["abs_error"] for r in mine),
                          "max_abs_error": round(max(r["abs_error"] for r in mine), 4),
                          "mean_f1_estimated": mean(r["pu_s1_estimated"]["f1"] for r in mine),
                          "mean_f1_true": mean(r["pu_s1_true"]["f1"] for r in mine)}
               for n_l, mine in group_by_nl(rows, args.nl).items()}
    write_json_atomic(args.out, {"true_prior": TRUE_PRIOR, "threads": threads, "rows": rows, "summary": summary},
                      indent=2)
    print("| n_l | estimate (mean of seeds) | abs. error mean / max | PU-s1 F1, estimated prior | PU-s1 F1, true prior |")
    print("|---:|---:|---:|---:|---:|")
    for n_l, s in summary.items():
        print(f"| {n_l} | {s['mean_estimate']:.4f} | {s['mean_abs_error']:.4f} / {s['max_abs_error']:.4f} | "
              f"{s['mean_f1_estimated']:.4f} | {s['mean_f1_true']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
