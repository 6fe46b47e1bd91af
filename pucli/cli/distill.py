"""``pucli distill``: train a student on the extended set with robust KD."""

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
    StdOption,
    BatchSizeOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    QuietOption,
    ReportOption,
    SeedOption,
    TeacherArgument,
    TeacherCommand,
    ThreadsOption,
    WorkersOption,
    code_file,
    model_spec,
)
from pucli.cli._output import (
    command_help,
    console,
    escape,
    info,
    progress_bars,
    run_context,
    show_result,
    start_run,
    warn_skipped,
)
from pucli.cli._prompts import checked_answer, guard_output

HELP = """Train a smaller student on an expanded set with robust knowledge distillation.

The loss is robust KD (Eq. 10: the worst case over perturbed class weights) by default, or
weighted KD (Eq. 8) or plain KD (Eq. 1). A checkpoint is written after every epoch; Ctrl-C or SIGTERM
keeps it and --resume continues from it. An existing --out is replaced only with --force (or --resume). Writes the student (.safetensors + timm config) and a run report.
TEACHER may also be given as --teacher FILE.

[bold]Example[/]

  pucli distill teacher.safetensors --data ./expanded --student lenet5_half --out student.safetensors
  pucli distill resnet56.th --arch resnet.py:resnet56 --input-size 3 32 32 --data ./expanded --student resnet.py:resnet20 --out resnet20.safetensors

A student from torchvision (torchvision:NAME) or your own code (PATH.py:NAME, called as NAME(**--student-kwargs)) is saved as safetensors with a config naming its code (file, sha256, keyword arguments; never the code itself) and the teacher's preprocessing: the next command needs --arch PATH.py:NAME again, and no preprocessing flags.
"""

_RUN = "Training"
_ALIGN = "Feature alignment (Tang et al. 2019)"


def _check_student_file(out: Path) -> None:
    from pucli.paths import check_weights_file

    check_weights_file(out)


def _check_student(name: str) -> None:
    """A timm architecture name, ``torchvision:NAME`` or ``PATH.py:NAME`` (the file must exist; it is
    not imported yet), or a model file to fine-tune (a pruned teacher: docs/compress.md)."""
    from pucli.architectures import parse_arch
    from pucli.checkpoints import check_architecture

    if not name.endswith(".safetensors"):
        spec = parse_arch(name, parameter="student")
        if spec.kind == "timm":
            check_architecture(name)


def _student_init(student: str, student_kwargs: str | None, code_files: tuple[str, ...],
                  model_files: Any = None) -> tuple[Any, Any, Any]:
    """``(architecture, (network, config) or None, compression or None)`` for ``--student``: a
    name (with ``--student-kwargs``), or a file to start training from (its network; saved again
    in its compressed format), whose code, if it is not a timm model, the line must name
    (``code_files``: the Python files of ``--arch`` and ``--student``)."""
    from pucli.architectures import ModelSpec, parse_arch, parse_kwargs

    if not student.endswith(".safetensors"):
        return parse_arch(student, parameter="student",
                          kwargs=parse_kwargs(student_kwargs, parameter="student_kwargs")), None, None
    from pucli.compress.formats import load_student_init

    network, config, compression = load_student_init(student, arch=ModelSpec(code_files=code_files),
                                                     model_files=model_files)
    return config.architecture, (network, config), compression


def register(app: typer.Typer) -> None:
    app.command("distill", cls=TeacherCommand, help=command_help(HELP), no_args_is_help=True)(distill)


