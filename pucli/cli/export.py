"""``pucli export``: a model as ONNX (float32, and int8 with --int8) for ONNX Runtime and friends."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from pucli.cli._errors import FLAGS, handles_errors
from pucli.cli._options import (
    ArchOption,
    ArchKwargsOption,
    CropPctOption,
    InputSizeOption,
    InterpolationOption,
    MeanOption,
    ModelCommand,
    StdOption,
    ForceOption,
    JsonOption,
    QuietOption,
    SeedOption,
    ThreadsOption,
    WorkersOption,
    model_spec,
)
from pucli.cli._output import command_help, emit_json, info, progress_bars
from pucli.cli._prompts import check_output_path, confirm_overwrite

HELP = """Export a model to ONNX, checked against PyTorch; with --int8 also an int8 copy.

The graph takes float32 (N, C, H, W) normalised images with a dynamic batch axis N and returns the logits; the input size, mean, std and class names are in the file's metadata. ONNX Runtime's outputs are checked against PyTorch's (within 1e-4) on 256 of the --calibration images (on noise without it). --int8 also writes <stem>.int8.onnx: static int8 quantization (QDQ, per-channel weights) calibrated on --images images sampled from --calibration. Prints the written paths on stdout.

[bold]Example[/]

  pucli export student.safetensors --format onnx --out student.onnx
  pucli export student.safetensors --format onnx --out student.onnx --int8 --calibration index.tsv --images 1000
  pucli evaluate teacher.safetensors student.onnx student.int8.onnx --data ./test

MODEL is any file pucli reads (docs/models.md). --calibration takes a selection index (its kept images), an expanded set, or a folder / path list / tar shards of unlabeled images. Needs pucli[export] (onnx, onnxruntime).
"""


class ExportFormat(str, Enum):
    onnx = "onnx"


def register(app: typer.Typer) -> None:
    app.command("export", cls=ModelCommand, help=command_help(HELP), no_args_is_help=True)(export)


@handles_errors(flags=FLAGS["export"])
def export(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file (.safetensors, a .pth / .pth.tar / .th checkpoint, or a state dict with --arch).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="ONNX file to write (float32).", show_default=False)],
    export_format: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = ExportFormat.onnx,
    int8: Annotated[bool, typer.Option("--int8", help="Also write <stem>.int8.onnx, statically quantized to int8.")] = False,
    calibration: Annotated[str | None, typer.Option("--calibration", help="Unlabeled images for the check and the int8 calibration: index.tsv, an expanded set, a folder, a path list or tar shards.", show_default=False)] = None,
    images: Annotated[int, typer.Option("--images", min=1, help="Calibration images sampled from --calibration.")] = 1000,
    method: Annotated[str, typer.Option("--calibration-method", help="minmax, entropy or percentile (ORT's calibrators).")] = "minmax",
    opset: Annotated[int, typer.Option("--opset", min=13, help="ONNX opset.")] = 17,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    seed: SeedOption = 0,
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    from dataclasses import asdict

    from pucli.deploy.export import export_model, int8_path_for
    from pucli.device import configure_threads

    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    check_output_path(out)
    for path in (out, int8_path_for(out)) if int8 else (out,):
        confirm_overwrite(path, force=force)
    configure_threads(threads)
    from pucli.run_context import RunContext

    with progress_bars(quiet=quiet) as progress:
        result = export_model(model, out, arch=spec, int8=int8, calibration=calibration, images=images,
                              calibration_method=method, seed=seed, opset=opset,
                              run=RunContext(workers=workers or 0, progress=progress))
    check = result.check
    if json_output:
        emit_json(asdict(result))
    else:
        typer.echo("\n".join(p for p in (result.onnx, result.int8) if p))
    info(f"{result.onnx}: ONNX Runtime matches PyTorch on {check.images} {'images' if check.inputs == 'images' else 'noise inputs'} "
         f"(max |diff| {check.max_abs_diff:.2g} <= {check.tolerance:g})", quiet=quiet)
    if result.int8:
        info(f"{result.int8}: int8, {result.int8_bytes:,} bytes ({result.onnx_bytes / result.int8_bytes:.1f}x smaller); "
             f"same top-1 as float on {100 * result.int8_top1_agreement:.1f} % of {result.calibration_images} calibration images", quiet=quiet)
    if result.skipped:
        info(f"[yellow]skipped {len(result.skipped)} unreadable calibration image(s)[/]", quiet=quiet)
