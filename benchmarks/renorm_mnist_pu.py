"""BN re-estimation on mnist-pu (issue 17): which unlabeled images repair a pruned or low-bit network?

He & Cheng, "Learning Compression from Limited Unlabeled Data" (ECCV 2018): after pruning or weight
quantization, re-estimating the BatchNorm statistics on ~1,000 unlabeled images recovers most of
the accuracy lost. This study asks which images to re-estimate on when all one has is the mnist-pu
scenario: a few labeled digits and a pool that is 70 % other images.

Teacher: the BN teacher of ``benchmarks/train_bn_teacher.py`` (timm ``test_resnet``, 28 x 28).
Compressions (deterministic, no data): Torch-Pruning of 30 / 50 / 70 % of the channels (group-norm
importance, ``pucli.compress.prune``) and 4 / 3 / 2-bit weights (first conv and classifier at 8 bits,
``pucli.compress.quantize``). For each, accuracy on MNIST t10k right after, then after
re-estimation (``pucli.compress.renorm`` on ``pucli.compress.calibration`` batches of at most 100)
on N = 10 / 100 / 1,000 / 5,000 images drawn (seeded) from:

=============  ======================================================================================
labeled        the labeled subset L^t, n_l = 10 (100 images; N <= 100)
labeled-nl1    the labeled subset at n_l = 1 (10 images; N = 10)
pool           the whole unlabeled pool (``unlabeled.txt``: 100,000 images, 30 % digits)
pu             the images ``pucli select`` keeps from the pool (PU-s1, defaults, BN teacher, n_l = 10)
oracle         the teacher's original training images (``train/``, 30,000)
=============  ======================================================================================

Seeds 0, 1, 2 change the labeled subset, hence the selection, and every draw. For pruning, also
robust-KD fine-tuning of the pruned, re-estimated (1,000 PU images) network on the PU expanded set
(``pucli expand``), at the mnist-pu study's step budget (4,680 steps of 128), through
``pucli.kd.distill.distill`` with the pruned network as the student's initial state. Also the
wall-clock of ``pucli recalibrate`` end to end on 1,000 PU images (process start included).

Every unit is cached in ``--work`` (default ``<pucli cache>/benchmarks/mnist-pu/renorm``) and in the
results JSON (``benchmarks/results/renorm_mnist_pu.json``); a rerun does only what is missing.

Usage::

    python benchmarks/renorm_mnist_pu.py --root /root/.cache/pucli-ref-data --threads 1
    python benchmarks/renorm_mnist_pu.py --parts renorm --seeds 0          # a part, one seed
    python benchmarks/renorm_mnist_pu.py --report                         # markdown + docs/renorm_*.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

RESULTS = REPO / "benchmarks" / "results" / "renorm_mnist_pu.json"
PLOT = REPO / "docs" / "renorm_accuracy_vs_n.png"
SOURCES = ("labeled-nl1", "labeled", "pool", "pu", "oracle")
NS = (10, 100, 1000, 5000)
PRUNE_RATIOS = (0.3, 0.5, 0.7)
WEIGHT_BITS = (4, 3, 2)
BATCH_SIZE = 100
FINETUNE_STEPS = 4680  # the mnist-pu study's budget: 20 epochs over 30,000 at batch 128
FINETUNE_N = 1000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def read_results() -> dict[str, Any]:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {"format_version": 1, "renorm": [], "finetune": [], "none": {}, "selection": {}, "timing": []}


def write_results(results: dict[str, Any]) -> None:
    from pucli.paths import atomic_write

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(RESULTS) as handle:
        json.dump(results, handle, indent=1)
        handle.write("\n")


def compression_names() -> list[str]:
    return [f"prune-{round(r * 100)}" for r in PRUNE_RATIOS] + [f"{b}-bit" for b in WEIGHT_BITS]


def compress(model: Any, name: str, input_size: tuple[int, int, int]) -> Any:
    """A compressed copy of ``model`` (deterministic)."""
    from pucli.compress.prune import prune_channels
    from pucli.compress.quantize import quantize_model

    model = copy.deepcopy(model).eval()
    if name.startswith("prune-"):
        prune_channels(model, input_size, ratio=int(name.split("-")[1]) / 100)
    else:
        quantize_model(model, int(name.split("-")[0]))
    return model


def decode_test(root: Path, loaded: Any) -> tuple[Any, Any]:
    """MNIST t10k as normalised float32 (10000, 1, 28, 28) and int64 labels."""
    import torch

    from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
    from pucli.data.sources import LabeledFolder

    test = LabeledFolder.from_folder(root / "test", num_classes=10, label_names=loaded.config.label_names)
    preprocess = Preprocess(loaded.config)
    images, labels = [], []
    for batch in iterate_batches(ImageDataset(test.paths, preprocess, test.labels), batch_size=1000):
        images.append(preprocess.normalize(batch.images))
        labels.append(batch.labels)
    return torch.cat(images), torch.cat(labels)


def accuracy(model: Any, test: tuple[Any, Any]) -> float:
    import torch

    images, labels = test
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), 1000):
            correct += int((model(images[start : start + 1000]).argmax(1) == labels[start : start + 1000]).sum())
    return 100.0 * correct / len(labels)


def pucli_command(args: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "pucli", *args], check=True, env=env)


def selection_index(root: Path, teacher: Path, work: Path, seed: int, threads: int) -> Path:
    """``pucli select`` (PU-s1, defaults) with the BN teacher on n_l = 10, seed ``seed``; cached."""
    index = work / f"select-nl10-seed{seed}.tsv"
    if not index.is_file():
        log(f"pucli select, seed {seed}")
        pucli_command(["select", "--positive", str(root / "positive" / f"nl10-seed{seed}"), "--unlabeled",
                       str(root / "unlabeled.txt"), "--teacher", str(teacher), "--out", str(index), "--threads",
                       str(threads), "--workers", "1", "--quiet"], threads)
    return index


def expanded_set(root: Path, teacher: Path, work: Path, seed: int, threads: int) -> Path:
    folder = work / f"expanded-nl10-seed{seed}"
    if not (folder / "manifest.tsv").is_file():
        log(f"pucli expand, seed {seed}")
        pucli_command(["expand", "--positive", str(root / "positive" / f"nl10-seed{seed}"), "--index",
                       str(selection_index(root, teacher, work, seed, threads)), "--teacher", str(teacher), "--out",
                       str(folder), "--threads", str(threads), "--workers", "1", "--quiet", "--force"], threads)
    return folder


def source_paths(root: Path, teacher: Path, work: Path, seed: int, threads: int) -> dict[str, list[Path]]:
    from pucli.compress.calibration import calibration_paths

    return {
        "labeled-nl1": calibration_paths(str(root / "positive" / f"nl1-seed{seed}")),
        "labeled": calibration_paths(str(root / "positive" / f"nl10-seed{seed}")),
        "pool": calibration_paths(str(root / "unlabeled.txt")),
        "pu": calibration_paths(str(selection_index(root, teacher, work, seed, threads))),
        "oracle": calibration_paths(str(root / "train")),
    }


def selection_quality(root: Path, selected: list[Path]) -> dict[str, float]:
    truth = {}
    with (root / "ground_truth.tsv").open() as handle:
        header = handle.readline().rstrip("\n").split("\t")
        for line in handle:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            truth[row["path"]] = row["positive"] == "1"
    kept = [truth.get(str(p), False) for p in selected]
    positives = sum(truth.values())
    tp = sum(kept)
    precision = tp / len(kept) if kept else 0.0
    recall = tp / positives if positives else 0.0
    return {"kept": len(kept), "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / (precision + recall), 4) if tp else 0.0,
            "pool_task_share": round(positives / len(truth), 4)}


def run_renorm(args: argparse.Namespace, results: dict[str, Any], loaded: Any, test: Any) -> None:
    from pucli.compress.calibration import calibration_batches
    from pucli.compress.renorm import reestimate_batchnorm
    from pucli.data.loading import Preprocess
    from pucli.evaluate import count_flops

    input_size = loaded.config.input_size
    compressed = {name: compress(loaded.model, name, input_size) for name in compression_names()}
    for name, model in compressed.items():
        if name not in results["none"]:
            results["none"][name] = {"top1": accuracy(model, test), "params": sum(p.numel() for p in model.parameters()),
                                     "flops": count_flops(model, input_size)}
    write_results(results)
    done = {(r["compression"], r["source"], r["n"], r["seed"]) for r in results["renorm"]}
    preprocess = Preprocess(loaded.config)
    for seed in args.seeds:
        paths = source_paths(args.root, args.teacher, args.work, seed, args.threads)
        results["selection"][str(seed)] = selection_quality(args.root, paths["pu"])
        for source in SOURCES:
            for n in NS:
                if n > len(paths[source]) or all((c, source, n, seed) in done for c in compressed):
                    continue
                started = time.perf_counter()
                batches = list(calibration_batches(paths[source], preprocess, images=n, batch_size=BATCH_SIZE, seed=seed))
                decode_s = time.perf_counter() - started
                for name, model in compressed.items():
                    if (name, source, n, seed) in done:
                        continue
                    trial = copy.deepcopy(model)
                    renorm = reestimate_batchnorm(trial, batches)
                    results["renorm"].append({"compression": name, "source": source, "n": n, "seed": seed,
                                              "images": renorm.images, "top1": accuracy(trial, test),
                                              "reestimate_s": round(renorm.seconds, 4), "decode_s": round(decode_s, 4),
                                              "load": load_avg()})
                log(f"seed {seed} {source:>11} N={n:<5} " + "  ".join(
                    f"{r['compression']} {r['top1']:.2f}" for r in results["renorm"][-len(compressed):]))
                write_results(results)


def run_finetune(args: argparse.Namespace, results: dict[str, Any], loaded: Any, test: Any) -> None:
    import torch

    from pucli.compress.calibration import calibration_batches
    from pucli.compress.renorm import reestimate_batchnorm
    from pucli.data.loading import Preprocess
    from pucli.data.manifest import read_expanded_set
    from pucli.evaluate import count_flops
    from pucli.kd.distill import DistillConfig, distill, steps_per_epoch
    from pucli.kd.distill import loop as distill_loop

    input_size = loaded.config.input_size
    done = {(r["ratio"], r["seed"]) for r in results["finetune"]}
    for seed in args.finetune_seeds:
        for ratio in args.finetune_ratios:
            if (ratio, seed) in done:
                continue
            pruned = compress(loaded.model, f"prune-{round(ratio * 100)}", input_size)
            paths = source_paths(args.root, args.teacher, args.work, seed, args.threads)
            batches = calibration_batches(paths["pu"], Preprocess(loaded.config), images=FINETUNE_N, batch_size=BATCH_SIZE, seed=seed)
            reestimate_batchnorm(pruned, batches)
            renorm_top1 = accuracy(pruned, test)
            expanded = read_expanded_set(expanded_set(args.root, args.teacher, args.work, seed, args.threads))
            per_epoch = steps_per_epoch(len(expanded), 128)  # the rule distill trains by
            epochs = math.ceil(args.steps / per_epoch)
            # The hook `distill --student pruned.safetensors` needs: start from the pruned network,
            # not a fresh one of the architecture (see docs/compress.md).
            original = distill_loop.build_model
            distill_loop.build_model = lambda config, init=pruned: init
            started = time.perf_counter()
            try:
                outcome = distill(loaded, expanded, loaded.config.architecture,
                                  config=DistillConfig(loss="robust-kd", epochs=epochs, batch_size=128, seed=seed,
                                                       checkpoint_interval=1e9),
                                  checkpoint_path=args.work / f"finetune-{ratio}-s{seed}.ckpt", device=torch.device("cpu"))
            finally:
                distill_loop.build_model = original
            seconds = time.perf_counter() - started
            record = {"ratio": ratio, "seed": seed, "renorm_top1": renorm_top1, "top1": accuracy(outcome.student, test),
                      "epochs": epochs, "steps": epochs * per_epoch, "items": len(expanded),
                      "params": sum(p.numel() for p in outcome.student.parameters()),
                      "flops": count_flops(outcome.student, input_size), "seconds": round(seconds, 1),
                      "threads": args.threads, "load": load_avg()}
            results["finetune"].append(record)
            log(f"fine-tune prune {ratio:.0%} seed {seed}: {renorm_top1:.2f} -> {record['top1']:.2f} ({seconds:.0f} s)")
            write_results(results)


def run_timing(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """``pucli recalibrate`` end to end (process start, load, 1,000 PU images, write)."""
    work = args.work
    pruned = work / "prune-50.safetensors"
    if not pruned.is_file():
        pucli_command(["prune", str(args.teacher), "--ratio", "0.5", "--out", str(pruned), "--quiet", "--force"], args.threads)
    index = selection_index(args.root, args.teacher, work, 0, args.threads)
    before = load_avg()
    started = time.perf_counter()
    pucli_command(["recalibrate", str(pruned), "--data", str(index), "--images", "1000", "--out",
                   str(work / "prune-50-bn.safetensors"), "--threads", str(args.threads), "--workers", "0", "--quiet",
                   "--force"], args.threads)
    seconds = time.perf_counter() - started
    results["timing"].append({"what": "pucli recalibrate prune-50 --images 1000 (end to end)", "seconds": round(seconds, 2),
                              "threads": args.threads, "load_before": before, "load_after": load_avg()})
    log(f"pucli recalibrate, 1,000 images: {seconds:.1f} s (load {before})")
    write_results(results)


# --- the docs/benchmarks.md section and the plot ------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, spread


def _cell(values: list[float]) -> str:
    if not values:
        return "not run"
    mean, spread = _stats(values)
    return f"{mean:.2f} ± {spread:.2f}" if len(values) > 1 else f"{mean:.2f}"


def _top1(results: dict[str, Any], compression: str, source: str, n: int) -> dict[int, float]:
    return {r["seed"]: r["top1"] for r in results["renorm"]
            if r["compression"] == compression and r["source"] == source and r["n"] == n}


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def report(results: dict[str, Any], plot: Path) -> str:
    """The markdown section (figures from ``results`` only) and the plot at ``plot``."""
    teacher = results.get("teacher", {})
    seeds = sorted({r["seed"] for r in results["renorm"]})
    lines = [(f"BN teacher `{teacher.get('architecture')}`: {teacher.get('top1', float('nan')):.2f} % on MNIST t10k "
              f"({teacher.get('params', 0):,} parameters). Seeds: {', '.join(map(str, seeds)) or 'none'} "
              "(mean ± standard deviation over seeds where there are several)."), ""]
    lines += [("Top-1 % on MNIST t10k after re-estimation on N = 1,000 images (labeled: all 100 of n_l = 10; "
               "labeled-nl1: all 10 of n_l = 1):"), ""]
    lines += ["| compression | params | FLOPs | no re-estimation | labeled-nl1 (10) | labeled (100) | pool | PU-selected | oracle (train) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in compression_names():
        none = results["none"].get(name)
        if none is None:
            continue
        cells = [_cell(list(_top1(results, name, "labeled-nl1", 10).values())),
                 _cell(list(_top1(results, name, "labeled", 100).values()))]
        cells += [_cell(list(_top1(results, name, source, 1000).values())) for source in ("pool", "pu", "oracle")]
        lines.append(f"| {name} | {none['params']:,} | {none['flops'] / 1e6:.2f} M | {none['top1']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Selected vs unselected pool images, paired by seed (PU-selected minus pool, points):", "",
              "| compression | N = 100 | N = 1,000 | N = 5,000 |", "|---|---|---|---|"]
    for name in compression_names():
        cells = []
        for n in (100, 1000, 5000):
            pu, pool = _top1(results, name, "pu", n), _top1(results, name, "pool", n)
            diffs = [pu[s] - pool[s] for s in pu if s in pool]
            cells.append(_cell(diffs) if diffs else "not run")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy against N, every source (top-1 %):", "",
              "| compression | source | " + " | ".join(f"N = {n:,}" for n in NS) + " |",
              "|---|---|" + "---|" * len(NS)]
    for name in compression_names():
        for source in SOURCES:
            cells = [_cell(list(_top1(results, name, source, n).values())) if _top1(results, name, source, n) else "-"
                     for n in NS]
            if any(c != "-" for c in cells):
                lines.append(f"| {name} | {source} | " + " | ".join(cells) + " |")
    if results.get("selection"):
        lines += ["", "The PU-selected source (`pucli select`, defaults, BN teacher, n_l = 10) per seed: " + "; ".join(
            f"seed {s}: {q['kept']:,} kept, precision {q['precision']:.3f}, recall {q['recall']:.3f}"
            for s, q in sorted(results["selection"].items())) + "."]
    if results.get("finetune"):
        lines += ["", "Pruning + re-estimation (1,000 PU-selected images) + robust-KD fine-tuning on the PU expanded set:", "",
                  "| pruned | seeds | params | FLOPs (vs teacher) | after re-estimation | after robust KD | gap to teacher | steps | minutes per run (load) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        teacher_flops = None
        for ratio in sorted({r["ratio"] for r in results["finetune"]}):
            rows = [r for r in results["finetune"] if r["ratio"] == ratio]
            teacher_flops = teacher.get("flops")
            kd = [r["top1"] for r in rows]
            gap = [teacher.get("top1", float("nan")) - v for v in kd]
            flops = rows[0]["flops"]
            ratio_text = f" ({teacher_flops / flops:.1f}x fewer)" if teacher_flops else ""
            lines.append(f"| {ratio:.0%} | {', '.join(str(r['seed']) for r in rows)} | {rows[0]['params']:,} | "
                         f"{flops / 1e6:.2f} M{ratio_text} | {_cell([r['renorm_top1'] for r in rows])} | {_cell(kd)} | "
                         f"{_cell(gap)} | {_span([r['steps'] for r in rows])} | "
                         + ", ".join(f"{r['seconds'] / 60:.1f} ({r['load'][0]:.1f})" for r in rows) + " |")
    if results.get("timing"):
        lines += [""] + [f"- {t['what']}: {t['seconds']:.1f} s with {t['threads']} thread(s), load average "
                         f"{t['load_before'][0]:.1f} before / {t['load_after'][0]:.1f} after." for t in results["timing"]]
    engine = [r["reestimate_s"] for r in results["renorm"] if r["n"] == 1000]
    if engine:
        lines.append(f"- The re-estimation itself (forward passes of 10 batches of 100, after decoding): median "
                     f"{sorted(engine)[len(engine) // 2]:.2f} s over {len(engine)} runs of N = 1,000, "
                     f"load average {max(r['load'][0] for r in results['renorm'] if r['n'] == 1000):.1f} at most.")
    _plot(results, plot)
    lines += ["", f"![accuracy against N]({plot.relative_to(REPO / 'docs').as_posix()})"]
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    teacher = results.get("teacher", {}).get("top1")
    for axis, name in zip(axes, ("prune-50", "4-bit")):
        for source in SOURCES:
            points = [(n, _stats(list(_top1(results, name, source, n).values()))) for n in NS if _top1(results, name, source, n)]
            if points:
                axis.errorbar([n for n, _ in points], [m for _, (m, _) in points], yerr=[s for _, (_, s) in points],
                              marker="o", capsize=3, label=source)
        if name in results["none"]:
            axis.axhline(results["none"][name]["top1"], color="grey", linestyle=":", label="no re-estimation")
        if teacher:
            axis.axhline(teacher, color="black", linestyle="--", label="teacher")
        axis.set_xscale("log")
        axis.set_xlabel("images N used for re-estimation")
        axis.set_ylabel("top-1 % on MNIST t10k")
        axis.set_title(f"{name}: BN re-estimation by source")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="mnist-pu root (benchmarks/mnist_pu_data.py)")
    parser.add_argument("--teacher", type=Path, default=None, help="BN teacher (benchmarks/train_bn_teacher.py)")
    parser.add_argument("--work", type=Path, default=None, help="cache folder of selections and expanded sets")
    parser.add_argument("--parts", default="renorm,timing,finetune", help="comma-separated: renorm, timing, finetune")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-ratios", type=float, nargs="+", default=list(PRUNE_RATIOS))
    parser.add_argument("--steps", type=int, default=FINETUNE_STEPS, help="robust-KD steps per fine-tuning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    parser.add_argument("--report", action="store_true", help="print the docs/benchmarks.md section and draw the plot")
    args = parser.parse_args(argv)
    RESULTS = args.results
    if args.report:
        print(report(read_results(), PLOT))
        return 0

    import torch
    from mnist_pu_data import default_out_dir
    from train_bn_teacher import default_bn_teacher_path

    from pucli.checkpoints import load_model
    from pucli.evaluate import count_flops

    torch.set_num_threads(args.threads)
    args.root = (args.root or default_out_dir()).resolve()
    args.teacher = (args.teacher or default_bn_teacher_path()).resolve()
    args.work = (args.work or default_out_dir() / "renorm").resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.teacher)
    results = read_results()
    test = decode_test(args.root, loaded)
    results["teacher"] = {"path": str(args.teacher), "architecture": loaded.config.architecture,
                          "top1": accuracy(loaded.model, test), "params": sum(p.numel() for p in loaded.model.parameters()),
                          "flops": count_flops(loaded.model, loaded.config.input_size)}
    results["machine"] = {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                          "torch": torch.__version__}
    write_results(results)
    parts = args.parts.split(",")
    if "renorm" in parts:
        run_renorm(args, results, loaded, test)
    if "timing" in parts:
        run_timing(args, results)
    if "finetune" in parts:
        run_finetune(args, results, loaded, test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
