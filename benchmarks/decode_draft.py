"""Reduced-size JPEG decoding against the full decode (issue 20): images/s of the loader's decode + resize.

``pucli.data.loading.ImageDataset`` decodes a JPEG at least twice the size the teacher needs with
Pillow's ``Image.draft`` (libjpeg's DCT scaling; ``pucli.data.decode``). This script writes
``--n`` photo-like JPEGs of ``--jpeg-size`` pixels (seeded colour waves, flat discs, noise;
quality 90) and reads them through ``iterate_batches`` (one process, ``--workers 0``), each
repeat once with the reduced decode (pucli's path) and once with it turned off (the full decode,
then the same resize), interleaved so both share the machine's load. It also gives the largest
and mean difference of the final pixels between the two.

Usage::

    python benchmarks/decode_draft.py [--n 2000] [--jpeg-size 256] [--size 32] [--channels 3] [--crop-pct 1.0] [--repeats 3] [--draft-side N]

Prints the command and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import Stopwatch, load_average
from PIL import Image


def _write_photos(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` photo-like side x side JPEGs (quality 90), seeded by their number."""
    y, x = np.mgrid[0:side, 0:side] / side
    paths = []
    for number in range(count):
        rng = np.random.default_rng(number)
        phases = rng.uniform(0, 2 * np.pi, 3)
        pixels = np.stack([np.sin(2 * np.pi * (1.5 * x + 0.5 * y) + p) for p in phases], -1) * 80 + 128
        for _ in range(6):
            cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            pixels[(x - cx) ** 2 + (y - cy) ** 2 < radius ** 2] = rng.uniform(0, 255, 3)
        pixels += rng.normal(0, 6, pixels.shape)
        path = folder / f"photo{number:06d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _read(dataset, batch_size: int) -> tuple[float, torch.Tensor]:
    """Images/s of one pass, and the (N, C, h, w) uint8 images it produced."""
    from pucli.data.loading import iterate_batches

    with Stopwatch() as watch:
        images = torch.cat([batch.images for batch in iterate_batches(dataset, batch_size=batch_size, workers=0)])
    return len(images) / watch.seconds, images


def main() -> None:
    from pucli.checkpoints import ModelConfig
    from pucli.data.loading import ImageDataset, Preprocess
    from pucli.device import configure_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="JPEGs read per measurement")
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the photo-like JPEGs, pixels")
    parser.add_argument("--size", type=int, default=32, help="the teacher's input side, pixels")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--crop-pct", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draft-side", type=int, default=None,
                        help="reduce only to this side instead of pucli's (say 2 x --size: closer pixels, less gain)")
    args = parser.parse_args()
    configure_threads(args.threads)

    config = ModelConfig("bench", 10, args.channels, (args.channels, args.size, args.size), (0.5,) * args.channels,
                         (0.25,) * args.channels, crop_pct=args.crop_pct)
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_photos(Path(folder), args.n, args.jpeg_size)
        drafted = ImageDataset(paths, Preprocess(config))
        drafted.draft = args.draft_side or drafted.draft
        full = ImageDataset(paths, Preprocess(config))
        full.draft = None  # the full decode, then the same resize
        rows = []
        for repeat in range(args.repeats):
            draft_rate, draft_images = _read(drafted, args.batch_size)
            full_rate, full_images = _read(full, args.batch_size)
            rows.append((repeat, draft_rate, full_rate, load_average()[0]))
            print(f"repeat {repeat}: draft {draft_rate:.0f} img/s, full {full_rate:.0f} img/s", file=sys.stderr, flush=True)
    difference = (draft_images.int() - full_images.int()).abs()
    print("$ python benchmarks/decode_draft.py " + shlex.join(sys.argv[1:]))
    print(f"\n{args.n} JPEGs of {args.jpeg_size} x {args.jpeg_size} px (quality 90) to {args.channels} x {args.size} x "
          f"{args.size} (crop_pct {args.crop_pct}), draft side {drafted.draft}; final pixels: max |difference| "
          f"{int(difference.max())}, mean {float(difference.float().mean()):.2f} grey levels\n")
    print("| repeat | reduced decode (img/s) | full decode (img/s) | ratio | load (1 min) |")
    print("|---:|---:|---:|---:|---:|")
    for repeat, draft_rate, full_rate, load in rows:
        print(f"| {repeat} | {draft_rate:,.0f} | {full_rate:,.0f} | {draft_rate / full_rate:.2f}x | {load:.2f} |")
    ratios = sorted(d / f for _, d, f, _ in rows)
    print(f"\nmedian ratio {ratios[len(ratios) // 2]:.2f}x")


if __name__ == "__main__":
    main()
