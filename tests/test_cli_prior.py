"""``pucli prior`` and ``pucli select`` without ``--prior`` (the class prior estimated), on tiny
PNG folders; and, marked slow, on the real mnist-pu scenario."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import read_index

FAST = ["--workers", "0", "--threads", "1", "--batch-size", "8"]
SELECT_FAST = ["--epochs", "1", "--ensemble", "1"]


@pytest.fixture
def inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path]) -> dict[str, str]:
    return {
        "positive": str(make_class_folder("pos", per_class=3)),
        "unlabeled": str(make_pool("pool", count=30)),
        "teacher": str(tiny_teacher),
    }


def _prior_args(inputs: dict[str, str], *extra: str) -> list[str]:
    return ["prior", "--positive", inputs["positive"], "--unlabeled", inputs["unlabeled"], "--teacher", inputs["teacher"],
            *FAST, *extra]


def _select_args(inputs: dict[str, str], *extra: str) -> list[str]:
    return ["select", "--positive", inputs["positive"], "--unlabeled", inputs["unlabeled"], "--teacher", inputs["teacher"],
            *FAST, *SELECT_FAST, *extra]


def test_prior_prints_only_the_estimate_on_stdout(inputs: dict[str, str]) -> None:
    result = CliRunner().invoke(app, _prior_args(inputs, "--quiet"))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    assert 0.0 < float(result.stdout) < 1.0


def test_prior_json_has_the_estimate_its_interval_and_a_warning_for_few_positives(inputs: dict[str, str]) -> None:
    result = CliRunner().invoke(app, _prior_args(inputs, "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["low"] <= data["class_prior"] <= data["high"]
    assert data["positive"] == 9 and data["unlabeled"] == 30 and data["bootstrap"] == 200
    assert "9 labeled positives" in data["warning"]
    assert "9 labeled positives" in result.stderr
    report = json.loads(Path(data["report"]).read_text())
    assert report["command"] == "prior"
    assert report["results"]["prior_estimate"]["class_prior"] == data["class_prior"]


def test_prior_is_reproducible_for_a_seed(inputs: dict[str, str]) -> None:
    first = CliRunner().invoke(app, _prior_args(inputs, "--quiet", "--seed", "4"))
    second = CliRunner().invoke(app, _prior_args(inputs, "--quiet", "--seed", "4", "--no-cache"))
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout


def test_select_without_prior_estimates_it_and_records_where_it_came_from(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "auto.tsv"
    # Training options of select (here the batch and the loss) do not change the estimate.
    result = CliRunner().invoke(app, _select_args(inputs, "--out", str(out), "--all", "--train-batch-size", "8",
                                                  "--loss", "logistic"))
    assert result.exit_code == 0, result.output
    assert "estimated" in result.stderr
    report = json.loads((tmp_path / "auto.report.json").read_text())["results"]
    assert report["class_prior_source"] == "estimated"
    assert 0.0 < report["class_prior"] < 1.0
    assert report["class_prior"] == report["prior_estimate"]["class_prior"]
    assert len(read_index(out)) == 30

    # The estimate is what `pucli prior` prints for the same inputs and seed, and
    # --prior auto is the default spelled out: the same index, byte for byte.
    printed = CliRunner().invoke(app, _prior_args(inputs, "--quiet"))
    assert float(printed.stdout) == pytest.approx(report["class_prior"], abs=5e-5)
    explicit = tmp_path / "explicit.tsv"
    again = CliRunner().invoke(app, _select_args(inputs, "--prior", "auto", "--out", str(explicit), "--all",
                                                 "--train-batch-size", "8", "--loss", "logistic"))
    assert again.exit_code == 0, again.output
    assert explicit.read_bytes() == out.read_bytes()


def test_select_with_a_given_prior_says_so(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "given.tsv"
    result = CliRunner().invoke(app, _select_args(inputs, "--prior", "0.25", "--out", str(out), "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["class_prior"] == 0.25 and summary["class_prior_source"] == "given"
    assert summary["prior_estimate"] is None


@pytest.mark.parametrize("value", ["abc", "0", "1", "1.5", "-0.2", ""])
def test_select_refuses_a_prior_that_is_neither_a_fraction_nor_auto(inputs: dict[str, str], tmp_path: Path,
                                                                    value: str) -> None:
    result = CliRunner().invoke(app, _select_args(inputs, "--prior", value, "--out", str(tmp_path / "x.tsv")))
    assert result.exit_code == 2
    assert "--prior" in result.stderr and "auto" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_prior_with_a_single_positive_asks_for_prior(tiny_teacher: Path, make_class_folder: Callable[..., Path],
                                                     make_pool: Callable[..., Path]) -> None:
    inputs = {"positive": str(make_class_folder("one", classes=("0",), per_class=1)),
              "unlabeled": str(make_pool("pool1", count=10)), "teacher": str(tiny_teacher)}
    result = CliRunner().invoke(app, _prior_args(inputs))
    assert result.exit_code == 1
    assert "--prior" in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_prior_on_mnist_pu_is_within_three_points_of_the_true_prior(mnist_pu: Path, mnist_teacher: Path) -> None:
    result = CliRunner().invoke(app, ["prior", "--positive", str(mnist_pu / "positive" / "nl10-seed0"),
                                      "--unlabeled", str(mnist_pu / "unlabeled.txt"), "--teacher", str(mnist_teacher),
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert abs(data["class_prior"] - 0.30) <= 0.03
    assert data["low"] <= 0.30 <= data["high"]
    assert data["warning"] is None


def test_prior_refuses_to_run_under_torchrun(inputs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, _prior_args(inputs))
    assert result.exit_code == 2 and "without torchrun" in result.stderr
