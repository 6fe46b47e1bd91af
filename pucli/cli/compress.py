"""``pucli prune``, ``pucli quantize``, ``pucli recalibrate``: compress a model's channels or weights and
repair it by BatchNorm re-estimation on unlabeled images (He & Cheng, ECCV 2018)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    DeviceOption,
    ForceOption,
    JsonOption,
    QuietOption,
    ReportOption,
    SeedOption,
    ThreadsOption,
    WorkersOption,
    model_spec,
    renaming,
)
from pucli.cli._output import command_help, console, emit_json, info, progress_bars, run_context, start_run
from pucli.cli._prompts import guard_output

RECALIBRATE_HELP = """Re-estimate a model's BatchNorm statistics on unlabeled images (no labels, no training).

After pruning or low-bit weights every BatchNorm still normalises with the original network's statistics; re-estimating them on about 1,000 unlabeled images repairs most of the damage (He & Cheng, ECCV 2018). The rest of the model runs in eval mode (dropout off); each BatchNorm's statistics are reset and averaged over equal-sized batches. Writes the model (.safetensors, or - for stdout) and a run report with each layer's shift of mean and variance.

[bold]Example[/]

  pucli recalibrate pruned.safetensors --calibration index.tsv --images 1000 --out pruned-bn.safetensors
  pucli prune teacher.safetensors --ratio 0.5 --out - | pucli recalibrate - --calibration index.tsv --out pruned.safetensors

--calibration (the unlabeled images to re-estimate on, as `pucli export --calibration`; --data, its old name, still works) is anything pucli reads: a folder, a file listing image paths, - (a list or an index on stdin), tar shards ('pool-{000000..000099}.tar'), a selection index from `pucli select` (its kept images) or an expanded set from `pucli expand`.
"""

PRUNE_HELP = """Remove a share of every layer's channels (structured pruning, by Torch-Pruning).

Ranks each group of coupled channels (a conv's outputs, its BatchNorm, the next layer's inputs, residual partners) by --importance and removes the weakest --ratio of them; the classifier keeps its outputs. Writes one .safetensors file (or - for stdout) with the pruning history in its metadata, which `evaluate`, `recalibrate`, `quantize` and `export` read. Prints parameters, FLOPs and CPU latency before and after. Re-estimate the BatchNorm statistics next (`pucli recalibrate`), then distil if needed.

[bold]Example[/]

  pucli prune teacher.safetensors --ratio 0.5 --out pruned.safetensors
  pucli prune teacher.safetensors --ratio 0.3 --ignore layer4.0.conv1 --out - | pucli recalibrate - --calibration ./pool --out pruned.safetensors

Needs pucli\\[compress] (torch-pruning).
"""

QUANTIZE_HELP = """Quantize conv and linear weights to 8, 4, 3 or 2 bits (per output channel, symmetric).

Each output channel's weights go to the integer grid {-q..q} x scale, q = 2^(bits-1) - 1, scale = max |w| / q; the first conv and the classifier stay at --first-last-bits (8). The file stores the int8 codes and float32 scales (safetensors; - for stdout) and loads as a float model for `evaluate` and `recalibrate`. Re-estimate the BatchNorm statistics next.

[bold]Example[/]

  pucli quantize teacher.safetensors --weight-bits 4 --out - | pucli recalibrate - --calibration index.tsv --out teacher-4bit.safetensors
