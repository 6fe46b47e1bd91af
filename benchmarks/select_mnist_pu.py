"""Measure ``pucli select`` on the ``mnist-pu`` scenario (docs/BENCHMARKS.md; issue 3).

For n_l in {1, 10} (subset seed 0) with the true class prior 0.30, runs ``pucli select`` (PU-s1)
on the 100,000-image pool and reports, against ``ground_truth.tsv`` (read here only, never by
pucli): precision, recall, F1, the count selected; wall-clock per stage (from the run report);
peak resident memory; and, for n_l = 10, the scoring throughput: the selector (teacher extractor +
head) streamed over the pool from disk with the evaluation transform, as a ratio to the
forward-only bound (the same network on uint8 tensors already in memory, same batch size and
threads). Peak memory is compared on a 25,000-item prefix of the pool against the full pool.
Baseline: teacher-confidence selection (top-k by teacher max softmax, k = PU-s1's count).

Each measured run is a fresh child process (its own peak RSS: ``ru_maxrss`` of the process plus
its data-loading workers) with its own empty descriptor cache, so extraction is always cold;
one more n_l = 10 run on the warm cache times the cached path.

Usage::

    python benchmarks/select_mnist_pu.py [--root DIR] [--out results.json] [--threads N]

Prints a markdown table on stdout; writes the JSON results to ``--out``
(default ``benchmarks/results/select_mnist_pu.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import Scenario, Stopwatch, add_root_argument, machine, precision_recall_f1, write_json_atomic

HERE = Path(__file__).resolve().parent


def _peak_rss_mib() -> dict[str, float]:
    """Peak RSS of this process, and ru_maxrss over its finished children (data-loading workers).

    The workers' figure is not theirs alone: Linux copies the parent's high-water mark into a
    forked child, so it reads at least the parent's RSS at fork time. Only ``process_mib`` is
    reported in the table.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"process_mib": round(own, 1), "largest_worker_mib": round(workers, 1)}


# --- child modes (run in a fresh process) ------------------------------------------------------


def child_select(args: argparse.Namespace) -> None:
    """One ``pucli select`` run through the CLI app, then (optionally) the scoring measurement."""
    from pucli.cli import app

    argv = ["select", "--positive", args.positive, "--unlabeled", args.unlabeled, "--teacher", args.teacher,
            "--prior", str(args.prior), "--out", args.index, "--force", "--all", "--seed", str(args.seed), "--quiet",
            "--threads", str(args.threads), *(["--workers", str(args.workers)] if args.workers is not None else [])]
    with Stopwatch() as watch:
        try:
            app(argv, standalone_mode=False)
        except SystemExit as exc:  # typer.Exit on errors
            if exc.code:
                raise
    result: dict[str, Any] = {"wall_s": round(watch.seconds, 2), "peak_rss": _peak_rss_mib()}
    if args.measure_scoring:
        result["scoring"] = _measure_scoring(args)
    Path(args.result).write_text(json.dumps(result))


