"""Scaling figures (issue 8): 1 vs 2 processes for select's pool pass and for distill, and tar
shards vs loose files for select's pool pass, on the ``mnist-pu`` scenario.

Every figure comes from the CLI as a user runs it (``pucli ...`` and
``python -m torch.distributed.run --standalone --nproc_per_node=2 -m pucli ...``, gloo on the CPU),
all in one run of this script, so the ratios share the machine's load:

- **select**: ``--no-cache`` runs on the first ``--pool`` images of ``unlabeled.txt`` at
  n_l = 10; the pool pass is the ``extract`` stage of the run report (read, decode, teacher forward;
  under torchrun up to the gathered descriptors on rank 0), its images/s = pool / seconds; the
  wall-clock of the whole command (start-up, listing, head training on rank 0, writing) is given too.
  Loose files: the PNG paths of ``unlabeled.txt``; shards: the same images in the same order packed
  by :func:`pucli.data.shards.pack_folder` into ``--shard-size``-image tar files, read with a brace
  pattern. The script checks that loose and sharded runs give the same scores.
- **distill**: ``--epochs`` epochs of the default robust-KD LeNet-5-half student on the set that
  ``pucli expand`` builds from the 1-process loose index; images/s is the report's training
  throughput (all ranks' images over rank 0's training seconds).

Both cores are used by either configuration: one process with 2 torch threads and 2 loader
workers, or two processes with 1 thread and 1 worker each; one process with 1 thread shows the
per-process speed.

Usage::

    python benchmarks/scaling.py [--pool 100000] [--shard-size 10000] [--epochs 3] [--work runs/scaling]

Prints the commands and a markdown table on stdout; writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from _common import Scenario, Stopwatch, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
PUCLI = [sys.executable, "-m", "pucli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pucli"]


def run(command: list[str], *, threads: int, log: list[str]) -> tuple[float, str]:
    """Run ``command`` with ``threads`` OpenMP threads per process; returns (wall seconds, stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log.append(shlex.join(command))
    print("$", log[-1], file=sys.stderr, flush=True)
    with Stopwatch() as watch:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {log[-1]}\n{done.stderr[-3000:]}")
    return watch.seconds, done.stdout


def scores(index: Path) -> list[str]:
    return [line.split("\t")[1] for line in index.read_text().splitlines()[2:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=100_000, help="first N images of unlabeled.txt")
    parser.add_argument("--shard-size", type=int, default=10_000, help="images per tar shard")
    parser.add_argument("--epochs", type=int, default=3, help="distill epochs per run")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "scaling")
    args = parser.parse_args()

    from pucli.data.shards import pack_folder

    scenario = Scenario()  # before PUCLI_CACHE_DIR moves below
    scenario.require()
    root, teacher, positive = scenario.root, scenario.teacher_path, scenario.positive_dir(10, 0)
    work = args.work
    (work / "shards").mkdir(parents=True, exist_ok=True)
    os.environ["PUCLI_CACHE_DIR"] = str(work / "cache")  # --no-cache anyway: keep the user's cache clean
    os.environ["PUCLI_STATE_DIR"] = str(work / "state")
    log: list[str] = []

    lines = scenario.pool_list.read_text().splitlines()[: args.pool]
    pool_list = work / "pool.txt"
    pool_list.write_text("\n".join(lines) + "\n")
    for old in (work / "shards").glob("pool-*.tar"):
        old.unlink()
    with Stopwatch() as watch:
        packed = pack_folder(root / "unlabeled", str(work / "shards" / "pool-%06d.tar"),
                             images_per_shard=args.shard_size, paths=[Path(line) for line in lines])
    pack_s = watch.seconds
    log.append(f"python -c 'pucli.data.shards.pack_folder(...)'  # {packed.images} images -> {len(packed.shards)} shards")
    shard_bytes = sum(p.stat().st_size for p in packed.shards)
    loose_bytes = sum(os.stat(line).st_size for line in lines)

    results: dict[str, dict[str, float]] = {}
    select = ["select", "--positive", str(positive), "--teacher", str(teacher), "--prior", "0.3",
              "--no-cache", "--force", "-q"]
    configs = {  # name: (launcher, threads per process, loader workers per process)
        "1 process, 1 thread": (PUCLI, 1, 1),
        "1 process, 2 threads": (PUCLI, 2, 2),
        "2 processes, 1 thread each": (TORCHRUN, 1, 1),
    }
    for source_name, source in (("loose files", str(pool_list)), ("tar shards", packed.pattern())):
        for config_name, (launcher, threads, workers) in configs.items():
            if source_name == "tar shards" and config_name == "1 process, 1 thread":
                continue
            key = f"select, {source_name}, {config_name}"
            out = work / f"select-{len(results)}.tsv"
            wall, _ = run([*launcher, *select, "--unlabeled", source, "--out", str(out), "--threads", str(threads),
                           "--workers", str(workers)], threads=threads, log=log)
            report = json.loads(out.with_name(out.stem + ".report.json").read_text())
            extract = report["timings_s"]["extract"]
            results[key] = {"wall_s": wall, "extract_s": extract, "train_s": report["timings_s"]["train"],
                            "images_per_s": args.pool / extract, "index": str(out)}

    def same(a: str, b: str) -> bool:
        return scores(Path(results[a]["index"])) == scores(Path(results[b]["index"]))

    checks = {
        "shards give the loose files' scores (1 process)":
            same("select, loose files, 1 process, 2 threads", "select, tar shards, 1 process, 2 threads"),
        "shards give the loose files' scores (2 processes)":
            same("select, loose files, 2 processes, 1 thread each", "select, tar shards, 2 processes, 1 thread each"),
        "2 processes give the 1-process scores (1 thread each)":
            same("select, loose files, 1 process, 1 thread", "select, loose files, 2 processes, 1 thread each"),
    }

    expanded = work / "expanded"
    run([*PUCLI, "expand", "--positive", str(positive), "--index", results["select, loose files, 1 process, 2 threads"]["index"],
         "--teacher", str(teacher), "--out", str(expanded), "--force", "-q"], threads=2, log=log)
    for config_name, (launcher, threads, workers) in configs.items():
        out = work / f"student-{len(results)}.safetensors"
        wall, stdout = run([*launcher, "distill", str(teacher), "--data", str(expanded), "--student", "lenet5_half",
                            "--out", str(out), "--epochs", str(args.epochs), "--threads", str(threads),
                            "--workers", str(workers), "--force", "--json", "-q"], threads=threads, log=log)
        summary = json.loads(stdout)
        results[f"distill, {config_name}"] = {"wall_s": wall, "images_per_s": summary["images_per_s"],
                                              "final_loss": summary["final_loss"], "items": summary["items"]}

    print("```")
    print("\n".join(log))
    print("```\n")
    print(f"pool: {args.pool:,} images; {len(packed.shards)} shards of {args.shard_size:,} "
          f"({shard_bytes / 2**20:.0f} MiB; loose files {loose_bytes / 2**20:.0f} MiB of PNG data); "
          f"packing took {pack_s:.1f} s\n")
    print("| run | pool pass / training img/s | ratio to 1 process, 1 thread | pool pass s | command wall s |")
    print("|---|---:|---:|---:|---:|")
    base = results["select, loose files, 1 process, 1 thread"]["images_per_s"]
    for key, row in results.items():
        if key.startswith("distill"):
            continue
        print(f"| {key} | {row['images_per_s']:,.0f} | {row['images_per_s'] / base:.2f} | {row['extract_s']:.1f} | "
              f"{row['wall_s']:.1f} |")
    base = results["distill, 1 process, 1 thread"]["images_per_s"]
    for key, row in results.items():
        if key.startswith("distill"):
            print(f"| {key} ({args.epochs} epochs, {row['items']:,} images) | {row['images_per_s']:,.0f} | "
                  f"{row['images_per_s'] / base:.2f} | - | {row['wall_s']:.1f} |")
    print()
    for name, ok in checks.items():
        print(f"- {name}: {'yes' if ok else 'NO'}")
    write_json_atomic(REPO / "benchmarks" / "results" / "scaling.json",
                      {"pool": args.pool, "shard_size": args.shard_size, "shards": len(packed.shards), "pack_s": pack_s,
                       "shard_bytes": shard_bytes, "loose_bytes": loose_bytes, "epochs": args.epochs, "commands": log,
                       "results": results, "checks": checks}, indent=2)


if __name__ == "__main__":
    main()
