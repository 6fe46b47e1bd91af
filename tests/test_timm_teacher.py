"""The pool grid's timm ``train.py`` teacher (issue 15): the ``teacher=timm`` axis of
``benchmarks/pool_grid.py`` (parse, design, file resolution) and ``benchmarks/train_timm_teacher.py``
run against a fake ``train.py`` (it only writes what timm's would: ``model_best.pth.tar`` and
``summary.csv`` under ``<output>/<experiment>/``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pool_grid
import train_timm_teacher

from pucli.paths import cache_dir

FAKE_TRAIN_PY = r'''
import argparse, json, os, sys
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--output"); p.add_argument("--experiment"); p.add_argument("--epochs", type=int)
known, rest = p.parse_known_args()
run = Path(known.output) / known.experiment
run.mkdir(parents=True)
(run / "argv.json").write_text(json.dumps({"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS")}))
(run / "model_best.pth.tar").write_bytes(b"checkpoint")
rows = ["epoch,train_loss,eval_loss,eval_top1,eval_top5,lr"]
rows += [f"{e},1.0,0.5,{97.0 + e},100.0,0.01" for e in range(known.epochs)]
(run / "summary.csv").write_text("\n".join(rows) + "\n")
'''


def test_teacher_axis_parses_timm() -> None:
    cell = pool_grid.Cell.parse("teacher=timm,prior=0.02,seed=1")
    assert (cell.teacher, cell.prior, cell.seed, cell.nl, cell.size) == ("timm", 0.02, 1, 10, 20_000)
    assert cell.name == "n20000-p0.02-fashion-as-is-timm-nl10-s1"
    with pytest.raises(SystemExit, match="teacher=resnet"):
        pool_grid.Cell.parse("teacher=resnet")


def test_design_adds_the_timm_cells_last_and_keeps_the_rest() -> None:
    assert pool_grid.CACHE_VERSION == 2
    cells = pool_grid.design()
    timm = [c for c in cells if c.teacher == "timm"]
    assert len(cells) == 147 and cells[-9:] == timm
    assert {(c.prior, c.nl, c.size, c.neg, c.capture) for c in timm} == {
        (p, 10, 20_000, "fashion", "as-is") for p in (0.2, 0.02, 0.05)}
    assert sorted(c.seed for c in timm) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The cells before are the design as it was: base and worst case first, 129 others after.
    assert cells[0] == pool_grid.Cell() and cells[1] == pool_grid.Cell(size=34_000, prior=0.03)
    assert sum(c.teacher == "bn" for c in cells) == 15


def test_timm_teacher_resolution(tmp_path: Path) -> None:
    args = pool_grid.parse_args(["--root", str(tmp_path)])
    expected = cache_dir() / "benchmarks" / "pool-grid" / "timm-teacher" / "resnet10t.pth.tar"
    assert args.timm_teacher == expected == train_timm_teacher.default_teacher_path()
    given = tmp_path / "mine.pth.tar"
    args = pool_grid.parse_args(["--root", str(tmp_path), "--timm-teacher", str(given),
                                 "--bn-teacher", str(tmp_path / "bn.safetensors")])
    assert pool_grid.teacher_file(pool_grid.Cell(teacher="timm"), args) == given
    assert pool_grid.teacher_file(pool_grid.Cell(teacher="bn"), args) == tmp_path / "bn.safetensors"
    assert pool_grid.teacher_file(pool_grid.Cell(), args) == tmp_path / "teacher" / "lenet5.safetensors"


def test_train_py_arguments_are_the_recipe(tmp_path: Path) -> None:
    argv = train_timm_teacher.train_py_arguments(tmp_path, tmp_path / "out", epochs=3)
    joined = " ".join(argv)
    for part in ("--model resnet10t", "--num-classes 10", "--in-chans 1", "--input-size 1 28 28",
                 "--input-img-mode L", "--mean 0.1307", "--std 0.3081", "--no-aug", "--device cpu",
                 "--workers 1", "--train-split train", "--val-split test", "--epochs 3", "--crop-pct 1.0"):
        assert part in joined


def _mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for split in ("train", "test"):
        (root / split / "0").mkdir(parents=True)
    return root


def test_script_runs_train_py_and_copies_model_best(tmp_path: Path) -> None:
    fake = tmp_path / "train.py"
    fake.write_text(FAKE_TRAIN_PY)
    out = tmp_path / "cache" / "resnet10t.pth.tar"
    output = tmp_path / "output"
    code = train_timm_teacher.main(["--train-py", str(fake), "--root", str(_mnist_root(tmp_path)),
                                    "--output", str(output), "--out", str(out), "--epochs", "2", "--threads", "1"])
    assert code == 0
    assert out.read_bytes() == b"checkpoint"
    seen = json.loads((output / train_timm_teacher.EXPERIMENT / "argv.json").read_text())
    assert seen["omp"] == "1" and "--model" in seen["argv"]
    report = json.loads(out.with_name("resnet10t.report.json").read_text())
    assert report["best_eval_top1"] == 98.0 and report["last_eval_top1"] == 98.0
    assert report["train_py_sha256"] == train_timm_teacher.sha256(fake)
    # A rerun replaces the run folder (train.py would otherwise write to "<experiment>-1").
    assert train_timm_teacher.main(["--train-py", str(fake), "--root", str(tmp_path / "root"),
                                    "--output", str(output), "--out", str(out), "--epochs", "1"]) == 0
    assert json.loads(out.with_name("resnet10t.report.json").read_text())["best_eval_top1"] == 97.0


def test_script_never_downloads_a_missing_train_py(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        train_timm_teacher.main(["--train-py", str(tmp_path / "absent.py"), "--root", str(_mnist_root(tmp_path))])


def test_script_reports_a_failing_train_py(tmp_path: Path) -> None:
    fake = tmp_path / "train.py"
    fake.write_text("raise SystemExit(3)\n")
    out = tmp_path / "cache" / "resnet10t.pth.tar"
    assert train_timm_teacher.main(["--train-py", str(fake), "--root", str(_mnist_root(tmp_path)),
                                    "--output", str(tmp_path / "o"), "--out", str(out)]) == 3
    assert not out.exists()
