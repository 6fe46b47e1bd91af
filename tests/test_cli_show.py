"""``pucli show`` through Typer's CliRunner: outputs, stdout/stderr, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_png
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import IndexEntry, write_index

runner = CliRunner()


@pytest.fixture
def index(tmp_path: Path) -> Path:
    entries = [IndexEntry(write_png(tmp_path / "pool" / f"u{i}.png", seed=i), 2.0 - i / 3, i < 6) for i in range(12)]
    path = tmp_path / "index.tsv"
    write_index(entries, path, with_selected=True)
    return path


def _one_line_error(result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_show_help_shows_an_example() -> None:
    result = runner.invoke(app, ["show", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "pucli show index.tsv" in result.stdout


def test_show_writes_beside_the_index_and_prints_the_path(index: Path, make_class_folder) -> None:
    result = runner.invoke(app, ["show", str(index), "--positive", str(make_class_folder("positive", per_class=2))])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(index.with_name("index.sheet.png"))
    assert index.with_name("index.sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "18 images shown (0 unreadable) of 12" in result.stderr  # 6 positives + 12 pool images
    _one_line_error(runner.invoke(app, ["show", str(index)]), 2, "--force")


def test_show_json_reports_counts_and_groups(index: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", str(index), "--out", str(tmp_path / "sheet.html"), "--json", "--per-group", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "html" and data["counts"] == {"total": 12, "kept": 6, "rejected": 6}
    assert [count for _title, count in data["groups"]] == [2, 2, 2, 2] and data["shown"] == 8
    assert (tmp_path / "sheet.html").read_text(encoding="utf-8").startswith("<!doctype html>")


def test_show_reads_an_index_on_stdin_and_writes_a_sheet_on_stdout(index: Path) -> None:
    result = runner.invoke(app, ["show", "-", "--out", "-", "--format", "html"], input=index.read_text())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<!doctype html>") and "data:image/png;base64," in result.stdout


@pytest.mark.parametrize(
    ("arguments", "code", "fragment"),
    [
        (["{tmp}/missing.tsv"], 2, "missing.tsv does not exist"),
        (["{index}", "--out", "{tmp}/sheet.gif"], 2, ".png or .html"),
        (["{index}", "--out", "{tmp}/no/such/folder/sheet.png"], 2, "does not exist"),
        (["-", "--format", "png"], 2, "give --out PATH"),
        (["{index}", "--positive", "{tmp}/nothing"], 2, "--positive"),
        (["{tmp}/bad.tsv", "--out", "{tmp}/s.png"], 1, "header must start with"),
        (["{tmp}/empty.tsv", "--out", "{tmp}/s.png"], 1, "lists no image"),
    ],
)
def test_show_bad_input_is_one_line_and_writes_nothing(index: Path, tmp_path: Path, arguments: list[str], code: int, fragment: str) -> None:
    (tmp_path / "bad.tsv").write_text("#pucli-index v1\nwhat\tever\n")
    (tmp_path / "empty.tsv").write_text("#pucli-index v1\npath\tscore\n")
    argv = [a.format(tmp=tmp_path, index=index) for a in arguments]
    _one_line_error(runner.invoke(app, ["show", *argv], input=""), code, fragment)
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("flag", ["--selection-report", "--report"])
def test_the_selection_report_gives_the_class_prior_under_its_new_name_and_its_old_one(index: Path, tmp_path: Path,
                                                                                         flag: str) -> None:
    report = tmp_path / "elsewhere.report.json"
    report.write_text(json.dumps({"format_version": 1, "command": "select",
                                  "results": {"class_prior": 0.25, "class_prior_source": "given"}}))
    result = runner.invoke(app, ["show", str(index), "--out", str(tmp_path / "sheet.html"), "--json", flag, str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["class_prior"] == 0.25


def test_the_old_report_flag_is_hidden_from_the_help() -> None:
    result = runner.invoke(app, ["show", "--help"], env={"COLUMNS": "200"})
    assert "--selection-report" in result.stdout and "--report " not in result.stdout.replace("--report,", "")
