"""Train the ``mnist-pu`` **BatchNorm teacher** (issue 17): timm ``test_resnet`` at 28 x 28, one channel.

LeNet-5, the scenario's teacher, has no BatchNorm, so it has nothing for BN re-estimation
(He & Cheng, "Learning Compression from Limited Unlabeled Data", ECCV 2018) to repair. This script
trains a small timm ResNet with BatchNorm in every block (``test_resnet``: 373k parameters) on the
same 30,000 images as ``benchmarks/train_teacher.py`` (MNIST train 0..29,999) with the same recipe
and augmentation (that script's ``train_one_epoch`` / ``evaluate``, imported): SGD with Nesterov
momentum 0.9, weight decay 5e-4, batch 128, OneCycle to lr 0.1, rotation +-10 degrees and shifts
+-2 px; evaluated on MNIST t10k. Seeded and deterministic on CPU.

Writes ``test_resnet.safetensors`` (weights + timm config with the 28 x 28 one-channel data config
in its metadata), ``test_resnet.config.json`` and ``test_resnet.report.json`` into
``<pucli cache>/benchmarks/mnist-pu/bn-teacher/`` unless ``--out`` says otherwise.

Usage::

    python benchmarks/train_bn_teacher.py [--epochs 15] [--seed 0] [--threads 1] [--out PATH.safetensors]

Per-epoch loss and test accuracy go to stderr; the weights' path is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

import pucli  # noqa: F401  (registers pucli's models in timm's registry)
from pucli.checkpoints import save_model
from pucli.errors import PucliError
from pucli.paths import atomic_write

try:  # run as `python benchmarks/train_bn_teacher.py` (script folder on sys.path) or as a module
    from mnist_pu_data import INPUT_FILES, TRAIN_RANGE, default_data_dir, default_out_dir, load_split, verify_inputs
    from train_teacher import BATCH_SIZE, MEAN, MOMENTUM, PEAK_LR, STD, WEIGHT_DECAY, evaluate, train_one_epoch
except ImportError:
    from benchmarks.mnist_pu_data import (
        INPUT_FILES,
        TRAIN_RANGE,
        default_data_dir,
        default_out_dir,
        load_split,
        verify_inputs,
    )
    from benchmarks.train_teacher import (
        BATCH_SIZE,
        MEAN,
        MOMENTUM,
        PEAK_LR,
        STD,
        WEIGHT_DECAY,
        evaluate,
        train_one_epoch,
    )

ARCHITECTURE = "test_resnet"
DATA_CONFIG = {"input_size": (1, 28, 28), "mean": (MEAN,), "std": (STD,), "interpolation": "bilinear", "crop_pct": 1.0}


def default_bn_teacher_path() -> Path:
    """``<pucli cache>/benchmarks/mnist-pu/bn-teacher/test_resnet.safetensors``."""
    return default_out_dir() / "bn-teacher" / f"{ARCHITECTURE}.safetensors"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the mnist-pu BatchNorm teacher (timm test_resnet, 28x28).")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (default: $PUCLI_SHARED_DATA or <repo>/../shared/data)")
    parser.add_argument("--out", type=Path, default=None, help="weights file, *.safetensors "
                        "(default: <pucli cache>/benchmarks/mnist-pu/bn-teacher/test_resnet.safetensors)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and augmentation (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: CPUs available)")
    args = parser.parse_args(argv)

    data_dir = Path(os.path.abspath(args.data_dir or default_data_dir()))
    out = Path(os.path.abspath(args.out or default_bn_teacher_path()))
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    try:
        inputs = verify_inputs(data_dir, [*INPUT_FILES[("mnist", "train")], *INPUT_FILES[("mnist", "t10k")]])
        train_images, train_labels = load_split(data_dir, "mnist", "train")
        test_images, test_labels = load_split(data_dir, "mnist", "t10k")
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    lo, hi = TRAIN_RANGE
    x_train = torch.from_numpy(train_images[lo:hi].copy())
    y_train = torch.from_numpy(train_labels[lo:hi].astype("int64"))
    x_test = torch.from_numpy(test_images.copy())
    y_test = torch.from_numpy(test_labels.astype("int64"))

    model = timm.create_model(ARCHITECTURE, num_classes=10, in_chans=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=PEAK_LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PEAK_LR, epochs=args.epochs,
                                                    steps_per_epoch=math.ceil(len(y_train) / BATCH_SIZE))
    generator = torch.Generator().manual_seed(args.seed)
    print(f"training {ARCHITECTURE} on {len(y_train):,} MNIST train images, {args.epochs} epochs, seed {args.seed}, "
          f"{threads} thread(s)", file=sys.stderr, flush=True)
    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        loss = train_one_epoch(model, x_train, y_train, optimizer, scheduler, generator)
        accuracy = evaluate(model, x_test, y_test)
        seconds = time.perf_counter() - epoch_started
        history.append({"epoch": epoch, "train_loss": round(loss, 5), "test_accuracy": accuracy, "seconds": round(seconds, 2)})
        print(f"epoch {epoch:>2}/{args.epochs}  loss {loss:.4f}  test acc {accuracy:.4f}  ({seconds:.1f} s)",
              file=sys.stderr, flush=True)
    train_seconds = time.perf_counter() - started
    accuracy = history[-1]["test_accuracy"] if history else evaluate(model, x_test, y_test)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_model(model.eval(), out, label_names=[str(digit) for digit in range(10)], data_config=DATA_CONFIG)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    report = {
        "format_version": 1,
        "scenario": "mnist-pu",
        "architecture": ARCHITECTURE,
        "weights": str(out),
        "test_accuracy": accuracy,
        "test_set": "MNIST t10k (10,000)",
        "train_set": f"MNIST train positions {lo}..{hi - 1} ({len(y_train):,})",
        "epochs": args.epochs,
        "seed": args.seed,
        "recipe": "benchmarks/train_teacher.py's (SGD Nesterov, OneCycle to 0.1, batch 128, rotation/shift augmentation)",
        "train_seconds": round(train_seconds, 2),
        "threads": threads,
        "load_average": os.getloadavg(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "inputs_sha256": inputs,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
    }
    report_path = out.with_name(out.name.removesuffix(".safetensors") + ".report.json")
    with atomic_write(report_path) as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    print(f"test accuracy {accuracy:.4f} after {train_seconds:.1f} s; report: {report_path}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
