"""What the PNG completeness check of ``pucli.data.decode`` costs against torchvision's decode.

Before torchvision decodes a PNG, pucli inflates its image data once more to check that it holds
the bytes the header promises (torchvision's decoder crashes the process on a PNG cut short). This
times that check (``_png_is_whole``) and ``torchvision.io.decode_image`` on the same bytes, in
memory, best of 5 repeats: on an mnist-pu pool image (MNIST train image 30,000, 28 x 28 grayscale,
encoded as ``benchmarks/mnist_pu_data.py`` writes it; read from the shared IDX files) and on a
256 x 256 RGB PNG of seeded random pixels (which barely compresses: the costly case).

Usage::

    python benchmarks/png_check_cost.py [--data-dir DIR] [--number 2000]

Prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import io
import timeit
import warnings
from pathlib import Path

from _common import load_average
from mnist_pu_data import POOL_POSITIVE_RANGE, default_data_dir, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder [default: ../shared/data]")
    parser.add_argument("--number", type=int, default=2000, help="calls per repeat")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from torchvision.io import decode_image

    from pucli.data.decode import _png_is_whole

    mnist, _ = load_split(args.data_dir or default_data_dir(), "mnist", "train")
    images = {"mnist-pu pool image, 28 x 28 grayscale": mnist[POOL_POSITIVE_RANGE[0]],
              "random pixels, 256 x 256 RGB": np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)}
    limit = 2 * Image.MAX_IMAGE_PIXELS
    print("| image | PNG bytes | check us | torchvision decode us | check / decode |")
    print("|---|---:|---:|---:|---:|")
    for name, pixels in images.items():
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        view = memoryview(data.numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's image I/O deprecation, on every call
            check = min(timeit.repeat(lambda view=view: _png_is_whole(view, limit), number=args.number, repeat=5)) / args.number
            decode = min(timeit.repeat(lambda data=data: decode_image(data), number=args.number, repeat=5)) / args.number
        print(f"| {name} | {len(data):,} | {check * 1e6:.1f} | {decode * 1e6:.1f} | {check / decode:.2f} |")
    print(f"\nload average {load_average()[0]:.2f} at end")


if __name__ == "__main__":
    main()
