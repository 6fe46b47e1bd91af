"""``pucli`` app basics and ``pucli evaluate`` through Typer's CliRunner on tiny folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from pucli import __version__
from pucli.checkpoints import save_model
from pucli.cli import app

runner = CliRunner()


def _assert_one_line_error(result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"pucli {__version__}"


@pytest.mark.parametrize("command", ["evaluate", "select", "expand", "distill", "prior", "shards pack"])
def test_every_command_help_shows_an_example(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and f"pucli {command}" in result.stdout


def test_evaluate_prints_a_table_and_writes_a_report(tiny_teacher: Path, make_class_folder, tmp_path: Path) -> None:
    test_dir = make_class_folder("test", per_class=4)
    report = tmp_path / "eval.report.json"
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(test_dir), "--report", str(report)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "teacher.safetensors" in result.stdout and "lenet5" in result.stdout and "top-1 %" in result.stdout
    data = json.loads(report.read_text())
    assert data["command"] == "evaluate" and data["counts"]["images"] == 12
    assert {"pucli", "torch", "timm", "arguments", "device", "timings_s", "skipped"} <= set(data)
    assert data["results"]["models"][0]["params"] == sum(p.numel() for p in timm.create_model("lenet5", num_classes=3).parameters())


def test_the_test_set_is_named_test_and_its_old_name_data_still_works(tiny_teacher: Path, make_class_folder,
                                                                       tmp_path: Path) -> None:
    test_dir = make_class_folder("test", per_class=4)
    reports = []
    for flag in ("--test", "--data"):
        report = tmp_path / f"{flag[2:]}.report.json"
        result = runner.invoke(app, ["evaluate", str(tiny_teacher), flag, str(test_dir), "--report", str(report), "-q"])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(report.read_text()))
    assert reports[0]["arguments"]["test"] == reports[1]["arguments"]["test"] == str(test_dir)
    assert reports[0]["results"]["models"][0]["top1"] == reports[1]["results"]["models"][0]["top1"]
    assert "--data" not in runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"}).stdout.replace(
        "--data, its old name", "")


def test_evaluate_json_compares_models_side_by_side(tiny_teacher: Path, make_class_folder, tmp_path: Path) -> None:
    test_dir = make_class_folder("test", per_class=4)
    student = save_model(timm.create_model("lenet5_half", num_classes=3), tmp_path / "student.safetensors",
                         label_names=["0", "1", "2"])
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), str(student), "--data", str(test_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    teacher_row, student_row = data["models"]
    assert [teacher_row["architecture"], student_row["architecture"]] == ["lenet5", "lenet5_half"]
    assert teacher_row["images"] == student_row["images"] == 12
    assert 0.0 <= student_row["top1"] <= student_row["top5"] <= 100.0
    # FLOPs by hand for lenet5 with 3 classes, 2 per multiply-add (biases not counted):
    # conv1 6*28*28*(1*25) = 117,600; conv2 16*10*10*(6*25) = 240,000; fc 400*120 = 48,000;
    # 120*84 = 10,080; head 84*3 = 252 -> 415,932 MACs -> 831,864 FLOPs
    assert teacher_row["flops_per_image"] == 831_864
    assert student_row["flops_ratio"] < 0.5 and student_row["params_ratio"] < 0.5
    assert teacher_row["latency_ms"] > 0 and teacher_row["throughput"] > 0
    assert teacher_row["file_bytes"] == tiny_teacher.stat().st_size


def test_evaluate_accuracy_is_exact_on_a_rigged_model(tmp_path: Path, make_class_folder) -> None:
    # A model whose head always answers class 1: top-1 is the share of class-1 images.
    model = timm.create_model("lenet5", num_classes=3)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    path = save_model(model, tmp_path / "rigged.safetensors", label_names=["0", "1", "2"])
    test_dir = make_class_folder("test", per_class=4)
    result = runner.invoke(app, ["evaluate", str(path), "--data", str(test_dir), "--json"])
    row = json.loads(result.stdout)["models"][0]
    assert row["top1"] == pytest.approx(100 / 3) and row["top5"] == pytest.approx(100.0)


def test_evaluate_skips_a_truncated_png_and_says_so(tiny_teacher: Path, make_class_folder) -> None:
    test_dir = make_class_folder("test", per_class=2)
    good = (test_dir / "0" / "img0.png").read_bytes()
    (test_dir / "1" / "broken.png").write_bytes(good[:40])
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(test_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["skipped"] == 1 and data["models"][0]["images"] == 6
    assert "skipped 1 unreadable file" in result.stderr


def test_evaluate_missing_model_is_a_usage_error(make_class_folder, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.safetensors"), "--data", str(make_class_folder("t"))])
    _assert_one_line_error(result, 2, "does not exist")


def test_evaluate_missing_data_folder_is_a_usage_error(tiny_teacher: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(tmp_path / "nothing")])
    _assert_one_line_error(result, 2, "--test")


def test_evaluate_empty_folder_is_a_data_error(tiny_teacher: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(tmp_path / "empty")])
    _assert_one_line_error(result, 1, "no class subfolders")


def test_evaluate_class_count_mismatch_is_a_data_error(tmp_path: Path, make_class_folder) -> None:
    model = timm.create_model("lenet5", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    test_dir = make_class_folder("test", classes=["a", "b"], per_class=1)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "bare.pth"), "--arch", "lenet5", "--data", str(test_dir)])
    _assert_one_line_error(result, 1, "2 class folders but the teacher has 3 outputs")


def test_evaluate_pickled_module_is_refused(tmp_path: Path, make_class_folder) -> None:
    torch.save(timm.create_model("lenet5", num_classes=3), tmp_path / "whole.pt")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "whole.pt"), "--arch", "lenet5", "--data", str(make_class_folder("t"))])
    _assert_one_line_error(result, 1, "torch.save(model.state_dict()")


def test_evaluate_non_image_only_folder_is_a_data_error(tiny_teacher: Path, tmp_path: Path) -> None:
    for name in ("0", "1", "2"):
        (tmp_path / "test" / name).mkdir(parents=True)
        (tmp_path / "test" / name / "readme.txt").write_text("no images here")
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(tmp_path / "test")])
    _assert_one_line_error(result, 1, "holds no image files")


def test_debug_shows_the_traceback(tmp_path: Path, make_class_folder) -> None:
    result = runner.invoke(app, ["--debug", "evaluate", str(tmp_path / "none.pth"), "--data", str(make_class_folder("t"))])
    assert result.exit_code == 2 and "Traceback" in result.stderr