"""

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help="Model file (.safetensors, .pth, .pth.tar, .th; a state dict with --arch), or - for stdin.", show_default=False)]
OutOption = Annotated[str, typer.Option("--out", help="Model file to write (.safetensors), or - for stdout.", show_default=False, rich_help_panel="Output")]


def register(app: typer.Typer) -> None:
    app.command("prune", cls=ModelCommand, help=command_help(PRUNE_HELP), no_args_is_help=True)(prune)
    app.command("quantize", cls=ModelCommand, help=command_help(QUANTIZE_HELP), no_args_is_help=True)(quantize)
    # --data meant three things across commands; here it is the calibration images, as for export.
    app.command("recalibrate", cls=renaming(ModelCommand, {"--data": "--calibration"}),
                help=command_help(RECALIBRATE_HELP), no_args_is_help=True)(recalibrate)


@handles_errors(flags=FLAGS["recalibrate"])
def recalibrate(
    model: ModelArgument,
    calibration: Annotated[str, typer.Option("--calibration", help="Unlabeled images to re-estimate on: folder, path list, -, tar shards, selection index or expanded set.", show_default=False)],
    out: OutOption,
    images: Annotated[int, typer.Option("--images", help="Images to re-estimate on (drawn at random from --calibration).")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Largest batch; all batches get one size.")] = 100,
    augment: Annotated[str, typer.Option("--augment", help="none (the evaluation transform) or flip-crop.")] = "none",
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
) -> None:
    from pucli.compress.steps import recalibrate as recalibrate_model
    from pucli.device import default_workers

    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    _check_out(out, force=force, json_output=json_output)
    report, run_device = start_run(device=device, threads=threads)
    with progress_bars(quiet=quiet) as progress, report.stage("re-estimate"):
        run = run_context(report, run_device, default_workers(images) if workers is None else workers, progress)
        result = recalibrate_model(model, calibration, out, arch=spec, images=images, batch_size=batch_size, augment=augment,
                                   seed=seed, run=run)
    report.counts = {"images": result.images, "batches": result.batches, "available": result.available,
                     "skipped": len(report.skipped)}
    written = _finish(report, result, out, report_path, json_output)
    largest = max(result.layers, key=lambda layer: layer["mean_shift"])
    info(f"re-estimated {len(result.layers)} BatchNorm layers on {result.images:,} images ({result.batches} batches) "
         f"in {result.seconds:.1f} s; largest mean shift {largest['mean_shift']:.3f} std at {largest['name']}", quiet=quiet)
    if report.skipped:
        info(f"[yellow]skipped {len(report.skipped)} unreadable file(s)[/]; listed in the report", quiet=quiet)
    info(f"{result.compression}; model: {_where(out)}; report: {written}", quiet=quiet)


@handles_errors(flags=FLAGS["prune"])
def prune(
    model: ModelArgument,
    ratio: Annotated[float, typer.Option("--ratio", help="Share of each layer's channels to remove, in (0, 1).", show_default=False)],
    out: OutOption,
    importance: Annotated[str, typer.Option("--importance", help="group-norm (L2 over each coupled group) or magnitude (L1 of the layer's own channel).")] = "group-norm",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Module to keep whole (repeatable); the classifier always is.", show_default=False)] = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
) -> None:
    from pucli.compress.steps import prune as prune_model

    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    _check_out(out, force=force, json_output=json_output)
    report, _ = start_run(device="cpu", threads=threads)
    with report.stage("prune"):
        result = prune_model(model, out, ratio=ratio, importance=importance, ignore=tuple(ignore or ()), arch=spec,
                             run=run_context(report))
    report.counts = {"layers_pruned": len(result.channels)}
    written = _finish(report, result, out, report_path, json_output)
    if not quiet and not json_output:
        _figures_table(f"pruned {ratio:.0%} of the channels ({importance})", result.before, result.after)
    next_step = "re-estimate its BatchNorm statistics next: pucli recalibrate" if result.batchnorm else "distil it next"
    info(f"model: {_where(out)}; report: {written}; {next_step}", quiet=quiet)


@handles_errors(flags=FLAGS["quantize"])
def quantize(
    model: ModelArgument,
    weight_bits: Annotated[int, typer.Option("--weight-bits", help="Bits per weight: 8, 4, 3 or 2.", show_default=False)],
    out: OutOption,
    first_last_bits: Annotated[int, typer.Option("--first-last-bits", help="Bits of the first conv and the classifier: 8, 4, 3 or 2.")] = 8,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
) -> None:
    from pucli.compress.steps import quantize as quantize_model

    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    _check_out(out, force=force, json_output=json_output)
    report, _ = start_run()
    with report.stage("quantize"):
        result = quantize_model(model, out, bits=weight_bits, first_last_bits=first_last_bits, arch=spec,
                                run=run_context(report))
    report.counts = {"layers": result.layers}
    written = _finish(report, result, out, report_path, json_output)
    info(f"quantized {result.layers} layers to {weight_bits} bits (first and last: {first_last_bits}); weights "
         f"{_mib(result.weight_bytes_before)} -> {_mib(result.weight_bytes_after)} packed", quiet=quiet)
    next_step = "; re-estimate its BatchNorm statistics next: pucli recalibrate" if result.batchnorm else ""
    info(f"model: {_where(out)}; report: {written}{next_step}", quiet=quiet)


def _check_out(out: str, *, force: bool, json_output: bool) -> None:
    """Before any work: ``--out`` names a safetensors file that may be written, or is ``-``.

    Raises:
        UsageError: ``--json`` with ``--out -`` (both on stdout), or a name not ending in .safetensors.
    """
    from pucli.errors import UsageError
    from pucli.paths import check_weights_file

    if json_output and out == "-":
        raise UsageError("--json and --out - both write to stdout: write the model to a file, or drop --json")
    if out != "-":
        check_weights_file(out)
    guard_output(out, force=force)


def _finish(report: Any, result: Any, out: str, report_path: Path | None, json_output: bool) -> Path:
    """Write the run report (beside the model, or in the state folder for --out -); JSON on stdout."""
    from dataclasses import asdict

    from pucli.report import report_location

    report.results = asdict(result)
    written = report.write(report_location(report.command, out, report_path))
    if json_output:
        emit_json({**report.results, "skipped": len(report.skipped), "report": str(written)})
    return written


def _figures_table(title: str, before: Any, after: Any) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption="FLOPs per image (2 per multiply-add); latency: CPU, batch 1, median",
                  caption_justify="left")
    for name in ("", "params", "FLOPs", "latency ms"):
        table.add_column(name, justify="left" if not name else "right")
    for label, figures in (("before", before), ("after", after)):
        table.add_row(label, f"{figures.params:,}", f"{figures.flops:,}", f"{figures.latency_ms:.3f}")
    table.add_row("ratio", f"{after.params / before.params:.2f}x", f"{after.flops / before.flops:.2f}x",
                  f"{after.latency_ms / before.latency_ms:.2f}x")
    console.print(table)


def _where(out: str) -> str:
    return "stdout" if out == "-" else out


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
