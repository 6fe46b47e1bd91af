"""The honest bound of ``select``'s pool pass (issue 20): decode-only, forward-only and the pool pass, in one run.

For each pool (``--pool NAME=SOURCE``: anything ``--unlabeled`` takes; its first ``--n`` images)
and each loader worker count (``--workers 1 2``), interleaved over ``--repeats``:

- **decode**: images/s of the loader with the teacher replaced by nothing:
  ``iterate_batches(ImageDataset(paths, preprocess))`` (read, decode, resize in the workers, the
  batches handed to the main process), nothing done with the batches;
- **forward**: images/s of the teacher's multi-scale extractor (``MultiScaleExtractor``, what
  ``select`` streams the pool through) on the decoded uint8 batches of that decode pass, already
  in memory (normalisation included), in the main process at ``--threads``;
- **pass**: images/s of the pool pass ``select`` runs,
  ``pucli.pu.descriptors.extract_descriptors_in_parts`` (decode + forward, saving the
  descriptors part by part into a scratch folder, as ``select`` does);
- **pass, one loader**: ``extract_descriptors`` (the same, in one loader, no parts);
- **loader per part (before)**: the pass in parts as pucli ran it before issue 20, one loader
  (and one start of its workers) per part of ``DESCRIPTOR_PART_IMAGES`` images.

Decode and forward share the machine's cores, so the CPU time of each is measured too (the
main process's and its joined workers' ``getrusage``): ``cores / (decode + forward CPU seconds per
image)`` is what no overlap of the two can beat on ``cores`` free cores; the pass's own CPU time
per image (against decode + forward) shows what the pass adds, and its rate times that time the
cores it got.

The target is ``pass >= 0.8 x min(decode, forward)``. The descriptors of every pass are checked
bit for bit against those of the first.

Usage::

    python benchmarks/pool_pass_bound.py --pool png=/root/.cache/pucli-ref-data/unlabeled.txt \\
        --pool photo=<pucli cache>/benchmarks/scale/photo256/pool-shards.txt \\
        --teacher /root/.cache/pucli-ref-teacher/lenet5.safetensors [--n 20000] [--workers 1 2] \\
        [--threads 1] [--batch-size 256] [--repeats 2] [--out benchmarks/results/pool_pass_bound.json]

Prints the command and a markdown table on stdout; the JSON has every repeat.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import Stopwatch, load_average, machine, write_json_atomic


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the loader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _decode(paths, preprocess, batch_size: int, workers: int) -> tuple[float, float, list[torch.Tensor]]:
    """(images/s, CPU seconds per image, the decoded batches)."""
    from pucli.data.loading import ImageDataset, iterate_batches

    batches = []
    cpu = _cpu_seconds()
    with Stopwatch() as watch:
        for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=batch_size, workers=workers):
            batches.append(batch.images)
    count = sum(len(b) for b in batches)
    return count / watch.seconds, (_cpu_seconds() - cpu) / count, batches


@torch.inference_mode()
def _forward(extractor, preprocess, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(images/s, CPU seconds per image)."""
    extractor(preprocess.normalize(batches[0]))  # warm-up
    cpu = _cpu_seconds()
    with Stopwatch() as watch:
        for images in batches:
            extractor(preprocess.normalize(images)).float()
    count = sum(len(b) for b in batches)
    return count / watch.seconds, (_cpu_seconds() - cpu) / count


def _pass(extractor, paths, preprocess, batch_size: int, workers: int, *, mode: str) -> tuple[float, torch.Tensor]:
    """``mode``: "parts" (select's pass), "one" (one plain pass), "loader-per-part" (the pass in
    parts as pucli ran it before issue 20: one ``extract_descriptors``, so one loader, per part)."""
    from pucli.pu import descriptors as module

    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="pool-pass-") as scratch, Stopwatch() as watch:
        if mode == "parts":
            index, values = module.extract_descriptors_in_parts(extractor, paths, preprocess, parts=Path(scratch),
                                                                device=cpu, batch_size=batch_size, workers=workers)
        elif mode == "one":
            index, values = module.extract_descriptors(extractor, paths, preprocess, device=cpu, batch_size=batch_size,
                                                       workers=workers)
        else:
            size = batch_size * max(1, round(module.DESCRIPTOR_PART_IMAGES / batch_size))
            chunks = [module.extract_descriptors(extractor, paths[start:start + size], preprocess, device=cpu,
                                                 batch_size=batch_size, workers=workers)
                      for start in range(0, len(paths), size)]
            values = torch.cat([chunk[1] for chunk in chunks])
            index = torch.arange(len(values))
        seconds = watch.seconds
    return len(index) / seconds, values


