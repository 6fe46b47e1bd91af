"""``pucli prune``, ``quantize`` and ``recalibrate`` through Typer's CliRunner (and one real shell pipe):
outputs, summaries, pipelines through ``-``, and every bad input as one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from pucli.checkpoints import load_model, save_model
from pucli.cli import app

pytest.importorskip("torch_pruning")

runner = CliRunner()
ENV = {"COLUMNS": "200"}


@pytest.fixture
def bn_teacher(tmp_path: Path) -> Path:
    """A randomly initialised timm test_resnet (BatchNorm everywhere), 3 classes, 28 x 28 grey."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1).eval()
    return save_model(model, tmp_path / "bn.safetensors", label_names=["0", "1", "2"],
                      data_config={"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,)})


def one_line_error(result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def outputs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("command", ["prune", "quantize", "recalibrate"])
def test_every_compress_command_help_shows_an_example(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env=ENV)
    assert result.exit_code == 0 and "Example" in result.stdout and f"pucli {command}" in result.stdout


def test_prune_prints_params_flops_latency_before_and_after(bn_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned.safetensors"
    result = runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.5", "--out", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    assert all(word in result.stderr for word in ("before", "after", "params", "FLOPs", "latency ms", "recalibrate"))
    assert result.stdout == ""
    report = json.loads((tmp_path / "pruned.report.json").read_text())
    assert report["command"] == "prune" and report["results"]["after"]["flops"] <= report["results"]["before"]["flops"] / 2
    assert load_model(out).model.layer1[0].conv1.out_channels == 16


def test_prune_json_goes_to_stdout(bn_teacher: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.3", "--importance", "magnitude",
                                 "--out", str(tmp_path / "p.safetensors"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["importance"] == "magnitude" and data["before"]["params"] > data["after"]["params"]
    assert result.stderr == ""


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1"])
def test_prune_ratio_outside_zero_one_is_one_line_and_writes_nothing(bn_teacher: Path, tmp_path: Path, ratio: str) -> None:
    before = outputs(tmp_path)
    result = runner.invoke(app, ["prune", str(bn_teacher), "--ratio", ratio, "--out", str(tmp_path / "p.safetensors")])
    one_line_error(result, 2, f"--ratio {float(ratio)}: must be in (0, 1)")
    assert outputs(tmp_path) == before


def test_prune_an_architecture_torch_pruning_cannot_handle(tmp_path: Path) -> None:
    vit = save_model(timm.create_model("test_vit", num_classes=3, in_chans=1, img_size=32), tmp_path / "vit.safetensors",
                     data_config={"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)})
    before = outputs(tmp_path)
    result = runner.invoke(app, ["prune", str(vit), "--ratio", "0.5", "--out", str(tmp_path / "p.safetensors")])
    one_line_error(result, 1, "Torch-Pruning cannot prune test_vit")
    assert outputs(tmp_path) == before


@pytest.mark.parametrize("bits", ["5", "1", "16"])
def test_quantize_bits_outside_the_list_is_one_line_and_writes_nothing(bn_teacher: Path, tmp_path: Path, bits: str) -> None:
    before = outputs(tmp_path)
    result = runner.invoke(app, ["quantize", str(bn_teacher), "--weight-bits", bits, "--out", str(tmp_path / "q.safetensors")])
    one_line_error(result, 2, f"--weight-bits {bits}: choose one of 8, 4, 3, 2")
    assert outputs(tmp_path) == before


def test_quantize_writes_codes_and_says_the_sizes(bn_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.safetensors"
    result = runner.invoke(app, ["quantize", str(bn_teacher), "--weight-bits", "4", "--out", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "to 4 bits (first and last: 8)" in result.stderr and "MiB" in result.stderr or "KiB" in result.stderr
    report = json.loads((tmp_path / "q.report.json").read_text())
    assert report["results"]["bits"]["layer1.0.conv1"] == 4 and report["results"]["bits"]["fc"] == 8


def test_recalibrate_a_model_without_batchnorm_names_its_norm_layers(tiny_teacher: Path, make_pool, tmp_path: Path) -> None:
    pool = make_pool("pool", count=4)
    before = outputs(tmp_path)
    result = runner.invoke(app, ["recalibrate", str(tiny_teacher), "--data", str(pool), "--out", str(tmp_path / "r.safetensors")])
    one_line_error(result, 1, "has no BatchNorm with running statistics to re-estimate (no norm layer at all)")
    assert outputs(tmp_path) == before


def test_recalibrate_writes_the_model_and_a_report_with_each_layers_shift(bn_teacher: Path, make_pool, tmp_path: Path) -> None:
    pool = make_pool("pool", count=12)
    out = tmp_path / "r.safetensors"
    result = runner.invoke(app, ["recalibrate", str(bn_teacher), "--data", str(pool), "--images", "10", "--batch-size", "4",
                                 "--out", str(out), "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == 9 and data["batches"] == 3 and data["available"] == 12
    assert data["layers"][0]["name"] == "conv1.1" and {"mean_shift", "var_ratio", "channels"} <= set(data["layers"][0])
    assert json.loads((tmp_path / "r.report.json").read_text())["counts"]["images"] == 9
    before = load_model(bn_teacher).model.bn1.running_mean
    assert not torch.equal(load_model(out).model.bn1.running_mean, before)


def test_recalibrate_reads_a_selection_index(bn_teacher: Path, make_pool, tmp_path: Path) -> None:
    from pucli.data.files import scan_images
    from pucli.data.index import IndexEntry, write_index

    paths = scan_images(make_pool("pool", count=6))
    write_index([IndexEntry(p, 1.0, selected=i < 4) for i, p in enumerate(paths)], tmp_path / "index.tsv", with_selected=True)
    result = runner.invoke(app, ["recalibrate", str(bn_teacher), "--data", str(tmp_path / "index.tsv"),
                                 "--out", str(tmp_path / "r.safetensors"), "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["available"] == 4


def test_prune_to_stdout_then_recalibrate_from_stdin(bn_teacher: Path, make_pool, tmp_path: Path) -> None:
    pool = make_pool("pool", count=8)
    pruned = runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.5", "--out", "-", "--quiet"])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout_bytes[8:9] == b"{"  # a safetensors header, nothing else, on stdout
    out = tmp_path / "pruned.safetensors"
    result = runner.invoke(app, ["recalibrate", "-", "--data", str(pool), "--out", str(out), "--workers", "0"],
                           input=pruned.stdout_bytes)
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    assert loaded.model.layer1[0].conv1.out_channels == 16
    assert "pruned 50% (group-norm), BN re-estimated on 8 images" in result.stderr


@pytest.mark.slow  # four processes that each import torch: tens of seconds on a busy machine
def test_a_real_shell_pipeline_prune_quantize_recalibrate_evaluate(bn_teacher: Path, make_pool, make_class_folder,
                                                                   tmp_path: Path) -> None:
    pool, test = make_pool("pool", count=8), make_class_folder("test", per_class=2)
    pucli = [sys.executable, "-m", "pucli"]
    out = tmp_path / "small.safetensors"
    command = (f"{' '.join(pucli)} prune {bn_teacher} --ratio 0.5 --out - --quiet"
               f" | {' '.join(pucli)} quantize - --weight-bits 4 --out - --quiet"
               f" | {' '.join(pucli)} recalibrate - --data {pool} --workers 0 --out {out} --quiet")
    subprocess.run(command, shell=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    result = runner.invoke(app, ["evaluate", str(bn_teacher), str(out), "--data", str(test), "--json",
                                 "--report", str(tmp_path / "e.json"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    teacher_row, small_row = json.loads(result.stdout)["models"]
    assert small_row["flops_per_image"] <= teacher_row["flops_per_image"] / 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prune", "{teacher}", "--ratio", "0.5", "--out", "-", "--json"], "--json and --out - both write to stdout"),
        (["quantize", "{teacher}", "--weight-bits", "4", "--out", "{tmp}/q.pt"], "name the file *.safetensors"),
        (["recalibrate", "-", "--data", "-", "--out", "{tmp}/r.safetensors"], "MODEL - and --calibration - both read stdin"),
        (["recalibrate", "{teacher}", "--data", "{tmp}/nowhere", "--out", "{tmp}/r.safetensors"], "--calibration {tmp}/nowhere does not exist"),
        (["recalibrate", "{teacher}", "--data", "{tmp}", "--images", "0", "--out", "{tmp}/r.safetensors"], "--images 0: must be >= 1"),
        (["recalibrate", "{teacher}", "--data", "{tmp}", "--augment", "rotate", "--out", "{tmp}/r.safetensors"], "--augment rotate: choose one of none, flip-crop"),
        (["prune", "{tmp}/missing.safetensors", "--ratio", "0.5", "--out", "{tmp}/p.safetensors"], "MODEL {tmp}/missing.safetensors does not exist"),
        (["prune", "{teacher}", "--ratio", "0.5", "--importance", "taylor", "--out", "{tmp}/p.safetensors"], "--importance taylor: choose one of"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(bn_teacher: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    args = [a.format(teacher=bn_teacher, tmp=tmp_path) for a in args]
    before = outputs(tmp_path)
    result = runner.invoke(app, args, input=b"")
    assert result.exit_code in (1, 2), result.output
    one_line_error(result, result.exit_code, fragment.format(tmp=tmp_path))
    assert outputs(tmp_path) == before


def test_an_existing_output_is_kept_without_force(bn_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.5", "--out", str(out)])
    one_line_error(result, 2, "exists: pass --force")
    assert out.read_bytes() == b"keep me"
    assert runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.5", "--out", str(out), "--force", "-q"]).exit_code == 0


def test_distill_fine_tunes_a_pruned_student_and_saves_it_pruned(bn_teacher: Path, make_class_folder, make_pool,
                                                                 tmp_path: Path) -> None:
    from pucli.data.index import IndexEntry, format_index

    pruned = tmp_path / "pruned.safetensors"
    assert runner.invoke(app, ["prune", str(bn_teacher), "--ratio", "0.5", "--out", str(pruned), "--quiet"]).exit_code == 0
    positive = make_class_folder("pos", per_class=2)
    pool = sorted(make_pool("pool", count=6).rglob("*.png"))
    index = "".join(format_index([IndexEntry(p, 1.0 - 0.1 * i) for i, p in enumerate(pool)]))
    expanded = tmp_path / "expanded"
    done = runner.invoke(app, ["expand", str(bn_teacher), "--positive", str(positive), "--index", "-", "--out",
                               str(expanded), "--threads", "1", "--workers", "0", "--quiet"], input=index)
    assert done.exit_code == 0, done.output
    student = tmp_path / "student.safetensors"
    done = runner.invoke(app, ["distill", str(bn_teacher), "--data", str(expanded), "--student", str(pruned),
                               "--epochs", "1", "--batch-size", "4", "--out", str(student), "--threads", "1",
                               "--workers", "0", "--quiet"])
    assert done.exit_code == 0, done.output
    start, tuned = load_model(pruned).model, load_model(student).model
    assert tuned.layer1[0].conv1.out_channels == start.layer1[0].conv1.out_channels == 16  # still pruned
    assert not torch.equal(tuned.layer1[0].conv1.weight, start.layer1[0].conv1.weight)  # and trained
    assert json.loads((tmp_path / "student.report.json").read_text())["results"]["student"] == "test_resnet"
