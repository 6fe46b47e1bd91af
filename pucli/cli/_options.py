"""Every option two commands share, declared once with one help text.

The teacher is the first positional argument of every command that reads one (``pucli distill
teacher.safetensors ...``, ``pucli select teacher.safetensors --positive ...``); ``--teacher FILE``
is accepted anywhere on the line as the same argument (:class:`TeacherCommand`), so scripts
written either way work. Messages name the teacher as it was given (``TEACHER`` or ``--teacher``).

Values are checked once, by the engine's option classes (``SelectorOptions``, ``DistillConfig``,
``ModelSpec``), whose errors name the parameter; the CLI renames it to the flag
(:mod:`pucli.cli._errors`). A ``min=`` here is part of an option's type, for the few that every
command reads and no option class holds: ``--workers``, ``--threads``, ``--batch-size``.

Every command that reads a model takes the model options (:func:`model_spec`): ``--arch`` (a timm
name, ``torchvision:NAME`` or ``PATH.py:NAME``), ``--arch-kwargs`` and the preprocessing, in
timm's names: ``--input-size C H W``, ``--mean``, ``--std`` (one number per channel, as
``--mean 0.485 0.456 0.406`` or ``--mean 0.485,0.456,0.406``), ``--interpolation``, ``--crop-pct``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from pucli.cli._errors import SPELLED

__all__ = [
    "ArchKwargsOption", "ArchOption", "BatchSizeOption", "ClassesOption", "CropPctOption", "InputSizeOption",
    "InterpolationOption", "MeanOption", "ModelCommand", "StdOption", "TapsOption", "model_spec", "DeviceOption", "ForceOption", "JsonOption",
    "PositiveOption", "QuietOption", "ReportOption", "ReportsMissingTogether", "SeedOption", "StateReportOption",
    "TeacherArgument", "TeacherCommand", "ThreadsOption", "UnlabeledOption", "WorkersOption", "code_file",
    "join_number_lists", "load_pu_inputs", "load_teacher_and_positives", "rename_flags", "renaming",
]

_OUTPUT, _RUN, _MODEL = "Output", "Run", "Model"

# --- inputs ---------------------------------------------------------------------------------
TeacherArgument = Annotated[
    Path, typer.Argument(metavar="TEACHER", help="Teacher weights (.safetensors, a .pth / .pth.tar / .th checkpoint, or a state dict with --arch); --teacher FILE says the same.", show_default=False)
]
ArchOption = Annotated[str | None, typer.Option("--arch", metavar="ARCH", help="Architecture: a timm name, torchvision:NAME, or PATH.py:NAME (pucli imports that file, only because you name it, and calls NAME(**--arch-kwargs)); needed for a bare state dict, overrides what the file says.", rich_help_panel=_MODEL)]
ArchKwargsOption = Annotated[str | None, typer.Option("--arch-kwargs", metavar="JSON", help="Keyword arguments for --arch, a JSON object such as '{\"num_classes\": 10}' \\[default: those the model file records].", rich_help_panel=_MODEL)]
InputSizeOption = Annotated[tuple[int, int, int] | None, typer.Option("--input-size", metavar="C H W", help="Input channels, height and width \\[default: the model file's config, else timm's; needed for a model that is not a timm model].", show_default=False, rich_help_panel=_MODEL)]
MeanOption = Annotated[str | None, typer.Option("--mean", metavar="M...", help="Per-channel mean on the 0-1 scale, e.g. 0.485 0.456 0.406 \\[default: the config's, else ImageNet's].", rich_help_panel=_MODEL)]
StdOption = Annotated[str | None, typer.Option("--std", metavar="S...", help="Per-channel std on the 0-1 scale, e.g. 0.229 0.224 0.225 \\[default: the config's, else ImageNet's].", rich_help_panel=_MODEL)]
InterpolationOption = Annotated[str | None, typer.Option("--interpolation", help="Resize interpolation: bilinear, bicubic, nearest, box, hamming or lanczos \\[default: the config's; bilinear for a model that is not a timm model].", rich_help_panel=_MODEL)]
CropPctOption = Annotated[float | None, typer.Option("--crop-pct", help="Centre-crop fraction in (0, 1]: the shorter side is resized to size / crop-pct, then cropped \\[default: the config's; 1.0 for a model that is not a timm model].", rich_help_panel=_MODEL)]
TapsOption = Annotated[str | None, typer.Option("--taps", help="Teacher layers the selector taps, comma-separated module or torch.fx node names (layer1,layer2,layer3) \\[default: timm's feature stages; for other models the last node at each spatial resolution, found by torch.fx, and the classifier's input].", rich_help_panel=_MODEL)]
ClassesOption = Annotated[Path | None, typer.Option("--classes", help="Class names in the model's output order, one per line.")]
PositiveOption = Annotated[
    Path, typer.Option("--positive", help="Labeled positives: one subfolder of images per teacher class, or tar shards of <class>/<file> members.", show_default=False)
]
UnlabeledOption = Annotated[
    str, typer.Option("--unlabeled", help="Unlabeled pool: a folder, a file listing image paths (or tar shards), - (stdin), or tar shards ('pool-{000000..000099}.tar').", show_default=False)
]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch (per step when training).")]

# --- run ------------------------------------------------------------------------------------
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.", rich_help_panel=_RUN)
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Data-loading processes \\[default: one per CPU, at most 8; 0 for tiny inputs].", rich_help_panel=_RUN),
]
ThreadsOption = Annotated[
    int | None, typer.Option("--threads", min=1, help="CPU threads for the network \\[default: CPUs available; on a busy CPU, 1 is often many times faster].", rich_help_panel=_RUN)
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed: same inputs and seed give the same result.", rich_help_panel=_RUN)]

# --- output ---------------------------------------------------------------------------------
ForceOption = Annotated[
    bool,
    typer.Option("--force", "--yes", "-f", "-y", help="Replace existing outputs without asking (needed outside a terminal).",
                 rich_help_panel=_OUTPUT),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.", rich_help_panel=_OUTPUT)]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, log lines or messages on stderr (errors only).", rich_help_panel=_OUTPUT)
]
ReportOption = Annotated[
    Path | None, typer.Option("--report", dir_okay=False, help="Where to write the run report (JSON) \\[default: beside the output].", rich_help_panel=_OUTPUT)
]
StateReportOption = Annotated[
    Path | None, typer.Option("--report", dir_okay=False, help="Where to write the run report (JSON) \\[default: <user state dir>/pucli/runs/COMMAND-<time>.report.json].", rich_help_panel=_OUTPUT)
]

_TEACHER_FLAG = "--teacher"


class ReportsMissingTogether(TyperCommand):
    """A command that names every required option left out in one error, not one per attempt
    (click stops at the first): ``Missing options '--data', '--student' and '--out'.`` A missing
    argument (``TEACHER``) is reported alone, as click does: it comes first on the line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:  # Typer >= 0.20 ships its own copy of click; older releases use click itself.
            from typer._click.exceptions import MissingParameter, UsageError
        except ImportError:  # pragma: no cover
            from click.exceptions import MissingParameter, UsageError

        try:
            return super().parse_args(ctx, list(args))
        except MissingParameter as exc:
            if getattr(exc.param, "param_type_name", "") != "option":
                raise
            missing = missing_options(self, ctx, args)
            if len(missing) < 2:
                raise
            names = ", ".join(f"'{name}'" for name in missing[:-1]) + f" and '{missing[-1]}'"
            raise UsageError(f"Missing options {names}.", ctx=ctx) from None


