"""The CLI's shared layer: log lines off a terminal, error-to-flag mapping, the teacher argument,
run-report arguments and side files."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from pucli.cli import app
from pucli.cli._errors import FLAGS, flag_for, handles_errors, in_flags
from pucli.cli._options import move_teacher_flag
from pucli.cli._output import ProgressLog
from pucli.errors import OptionError
from pucli.report import report_location, side_file

# The shape of a log line, as docs/troubleshooting.md describes it.
PROGRESS_LINE = re.compile(r"^[\w .-]+: (started|[\d,]+(/[\d,]+ \(\d+ %\))?), (.+, )?elapsed \d+:\d\d:\d\d(, ETA \d+:\d\d:\d\d)?$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _log(**kwargs: float) -> tuple[ProgressLog, list[str], FakeClock]:
    lines: list[str] = []
    clock = FakeClock()
    return ProgressLog(lines.append, clock=clock, **kwargs), lines, clock


def test_a_pass_logs_a_line_per_tenth_with_rate_and_eta() -> None:
    log, lines, clock = _log()
    for done in range(101):
        clock.now = done * 0.1
        log("score", done, 100, img_s=10.0)
    assert len(lines) == 10 and all(PROGRESS_LINE.match(line) for line in lines)
    assert lines[4] == "score: 50/100 (50 %), img_s 10, 10/s, elapsed 0:00:05, ETA 0:00:05"
    assert lines[-1] == "score: 100/100 (100 %), img_s 10, 10/s, elapsed 0:00:10"  # done: no ETA


def test_a_stage_with_epochs_logs_the_last_report_of_each_epoch() -> None:
    log, lines, clock = _log()
    steps_per_epoch, epochs = 4, 3
    for step in range(1, steps_per_epoch * epochs + 1):
        clock.now = float(step)
        log("distill", step, steps_per_epoch * epochs, epoch=(step - 1) // steps_per_epoch + 1, loss=1.0 / step)
    assert [line.split(",")[0] for line in lines] == ["distill: 4/12 (33 %)", "distill: 8/12 (67 %)", "distill: 12/12 (100 %)"]
    assert ["epoch 1" in lines[0], "epoch 2" in lines[1], "epoch 3" in lines[2]] == [True, True, True]


def test_a_slow_stage_logs_a_heartbeat_between_tenths() -> None:
    log, lines, clock = _log(heartbeat_s=300.0)
    for done in range(31):
        clock.now = done * 100.0  # 100 s per image: a tenth of 1,000 would take hours
        log("extract", done, 1000)
    assert len(lines) == 10  # every third report: 300 s apart
    assert lines[0].startswith("extract: 3/1,000 (0 %)")


def test_cached_and_unknown_totals_and_a_stage_run_again() -> None:
    log, lines, _ = _log()
    log("extract", 30, 30, cached=1)
    log("extract", 30, 30, cached=1)  # the same report again: not a second line
    log("speed teacher.safetensors", 0, None)
    log("train", 0, 10)
    log("train", 10, 10)
    log("train", 0, 10)  # a second pass under the same name starts afresh
    log("train", 10, 10)
    assert lines[0] == "extract: 30/30 (100 %), cached, elapsed 0:00:00"
    assert lines[1] == "speed teacher.safetensors: started, elapsed 0:00:00"
    assert [line.split(",")[0] for line in lines[2:]] == ["train: 10/10 (100 %)"] * 2
    assert all(PROGRESS_LINE.match(line) for line in lines)


def test_option_errors_name_the_flag_the_command_uses() -> None:
    assert flag_for("graph_neighbors") == "--graph-neighbors"
    assert flag_for("class_prior", {"class_prior": "--prior"}) == "--prior"

    @handles_errors(flags={"class_prior": "--prior"})
    def command() -> None:
        raise OptionError("class_prior", 1.5, "must be between 0 and 1 (exclusive), or auto")

    screen = io.StringIO()
    import pucli.cli._output as output

    real = output.console
    output.console = Console(file=screen, width=200)
    try:
        with pytest.raises(typer.Exit) as stopped:
            command()
    finally:
        output.console = real
    assert stopped.value.exit_code == 2
    assert screen.getvalue().strip() == "error: --prior 1.5: must be between 0 and 1 (exclusive), or auto"


def test_the_parameters_an_engine_message_names_become_the_commands_flags() -> None:
    from pucli.errors import NoImagesError, UsageError

    assert in_flags("check `class_prior`, or see docs", FLAGS["select"]) == "check --prior, or see docs"
    assert in_flags("use a timm CNN or `align=none`", {}) == "use a timm CNN or --align none"
    assert in_flags("run the same command with `resume=True` to continue", {}) == (
        "run the same command with --resume to continue")
    assert in_flags("pass `classes_file=FILE` listing", FLAGS["expand"]) == "pass --classes FILE listing"
    # Another command's parameters, spelled as that command spells them; its own words kept.
    assert in_flags("write it with `pucli select all_items=True`", FLAGS["show"]) == "write it with `pucli select --all`"
    assert in_flags("export it with `pucli export MODEL format=onnx`", {}) == (
        "export it with `pucli export MODEL --format onnx`")
    assert in_flags("the index `pucli select` wrote; see `timm.list_models()`", {}) == (
        "the index `pucli select` wrote; see `timm.list_models()`")
    # The parameter an error opens with becomes the flag (or the argument) the command has for it.
    missing = UsageError("positive ./p does not exist: give a folder", parameter="positive", path="./p")
    assert in_flags(missing, FLAGS["select"]) == "--positive ./p does not exist: give a folder"
    assert in_flags(NoImagesError("model_source m.pt is pruned: prune the original with the total `ratio`",
                                  parameter="model_source"), FLAGS["prune"]) == (
        "MODEL m.pt is pruned: prune the original with the total --ratio")
    assert in_flags(UsageError("positively wrong", parameter="positive"), {}) == "positively wrong"


def test_an_old_flag_spelling_is_read_as_the_new_one_up_to_the_double_dash() -> None:
    from pucli.cli._options import rename_flags

    renamed = {"--report": "--selection-report"}
    assert rename_flags(["x.tsv", "--report", "r.json", "--", "--report"], renamed) == [
        "x.tsv", "--selection-report", "r.json", "--", "--report"]
    assert rename_flags(["--report=r.json", "--reports"], renamed) == ["--selection-report=r.json", "--reports"]


def test_teacher_flag_moves_to_the_front_of_the_positional_arguments() -> None:
    assert move_teacher_flag(["--positive", "p", "--teacher", "t.pt", "--out", "x"]) == (
        ["t.pt", "--positive", "p", "--out", "x"], True)
    assert move_teacher_flag(["--teacher=t.pt", "s.pt"]) == (["t.pt", "s.pt"], True)
    assert move_teacher_flag(["t.pt", "--out", "x"]) == (["t.pt", "--out", "x"], False)
    assert move_teacher_flag(["a", "--", "--teacher", "b"]) == (["a", "--", "--teacher", "b"], False)


@pytest.mark.parametrize(("spelling", "label"), [(["{teacher}"], "TEACHER"), (["--teacher", "{teacher}"], "--teacher")])
def test_every_teacher_command_takes_teacher_first_or_as_teacher_flag(tmp_path: Path, spelling: list[str], label: str) -> None:
    missing = str(tmp_path / "none.safetensors")
    given = [part.format(teacher=missing) for part in spelling]
    runs = {
        "select": ["select", *given, "--positive", str(tmp_path), "--unlabeled", str(tmp_path), "--prior", "0.3",
                   "--out", str(tmp_path / "x.tsv")],
        "prior": ["prior", *given, "--positive", str(tmp_path), "--unlabeled", str(tmp_path)],
        "expand": ["expand", *given, "--positive", str(tmp_path), "--index", str(tmp_path / "i.tsv"), "--out", str(tmp_path / "e")],
        "distill": ["distill", *given, "--data", str(tmp_path), "--student", "lenet5_half", "--out", str(tmp_path / "s.safetensors")],
    }
    for command, args in runs.items():
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, (command, result.output)
        assert f"{label} {missing} does not exist" in lines[0], (command, lines[0])


def test_report_beside_the_output_or_in_the_state_folder_and_side_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PUCLI_STATE_DIR", str(tmp_path / "state"))
    assert report_location("select", tmp_path / "sel.tsv") == tmp_path / "sel.report.json"
    assert report_location("select", "-", tmp_path / "r" / "run.report.json") == tmp_path / "r" / "run.report.json"
    assert (tmp_path / "r").is_dir()  # made, so files beside the report can be written first
    stated = report_location("evaluate", None)
    assert stated.parent == tmp_path / "state" / "runs" and re.fullmatch(r"evaluate-\d{8}-\d{6}\.report\.json", stated.name)
    assert side_file(tmp_path / "sel.tsv", ".selector.safetensors") == tmp_path / "sel.selector.safetensors"
    assert side_file(tmp_path / "run.report.json", ".selector.safetensors") == tmp_path / "run.selector.safetensors"
    assert side_file(tmp_path / "student.safetensors", ".ckpt.pt") == tmp_path / "student.ckpt.pt"


@pytest.fixture
def select_inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path],
                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache"))
    return ["select", str(tiny_teacher), "--positive", str(make_class_folder("pos", per_class=2)),
            "--unlabeled", str(make_pool("pool", count=20)), "--prior", "0.3", "--epochs", "1", "--ensemble", "1",
            "--batch-size", "4", "--workers", "0", "--threads", "1"]


def test_off_a_terminal_a_run_logs_plain_lines_per_stage_and_quiet_silences_them(select_inputs: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*select_inputs, "--out", str(tmp_path / "a.tsv")])
    assert result.exit_code == 0, result.output
    logged = [line for line in result.stderr.splitlines() if PROGRESS_LINE.match(line)]
    stages = {line.split(":")[0] for line in logged}
    assert {"extract", "train", "score"} <= stages, result.stderr
    assert any(line.startswith("extract: 26/26 (100 %)") for line in logged)  # 6 positives + 20 pool images
    assert "━" not in result.stderr and "\r" not in result.stderr
    quiet = CliRunner().invoke(app, [*select_inputs, "--out", str(tmp_path / "b.tsv"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_the_report_records_the_parameters_by_their_flags(select_inputs: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*select_inputs, "--out", str(tmp_path / "a.tsv"), "--all", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    arguments = json.loads((tmp_path / "a.report.json").read_text())["arguments"]
    assert arguments["all"] is True and arguments["prior"] == "0.3" and arguments["batch_size"] == 4
    assert arguments["teacher"] == select_inputs[1] and arguments["out"] == str(tmp_path / "a.tsv")
    assert not {"json", "quiet", "force", "report", "seed", "json_output", "all_items"} & set(arguments)


def _leaf_commands(command: typer.core.TyperGroup, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    for name, sub in getattr(command, "commands", {}).items():
        yield from _leaf_commands(sub, (*path, name))
    if not getattr(command, "commands", None):
        yield path, command


def _examples(help_text: str) -> list[str]:
    """The ``pucli ...`` invocations in a help text: lines joined at a trailing backslash, split at
    pipes, a trailing ``(comment)`` dropped; those with ``...`` (elided) left out."""
    import re as regex

    text = help_text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for part in line.split(" | "):
            part = regex.sub(r"\s+\([^)]*\)\s*$", "", part.strip())
            part = part.split(" > ")[0].strip()
            if part.startswith("pucli ") and "..." not in part:
                found.append(part)
    return found


def test_every_help_example_is_a_valid_command_line() -> None:
    import shlex

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    examples = {example for command in commands.values() for example in _examples(command.help or "")}
    for example in sorted(examples):
        words = shlex.split(example)[1:]
        path = next(p for p in sorted(commands, key=len, reverse=True) if tuple(words[: len(p)]) == p)
        # Parse only (types, required options, the teacher argument); nothing runs.
        commands[path].make_context(" ".join(path), words[len(path):])
    assert len(examples) >= 15
