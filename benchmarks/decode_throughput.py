"""Measure the image-reading path of ``pucli.data`` (``decode``, ``loading``) on the ``mnist-pu`` pool (issue 3).

Three figures, all in one process so that their ratios share the machine's load:

- **decode**: images/s of ``iterate_batches`` over the first N pool images (28x28 grayscale
  PNGs): read, decode, resize check and batching in the loader workers, nothing else;
- **bound**: images/s of the teacher's multi-scale extractor (LeNet-5, what ``select`` streams
  the pool through) on uint8 batches already in memory, normalisation included;
- **extract**: images/s of ``pucli.pu.descriptors.extract_descriptors`` (decode + forward) over the
  same N images: ``select``'s one pass over the pool; its ratio to the bound is the issue's
  target (>= 0.8).

Each figure is taken ``--repeats`` times, interleaved; the table gives every repeat.

Usage::

    python benchmarks/decode_throughput.py [--n 20000] [--batch-size 256] [--workers 2] [--threads 2] [--repeats 3]

Prints the command and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch
from _common import Scenario, Stopwatch, load_average


def _decode_rate(paths: list[Path], preprocess, batch_size: int, workers: int) -> float:
    from pucli.data.loading import ImageDataset, iterate_batches

    with Stopwatch() as watch:
        count = sum(len(batch.indices) for batch in iterate_batches(ImageDataset(paths, preprocess),
                                                                     batch_size=batch_size, workers=workers))
    return count / watch.seconds


def _bound_rate(extractor, preprocess, batch_size: int, input_size: tuple[int, ...], seconds: float) -> float:
    images = torch.randint(0, 256, (batch_size, *input_size), dtype=torch.uint8)
    with torch.inference_mode():
        for _ in range(5):
            extractor(preprocess.normalize(images))
        steps = 0
        with Stopwatch() as watch:
            while watch.seconds < seconds:
                extractor(preprocess.normalize(images))
                steps += 1
        return steps * batch_size / watch.seconds


def _extract_rate(extractor, paths: list[Path], preprocess, batch_size: int, workers: int) -> float:
    from pucli.pu.descriptors import extract_descriptors

    with Stopwatch() as watch:
        index, _ = extract_descriptors(extractor, paths, preprocess, device=torch.device("cpu"),
                                       batch_size=batch_size, workers=workers)
    return len(index) / watch.seconds


def main() -> None:
    from pucli.data.loading import Preprocess
    from pucli.device import configure_threads, default_workers
    from pucli.pu.network import MultiScaleExtractor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Scenario().root, help="mnist-pu scenario folder")
    parser.add_argument("--n", type=int, default=20_000, help="pool images read per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: pucli's default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bound-seconds", type=float, default=5.0)
    args = parser.parse_args()

    scenario = Scenario(args.root)
    scenario.require()
    configure_threads(args.threads)
    teacher = scenario.teacher()
    extractor = MultiScaleExtractor(teacher.model).eval()
    preprocess = Preprocess(teacher.config)
    paths = scenario.pool[: args.n]
    workers = args.workers if args.workers is not None else default_workers(len(paths))

    print("```")
    print("$ " + shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print("```")
    print(f"\n{len(paths):,} pool images, batch {args.batch_size}, {workers} loader workers, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {load_average()[0]:.2f} at start\n")
    print("| repeat | decode img/s | bound img/s | extract img/s | decode / bound | extract / bound |")
    print("|---:|---:|---:|---:|---:|---:|")
    for repeat in range(1, args.repeats + 1):
        decode = _decode_rate(paths, preprocess, args.batch_size, workers)
        bound = _bound_rate(extractor, preprocess, args.batch_size, teacher.config.input_size, args.bound_seconds)
        extract = _extract_rate(extractor, paths, preprocess, args.batch_size, workers)
        print(f"| {repeat} | {decode:,.0f} | {bound:,.0f} | {extract:,.0f} | {decode / bound:.2f} | {extract / bound:.2f} |",
              flush=True)
    print(f"\nload average {load_average()[0]:.2f} at end")


if __name__ == "__main__":
    main()
