"""mnist-pu: teacher and robust-KD student in PyTorch, ONNX float32 and ONNX int8, side by side.

Runs the commands a user runs, exactly as printed (``pucli export`` twice, then one ``pucli
evaluate`` over the six models with ``--plot``), then measures in this process the speed ratio that
the int8 target is about: ONNX Runtime int8 against float32 at batch 256 (and at batch 1), on the
same random input, the two sessions alternating for ``--rounds`` rounds so that a change in the
machine's load hits both alike (the ratio is the median of the per-round ratios). The 1-minute load
average is recorded beside every timing.

Usage::

    benchmarks/quickstart.sh                     # or the select -> expand -> distill of docs/benchmarks.md
    python benchmarks/export_mnist_pu.py --teacher T.safetensors --student S.safetensors \\
        --index index.tsv --test <mnist-pu root>/test --work /tmp/export-bench \\
        [--threads 1] [--images 1000] [--json benchmarks/results/export_mnist_pu.json] [--plot docs/evaluate_plot.png] \
        [--resnet18]

``--resnet18`` adds the same int8-vs-float32 ratio for a random-weight timm ResNet-18 at 3x64x64
(batch 64 and 1), quantized with uint8 activations (what ``--int8`` does) and with int8 ones: a
network of ordinary widths beside LeNet-5's 6 and 16 channels.

Prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def load() -> float:
    """The 1-minute load average (what ``uptime`` shows first)."""
    return round(os.getloadavg()[0], 2)


def run(argv: list[str]) -> tuple[str, float, float]:
    """Run a command as printed; return (stdout, wall-clock s, load average before)."""
    print("$ " + shlex.join(argv), file=sys.stderr, flush=True)
    before = load()
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, check=True)
    return done.stdout.decode(), time.perf_counter() - start, before


def speed_ratio(float_onnx: Path, int8_onnx: Path, input_size: tuple[int, ...], batch: int, rounds: int, threads: int) -> dict:
    """Median over ``rounds`` of (float32 s per batch) / (int8 s per batch), sessions alternating."""
    from pucli.deploy.onnx_runtime import OnnxRuntimeModule

    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
    sessions = {"float32": OnnxRuntimeModule(float_onnx, threads=threads), "int8": OnnxRuntimeModule(int8_onnx, threads=threads)}
    per_round: dict[str, list[float]] = {"float32": [], "int8": []}
    loads = []
    for _ in range(rounds):
        loads.append(load())
        for name, session in sessions.items():
            session(x)
            runs, start = 0, time.perf_counter()
            while runs < 5 or time.perf_counter() - start < 0.5:
                session(x)
                runs += 1
            per_round[name].append((time.perf_counter() - start) / runs)
    ratios = [f / q for f, q in zip(per_round["float32"], per_round["int8"])]
    return {
        "batch": batch,
        "float32_ms": round(1000 * statistics.median(per_round["float32"]), 3),
        "int8_ms": round(1000 * statistics.median(per_round["int8"]), 3),
        "int8_speedup": round(statistics.median(ratios), 3),
        "int8_speedup_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "rounds": rounds,
        "load_1min": loads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--index", type=Path, required=True, help="selection index: the int8 calibration images")
    parser.add_argument("--test", type=Path, required=True, help="labeled test folder (mnist-pu's test/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the .onnx files and the report")
    parser.add_argument("--images", type=int, default=1000, help="calibration images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="accuracy vs latency and size (PNG)")
    parser.add_argument("--resnet18", action="store_true",
                        help="also int8 vs float32 on a ResNet-18 (random weights, 3x64x64): a network of ordinary widths")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pucli = [str(Path(sys.executable).with_name("pucli"))]
    threads = ["--threads", str(args.threads)]

    exports = {}
    onnx_files = []
    for name, model in (("teacher", args.teacher), ("student", args.student)):
        out = args.work / f"{name}.onnx"
        stdout, seconds, before = run([*pucli, "export", str(model), "--format", "onnx", "--out", str(out), "--int8",
                                       "--calibration", str(args.index), "--images", str(args.images), *threads,
                                       "--force", "--json", "--quiet"])
        exports[name] = {**json.loads(stdout), "wall_s": round(seconds, 2), "load_1min_before": before}
        onnx_files += [out, args.work / f"{name}.int8.onnx"]

    models = [args.teacher, args.student, *onnx_files]
    plot = ["--plot", str(args.plot)] if args.plot else []
    stdout, seconds, before = run([*pucli, "evaluate", *map(str, models), "--data", str(args.test), "--device", "cpu",
                                   "--batch-size", "256", "--workers", "0", *threads, "--json", "--quiet",
                                   "--report", str(args.work / "evaluate.report.json"), *plot])
    rows = json.loads(stdout)["models"]
    evaluation = {"wall_s": round(seconds, 2), "load_1min_before": before, "load_1min_after": load(), "models": rows}

    from pucli.deploy.metadata import read_metadata

    ratios = {}
    for name in ("teacher", "student"):
        input_size = tuple(read_metadata(args.work / f"{name}.onnx")["input_size"])
        ratios[name] = [speed_ratio(args.work / f"{name}.onnx", args.work / f"{name}.int8.onnx", input_size, batch,
                                    args.rounds, args.threads) for batch in (256, 1)]

    results = {"threads": args.threads, "cpu": _cpu(), "exports": exports, "evaluate": evaluation, "int8_vs_float": ratios,
               "versions": _versions()}
    if args.resnet18:
        results["resnet18"] = resnet18_ratios(args, ratios)
    text = json.dumps(results, indent=2) + "\n"
    (args.work / "results.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(table(rows, ratios))
    return 0


def resnet18_ratios(args: argparse.Namespace, ratios: dict) -> dict:
    """Export a random-weight timm ResNet-18 at 3x64x64 and quantize it twice (uint8 activations, as
    ``pucli export --int8`` does, and int8 activations), calibrated on 256 images of ``--index``;
    speed ratios at batch 64 and 1 go into ``ratios`` (``resnet18-u8s8``, ``resnet18-s8s8``)."""
    import timm

    from pucli.checkpoints import load_model, save_model
    from pucli.deploy.int8 import calibration_images, quantize_int8
    from pucli.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    data_config = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    path = save_model(timm.create_model("resnet18", num_classes=10).eval(), args.work / "resnet18.safetensors",
                      label_names=[str(k) for k in range(10)], data_config=data_config)
    loaded = load_model(path)
    calibration = calibration_images(str(args.index), loaded.config, images=256)
    check = export_onnx(loaded, args.work / "resnet18.onnx", check_inputs=calibration[:64])
    sizes = {"float32": (args.work / "resnet18.onnx").stat().st_size}
    for activations in ("uint8", "int8"):
        out = quantize_int8(args.work / "resnet18.onnx", args.work / f"resnet18.{activations}.onnx", calibration, activations=activations)
        sizes[activations] = out.stat().st_size
        name = "resnet18-u8s8" if activations == "uint8" else "resnet18-s8s8"
        ratios[name] = [speed_ratio(args.work / "resnet18.onnx", out, (3, 64, 64), batch, 3, args.threads) for batch in (64, 1)]
    return {"check_max_abs_diff": check.max_abs_diff, "bytes": sizes}


def table(rows: list[dict], ratios: dict) -> str:
    lines = ["| model | runtime | top-1 % | file | latency ms (batch 1) | images/s (batch 256) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['runtime']} | {r['top1']:.2f} | {r['file_bytes'] / 1024:.1f} KiB | "
                     f"{r['latency_ms']:.3f} | {r['throughput']:,.0f} |")
    lines.append("")
    lines.append("| model | batch | float32 ms | int8 ms | int8 speed-up (median; min-max) | load (1 min) |")
    lines.append("|---|---:|---:|---:|---:|---|")
    for name, measured in ratios.items():
        for m in measured:
            lines.append(f"| {name} | {m['batch']} | {m['float32_ms']} | {m['int8_ms']} | {m['int8_speedup']:.2f}x "
                         f"({m['int8_speedup_min_max'][0]:.2f}-{m['int8_speedup_min_max'][1]:.2f}) | "
                         f"{min(m['load_1min'])}-{max(m['load_1min'])} |")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _versions() -> dict:
    import onnx
    import onnxruntime
    import timm

    import pucli

    return {"pucli": pucli.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    sys.exit(main())
