"""``pucli select`` through Typer's CliRunner on tiny PNG folders written by the tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import read_index

FAST = ["--epochs", "1", "--ensemble", "1", "--batch-size", "8", "--workers", "0", "--threads", "1"]


@pytest.fixture
def inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path],
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PUCLI_STATE_DIR", str(tmp_path / "state"))
    return {
        "positive": str(make_class_folder("pos", per_class=2)),
        "unlabeled": str(make_pool("pool", count=20)),
        "teacher": str(tiny_teacher),
    }


def _args(inputs: dict[str, str], *extra: str) -> list[str]:
    return ["select", "--positive", inputs["positive"], "--unlabeled", inputs["unlabeled"],
            "--teacher", inputs["teacher"], *FAST, *extra]


def test_select_writes_index_selector_and_report_beside_the_output(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sel.tsv"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(out)))
    assert result.exit_code == 0, result.output
    entries = read_index(out)
    assert all(e.score > 0 for e in entries)
    assert [e.score for e in entries] == sorted((e.score for e in entries), reverse=True)
    assert (tmp_path / "sel.selector.safetensors").is_file()
    report = json.loads((tmp_path / "sel.report.json").read_text())
    assert report["command"] == "select" and report["seed"] == 0
    assert report["counts"] == {"positive": 6, "unlabeled": 20, "selected": len(entries), "skipped": 0}
    assert report["results"]["class_prior"] == 0.3 and len(report["results"]["risks_per_epoch"]) == 1
    assert {"extract", "train", "score", "load"} <= set(report["timings_s"])


def test_all_writes_every_item_with_a_selected_column_and_budget_keeps_n(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "all.tsv"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--budget", "4", "--all", "--out", str(out)))
    assert result.exit_code == 0, result.output
    entries = read_index(out)
    assert len(entries) == 20 and sum(e.selected for e in entries) == 4
    assert all(e.selected for e in entries[:4])


def test_out_dash_writes_only_the_index_to_stdout(inputs: dict[str, str], tmp_path: Path) -> None:
    report = tmp_path / "r" / "run.report.json"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--budget", "3", "--out", "-", "--report", str(report), "--quiet"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "#pucli-index v1" and lines[1] == "path\tscore" and len(lines) == 5
    assert report.is_file() and (tmp_path / "r" / "run.selector.safetensors").is_file()


def test_same_seed_gives_identical_index(inputs: dict[str, str], tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.tsv"
        assert CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--all", "--out", str(out), "--no-cache")).exit_code == 0
        runs.append(out.read_text())
    assert runs[0] == runs[1]


def test_json_summary_and_cache_hit_on_second_run(inputs: dict[str, str], tmp_path: Path) -> None:
    first = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(tmp_path / "a.tsv"), "--json"))
    second = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(tmp_path / "b.tsv"), "--json"))
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert not one["cache_hit"] and two["cache_hit"]
    assert one["selected"] == two["selected"] and one["unlabeled"] == 20
    assert one["graph"]["neighbors"] == 10 and not one["graph"]["cache_hit"] and two["graph"]["cache_hit"]
    # 2 positives per class: the nnPU ranking, no held-out estimate: the whole pool.
    assert one["trust"] is None and one["recommendation"]["action"] == "pool"
    assert "--whole-pool" in one["recommendation"]["next"]
    assert "graph" in one["timings_s"]
    off = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(tmp_path / "c.tsv"), "--json",
                                        "--graph-neighbors", "0"))
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["graph"] == {"neighbors": 0} and json.loads(off.stdout)["selected"] == one["selected"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prior", "0", "--out", "x.tsv"], "--prior"),
        (["--prior", "1.5", "--out", "x.tsv"], "--prior"),
        (["--prior", "0.3", "--budget", "0", "--out", "x.tsv"], "--budget"),
        (["--prior", "0.3", "--out", "-", "--json"], "--json"),
        (["--prior", "0.3", "--risk", "pn", "--out", "x.tsv"], "--risk"),
        (["--prior", "0.3", "--augment-positives", "-1", "--out", "x.tsv"], "--augment-positives"),
        (["--prior", "0.3", "--augment-positives", "2", "--finetune", "--out", "x.tsv"], "--augment-positives"),
        (["--prior", "0.3", "--graph-neighbors", "-1", "--out", "x.tsv"], "--graph-neighbors"),
        (["--prior", "0.3", "--graph-steps", "-1", "--out", "x.tsv"], "--graph-steps"),
        (["--prior", "0.3", "--graph-alpha", "1.5", "--out", "x.tsv"], "--graph-alpha"),
        (["--prior", "0.3", "--ranking", "head", "--out", "x.tsv"], "--ranking"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_no_traceback(inputs: dict[str, str], extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, _args(inputs, *extra))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_positive_folder_is_a_usage_error(inputs: dict[str, str], tmp_path: Path) -> None:
    args = _args({**inputs, "positive": str(tmp_path / "nope")}, "--prior", "0.3", "--out", str(tmp_path / "x.tsv"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--positive" in result.output


def test_select_help_shows_an_example() -> None:
    result = CliRunner().invoke(app, ["select", "--help"])
    assert result.exit_code == 0 and "pucli select teacher.safetensors --positive" in result.output


def test_preview_draws_the_contact_sheet_beside_the_index(inputs: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    out, sheet = tmp_path / "sel.tsv", tmp_path / "sheet.png"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(out), "--preview", str(sheet)))
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert read_index(out)  # the index is written as without --preview


def test_preview_with_an_unknown_format_is_a_one_line_error_before_any_work(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sel.tsv"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.3", "--out", str(out), "--preview", str(tmp_path / "s.gif")))
    assert result.exit_code == 2
    assert "--preview" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_propagation_reports_its_estimated_precision_recall_and_recommendation(
        tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PUCLI_STATE_DIR", str(tmp_path / "state"))
    inputs = {"positive": str(make_class_folder("pos", per_class=5)), "unlabeled": str(make_pool("pool", count=40)),
              "teacher": str(tiny_teacher)}
    out = tmp_path / "sel.tsv"
    result = CliRunner().invoke(app, _args(inputs, "--prior", "0.1", "--out", str(out), "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    trust = summary["trust"]
    assert summary["ranking"] == "propagation" and trust["held_out"] == 15 and trust["kept"] == 4
    assert 0.0 <= trust["recall_low"] <= trust["recall"] <= trust["recall_high"] <= 1.0
    # kept = round(0.1 x 40) = pi x N, so precision equals recall
    assert trust["precision"] == pytest.approx(trust["recall"], abs=1e-4)
    assert summary["recommendation"]["action"] == "pool"  # 4 images kept: far too few to train on alone
    report = json.loads((tmp_path / "sel.report.json").read_text())
    assert report["results"]["recommendation"] == summary["recommendation"]
    assert report["results"]["trust"] == trust
    assert "recommendation:" in result.stderr
