"""Train the ``mnist-pu`` teacher: LeNet-5 on MNIST train 0..29,999, evaluated on MNIST t10k.

The teacher of the MNIST experiment of Xu et al., "Positive-Unlabeled Compression on the Cloud",
NeurIPS 2019 (https://arxiv.org/abs/1909.09757), trained on the scenario's original training set
only (docs/BENCHMARKS.md). Images are read straight from the shared IDX files into memory (no PNG
decoding); the split is the same as ``train/`` of ``benchmarks/mnist_pu_data.py``.

Recipe: inputs normalised with mean 0.1307 / std 0.3081 (timm's ``lenet5`` config); SGD with
Nesterov momentum 0.9, weight decay 5e-4, batch 128, a OneCycle schedule peaking at lr 0.1, 15
epochs; light augmentation per image (rotation within +-10 degrees and shifts within +-2 px, one
``affine_grid`` call per batch). Seeded and deterministic on CPU.

Writes ``lenet5.safetensors`` (weights + timm config in its metadata), ``lenet5.config.json`` (the
sidecar config, via :func:`pucli.checkpoints.save_model`) and ``lenet5.report.json`` (test
accuracy, epochs, seed, wall-clock, versions, per-epoch history) into
``<pucli cache>/benchmarks/mnist-pu/teacher/`` unless ``--out`` says otherwise.

Usage::

    python benchmarks/train_teacher.py [--epochs 15] [--seed 0] [--out PATH.safetensors]

Per-epoch loss and test accuracy go to stderr; the weights' path is printed on stdout.

Another teacher trained on the same data with the same recipe reuses the pieces:
:func:`load_training_data`, :func:`fit` (the training loop, any ``nn.Module``) and
:func:`write_report`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import pucli  # noqa: F401  (registers lenet5 in timm's registry on import of timm)
from pucli.checkpoints import save_model
from pucli.errors import PucliError
from pucli.paths import atomic_write

try:  # run as `python benchmarks/train_teacher.py` (script folder on sys.path) or as a module
    from mnist_pu_data import INPUT_FILES, TRAIN_RANGE, default_data_dir, default_out_dir, load_split, verify_inputs
except ImportError:
    from benchmarks.mnist_pu_data import (
        INPUT_FILES,
        TRAIN_RANGE,
        default_data_dir,
        default_out_dir,
        load_split,
        verify_inputs,
    )

ARCHITECTURE = "lenet5"
MEAN = 0.1307
STD = 0.3081
BATCH_SIZE = 128
PEAK_LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MAX_ROTATION_DEG = 10.0
MAX_SHIFT_PX = 2.0
EVAL_BATCH_SIZE = 1000


def default_teacher_path() -> Path:
    """``<pucli cache>/benchmarks/mnist-pu/teacher/lenet5.safetensors``."""
    return default_out_dir() / "teacher" / f"{ARCHITECTURE}.safetensors"


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 28, 28) uint8 or (B, 1, 28, 28) float32 on the 0-1 scale -> (B, 1, 28, 28) float32."""
    if images.dtype == torch.uint8:
        images = images.unsqueeze(1).float().div_(255.0)
    return (images - MEAN) / STD


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image by a random angle (+-10 degrees) and shift it by up to +-2 px.

    images: (B, 28, 28) uint8 -> (B, 1, 28, 28) float32 on the 0-1 scale; uncovered pixels are
    background (0). One independent draw per image from ``generator``.
    """
    batch, height, width = images.shape
    pixels = images.unsqueeze(1).float().div_(255.0)
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * MAX_SHIFT_PX
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / side.
    theta[:, 0, 2] = shift[:, 0] * 2 / width
    theta[:, 1, 2] = shift[:, 1] * 2 / height
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> float:
    """One pass over (N, 28, 28) uint8 ``images`` / (N,) int64 ``labels``; returns the mean loss."""
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    total_loss = 0.0
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start : start + BATCH_SIZE]
        inputs = normalise(random_affine(images[batch], generator))
        loss = F.cross_entropy(model(inputs), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(batch)
    return total_loss / len(order)


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (0-1) on (N, 28, 28) uint8 ``images`` / (N,) int64 ``labels``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH_SIZE):
        logits = model(normalise(images[start : start + EVAL_BATCH_SIZE]))
        correct += (logits.argmax(1) == labels[start : start + EVAL_BATCH_SIZE]).sum().item()
    return correct / len(labels)


@dataclass
class TrainingData:
    """The scenario's original training set (MNIST train 0..29,999) and MNIST t10k, in memory.

    ``x_*``: (N, 28, 28) uint8; ``y_*``: (N,) int64; ``inputs_sha256``: the IDX files read."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    inputs_sha256: dict[str, str]


