"""``pucli evaluate``: teacher and students side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pucli.cli._errors import FLAGS, handles_errors
from pucli.cli._options import (
    ArchKwargsOption,
    BatchSizeOption,
    ClassesOption,
    CropPctOption,
    DeviceOption,
    InputSizeOption,
    InterpolationOption,
    JsonOption,
    MeanOption,
    QuietOption,
    StateReportOption,
    StdOption,
    TeacherCommand,
    ThreadsOption,
    WorkersOption,
    code_file,
    model_spec,
    renaming,
)
from pucli.cli._output import command_help, emit_json, info, progress_bars, run_context, start_run, warn_skipped

HELP = """Compare models on a labeled test folder: accuracy, size, FLOPs, latency, throughput.

Reports top-1/top-5 accuracy, parameters, FLOPs per image, weight file size, CPU latency at batch 1 and throughput at a large batch, one row per model, side by side.

[bold]Example[/]

  pucli evaluate teacher.safetensors student.safetensors --test ./mnist-test
  pucli evaluate teacher.safetensors student.onnx student.int8.onnx --test ./mnist-test --plot tradeoff.png
  pucli evaluate resnet56.th --arch resnet.py:resnet56 --input-size 3 32 32 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --test cifar10-test.tar

--test has one subfolder per class (as for --positive), or is tar shards whose members are <class>/<file>. The first MODEL is the teacher, the reference of the ratios (--teacher FILE names it too, as in the other commands). Each MODEL is a .safetensors file (config in its metadata or a sidecar config.json), a timm train.py checkpoint, a bare state dict with --arch (a timm name, torchvision:NAME or PATH.py:NAME; one --arch for every MODEL, or one per MODEL in order), or an .onnx file written by `pucli export` (run on ONNX Runtime's CPU provider; needs pucli[export]). --plot draws accuracy against latency and file size, one point per model, the first (the teacher) marked (needs pucli[plot]).
"""


def register(app: typer.Typer) -> None:
    # --data meant three things across commands; here it is the test set.
    app.command("evaluate", cls=renaming(TeacherCommand, {"--data": "--test"}), help=command_help(HELP),
                no_args_is_help=True)(evaluate)


@handles_errors(flags=FLAGS["evaluate"])
def evaluate(
    models: Annotated[list[Path], typer.Argument(metavar="MODEL...", help="Model files to compare (teacher first, then students).", show_default=False)],
    test: Annotated[Path, typer.Option("--test", help="Labeled test folder: one subfolder of images per class, or tar shards of <class>/<file> members (--data, its old name, still works).", show_default=False)],
    arch: Annotated[list[str] | None, typer.Option("--arch", metavar="ARCH", help="Architecture of the MODELs: a timm name, torchvision:NAME, or PATH.py:NAME (pucli imports that file, only because you name it); once for every MODEL, or once per MODEL in order. Needed for a bare state dict, overrides what a file says.", show_default=False, rich_help_panel="Model")] = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    classes: ClassesOption = None,
    batch_size: BatchSizeOption = 256,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: StateReportOption = None,
    plot: Annotated[Path | None, typer.Option("--plot", dir_okay=False, help="Also draw accuracy against latency and size to this PNG.", rich_help_panel="Output")] = None,
) -> None:
    from pucli.checkpoints import load_model
    from pucli.deploy.onnx_runtime import is_onnx_file, load_onnx
    from pucli.deploy.plot import check_plot_output, plot_evaluations
    from pucli.device import default_workers
    from pucli.evaluate import evaluate_model, model_display_name
    from pucli.report import report_location

    if plot is not None:
        check_plot_output(plot)
    specs = _model_specs(models, arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    report, run_device = start_run(device=device, threads=threads)
    with report.stage("load"):
        loaded = [load_onnx(path) if is_onnx_file(path)
                  else load_model(path, spec, parameter="model", model_files=report.model_files)
                  for path, spec in zip(models, specs)]
    results = []
    with progress_bars(quiet=quiet) as progress:
        run = run_context(report, run_device, workers if workers is not None else default_workers(10_000), progress)
        for item in loaded:
            with report.stage(f"evaluate {item.path.name}"):
                result = evaluate_model(item, test, classes_file=classes, batch_size=batch_size, run=run)
            result.name = model_display_name(item.path, list(models))
            results.append(result)
    report.counts = {"models": len(results), "images": results[0].images if results else 0, "skipped": len(report.skipped)}
    report.results = {"models": results}
    written = report.write(report_location("evaluate", None, report_path))
    if plot is not None:
        info(f"plot: {plot_evaluations(results, plot)}", quiet=quiet)
    rows = [_row(r, results[0]) for r in results]
    if json_output:
        emit_json({"models": rows, "skipped": len(report.skipped), "report": str(written)})
    else:
        _print_table(results)
    warn_skipped(report.skipped, quiet=quiet)
    info(f"report: {written}", quiet=quiet)


def _model_specs(models: list[Path], arch: list[str] | None, arch_kwargs: str | None, *preprocessing: Any) -> list[Any]:
    """One :func:`model_spec` per MODEL: ``--arch`` given once applies to every MODEL, given once
    per MODEL to each in order; every Python file named is one a MODEL's config may name.

    Raises:
        UsageError: another number of ``--arch`` than 1 or one per MODEL.
        OptionError: a model option the spec refuses.
    """
    from pucli.errors import UsageError

    archs = list(arch or [])
    if len(archs) > 1 and len(archs) != len(models):
        raise UsageError(f"--arch given {len(archs)} times for {len(models)} MODELs: give it once for all of them, "
                         "or once per MODEL in their order")
    files = tuple(sorted({file for name in archs for file in code_file(name)}))
    per_model = archs if len(archs) > 1 else [archs[0] if archs else None] * len(models)
    return [model_spec(name, arch_kwargs, *preprocessing, code_files=files) for name in per_model]


def _row(result: Any, reference: Any) -> dict[str, Any]:
    from dataclasses import asdict

    row = asdict(result)
    row["params_ratio"] = result.params / reference.params if reference.params else None
    row["flops_ratio"] = result.flops_per_image / reference.flops_per_image if reference.flops_per_image else None
    return row


def _print_table(results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    reference = results[0]
    table = Table(
        title=f"{reference.images:,} test images", title_justify="left",
        caption=f"FLOPs per image (2 per multiply-add); latency: CPU, batch 1, median; throughput: {reference.device}, "
                f"batch {reference.throughput_batch}; (x) = ratio to the first model",
        caption_justify="left",
    )
    for name in ("model", "architecture", "top-1 %", "top-5 %", "params", "FLOPs", "file", "latency ms", "images/s"):
        table.add_column(name, justify="left" if name in ("model", "architecture") else "right", no_wrap=True)
    for r in results:
        table.add_row(
            r.name,
            r.architecture + (" (ORT)" if r.runtime == "onnxruntime" else ""),
            f"{r.top1:.2f}",
            f"{r.top5:.2f}",
            _si(r.params) + _ratio(r.params, reference.params, r is reference),
            _si(r.flops_per_image) + _ratio(r.flops_per_image, reference.flops_per_image, r is reference),
            _bytes(r.file_bytes),
            f"{r.latency_ms:.3f}",
            f"{r.throughput:,.0f}",
        )
    stdout = Console(highlight=False)
    if not stdout.is_terminal:
        stdout = Console(highlight=False, width=max(stdout.width, 140))  # a pipe or file: never squeeze columns
    stdout.print(table)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _ratio(value: float, reference: float, is_reference: bool) -> str:
    return "" if is_reference or not reference else f" ({value / reference:.2f}x)"


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