@handles_errors(flags=FLAGS["distill"])
def distill(
    teacher: TeacherArgument,
    data: Annotated[Path, typer.Option("--data", help="Expanded-set folder written by `pucli expand`.", show_default=False)],
    student: Annotated[str, typer.Option("--student", callback=checked_answer(_check_student), help="Student architecture: any timm name (lenet5_half, resnet18, ...), torchvision:NAME, PATH.py:NAME (your own code), or a model file to fine-tune (a pruned teacher from `pucli prune`).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", callback=checked_answer(_check_student_file), help="Student weights to write (*.safetensors).", show_default=False)],
    student_kwargs: Annotated[str | None, typer.Option("--student-kwargs", metavar="JSON", help="Keyword arguments for --student, a JSON object such as '{\"num_classes\": 10}' (a timm student's go to timm.create_model).", show_default=False)] = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    loss: Annotated[str, typer.Option("--loss", help="robust-kd (Eq. 10), weighted-kd (Eq. 8) or kd (Eq. 1).", rich_help_panel=_RUN)] = "robust-kd",
    temperature: Annotated[float | None, typer.Option("--temperature", help="KD temperature T \\[default: the expanded set's].", rich_help_panel=_RUN)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs \\[default: ~5,000 steps, 20 to 200 epochs].", rich_help_panel=_RUN)] = None,
    batch_size: BatchSizeOption = 128,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (warm-up, then cosine) \\[default: 0.1 SGD, 1e-3 AdamW].", rich_help_panel=_RUN)] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (momentum 0.9, wd 5e-4) or adamw (wd 0.05).", rich_help_panel=_RUN)] = "sgd",
    eps: Annotated[float, typer.Option("--eps", help="Robust KD: radius of the class-weight perturbations.", rich_help_panel=_RUN)] = 0.1,
    num_weight_vectors: Annotated[int, typer.Option("--num-weight-vectors", help="Robust KD: M, perturbed weight vectors per set.", rich_help_panel=_RUN)] = 8,
    fixed_weight_set: Annotated[bool, typer.Option("--fixed-weight-set", help="Robust KD: draw the weight set once instead of every epoch.", rich_help_panel=_RUN)] = False,
    augment: Annotated[str, typer.Option("--augment", help="auto (none for small grey digits, else flip-crop), none or flip-crop; with augmentation the teacher runs on the fly.", rich_help_panel=_RUN)] = "auto",
    val: Annotated[Path | None, typer.Option("--val", help="Labeled validation folder evaluated each epoch (never the test set).", rich_help_panel=_RUN)] = None,
    keep: Annotated[str, typer.Option("--keep", help="Student to write: last epoch, or best on --val.", rich_help_panel=_RUN)] = "last",
    weighting: Annotated[str, typer.Option("--weighting", help="uniform (each item once per epoch) or pu-score (draw items with probability sigmoid(the index's selector score), positives 1: for a set expanded from a whole pool).", rich_help_panel=_RUN)] = "uniform",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint.", rich_help_panel=_RUN)] = False,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", dir_okay=False, help="Checkpoint file \\[default: OUT with .ckpt.pt].", rich_help_panel=_RUN)] = None,
    checkpoint_interval: Annotated[float, typer.Option("--checkpoint-interval", help="Seconds between checkpoints (at the end of an epoch; 0: every epoch).", rich_help_panel=_RUN)] = 30.0,
    align: Annotated[str, typer.Option("--align", help="none, or adversarial: a domain discriminator tells the student's early features of the labeled positives from those of the unlabeled images, and the student learns through a gradient-reversal layer to make them alike.", rich_help_panel=_ALIGN)] = "none",
    align_stage: Annotated[int, typer.Option("--align-stage", help="Student feature stage the discriminator reads (timm feature_info order; 0 = the first).", rich_help_panel=_ALIGN)] = 0,
    align_weight: Annotated[float, typer.Option("--align-weight", help="lambda_max: the reversed gradient's scale, reached by DANN's warm-up 2/(1+exp(-10p))-1 over training.", rich_help_panel=_ALIGN)] = 0.1,
    align_hidden: Annotated[str, typer.Option("--align-hidden", help="Discriminator hidden layer widths, comma-separated (Linear-BatchNorm-ReLU each).", rich_help_panel=_ALIGN)] = "256,256",
    precision: Annotated[str, typer.Option("--precision", help="auto (mixed precision on CUDA, float32 on the CPU), float32, bfloat16 (mixed; on a CPU with AMX or AVX-512 BF16 several times faster) or float16 (CUDA).", rich_help_panel=_RUN)] = "auto",
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
    force: ForceOption = False,
) -> None:
    from pucli.kd.distill import DistillConfig, parse_widths
    from pucli.report import report_location, side_file

    _check_student_file(out)
    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct, code_files=code_file(student))
    config = DistillConfig(loss=loss, temperature=temperature, epochs=epochs, batch_size=batch_size, lr=lr,
                           optimizer=optimizer, eps=eps, num_weight_vectors=num_weight_vectors,
                           redraw_weight_set=not fixed_weight_set, augment=augment, keep=keep, seed=seed,
                           weighting=weighting, checkpoint_interval=checkpoint_interval, align=align,
                           align_stage=align_stage, align_weight=align_weight,
                           align_hidden=parse_widths(align_hidden), precision=precision)
    guard_output(out, force=force or resume)
    from pucli import distributed
    from pucli.device import autocast_dtype, default_workers
    from pucli.kd.distill import distill as train_student

    _check_student(student)
    checkpoint = checkpoint or side_file(out, ".ckpt.pt")
    # Under torchrun every rank trains (DistributedDataParallel); only rank 0 reports and writes.
    report, run_device = start_run(device=device, threads=threads, torchrun=True, checkpoint=checkpoint)
    autocast_dtype(config.precision, run_device)  # a precision the device cannot run fails before any work
    with report.stage("load"):
        loaded, expanded, val_set = _load_inputs(teacher, spec, data, val, report.model_files)
        architecture, init, compression = _student_init(student, student_kwargs, code_file(arch) + code_file(student),
                                                        report.model_files)
    with progress_bars(quiet=quiet) as progress, report.stage("train"):
        run = run_context(report, run_device, workers if workers is not None else default_workers(len(expanded)),
                          progress)
        result = train_student(
            loaded, expanded, architecture, config=config, checkpoint_path=checkpoint, resume=resume, val_set=val_set,
            run=run, plan=lambda plan: _say_plan(plan, quiet=quiet), student_init=init,
        )
    if not distributed.is_main():
        return
    with report.stage("save"):
        _save_student(result, out, compression, loaded, expanded, student=student, teacher=teacher, data=data, loss=loss,
                      model_files=report.model_files)
    summary = _summary(result, out)
    written = _record(report, result, summary).write(report_location("distill", out, report_path))
    if not result.teacher_matches_data:
        info(f"[yellow]warning:[/] {data} was expanded with a different teacher file than {teacher}", quiet=quiet)
    warn_skipped(report.skipped, quiet=quiet)
    summary.update(history=[vars(h) for h in result.history], report=str(written))
    show_result(summary, json_output=json_output, quiet=quiet, table=_print_summary)
    info(f"student: {out}; checkpoint: {checkpoint}; report: {written}", quiet=quiet)


