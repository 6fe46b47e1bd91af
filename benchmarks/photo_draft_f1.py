"""Reduced-size JPEG decoding on the photo-sized pool (issue 20, item 2): F1 with it and without it.

pucli decodes a JPEG at least twice the side its teacher needs with Pillow's ``Image.draft``
(libjpeg's DCT scaling; ``pucli.data.decode``) instead of at full size. The pixels differ a little
from the full decode's (a box filter against an antialiased resize: docs/benchmarks.md, "Reduced-size
JPEG decoding"); this script measures whether the selection does. On the ``photo256`` pool of
``benchmarks/scale_pools.py`` (the mnist-pu pool as 256 x 256 RGB JPEGs, quality 90; prior 0.30)
it runs ``pucli.pu.selection.run_selection`` (the default ranking, the known prior 0.30) twice per
labeled subset: with pucli's reduced decoding, and with it turned off (``ImageDataset.draft`` None:
the full decode, then the same resize). The labeled positives are the mnist-pu subsets
``nl10-seed*`` written the same way as the pool (256 x 256, bicubic, RGB JPEG quality 90), so the
positives and the pool share their capture. Each variant has its own cache folder, so its pool
descriptors are extracted once and reused by every subset (the pool's cache entry does not depend
on the positives).

Usage::

    python benchmarks/photo_draft_f1.py [--pool DIR] [--root MNIST_PU_ROOT] [--teacher FILE] [--seeds 0 1 2] [--workers 2] [--threads 1]

Prints a markdown table; writes ``benchmarks/results/photo_draft_f1.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import time
from pathlib import Path

from _common import load_average, machine, write_json_atomic

HERE = Path(__file__).resolve().parent


def photo_positives(root: Path, subset: str, out: Path, side: int = 256, quality: int = 90) -> Path:
    """The labeled subset ``root/positive/<subset>`` (class folders of PNGs) written to
    ``out/<subset>`` as side x side RGB JPEGs of ``quality``, as ``scale_pools.PhotoPool`` writes
    the pool; files already there are kept (the same settings give the same bytes)."""
    from PIL import Image

    source, target = root / "positive" / subset, out / subset
    for image_path in sorted(source.rglob("*.png")):
        destination = target / image_path.relative_to(source).with_suffix(".jpg")
        if destination.is_file():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image_path) as image:
            photo = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=quality)
        temporary = destination.with_suffix(".tmp")
        temporary.write_bytes(buffer.getvalue())
        temporary.replace(destination)
    return target


def quality(paths: list[Path], selected, positives: set[str]) -> dict:
    """Precision, recall and F1 of the kept ``paths`` (``selected``: (N,) bool) against ``positives``."""
    from _common import precision_recall_f1

    kept = [str(path) for path, keep in zip(paths, selected.tolist()) if keep]
    return precision_recall_f1(len(kept), sum(path in positives for path in kept), len(positives))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=None, help="the photo256 pool folder [default: <cache>/benchmarks/scale/photo256]")
    parser.add_argument("--root", type=Path, default=None, help="the mnist-pu root [default: its cache folder]")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher [default: <root>/teacher/lenet5.safetensors]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="labeled subsets nl10-seedS")
    parser.add_argument("--prior", type=float, default=0.30, help="the class prior given to select (the pool's true prior)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder [default: <cache>/benchmarks/photo-draft-f1]")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "photo_draft_f1.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mnist_pu_data import default_out_dir as mnist_pu_root
    from scale_pools import default_out, task_images

    from pucli.checkpoints import load_model
    from pucli.data import loading
    from pucli.data.sources import UnlabeledPool
    from pucli.paths import cache_dir
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    root = args.root or mnist_pu_root()
    pool_dir = args.pool or default_out("photo256")
    teacher_path = args.teacher or root / "teacher" / "lenet5.safetensors"
    work = args.work or cache_dir() / "benchmarks" / "photo-draft-f1"
    teacher = load_model(teacher_path)
    pool = UnlabeledPool.from_source(str(pool_dir / "pool-shards.txt")).paths
    positives_truth = task_images(pool_dir)
    command = "python benchmarks/photo_draft_f1.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    real_draft_side = loading.draft_side
    rows, previous = [], {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for seed in args.seeds:
        positive_dir = photo_positives(root, f"nl10-seed{seed}", work / "positives")
        positive_paths = sorted(positive_dir.rglob("*.jpg"))
        labels = [int(path.parent.name) for path in positive_paths]
        for variant in ("reduced", "full"):
            os.environ["PUCLI_CACHE_DIR"] = str(work / f"cache-{variant}")
            loading.draft_side = real_draft_side if variant == "reduced" else (lambda size, crop_pct: None)
            load_before = load_average()
            clock = time.perf_counter()
            result = run_selection(teacher, positive_paths, pool, SelectorOptions(class_prior=args.prior, seed=0),
                                   workers=args.workers, positive_labels=labels)
            wall = time.perf_counter() - clock
            row = {"seed": seed, "decode": variant, **quality(result.paths, result.selected, positives_truth),
                   "selected": int(result.selected.sum()), "wall_s": round(wall, 1),
                   "timings_s": {k: round(v, 1) for k, v in result.timings.items()},
                   "descriptors_cached": result.from_cache, "load_before": load_before, "load_after": load_average()}
            previous[variant] = result
            rows.append(row)
            print(f"seed {seed} {variant}: F1 {row['f1']:.4f} ({row['selected']} kept, {wall:.0f} s)", file=sys.stderr, flush=True)
        reduced, full = previous["reduced"], previous["full"]
        same_paths = reduced.paths == full.paths
        rows[-2]["same_index_as_full"] = rows[-1]["same_index_as_full"] = bool(
            same_paths and torch.equal(reduced.selected, full.selected))
        rows[-2]["kept_differently"] = rows[-1]["kept_differently"] = int(
            (reduced.selected != full.selected).sum()) if same_paths else None
        rows[-2]["delta_f1_vs_full"] = round(rows[-2]["f1"] - rows[-1]["f1"], 4)
    loading.draft_side = real_draft_side
    write_json_atomic(args.out, {"command": command, "started": started,
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                 "machine": machine(), "pool": str(pool_dir), "teacher": str(teacher_path),
                                 "prior": args.prior, "rows": rows})
    print(command)
    print("| subset | decode | selected | precision | recall | F1 | F1 reduced - full | images kept differently | extract (s) | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        delta = f"{row['delta_f1_vs_full']:+.4f}" if "delta_f1_vs_full" in row else ""
        print(f"| nl10-seed{row['seed']} | {row['decode']} | {row['selected']:,} | {row['precision']:.4f} | {row['recall']:.4f} "
              f"| {row['f1']:.4f} | {delta} | {row.get('kept_differently', '')} | {row['timings_s'].get('extract', 0):.1f} "
              f"| {row['load_before']}-{row['load_after']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