def renaming(command: type[TyperCommand], renamed: dict[str, str]) -> type[TyperCommand]:
    """``command`` (a command class) that still accepts the old spellings of renamed flags
    (``renamed``: old -> new), hidden from ``--help``: each is read as its new spelling
    (:func:`rename_flags`), so no script written for the old spelling breaks."""

    class Renaming(command):  # type: ignore[valid-type, misc]
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, rename_flags(args, renamed))

    Renaming.__name__ = Renaming.__qualname__ = f"Renaming{command.__name__}"
    return Renaming


def rename_flags(args: list[str], renamed: dict[str, str]) -> list[str]:
    """``args`` with each old flag of ``renamed`` (also as ``--old=VALUE``) spelled the new way, up to ``--``.

    >>> rename_flags(["x.tsv", "--report", "r.json", "--", "--report"], {"--report": "--selection-report"})
    ['x.tsv', '--selection-report', 'r.json', '--', '--report']
    """
    spelled: list[str] = []
    for position, token in enumerate(args):
        if token == "--":
            return spelled + args[position:]
        name, equals, value = token.partition("=")
        spelled.append(renamed[name] + equals + value if name in renamed else token)
    return spelled


def missing_options(command: Any, ctx: Any, args: list[str]) -> list[str]:
    """The required options of ``command`` that ``args`` (a command line after the command's
    name) leave without a value, in the order of ``--help``."""
    opts, _, _ = command.make_parser(ctx).parse_args(args=list(args))
    missing = []
    for param in command.get_params(ctx):
        if getattr(param, "param_type_name", "") == "option" and param.required:
            value, _ = param.consume_value(ctx, opts)
            if param.value_is_missing(value):
                missing.append(param.opts[0])
    return missing


class ModelCommand(TyperCommand):
    """A command that reads a model: ``--mean`` and ``--std`` take one number per channel, spelled
    as timm's scripts spell them (``--mean 0.485 0.456 0.406``) or comma-separated; the numbers
    after the flag are joined with commas before click parses the line (:func:`join_number_lists`)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_number_lists(args))


class TeacherCommand(ReportsMissingTogether):
    """A command whose first positional argument is the teacher, also accepted as ``--teacher
    FILE`` (or ``--teacher=FILE``) anywhere before ``--``: the flag's value is moved to the front
    of the positional arguments before click parses the line. ``--mean`` and ``--std`` take
    several numbers, as in :class:`ModelCommand`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args, spelled = move_teacher_flag(join_number_lists(args))
        # Errors about the teacher name it as the line did (pucli.cli._errors.in_flags).
        ctx.meta.setdefault(SPELLED, {})["teacher"] = _TEACHER_FLAG if spelled else "TEACHER"
        return super().parse_args(ctx, args)