def _save_student(result: Any, out: Path, compression: Any, loaded: Any, expanded: Any, *, student: str,
                  teacher: Any, data: Path, loss: str, model_files: Any) -> None:
    """Write the student: a pruned start is saved in its compressed format (so it loads again),
    any other as a timm model with the preprocessing it was trained with, its teacher's (docs/models.md)."""
    from pucli.checkpoints import save_model, student_provenance

    if compression is not None and not compression.is_empty():
        from pucli.compress.formats import save_compressed

        save_compressed(result.student, out, result.student_config, compression)
        return
    save_model(result.student, out, label_names=loaded.config.label_names or expanded.class_names,
               data_config=loaded.config.data_config(), config=result.student_config,
               provenance=student_provenance(student=student, teacher=teacher, teacher_digest=loaded.digest,
                                             data=data, loss=loss), model_files=model_files)


def _record(report: Any, result: Any, summary: dict[str, Any]) -> Any:
    """What the run did, in its report (docs/run-report.md); returns the report."""
    report.counts = {"items": result.num_items, "epochs": result.epochs, "skipped": len(report.skipped)}
    report.results = {**summary, "history": result.history, "settings": result.settings}
    report.timings["decode"] = result.decode_s
    return report


def _say_plan(plan: Any, *, quiet: bool) -> None:
    """Before training: epochs and steps; after the first epoch: the time the rest will take.

    Off a terminal the plan is the distill stage's first log line (the per-epoch lines that follow
    carry the ETA); on a terminal, where the bar counts steps only, two sentences."""
    default = " (the default for this set: --epochs N to change)" if plan.epochs_defaulted else ""
    what = (f"{plan.epochs} epochs{default} of {plan.steps_per_epoch:,} steps ({plan.batch_size} images each, "
            f"{plan.items:,} images)")
    if not console.is_terminal:
        if plan.epoch_s is None:
            done, total = (plan.first_epoch - 1) * plan.steps_per_epoch, plan.epochs * plan.steps_per_epoch
            info(escape(f"distill: {done:,}/{total:,} ({100 * done // total} %), plan {what}, elapsed 0:00:00"),
                 quiet=quiet)
    elif plan.epoch_s is None:
        start = f", from epoch {plan.first_epoch}" if plan.first_epoch > 1 else ""
        info(escape(f"plan: {what}{start}, {plan.steps:,} steps; the time it takes after the first epoch"), quiet=quiet)
    else:
        info(f"epoch {plan.first_epoch} took {_duration(plan.epoch_s)}: about {_duration(plan.remaining_s)} "
             f"for the other {plan.epochs - plan.first_epoch} epochs", quiet=quiet)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _load_inputs(teacher: Path, arch: Any, data: Path, val: Path | None, model_files: Any) -> Any:
    """``(LoadedModel, ExpandedSet, LabeledFolder | None)``: the teacher, the expanded set and the
    validation folder (in the teacher's class order) if given.

    Raises:
        PucliError: an unreadable teacher, expanded set or validation folder.
    """
    from pucli.checkpoints import load_model
    from pucli.data.manifest import read_expanded_set
    from pucli.data.sources import LabeledFolder

    loaded = load_model(teacher, arch, model_files=model_files)
    expanded = read_expanded_set(data)
    val_set = None if val is None else LabeledFolder.from_folder(
        val, num_classes=loaded.config.num_classes, label_names=loaded.config.label_names, parameter="val")
    return loaded, expanded, val_set


