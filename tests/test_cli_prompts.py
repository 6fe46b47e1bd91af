"""Questions, missing options and the messages around a run (issue 14): off a terminal every
missing option is named at once; on a terminal a rejected answer is asked again and the whole
command line is printed after the questions; distill says its plan; a busy CPU is pointed out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import REPO_ROOT
from typer.testing import CliRunner

from pucli.cli import app

runner = CliRunner()


def _command() -> object:
    return typer.main.get_command(app)


def test_off_a_terminal_every_missing_option_is_named_in_one_error(tiny_teacher: Path) -> None:
    from typer._click.exceptions import UsageError

    with pytest.raises(UsageError) as info:
        _command().main(["distill", str(tiny_teacher)], prog_name="pucli", standalone_mode=False)
    assert info.value.format_message() == "Missing options '--data', '--student' and '--out'."
    # One left out: click's own message, as before.
    with pytest.raises(UsageError) as info:
        _command().main(["distill", str(tiny_teacher), "--data", "d", "--student", "lenet5_half"], prog_name="pucli",
                        standalone_mode=False)
    assert info.value.format_message() == "Missing option '--out'."


def test_in_a_pipeline_the_missing_options_are_one_line_with_exit_code_2(tiny_teacher: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pucli", "distill", str(tiny_teacher), "--teacher", str(tiny_teacher)],
                          input=b"", capture_output=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().strip() == (
        "error: Missing options '--data', '--student' and '--out'. (see 'pucli distill --help')")


def test_on_a_terminal_a_rejected_answer_is_asked_again_and_the_full_command_is_printed(tiny_teacher: Path,
                                                                                      tmp_path: Path) -> None:
    from click.testing import CliRunner as ClickRunner

    from pucli.cli._prompts import enable_prompts

    data, out = tmp_path / "no-such-set", tmp_path / "s.safetensors"
    answers = [str(data), "lenet-5", "lenet5_half", "student.pt", str(out)]
    result = ClickRunner().invoke(enable_prompts(_command()), ["distill", str(tiny_teacher)],
                                  input="\n".join(answers) + "\n", prog_name="pucli")
    stderr = result.stderr
    # Each rejected answer: the reason, then the same question again; the run goes on.
    assert "closest timm names: lenet5" in stderr and stderr.count("--student (") == 2
    assert "name the file *.safetensors; try again" in stderr and stderr.count("--out (") == 2
    assert f"same as: pucli distill {tiny_teacher} --data {data} --student lenet5_half --out {out}" in stderr
    # The run itself then stops on the missing expanded set (after the questions, not at a rejected answer).
    assert result.exit_code != 0 and "no-such-set" in stderr.split("same as:")[1]


def test_the_equivalent_command_quotes_what_the_shell_would_split() -> None:
    from pucli.cli._prompts import equivalent_command

    class Option:
        param_type_name = "option"
        opts = ("--out",)

    class Argument:
        param_type_name = "argument"

    line = equivalent_command("pucli distill", ["--data", "my set"], [(Argument(), "t.pt"), (Option(), "a b.safetensors")])
    assert line == "pucli distill t.pt --data 'my set' --out 'a b.safetensors'"


def test_distill_states_its_plan_and_the_time_after_the_first_epoch(tiny_teacher: Path, make_class_folder,
                                                                    make_pool, tmp_path: Path) -> None:
    positive, pool = make_class_folder("pos", per_class=2), make_pool("pool", count=6)
    from pucli.data.index import IndexEntry, format_index

    index = "".join(format_index([IndexEntry(p, 1.0) for p in sorted(pool.rglob("*.png"))]))
    expanded = runner.invoke(app, ["expand", str(tiny_teacher), "--positive", str(positive), "--index", "-", "--out",
                                   str(tmp_path / "expanded"), "--quiet", "--threads", "1"], input=index)
    assert expanded.exit_code == 0, expanded.output
    result = runner.invoke(app, ["distill", str(tiny_teacher), "--data", str(tmp_path / "expanded"), "--student",
                                 "lenet5_half", "--out", str(tmp_path / "s.safetensors"), "--epochs", "3",
                                 "--batch-size", "4", "--workers", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    # Off a terminal: the plan is the stage's first log line; the epoch lines after it give the ETA.
    lines = result.stderr.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("distill: 0/9"))
    assert lines[plan] == "distill: 0/9 (0 %), plan 3 epochs of 3 steps (4 images each, 12 images), elapsed 0:00:00"
    assert any(line.startswith("distill: 3/9 (33 %), epoch 1") and "ETA" in line for line in lines[plan:]), lines
    report = json.loads((tmp_path / "s.report.json").read_text())
    roles = {(Path(e["file"]).name, e["role"]) for e in report["preprocessing"]}
    assert roles == {("teacher.safetensors", "read"), ("s.safetensors", "written")}


def test_on_a_terminal_distill_says_its_plan_then_the_time_the_rest_takes(monkeypatch, capsys) -> None:
    from rich.console import Console

    from pucli.cli import _output, distill
    from pucli.kd.distill import TrainingPlan

    monkeypatch.setattr(distill, "console", Console(stderr=True, force_terminal=True, no_color=True, highlight=False))
    monkeypatch.setattr(_output, "console", Console(stderr=True, force_terminal=True, no_color=True, highlight=False))
    plan = TrainingPlan(epochs=148, first_epoch=1, steps_per_epoch=31, batch_size=128, items=4_000, epochs_defaulted=True)
    distill._say_plan(plan, quiet=False)
    distill._say_plan(TrainingPlan(**{**vars(plan), "epoch_s": 17.4}), quiet=False)
    said = capsys.readouterr().err
    assert ("plan: 148 epochs (the default for this set: --epochs N to change) of 31 steps (128 images each, "
            "4,000 images), 4,588 steps") in said
    assert "epoch 1 took 17 s: about 43 min for the other 147 epochs" in said


def test_a_busy_cpu_is_pointed_out_when_threads_are_left_to_the_default(monkeypatch, capsys) -> None:
    from rich.console import Console

    from pucli import device
    from pucli.cli import _output

    monkeypatch.setattr(_output, "console", Console(stderr=True, force_terminal=True, no_color=True, highlight=False))

    monkeypatch.setattr(device, "available_cpus", lambda: 2)
    monkeypatch.setattr(device.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    assert device.cpu_overload() == 3.5
    _output._warn_busy_cpu(2, quiet=False)
    message = capsys.readouterr().err
    assert "the CPU is busy (load 3.5 on 2 CPUs)" in message and "--threads 1" in message
    _output._warn_busy_cpu(1, quiet=False)  # one thread already: nothing to say
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(device.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert device.cpu_overload() is None