_NUMBER_LISTS = ("--mean", "--std")


def join_number_lists(args: list[str]) -> list[str]:
    """``args`` with the numbers after ``--mean`` / ``--std`` joined into one comma-separated value.

    >>> join_number_lists(["--mean", "0.5", "0.4", "0.3", "t.pt"])
    ['--mean', '0.5,0.4,0.3', 't.pt']
    """
    joined: list[str] = []
    position = 0
    while position < len(args):
        token = args[position]
        joined.append(token)
        position += 1
        if token == "--":
            joined += args[position:]
            break
        if token in _NUMBER_LISTS:
            numbers = []
            while position < len(args) and _is_number(args[position]):
                numbers.append(args[position])
                position += 1
            if numbers:
                joined.append(",".join(numbers))
    return joined


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def model_spec(arch: str | None = None, arch_kwargs: str | None = None, input_size: tuple[int, int, int] | None = None,
               mean: str | None = None, std: str | None = None, interpolation: str | None = None,
               crop_pct: float | None = None, *, code_files: tuple[str, ...] = ()) -> Any:
    """The :class:`pucli.architectures.ModelSpec` of the model options (module docstring);
    ``code_files``: other Python files the line names (``distill --student PATH.py:NAME``).

    Raises:
        OptionError: a value the spec refuses (named by its parameter, renamed to the flag).
    """
    from pucli.architectures import ModelSpec, parse_kwargs

    return ModelSpec(arch=arch, arch_kwargs=parse_kwargs(arch_kwargs) if arch_kwargs is not None else None,
                     input_size=input_size, mean=_numbers(mean, "mean"), std=_numbers(std, "std"),
                     interpolation=interpolation, crop_pct=crop_pct, code_files=code_files)


def _numbers(text: str | None, parameter: str) -> tuple[float, ...] | None:
    """``"0.5,0.4 0.3"`` -> ``(0.5, 0.4, 0.3)``; None stays None.

    Raises:
        OptionError: something that is not a number.
    """
    from pucli.errors import OptionError

    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise OptionError(parameter, text, "give numbers, one per channel, e.g. 0.485 0.456 0.406") from None


def code_file(arch: str | None) -> tuple[str, ...]:
    """The resolved path of the Python file ``arch`` names (``PATH.py:NAME``), as a 0- or 1-tuple;
    nothing is imported, and a name that is not a file is left to the engine to judge."""
    if not arch:
        return ()
    head, colon, _ = arch.rpartition(":")
    if colon and head.endswith(".py") and Path(head).expanduser().is_file():
        return (str(Path(head).expanduser().resolve()),)
    return ()


def move_teacher_flag(args: list[str]) -> tuple[list[str], bool]:
    """``args`` with ``--teacher FILE`` as the positional ``FILE`` in front, and whether the flag was used.

    >>> move_teacher_flag(["--positive", "p", "--teacher", "t.pt"])
    (['t.pt', '--positive', 'p'], True)
    """
    rest: list[str] = []
    teachers: list[str] = []
    position = 0
    while position < len(args):
        token = args[position]
        if token == "--":
            rest += args[position:]
            break
        if token == _TEACHER_FLAG and position + 1 < len(args):
            teachers.append(args[position + 1])
            position += 2
            continue
        if token.startswith(_TEACHER_FLAG + "="):
            teachers.append(token.split("=", 1)[1])
        else:
            rest.append(token)
        position += 1
    return teachers + rest, bool(teachers)


def load_teacher_and_positives(teacher: Path, arch: Any, positive: Path, classes: Path | None, *,
                               model_files: Any = None) -> Any:
    """``(LoadedModel, LabeledFolder)``: the teacher (TEACHER, ``--arch`` or the model options'
    :func:`model_spec`; noted in ``model_files``, the run report's log) and the positive set
    (``--positive``, ``--classes``), its labels in the teacher's output order.

    Raises:
        PucliError: an unreadable teacher, a positive folder that does not match it.
    """
    from pucli.checkpoints import load_model
    from pucli.data.sources import LabeledFolder

    loaded = load_model(teacher, arch, model_files=model_files)
    return loaded, LabeledFolder.from_folder(positive, num_classes=loaded.config.num_classes,
                                             label_names=loaded.config.label_names, classes_file=classes)


def load_pu_inputs(teacher: Path, arch: Any, positive: Path, classes: Path | None, unlabeled: str, *,
                   model_files: Any = None) -> Any:
    """The inputs of the commands that train on P and U (select, prior): ``(LoadedModel,
    LabeledFolder, UnlabeledPool)`` (see :func:`load_teacher_and_positives`; ``--unlabeled``).

    Raises:
        PucliError: an unreadable teacher, a positive folder that does not match it, an unusable pool.
    """
    from pucli.data.sources import UnlabeledPool

    return (*load_teacher_and_positives(teacher, arch, positive, classes, model_files=model_files),
            UnlabeledPool.from_source(unlabeled))