def _summary(result: Any, out: Path) -> dict[str, Any]:
    last = result.history[-1] if result.history else None
    summary = {
        "out": str(out),
        "student": result.student_config.architecture,
        "params": sum(p.numel() for p in result.student.parameters()),
        "loss": result.settings["loss"],
        "items": result.num_items,
        "epochs": result.epochs,
        "kept_epoch": result.kept_epoch,
        "final_loss": last.loss if last else None,
        "val_top1": next((h.val_top1 for h in result.history if h.epoch == result.kept_epoch), None),
        "images_per_s": result.images_per_s,
        "augment": result.augment,
        "precision": result.settings.get("precision", "float32"),
        "in_memory": result.in_memory,
        "resumed_from": result.resumed_from,
    }
    if result.settings.get("align", "none") != "none":
        summary.update(align=result.settings["align"], domain_accuracy=last.domain_accuracy if last else None)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_header=False, title="distill", title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("student", f"{summary['student']} ({summary['params']:,} params)"),
        ("loss", summary["loss"]),
        ("images", f"{summary['items']:,}" + (" (in memory)" if summary["in_memory"] else " (streamed)")),
        ("augment", summary["augment"]),
        ("precision", summary["precision"]),
        ("epochs", f"{summary['epochs']} (kept {summary['kept_epoch']})"),
        ("final training loss", f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None else "-"),
        ("validation top-1", f"{summary['val_top1']:.2f} %" if summary["val_top1"] is not None else "-"),
        ("throughput", f"{summary['images_per_s']:,.0f} img/s"),
    ]
    if summary.get("domain_accuracy") is not None:
        rows.append(("discriminator accuracy", f"{summary['domain_accuracy']:.3f} (last epoch; 0.5 = aligned)"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
