"""`pucli expand` and `pucli distill` end to end through the CLI (Typer's CliRunner), on tiny PNG
folders, plus one slow run on the real mnist-pu data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import IndexEntry, format_index

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def workspace(tmp_path, make_class_folder, make_pool, tiny_teacher):
    """(positive folder, index text with 8 entries of which 6 selected, teacher path)."""
    positive = make_class_folder("pos", per_class=3)
    pool = sorted(make_pool("pool", count=8).rglob("*.png"))
    entries = [IndexEntry(p, 1.0 - 0.25 * i, selected=i < 6) for i, p in enumerate(pool)]
    return positive, "".join(format_index(entries, with_selected=True)), tiny_teacher


def _expand(tmp_path: Path, workspace, *extra: str):
    positive, index_text, teacher = workspace
    args = ["expand", "--positive", str(positive), "--index", "-", "--teacher", str(teacher),
            "--out", str(tmp_path / "expanded"), "--threads", "1", *extra]
    return runner.invoke(app, args, input=index_text)


def test_expand_reads_the_index_from_stdin_and_prints_class_counts_as_json(tmp_path, workspace):
    result = _expand(tmp_path, workspace, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["items"] == 9 + 6
    assert [row["positive"] for row in data["classes"]] == [3, 3, 3]
    assert sum(row["selected"] for row in data["classes"]) == 6
    assert sum(row["weight"] for row in data["classes"]) == pytest.approx(3.0)
    assert {p.name for p in (tmp_path / "expanded").iterdir()} == {
        "manifest.tsv", "soft_targets.safetensors", "classes.json", "report.json"}


def test_expand_table_goes_to_stderr_and_stdout_stays_empty(tmp_path, workspace):
    result = _expand(tmp_path, workspace)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "weight (Eq. 7)" in result.stderr


def test_distill_trains_writes_student_report_and_checkpoint(tmp_path, workspace):
    assert _expand(tmp_path, workspace, "--quiet").exit_code == 0
    positive, _, teacher = workspace
    out = tmp_path / "student.safetensors"
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "expanded"), "--student", "lenet5_half",
                                 "--out", str(out), "--epochs", "2", "--batch-size", "8", "--val", str(positive),
                                 "--keep", "best", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["loss"] == "robust-kd" and data["epochs"] == 2 and data["items"] == 15
    assert data["precision"] == "float32"  # --precision auto on the CPU
    assert [h["epoch"] for h in data["history"]] == [1, 2]
    assert out.is_file() and (tmp_path / "student.config.json").is_file() and (tmp_path / "student.ckpt.pt").is_file()
    report = json.loads((tmp_path / "student.report.json").read_text())
    assert report["command"] == "distill" and len(report["results"]["history"]) == 2

    from pucli.checkpoints import load_model

    assert load_model(out).config.architecture == "lenet5_half"
    resumed = runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "expanded"), "--student", "lenet5_half",
                                  "--out", str(out), "--epochs", "2", "--batch-size", "8", "--resume", "--quiet",
                                  "--threads", "1", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_from"] == 2


def test_distill_precision_bfloat16_is_reported_and_float16_on_the_cpu_is_one_line_error(tmp_path, workspace):
    assert _expand(tmp_path, workspace, "--quiet").exit_code == 0
    _, _, teacher = workspace
    base = ["distill", str(teacher), "--data", str(tmp_path / "expanded"), "--student", "lenet5_half",
            "--out", str(tmp_path / "student.safetensors"), "--epochs", "1", "--batch-size", "8", "--threads", "1",
            "--device", "cpu", "--force"]
    mixed = runner.invoke(app, [*base, "--precision", "bfloat16", "--json"])
    assert mixed.exit_code == 0, mixed.output
    assert json.loads(mixed.stdout)["precision"] == "bfloat16"
    half = runner.invoke(app, [*base, "--precision", "float16"])
    assert half.exit_code == 2, half.output
    assert "--precision float16" in half.stderr and "use bfloat16 on the CPU" in half.stderr
    assert "Traceback" not in half.output
    assert len([line for line in half.stderr.splitlines() if line.strip()]) == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["expand", "--positive", "{pos}", "--index", "{tmp}/none.tsv", "--teacher", "{teacher}", "--out", "{tmp}/x"], 2, "does not exist"),
        (["expand", "--positive", "{pos}", "--index", "{tmp}/bad.tsv", "--teacher", "{teacher}", "--out", "{tmp}/x"], 1, "header must start"),
        (["distill", "{teacher}", "--data", "{pos}", "--student", "lenet5_half", "--out", "{tmp}/s.safetensors"], 1, "has no manifest.tsv"),
        (["distill", "{teacher}", "--data", "{tmp}", "--student", "lenet5_half", "--out", "{tmp}/s.safetensors", "--loss", "rkd"], 2, "--loss rkd"),
        (["distill", "{teacher}", "--data", "{tmp}", "--student", "lenet5_halve", "--out", "{tmp}/s.safetensors"], 2, "unknown architecture"),
        (["distill", "{teacher}", "--data", "{tmp}", "--student", "lenet5_half", "--out", "{tmp}/s.pt"], 2, "*.safetensors"),
    ],
    ids=["missing-index", "malformed-index", "not-an-expanded-set", "bad-loss", "bad-student", "bad-out"],
)
def test_bad_input_exits_non_zero_with_one_line_error_and_no_traceback(tmp_path, workspace, args, code, message):
    positive, _, teacher = workspace
    (tmp_path / "bad.tsv").write_text("#pucli-index v1\nfile\tvalue\n")
    argv = [a.format(pos=positive, tmp=tmp_path, teacher=teacher) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_mnist_pu_expand_then_distill_short_run_learns_digits(tmp_path, mnist_pu, mnist_teacher):
    """Real data: positives nl10-seed0 plus the first 2,000 pool images (no selection), 10 epochs of robust KD."""
    pool = [line.strip() for line in (mnist_pu / "unlabeled.txt").read_text().splitlines() if line.strip()][:2000]
    entries = [IndexEntry(Path(p) if os.path.isabs(p) else mnist_pu / p, 1.0) for p in pool]
    index_text = "".join(format_index(entries))
    teacher = mnist_teacher
    result = runner.invoke(app, ["expand", "--positive", str(mnist_pu / "positive" / "nl10-seed0"), "--index", "-",
                                 "--teacher", str(teacher), "--out", str(tmp_path / "exp"), "--quiet", "--threads", "1"],
                           input=index_text)
    assert result.exit_code == 0, result.output
    out = tmp_path / "student.safetensors"
    result = runner.invoke(app, ["distill", str(teacher), "--data", str(tmp_path / "exp"), "--student", "lenet5_half",
                                 "--out", str(out), "--epochs", "10", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output

    from pucli.checkpoints import load_model
    from pucli.evaluate import evaluate_model

    accuracy = evaluate_model(load_model(out), mnist_pu / "test", device=torch.device("cpu"), measure_speed=False).top1
    assert accuracy > 80.0
