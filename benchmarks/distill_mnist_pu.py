"""mnist-pu, n_l = 10 (seed 0): expand a PU-s1 selection, distill with kd / weighted-kd / robust-kd.

Protocol: shared/docs/BENCHMARKS.md ("Performance figures", distill). For each loss it reports the
student's MNIST test top-1 (pucli.evaluate), the distill wall-clock and peak RSS of the command
(per child process, from ``os.wait4``), and distill throughput as a ratio to the bound: one
student forward+backward plus one teacher forward on float tensors already in memory, same batch
size and thread count, measured in this process right after each run.

Usage::

    pucli select ... --out nl10-s1.tsv          # the PU-s1 index (see docs/benchmarks.md)
    python benchmarks/distill_mnist_pu.py --index nl10-s1.tsv --work /tmp/distill-bench

Writes ``WORK/results.json`` and prints a Markdown table. Commands are run exactly as printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from _common import Scenario, Stopwatch, write_json_atomic

import pucli  # noqa: F401  (registers lenet5 / lenet5_half in timm)

LOSSES = ("kd", "weighted-kd", "robust-kd")


def run(argv: list[str], stdin_path: Path | None = None) -> tuple[str, float, float]:
    """Run a command; return (stdout, wall-clock s, peak RSS MiB of that process)."""
    print("$ " + shlex.join(argv) + (f" < {stdin_path}" if stdin_path else ""), file=sys.stderr, flush=True)
    with Stopwatch() as watch, open(stdin_path or os.devnull, "rb") as stdin:
        process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE)
        stdout = process.stdout.read().decode()  # type: ignore[union-attr]
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {shlex.join(argv)}")
    return stdout, watch.seconds, usage.ru_maxrss / 1024


def main() -> None:
    root = Scenario().root
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True, help="PU-s1 index written by `pucli select`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-bench"))
    parser.add_argument("--data", type=Path, default=root, help="mnist-pu folder")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher [default: DATA/teacher/lenet5.safetensors]")
    parser.add_argument("--threads", type=int, default=None, help="--threads for every command")
    parser.add_argument("--epochs", type=int, default=None, help="--epochs for distill [default: pucli's]")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    args = parser.parse_args()

    scenario = Scenario(args.data, args.teacher)
    scenario.require()
    teacher = scenario.teacher_path
    args.work.mkdir(parents=True, exist_ok=True)
    pucli_bin = [sys.executable, "-m", "pucli"]
    threads = ["--threads", str(args.threads)] if args.threads else []
    expanded = args.work / "expanded"
    results: dict = {"index": str(args.index), "threads": args.threads or torch.get_num_threads(), "runs": {}}

    stdout, wall, rss = run([*pucli_bin, "expand", "--positive", str(scenario.positive_dir(10, 0)), "--index", "-",
                             "--teacher", str(teacher), "--out", str(expanded), "--force", "--json", "--quiet", *threads],
                            stdin_path=args.index)
    expand_out = json.loads(stdout)
    results["expand"] = {"items": expand_out["items"], "skipped": expand_out["skipped"], "wall_s": wall, "peak_rss_mib": rss,
                         "classes": expand_out["classes"]}

    from pucli.checkpoints import load_model
    from pucli.evaluate import evaluate_model
    from pucli.kd.distill import training_bound_throughput

    teacher_model = load_model(teacher)
    torch.set_num_threads(results["threads"])
    results["teacher_top1"] = evaluate_model(teacher_model, args.data / "test", device=torch.device("cpu"),
                                             measure_speed=False).top1
    for loss in args.losses:
        out = args.work / f"student-{loss}.safetensors"
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        stdout, wall, rss = run([*pucli_bin, "distill", str(teacher), "--data", str(expanded), "--student", "lenet5_half",
                                 "--out", str(out), "--force", "--loss", loss, "--seed", "0", "--json", "--quiet", *epochs, *threads])
        summary = json.loads(stdout)
        student = load_model(out)
        top1 = evaluate_model(student, args.data / "test", device=torch.device("cpu"), measure_speed=False).top1
        batch = 128
        bound = training_bound_throughput(student.model, teacher_model.model, (1, 28, 28), batch, torch.device("cpu"))
        bound_student_only = training_bound_throughput(student.model, None, (1, 28, 28), batch, torch.device("cpu"))
        report = json.loads(Path(summary["report"]).read_text())
        results["runs"][loss] = {
            "test_top1": top1, "epochs": summary["epochs"], "items": summary["items"], "wall_s": wall,
            "train_s": report["timings_s"].get("train"), "decode_s": report["timings_s"].get("decode"),
            "peak_rss_mib": rss, "images_per_s": summary["images_per_s"], "bound_images_per_s": bound,
            "ratio_to_bound": summary["images_per_s"] / bound, "bound_student_only_images_per_s": bound_student_only,
            "ratio_to_student_only_bound": summary["images_per_s"] / bound_student_only,
        }
        print(json.dumps({loss: results["runs"][loss]}), file=sys.stderr, flush=True)
    write_json_atomic(args.work / "results.json", results, indent=2)

    print(f"teacher top-1 {results['teacher_top1']:.2f} %; extended set {results['expand']['items']} images; "
          f"expand {results['expand']['wall_s']:.0f} s, peak RSS {results['expand']['peak_rss_mib']:.0f} MiB\n")
    print("| loss | MNIST test top-1 % | epochs | distill wall-clock s | train s | img/s | bound img/s | ratio | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for loss, r in results["runs"].items():
        print(f"| {loss} | {r['test_top1']:.2f} | {r['epochs']} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
              f"{r['images_per_s']:,.0f} | {r['bound_images_per_s']:,.0f} | {r['ratio_to_bound']:.2f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
