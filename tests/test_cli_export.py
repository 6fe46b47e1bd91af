"""``pucli export`` and ``pucli evaluate`` on .onnx files through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")

from pucli.cli import app

runner = CliRunner()


def _one_line_error(result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_export_help_shows_an_example() -> None:
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "pucli export student.safetensors --format onnx" in result.stdout


def test_export_prints_the_written_paths_and_evaluate_runs_them(tiny_teacher: Path, make_pool, make_class_folder,
                                                                tmp_path: Path, one_thread) -> None:
    pool = make_pool("pool", count=16)
    out = tmp_path / "teacher.onnx"
    result = runner.invoke(app, ["export", str(tiny_teacher), "--format", "onnx", "--out", str(out), "--int8",
                                 "--calibration", str(pool), "--images", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out), str(tmp_path / "teacher.int8.onnx")]
    assert "matches PyTorch on 8 images" in result.stderr and "int8" in result.stderr

    test_dir = make_class_folder("test", per_class=3)
    plot = tmp_path / "plot.png"
    result = runner.invoke(app, ["evaluate", str(tiny_teacher), str(out), str(tmp_path / "teacher.int8.onnx"),
                                 "--data", str(test_dir), "--json", "--plot", str(plot), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["models"]
    assert [r["runtime"] for r in rows] == ["pytorch", "onnxruntime", "onnxruntime"]
    assert rows[0]["top1"] == rows[1]["top1"] and rows[2]["architecture"] == "lenet5 (int8)"
    assert plot.stat().st_size > 10_000


def test_export_refuses_to_replace_an_output_without_force(tiny_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "teacher.onnx"
    out.write_bytes(b"keep me")
    _one_line_error(runner.invoke(app, ["export", str(tiny_teacher), "--out", str(out)]), 2, "--force")
    assert out.read_bytes() == b"keep me"
    result = runner.invoke(app, ["export", str(tiny_teacher), "--out", str(out), "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["check"]["inputs"] == "random"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--int8"], "--int8 needs --calibration"),
        (["--format", "tflite"], "--format"),
        (["--calibration", "/nowhere/pool"], "/nowhere/pool does not exist"),
    ],
)
def test_export_bad_options_are_one_line_errors(tiny_teacher: Path, tmp_path: Path, arguments: list[str], fragment: str) -> None:
    result = runner.invoke(app, ["export", str(tiny_teacher), "--out", str(tmp_path / "m.onnx"), *arguments])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False), called directly
def test_export_of_a_missing_model_and_evaluate_of_a_foreign_onnx_fail_in_one_line(tiny_teacher: Path, make_class_folder,
                                                                                   tmp_path: Path) -> None:
    import torch

    _one_line_error(runner.invoke(app, ["export", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "m.onnx")]),
                    2, "does not exist")
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(tmp_path / "plain.onnx"), dynamo=False)
    test_dir = make_class_folder("test", per_class=1)
    _one_line_error(runner.invoke(app, ["evaluate", str(tmp_path / "plain.onnx"), "--data", str(test_dir)]), 1,
                    "no pucli metadata")
    _one_line_error(runner.invoke(app, ["evaluate", str(tiny_teacher), "--data", str(test_dir), "--plot", str(tmp_path / "x" / "p.png")]),
                    2, "--plot")


def test_a_model_from_pucli_quantize_exports_and_matches_its_float_weights(tiny_teacher: Path, tmp_path: Path, one_thread) -> None:
    quantized = tmp_path / "teacher.w4.safetensors"
    result = runner.invoke(app, ["quantize", str(tiny_teacher), "--weight-bits", "4", "--out", str(quantized), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(quantized), "--out", str(tmp_path / "w4.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