def load_training_data(data_dir: Path) -> TrainingData:
    """Read and check the MNIST IDX files of ``data_dir``.

    Raises:
        PucliError: a file is missing, damaged or not the one ``SHA256SUMS`` names.
    """
    inputs = verify_inputs(data_dir, [*INPUT_FILES[("mnist", "train")], *INPUT_FILES[("mnist", "t10k")]])
    train_images, train_labels = load_split(data_dir, "mnist", "train")
    test_images, test_labels = load_split(data_dir, "mnist", "t10k")
    lo, hi = TRAIN_RANGE
    return TrainingData(x_train=torch.from_numpy(train_images[lo:hi].copy()),
                        y_train=torch.from_numpy(train_labels[lo:hi].astype("int64")),
                        x_test=torch.from_numpy(test_images.copy()), y_test=torch.from_numpy(test_labels.astype("int64")),
                        inputs_sha256=inputs)


def fit(model: nn.Module, data: TrainingData, *, epochs: int, seed: int, name: str, threads: int) -> dict[str, Any]:
    """Train ``model`` with the recipe of this module's docstring, evaluating on t10k after every epoch.

    Per-epoch loss and accuracy go to stderr (``name`` names the model there). Returns
    ``{"history": [...], "train_seconds": s, "test_accuracy": 0-1}``.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=PEAK_LR, momentum=MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(data.y_train) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PEAK_LR, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)

    lo, hi = TRAIN_RANGE
    print(f"training {name} on {len(data.y_train):,} MNIST train images (positions {lo}..{hi - 1}), "
          f"{epochs} epochs, seed {seed}, {threads} thread(s)", file=sys.stderr, flush=True)
    history = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        loss = train_one_epoch(model, data.x_train, data.y_train, optimizer, scheduler, generator)
        accuracy = evaluate(model, data.x_test, data.y_test)
        seconds = time.perf_counter() - epoch_started
        history.append({"epoch": epoch, "train_loss": round(loss, 5), "test_accuracy": accuracy,
                        "seconds": round(seconds, 2)})
        print(f"epoch {epoch:>2}/{epochs}  loss {loss:.4f}  test acc {accuracy:.4f}  ({seconds:.1f} s)",
              file=sys.stderr, flush=True)
    train_seconds = time.perf_counter() - started
    accuracy = history[-1]["test_accuracy"] if history else evaluate(model, data.x_test, data.y_test)
    return {"history": history, "train_seconds": train_seconds, "test_accuracy": accuracy}


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` as ``<out stem>.report.json`` beside the weights ``out``; returns its path."""
    report_path = out.with_name(out.name.removesuffix(".safetensors") + ".report.json")
    with atomic_write(report_path) as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    return report_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the mnist-pu LeNet-5 teacher on MNIST train 0..29,999.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="shared data folder (default: $PUCLI_SHARED_DATA or <repo>/../shared/data)")
    parser.add_argument("--out", type=Path, default=None,
                        help="weights file, *.safetensors "
                             "(default: <pucli cache>/benchmarks/mnist-pu/teacher/lenet5.safetensors)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of initialisation, batch order and augmentation (default: 0)")
    args = parser.parse_args(argv)

    data_dir = Path(os.path.abspath(args.data_dir or default_data_dir()))
    out = Path(os.path.abspath(args.out or default_teacher_path()))
    threads = len(os.sched_getaffinity(0))
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
    accuracy, train_seconds = trained["test_accuracy"], trained["train_seconds"]

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_model(model, out, label_names=[str(digit) for digit in range(10)])
    except PucliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    lo, hi = TRAIN_RANGE
    report = {
        "format_version": 1,
        "scenario": "mnist-pu",
        "architecture": ARCHITECTURE,
        "weights": str(out),
        "test_accuracy": accuracy,
        "test_set": "MNIST t10k (10,000)",
        "train_set": f"MNIST train positions {lo}..{hi - 1} ({len(data.y_train):,})",
        "epochs": args.epochs,
        "seed": args.seed,
        "recipe": {
            "optimizer": "SGD", "momentum": MOMENTUM, "nesterov": True, "weight_decay": WEIGHT_DECAY,
            "batch_size": BATCH_SIZE, "schedule": "OneCycleLR", "peak_lr": PEAK_LR,
            "augmentation": f"per-image rotation +-{MAX_ROTATION_DEG:g} deg, shift +-{MAX_SHIFT_PX:g} px",
            "mean": MEAN, "std": STD,
        },
        "train_seconds": round(train_seconds, 2),
        "threads": threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": trained["history"],
        "inputs_sha256": data.inputs_sha256,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
    }
    report_path = write_report(out, report)
    print(f"test accuracy {accuracy:.4f} after {train_seconds:.1f} s; report: {report_path}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