def main() -> None:
    from pucli.checkpoints import load_model
    from pucli.data.loading import Preprocess
    from pucli.data.sources import UnlabeledPool
    from pucli.device import configure_threads
    from pucli.pu.network import MultiScaleExtractor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", action="append", required=True, help="NAME=SOURCE (repeatable)")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20_000, help="pool images per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--batch-size", type=int, default=256, help="select's default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pool_pass_bound.json")
    args = parser.parse_args()

    configure_threads(args.threads)
    teacher = load_model(args.teacher)
    extractor = MultiScaleExtractor(teacher.model).eval()
    preprocess = Preprocess(teacher.config)
    pools = {}
    for spec in args.pool:
        name, _, source = spec.partition("=")
        pools[name] = UnlabeledPool.from_source(source).paths[: args.n]

    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print(f"```\n$ {command}\n```\n")
    print(f"batch {args.batch_size}, {args.threads} main-process thread(s), {os.cpu_count()} CPUs, "
          f"load average {load_average()[0]:.2f} at start ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    cores = len(os.sched_getaffinity(0))
    print("| pool | workers | repeat | decode img/s | forward img/s | pass img/s | one loader img/s "
          "| loader per part (before) img/s | pass / min(decode, forward) | one loader / min | before / min "
          f"| CPU us per image, decode / forward / pass | pass cores used | CPU bound ({cores} cores) img/s | pass / CPU bound | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    reference: dict[str, torch.Tensor] = {}
    for repeat in range(1, args.repeats + 1):
        for workers in args.workers:
            for name, paths in pools.items():
                load_before = load_average()[0]
                decode, decode_cpu, batches = _decode(paths, preprocess, args.batch_size, workers)
                forward, forward_cpu = _forward(extractor, preprocess, batches)
                del batches
                cpu_before = _cpu_seconds()
                passed, values = _pass(extractor, paths, preprocess, args.batch_size, workers, mode="parts")
                pass_cpu = (_cpu_seconds() - cpu_before) / len(values)
                single, single_values = _pass(extractor, paths, preprocess, args.batch_size, workers, mode="one")
                before, before_values = _pass(extractor, paths, preprocess, args.batch_size, workers,
                                              mode="loader-per-part")
                reference.setdefault(name, values)
                identical = all(torch.equal(v, reference[name]) for v in (values, single_values, before_values))
                load_after = load_average()[0]
                bound = min(decode, forward)
                # Decode and forward share the cores: on ``cores`` free cores nothing beats the
                # CPU-seconds bound cores / (decode CPU + forward CPU per image).
                cpu_bound = cores / (decode_cpu + forward_cpu)
                row = {"pool": name, "images": len(paths), "workers": workers, "repeat": repeat,
                       "decode_img_s": round(decode, 1), "forward_img_s": round(forward, 1),
                       "pass_img_s": round(passed, 1), "pass_one_loader_img_s": round(single, 1),
                       "pass_loader_per_part_img_s": round(before, 1),
                       "pass_over_bound": round(passed / bound, 3), "one_loader_over_bound": round(single / bound, 3),
                       "loader_per_part_over_bound": round(before / bound, 3),
                       "decode_cpu_us_per_image": round(decode_cpu * 1e6, 1),
                       "forward_cpu_us_per_image": round(forward_cpu * 1e6, 1),
                       "pass_cpu_us_per_image": round(pass_cpu * 1e6, 1),
                       "pass_cores_used": round(passed * pass_cpu, 2),
                       "cpu_bound_img_s": round(cpu_bound, 1), "pass_over_cpu_bound": round(passed / cpu_bound, 3),
                       "descriptors_identical": identical, "load_1min": [load_before, load_after]}
                rows.append(row)
                print(f"| {name} | {workers} | {repeat} | {decode:,.0f} | {forward:,.0f} | {passed:,.0f} | {single:,.0f} "
                      f"| {before:,.0f} | **{passed / bound:.2f}** | {single / bound:.2f} | {before / bound:.2f} "
                      f"| {decode_cpu * 1e6:,.0f} / {forward_cpu * 1e6:,.0f} / {pass_cpu * 1e6:,.0f} | {passed * pass_cpu:.2f} | {cpu_bound:,.0f} | {passed / cpu_bound:.2f} "
                      f"| {load_before:.2f}-{load_after:.2f} |", flush=True)
    print(f"\nload average {load_average()[0]:.2f} at end; descriptors identical across passes: "
          f"{all(r['descriptors_identical'] for r in rows)}")
    write_json_atomic(args.out, {"command": command, "batch_size": args.batch_size, "threads": args.threads,
                                 "teacher": str(args.teacher), "rows": rows,
                                 "machine": machine(torch=torch.__version__)})


if __name__ == "__main__":
    main()
