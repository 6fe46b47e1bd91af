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
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

import pucli  # noqa: F401  (registers pucli's models in timm's registry)
from pucli.checkpoints import save_model
from pucli.errors import PucliError

try:  # run as `python benchmarks/train_bn_teacher.py` (script folder on sys.path) or as a module
    from mnist_pu_data import TRAIN_RANGE, default_data_dir, default_out_dir
    from train_teacher import BATCH_SIZE, MEAN, PEAK_LR, STD, fit, load_training_data, write_report
except ImportError:
    from benchmarks.mnist_pu_data import TRAIN_RANGE, default_data_dir, default_out_dir
    from benchmarks.train_teacher import BATCH_SIZE, MEAN, PEAK_LR, STD, fit, load_training_data, write_report

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
        data = load_training_data(data_dir)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code

    model = timm.create_model(ARCHITECTURE, num_classes=10, in_chans=1)
    trained = fit(model, data, epochs=args.epochs, seed=args.seed, name=ARCHITECTURE, threads=threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_model(model.eval(), out, label_names=[str(digit) for digit in range(10)], data_config=DATA_CONFIG)
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    lo, hi = TRAIN_RANGE
    report = {
        "format_version": 1,
        "scenario": "mnist-pu",
        "architecture": ARCHITECTURE,
        "weights": str(out),
        "test_accuracy": trained["test_accuracy"],
        "test_set": "MNIST t10k (10,000)",
        "train_set": f"MNIST train positions {lo}..{hi - 1} ({len(data.y_train):,})",
        "epochs": args.epochs,
        "seed": args.seed,
        "recipe": f"benchmarks/train_teacher.py's (SGD Nesterov, OneCycle to {PEAK_LR}, batch {BATCH_SIZE}, "
                  "rotation/shift augmentation)",
        "train_seconds": round(trained["train_seconds"], 2),
        "threads": threads,
        "load_average": os.getloadavg(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": trained["history"],
        "inputs_sha256": data.inputs_sha256,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
    }
    report_path = write_report(out, report)
    print(f"test accuracy {trained['test_accuracy']:.4f} after {trained['train_seconds']:.1f} s; "
          f"report: {report_path}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
