"""Train the pool grid's **timm ``train.py`` teacher** (issue 15): ``resnet10t`` at 28 x 28, one channel.

Issue 15 asks for "a timm CNN with BatchNorm trained by timm's own ``train.py``": a new user's
teacher, a ``model_best.pth.tar`` straight out of ``output/train/...``, with whatever ``train.py``
put in it (``args``, the state dict), no pucli export in between. This script does what that user
does, and nothing more: it runs timm's ``train.py`` as a subprocess with the arguments below, then
copies the ``model_best.pth.tar`` it wrote into pucli's cache, where ``benchmarks/pool_grid.py``
finds it (its ``teacher=timm`` axis):

    <pucli cache>/benchmarks/pool-grid/timm-teacher/resnet10t.pth.tar
    <pucli cache>/benchmarks/pool-grid/timm-teacher/resnet10t.report.json   (command, train.py hash,
                                                                            timm's per-epoch summary)

``train.py`` is not in the timm wheel; it is in the timm repository (huggingface/pytorch-image-models).
This script never downloads it: ``--train-py PATH`` names a copy, e.g.::

    git --git-dir=<mirror of pytorch-image-models> show <tag or commit>:train.py > /tmp/timm_train/train.py

The data are the mnist-pu scenario's folders (``benchmarks/mnist_pu_data.py``), in ImageFolder
layout: ``<root>/train/<digit>/*.png`` (MNIST train 0..29,999, the LeNet-5 teacher's training set)
for training, ``<root>/test/<digit>/*.png`` (MNIST t10k) for ``train.py``'s validation.

The recipe (``train_py_arguments``): ``resnet10t`` from scratch, 10 classes, ``--in-chans 1
--input-size 1 28 28 --input-img-mode L``, MNIST mean / std (0.1307 / 0.3081), ``--crop-pct 1.0``
(so that validation, and pucli, see the same 28 x 28 pixels as training; ``resnet10t``'s own
``crop_pct`` 0.95 would resize to 29 and crop), ``--no-aug`` (digits must not be flipped), SGD
(timm's default, momentum 0.9) at lr 0.05 (= timm's ``lr_base`` 0.1 x 128 / 256), cosine schedule
stepped per update (``--sched-on-updates``: timm's per-epoch stepping would spend the whole warm-up
epoch at ``--warmup-lr`` 1e-5) with 1 warm-up epoch, timm's default label smoothing 0.1 and
weight decay 2e-5, batch 128, seed 0, 12 epochs, on the CPU, ``--workers 1``; the network's threads
are ``--threads`` (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of the subprocess).

Result (train.py of pytorch-image-models aa4b5850, timm 1.0.31, torch 2.14.1, 1 thread, load
1.6-4.2): MNIST t10k top-1 99.33 % after 12 epochs (98.59 % after 2), 1,347 s; ``pucli evaluate``
on the same folder: 99.33 %. Label smoothing caps the teacher's max softmax on digits near 0.92,
below that of many Fashion images: its confidence ranking is no baseline at low priors.

Usage::

    python benchmarks/train_timm_teacher.py --train-py /tmp/timm_train/train.py \\
        --root /root/.cache/pucli-ref-data [--epochs 12] [--threads 1] [--dry-run]

``--dry-run`` prints the command and exits. The copied checkpoint's path is printed on stdout.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pucli.paths import cache_dir

ARCHITECTURE = "resnet10t"
MEAN = 0.1307
STD = 0.3081
EXPERIMENT = "resnet10t-mnist-pu"


def default_teacher_path() -> Path:
    """``<pucli cache>/benchmarks/pool-grid/timm-teacher/resnet10t.pth.tar``: where pool_grid.py looks."""
    return cache_dir() / "benchmarks" / "pool-grid" / "timm-teacher" / f"{ARCHITECTURE}.pth.tar"


def default_root() -> Path:
    return cache_dir() / "benchmarks" / "mnist-pu"


def train_py_arguments(root: Path, output: Path, *, epochs: int, seed: int = 0, batch_size: int = 128,
                       workers: int = 1) -> list[str]:
    """The arguments given to timm's ``train.py`` (after the script's path)."""
    return [
        "--data-dir", str(root), "--train-split", "train", "--val-split", "test",
        "--model", ARCHITECTURE, "--num-classes", "10", "--in-chans", "1", "--input-size", "1", "28", "28",
        "--input-img-mode", "L", "--mean", str(MEAN), "--std", str(STD), "--crop-pct", "1.0",
        "--interpolation", "bilinear", "--no-aug",
        "--epochs", str(epochs), "--warmup-epochs", "1", "--sched", "cosine", "--sched-on-updates",
        "--opt", "sgd", "--lr", "0.05",
        "-b", str(batch_size), "--seed", str(seed),
        "--device", "cpu", "--workers", str(workers), "--log-interval", "50", "--checkpoint-hist", "1",
        "--output", str(output), "--experiment", EXPERIMENT,
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_summary(path: Path) -> list[dict[str, Any]]:
    """timm's ``summary.csv`` (one row per epoch: train_loss, eval_loss, eval_top1, eval_top5, lr)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        entry: dict[str, Any] = {}
        for key, value in row.items():
            try:
                entry[key] = float(value)
            except (TypeError, ValueError):
                entry[key] = value
        out.append(entry)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train resnet10t (28x28, 1 channel) on mnist-pu with timm's train.py.")
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py (from the timm repository)")
    parser.add_argument("--train-py-source", default="",
                        help="where that train.py came from (e.g. 'pytorch-image-models@<commit>'), for the report")
    parser.add_argument("--root", type=Path, default=None,
                        help="mnist-pu root with train/ and test/ [default: <pucli cache>/benchmarks/mnist-pu]")
    parser.add_argument("--output", type=Path, default=Path("/tmp/timm_train/output"),
                        help="train.py's --output folder [default: /tmp/timm_train/output]")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the checkpoint is copied [default: <pucli cache>/benchmarks/pool-grid/"
                             "timm-teacher/resnet10t.pth.tar]")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the training process")
    parser.add_argument("--workers", type=int, default=1, help="train.py's data-loading workers")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs train.py")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args = parser.parse_args(argv)

    train_py = args.train_py.resolve()
    if not train_py.is_file():
        parser.error(f"--train-py {train_py}: no such file (train.py is in the timm repository, not the wheel; "
                     "this script does not download it)")
    root = (args.root or default_root()).resolve()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            parser.error(f"{root / split}: missing (the mnist-pu root: benchmarks/mnist_pu_data.py --out ROOT)")
    out = args.out or default_teacher_path()
    command = [args.python, str(train_py), *train_py_arguments(root, args.output, epochs=args.epochs, seed=args.seed,
                                                              workers=args.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} {shlex.join(command)}", file=sys.stderr)
    if args.dry_run:
        return 0
    run_dir = args.output / EXPERIMENT
    if run_dir.exists():  # train.py would otherwise pick a new "-1" suffixed folder
        shutil.rmtree(run_dir)
    load_before = os.getloadavg()
    started = time.time()
    child = subprocess.Popen(command, env=env)

    def stop(signum: int, _frame: Any) -> None:  # a killed wrapper takes train.py (and its workers) with it
        child.terminate()
        child.wait()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        returncode = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.time() - started
    if returncode != 0:
        print(f"train.py exited with {returncode}", file=sys.stderr)
        return returncode
    best = run_dir / "model_best.pth.tar"
    if not best.is_file():
        print(f"train.py finished but wrote no {best}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out)
    summary = read_summary(run_dir / "summary.csv")
    top1 = [row["eval_top1"] for row in summary if isinstance(row.get("eval_top1"), float)]
    import timm
    import torch

    report = {
        "architecture": ARCHITECTURE,
        "checkpoint": str(out),
        "checkpoint_sha256": sha256(out),
        "train_py": str(train_py),
        "train_py_sha256": sha256(train_py),
        "train_py_source": args.train_py_source,
        "command": shlex.join(command),
        "env": {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)},
        "timm": timm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "wall_s": round(wall, 1),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "best_eval_top1": max(top1) if top1 else None,
        "last_eval_top1": top1[-1] if top1 else None,
        "summary": summary,
        "args_yaml": (run_dir / "args.yaml").read_text() if (run_dir / "args.yaml").is_file() else None,
    }
    report_path = out.with_name(f"{ARCHITECTURE}.report.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"best eval top-1 {report['best_eval_top1']} (last {report['last_eval_top1']}), {wall:.0f} s; "
          f"report {report_path}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