def _measure_scoring(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from pucli.checkpoints import load_model
    from pucli.data.loading import Preprocess
    from pucli.data.sources import UnlabeledPool
    from pucli.device import configure_threads, default_workers
    from pucli.pu.network import AttentionScoreHead, MultiScaleExtractor, PUSelectorNet, ScoreEnsemble
    from pucli.pu.selection import score_images

    configure_threads(args.threads)
    teacher = load_model(args.teacher)
    state = load_file(str(Path(args.index).with_name(Path(args.index).name.split(".")[0] + ".selector.safetensors")))
    members = sorted({key.split(".")[1] for key in state})
    extractor = MultiScaleExtractor(teacher.model)
    head = ScoreEnsemble([AttentionScoreHead(extractor.channels) for _ in members])
    head.load_state_dict(state)
    net = PUSelectorNet(extractor, head).eval()
    preprocess = Preprocess(teacher.config)
    pool = UnlabeledPool.from_source(args.unlabeled).paths
    batch = 256
    workers = args.workers if args.workers is not None else default_workers(len(pool))
    with Stopwatch() as watch:
        _, scores = score_images(net, pool, preprocess, device=torch.device("cpu"), batch_size=batch, workers=workers)
    streamed = len(scores) / watch.seconds
    # Forward-only bound: the same network and batch size on uint8 images already in memory.
    images = torch.randint(0, 256, (batch, *teacher.config.input_size), dtype=torch.uint8)
    with torch.inference_mode():
        for _ in range(5):
            net(preprocess.normalize(images))
        steps = 0
        with Stopwatch() as watch:
            while watch.seconds < 10.0:
                net(preprocess.normalize(images))
                steps += 1
        bound = steps * batch / watch.seconds
    return {"streamed_img_s": round(streamed, 1), "bound_img_s": round(bound, 1), "ratio": round(streamed / bound, 3),
            "batch_size": batch, "workers": workers, "threads": args.threads}


def child_confidence(args: argparse.Namespace) -> None:
    """Teacher max-softmax of every pool item (streamed), written as JSON {path: confidence}."""
    import torch

    from pucli.checkpoints import load_model
    from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
    from pucli.data.sources import UnlabeledPool
    from pucli.device import configure_threads, default_workers

    configure_threads(args.threads)
    teacher = load_model(args.teacher)
    preprocess = Preprocess(teacher.config)
    pool = UnlabeledPool.from_source(args.unlabeled).paths
    workers = args.workers if args.workers is not None else default_workers(len(pool))
    confidence: dict[str, float] = {}
    with torch.inference_mode():
        for batch in iterate_batches(ImageDataset(pool, preprocess), batch_size=256, workers=workers):
            probs = teacher.model(preprocess.normalize(batch.images)).softmax(1).max(1).values
            confidence.update((str(pool[int(i)]), float(p)) for i, p in zip(batch.indices, probs))
    Path(args.result).write_text(json.dumps(confidence))


# --- parent -------------------------------------------------------------------------------------


def _run_child(mode: str, env: dict[str, str], **options: Any) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = handle.name
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--result", result_path]
    for key, value in options.items():
        if value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    subprocess.run(argv, check=True, env=env)
    try:
        return json.loads(Path(result_path).read_text())
    finally:
        os.unlink(result_path)


def _prf(selected: set[str], truth: dict[str, tuple[bool, str]], universe: list[str]) -> dict[str, float]:
    """Precision / recall / F1 of the paths ``selected`` from the pool ``universe``."""
    positives = {p for p in universe if truth[p][0]}
    return precision_recall_f1(len(selected), len(selected & positives), len(positives))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_root_argument(parser)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "select_mnist_pu.json")
    parser.add_argument("--nl", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior", type=float, default=0.30)
    parser.add_argument("--small-pool", type=int, default=25_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    # child-only options
    parser.add_argument("--child", choices=["select", "confidence"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    for name in ("positive", "unlabeled", "teacher", "index"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--measure-scoring", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "select":
        return child_select(args)
    if args.child == "confidence":
        return child_confidence(args)

    from pucli.data.index import read_index

    scenario = Scenario(args.root)
    scenario.require()
    root, teacher = scenario.root, scenario.teacher_path
    truth = scenario.truth_by_path()
    work = Path(tempfile.mkdtemp(prefix="pucli-select-bench-"))
    env = {**os.environ, "PUCLI_STATE_DIR": str(work / "state")}
    pool_list = str(scenario.pool_list)
    all_paths = [line for line in scenario.pool_list.read_text().splitlines() if line.strip()]
    small_list = work / "unlabeled-small.txt"
    small_list.write_text("\n".join(all_paths[: args.small_pool]) + "\n")
    common = dict(teacher=teacher, prior=args.prior, seed=args.seed, threads=args.threads, workers=args.workers)

    runs: list[dict[str, Any]] = []

    def measure(label: str, nl: int, pool: str, pool_paths: list[str], cache: str, scoring: bool = False) -> dict[str, Any]:
        index = work / f"{label}.tsv"
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
        child = _run_child("select", {**env, "PUCLI_CACHE_DIR": str(work / cache)},
                           positive=scenario.positive_dir(nl, args.seed), unlabeled=pool, index=index,
                           measure_scoring=scoring, **common)
        report = json.loads((work / f"{label}.report.json").read_text())
        kept = {str(e.path) for e in read_index(index) if e.selected}
        run = {"label": label, "n_l": nl, "pool": len(pool_paths), **_prf(kept, truth, pool_paths),
               "timings_s": report["timings_s"], "cache_hit": report["results"]["cache_hit"],
               "positive_augmented": report["results"]["positive_augmented"], **child}
        runs.append(run)
        return run

    main_runs = {nl: measure(f"nl{nl}", nl, pool_list, all_paths, cache=f"cache-nl{nl}", scoring=nl == 10) for nl in args.nl}
    warm = measure("nl10-warm", 10, pool_list, all_paths, cache="cache-nl10") if 10 in args.nl else None
    small = measure(f"nl10-pool{args.small_pool}", 10, str(small_list), all_paths[: args.small_pool], cache="cache-small")

    print("[bench] teacher confidence ...", file=sys.stderr, flush=True)
    with Stopwatch() as watch:
        confidence = _run_child("confidence", env, teacher=teacher, unlabeled=pool_list, threads=args.threads,
                                workers=args.workers)
    confidence_s = watch.seconds
    ranked = sorted(all_paths, key=lambda p: -confidence[p])
    baselines = {nl: {**_prf(set(ranked[: run["selected"]]), truth, all_paths), "k": run["selected"]} for nl, run in main_runs.items()}

    results = {
        "scenario": "mnist-pu", "root": str(root), "prior": args.prior, "seed": args.seed, "threads": args.threads,
        "machine": machine(affinity=len(os.sched_getaffinity(0))),
        "runs": runs, "confidence_baseline": baselines, "confidence_wall_s": round(confidence_s, 1),
    }
    write_json_atomic(args.out, results, indent=2)

    print("| run | pool | selected | precision | recall | F1 | extract s | train s | score s | total s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        t = run["timings_s"]
        print(f"| {run['label']}{' (cache hit)' if run['cache_hit'] else ''} | {run['pool']:,} | {run['selected']:,} | {run['precision']:.4f} | "
              f"{run['recall']:.4f} | {run['f1']:.4f} | {t.get('extract', 0):.1f} | {t.get('train', 0):.1f} | {t.get('score', 0):.2f} | "
              f"{t['total']:.1f} | {run['peak_rss']['process_mib']:.0f} |")
    for nl, base in baselines.items():
        print(f"| confidence top-k (k = nl{nl} PU-s1 count) | {len(all_paths):,} | {base['selected']:,} | {base['precision']:.4f} | "
              f"{base['recall']:.4f} | {base['f1']:.4f} | | | | | |")
    scoring = main_runs.get(10, {}).get("scoring")
    if scoring:
        print(f"\nscoring throughput (n_l=10 selector, streamed from disk): {scoring['streamed_img_s']:,.0f} img/s; "
              f"forward-only bound {scoring['bound_img_s']:,.0f} img/s; ratio {scoring['ratio']:.2f} "
              f"(batch {scoring['batch_size']}, {scoring['workers']} workers, {scoring['threads']} threads)")
    if warm:
        print(f"warm cache n_l=10: total {warm['timings_s']['total']:.1f} s (train {warm['timings_s']['train']:.1f} s)")
    print(f"peak RSS: pool {small['pool']:,} -> {small['peak_rss']['process_mib']:.0f} MiB; "
          f"pool {len(all_paths):,} -> {main_runs[10]['peak_rss']['process_mib']:.0f} MiB" if 10 in main_runs else "")
    print(f"results: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
