"""Side-by-side evaluation of classifiers: accuracy, size, FLOPs, latency, throughput.

Accuracy is top-1 / top-5 over a labeled test folder (one subfolder per class) with each model's
own evaluation transform. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (one
multiply-add counts as 2 FLOPs; pooling and activations are not counted, as usual). Latency is the
median wall-clock of one image (batch 1) on the CPU, the usual deployment target; throughput is
images per second at a large batch on the chosen device, both on random tensors already in memory.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.data.sources import LabeledFolder
from pucli.model_config import ModelConfig
from pucli.run_context import RunContext

__all__ = ["MeasuredModel", "ModelEvaluation", "PrecountedModel", "count_flops", "evaluate_model", "measure_latency",
           "measure_throughput"]


class MeasuredModel(Protocol):
    """A classifier :func:`evaluate_model` measures: ``model`` maps float32 (N, C, H, W) normalised
    images to (N, K) logits; ``config`` gives its preprocessing and classes; ``path`` and
    ``file_bytes`` its file; ``source_format`` how that file was read (``"onnx"``: a
    :class:`PrecountedModel`). :class:`pucli.checkpoints.LoadedModel` is one."""

    model: nn.Module
    config: ModelConfig
    path: Path
    file_bytes: int
    source_format: str


class PrecountedModel(MeasuredModel, Protocol):
    """A classifier that runs outside PyTorch (``source_format`` ``"onnx"``: an ONNX file on ONNX
    Runtime's CPU provider, :class:`pucli.deploy.onnx_runtime.OnnxLoadedModel`): its graph cannot
    be counted here, so it says its ``params`` and ``flops_per_image`` (those of the PyTorch model
    it was made from), and it runs on the CPU."""

    params: int
    flops_per_image: int


@dataclass
class ModelEvaluation:
    """One model's figures. Accuracies in percent; ``flops_per_image`` in FLOPs (2 per multiply-add);
    ``file_bytes`` in bytes; ``latency_ms`` in milliseconds per image at batch 1 on the CPU;
    ``throughput`` in images/s at batch ``throughput_batch`` on ``device``."""

    name: str
    path: str
    architecture: str
    num_classes: int
    images: int
    top1: float
    top5: float
    params: int
    flops_per_image: int
    file_bytes: int
    latency_ms: float
    throughput: float
    throughput_batch: int
    device: str
    runtime: str = "pytorch"  # or "onnxruntime" (an .onnx file, CPU execution provider)


def evaluate_model(
    loaded: MeasuredModel,
    test_root: str | os.PathLike[str],
    *,
    classes_file: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    measure_speed: bool = True,
    run: RunContext | None = None,
    **legacy: Any,
) -> ModelEvaluation:
    """Evaluate ``loaded`` on the class folders under ``test_root``, on ``run.device`` with
    ``run.workers`` loader processes (``run``: :class:`pucli.run_context.RunContext`; ``legacy``: its
    ``device=``, ``workers=``, ``progress=``, ``skipped=`` given directly). Unreadable test images are
    left out and added to ``run.skipped``.

    A :class:`PrecountedModel` (an ONNX file, :func:`pucli.deploy.onnx_runtime.load_onnx`) runs on
    the CPU whatever ``device`` says; its parameters and FLOPs are the ones it gives (those of the
    PyTorch model it was exported from, in the file's metadata).

    Raises:
        UsageError, ClassMappingError, NoImagesError: from reading the test folder.
    """
    run = RunContext.given(run, **legacy)
    device, progress = run.device, run.progress
    onnx = loaded.source_format == "onnx"
    if onnx:
        device = torch.device("cpu")
    config = loaded.config
    test_set = LabeledFolder.from_folder(
        test_root, num_classes=config.num_classes, label_names=config.label_names, classes_file=classes_file, parameter="test_root"
    )
    preprocess = Preprocess(config)
    model = loaded.model.to(device).eval()
    k = min(5, config.num_classes)
    correct1 = correct5 = seen = 0
    stage = f"accuracy {loaded.path.name}"
    progress(stage, 0, len(test_set))
    with torch.inference_mode():
        for batch in iterate_batches(
            ImageDataset(test_set.paths, preprocess, test_set.labels),
            batch_size=batch_size,
            workers=run.workers,
            pin_memory=device.type == "cuda",
            skipped=run.skipped,
        ):
            images = preprocess.normalize(batch.images.to(device, non_blocking=True))
            labels = batch.labels.to(device)
            top = model(images).topk(k, dim=1).indices
            hits = top.eq(labels.unsqueeze(1))
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            seen += len(labels)
            progress(stage, int(batch.indices[-1]) + 1, len(test_set))
    input_size = config.input_size
    latency = throughput = float("nan")
    if measure_speed:
        progress(f"speed {loaded.path.name}", 0, None)
        latency = measure_latency(model.to("cpu"), input_size)
        throughput = measure_throughput(model.to(device), input_size, batch_size, device)
    return ModelEvaluation(
        name=loaded.path.name,
        path=str(loaded.path),
        architecture=config.architecture,
        num_classes=config.num_classes,
        images=seen,
        top1=100.0 * correct1 / seen if seen else float("nan"),
        top5=100.0 * correct5 / seen if seen else float("nan"),
        params=cast(PrecountedModel, loaded).params if onnx else sum(p.numel() for p in model.parameters()),
        flops_per_image=cast(PrecountedModel, loaded).flops_per_image if onnx else count_flops(model.to("cpu"), input_size),
        file_bytes=loaded.file_bytes,
        latency_ms=latency,
        throughput=throughput,
        throughput_batch=batch_size,
        device=str(device),
        runtime="onnxruntime" if onnx else "pytorch",
    )


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass on one (C, H, W) image, by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, *input_size, device=device))
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, input_size: tuple[int, int, int], *, budget_s: float = 1.0, max_runs: int = 200) -> float:
    """Median milliseconds for one image at batch 1 on ``model``'s device (CPU here), after warm-up."""
    x = torch.randn(1, *input_size)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        deadline = time.perf_counter() + budget_s
        while len(times) < max_runs and (len(times) < 10 or time.perf_counter() < deadline):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def measure_throughput(
    model: nn.Module, input_size: tuple[int, int, int], batch_size: int, device: torch.device, *, budget_s: float = 1.0
) -> float:
    """Images per second of forward passes at ``batch_size`` on ``device`` (tensors in memory)."""
    x = torch.randn(batch_size, *input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model(x)
        sync()
        runs = 0
        start = time.perf_counter()
        while runs < 3 or time.perf_counter() - start < budget_s:
            model(x)
            runs += 1
        sync()
        elapsed = time.perf_counter() - start
    return runs * batch_size / elapsed


def model_display_name(path: Path, others: list[Path]) -> str:
    """The file name, or the path when two models share a file name."""
    same = [p for p in others if p.name == path.name]
    return str(path) if len(same) > 1 else path.name
