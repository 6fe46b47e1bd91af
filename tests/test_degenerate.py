"""The collapse guard (pucli.pu.degenerate): a degenerate selection is never silent.

Hand-made counts and histories for each warning, then ``pucli select`` on an empty selection
(made deterministic by monkeypatching the selection rule) with and without ``--allow-empty``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pucli.cli import app
from pucli.data.index import read_index
from pucli.pu.degenerate import risk_stuck, selection_warnings


def _epoch(positive_risk: float, negative_risk: float, ascent_steps: float = 0.0) -> dict[str, float]:
    return {"epoch": 1, "risk": positive_risk + max(0.0, negative_risk), "positive_risk": positive_risk,
            "negative_risk": negative_risk, "ascent_steps": ascent_steps}


HEALTHY = [_epoch(0.08, 0.05, 3), _epoch(0.01, 0.002, 1)]
STUCK_BELOW = [_epoch(0.15, 0.02, 2), _epoch(0.2, 0.0)]


def test_healthy_selection_gets_no_warning() -> None:
    assert selection_warnings(2_000, 10_000, 0.2, HEALTHY) == []
    assert selection_warnings(600, 10_000, 0.05, HEALTHY) == []  # 1.2x the prior: fine


def test_empty_selection_warns_that_nothing_was_kept() -> None:
    (warning,) = selection_warnings(0, 20_000, 0.2, HEALTHY)
    assert "empty" in warning and "20,000" in warning and "4,000 expected" in warning
    assert "\n" not in warning


def test_nearly_the_whole_pool_kept_warns() -> None:
    (warning,) = selection_warnings(9_800, 10_000, 0.3, HEALTHY)
    assert "nearly the whole pool" in warning and "98.0%" in warning


def test_nearly_all_threshold_follows_a_high_prior() -> None:
    # At a prior of 0.97, keeping 96 % of the pool is what the prior says, not a collapse.
    assert selection_warnings(9_600, 10_000, 0.97, HEALTHY) == []
    assert selection_warnings(9_950, 10_000, 0.97, HEALTHY)


@pytest.mark.parametrize(("kept", "side"), [(200, "under a quarter of"), (249, "under a quarter of"),
                                            (4_001, "over 4 times")])
def test_kept_count_far_from_the_prior_warns(kept: int, side: str) -> None:
    (warning,) = selection_warnings(kept, 20_000, 0.05, HEALTHY)  # 1,000 expected
    assert side in warning and "`class_prior`" in warning


def test_count_within_four_times_of_the_prior_is_not_flagged() -> None:
    assert selection_warnings(251, 20_000, 0.05, HEALTHY) == []
    assert selection_warnings(3_999, 20_000, 0.05, HEALTHY) == []


def test_risk_stuck_at_the_prior_warns_of_a_collapse() -> None:
    warnings = selection_warnings(0, 20_000, 0.2, STUCK_BELOW)
    assert len(warnings) == 2 and "empty" in warnings[0]
    assert "collapsed" in warnings[1] and "stuck at 0.2" in warnings[1] and "below zero" in warnings[1]
    assert risk_stuck(STUCK_BELOW, 0.2) == "below"


def test_risk_stuck_is_read_from_the_last_epoch_only() -> None:
    assert risk_stuck(list(reversed(STUCK_BELOW)), 0.2) is None
    assert risk_stuck([_epoch(0.199, 0.003)], 0.2) == "below"  # within 2 % of pi
    assert risk_stuck([_epoch(0.19, 0.0)], 0.2) is None


def test_an_ascent_step_means_the_risk_is_not_stuck() -> None:
    assert risk_stuck([_epoch(0.2, 0.0, ascent_steps=1)], 0.2) is None


def test_a_collapsed_logistic_run_reports_more_than_pi_and_is_stuck_too() -> None:
    assert risk_stuck([_epoch(0.2 * 3.1, 0.0)], 0.2) == "below"


def test_risk_stuck_with_every_score_above_zero() -> None:
    history = [_epoch(0.0, 0.8)]
    assert risk_stuck(history, 0.2) == "above"
    warnings = selection_warnings(20_000, 20_000, 0.2, history)
    assert "nearly the whole pool" in warnings[0] and "above zero" in warnings[1]


def test_a_fine_tuning_rollback_is_reported_and_its_epoch_not_read_as_stuck() -> None:
    history = [_epoch(0.01, 0.002), {**_epoch(0.2, 0.0), "rollbacks": 2.0}]
    assert risk_stuck(history, 0.2) is None
    (warning,) = selection_warnings(2_000, 10_000, 0.2, history)
    assert "collapsed 2 time(s)" in warning and "last healthy state" in warning


def test_budget_leaves_the_count_to_the_user_but_still_checks_the_risk() -> None:
    assert selection_warnings(9_900, 10_000, 0.2, HEALTHY, budget=9_900) == []
    (warning,) = selection_warnings(100, 10_000, 0.2, STUCK_BELOW, budget=100)
    assert "collapsed" in warning


def test_without_a_prior_only_the_count_extremes_are_checked() -> None:
    assert selection_warnings(10, 10_000, None, STUCK_BELOW) == []
    assert "empty" in selection_warnings(0, 10_000, None, [])[0]


def test_no_pool_or_no_history_gives_no_warning_and_no_error() -> None:
    assert selection_warnings(0, 0, 0.2, []) == []
    assert selection_warnings(2_000, 10_000, 0.2, []) == []
    assert risk_stuck([{"epoch": 1}], 0.2) is None


# --- pucli select ------------------------------------------------------------------------------------

FAST = ["--epochs", "1", "--ensemble", "1", "--batch-size", "8", "--workers", "0", "--threads", "1"]


@pytest.fixture
def inputs(tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path]) -> dict[str, str]:
    return {"positive": str(make_class_folder("pos", per_class=2)), "unlabeled": str(make_pool("pool", count=12)),
            "teacher": str(tiny_teacher)}


@pytest.fixture
def keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every selection rule keeps nothing: an empty selection whatever the tiny random teacher scores."""
    from pucli.pu import selection

    monkeypatch.setattr(selection, "select_indices", lambda scores, budget=None: torch.zeros(len(scores), dtype=torch.bool))


def _select(inputs: dict[str, str], *extra: str) -> list[str]:
    return ["select", "--teacher", inputs["teacher"], "--positive", inputs["positive"], "--unlabeled",
            inputs["unlabeled"], "--prior", "0.3", *FAST, *extra]


@pytest.mark.usefixtures("keeps_nothing", "one_thread")
def test_empty_selection_is_an_error_and_writes_nothing(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sel.tsv"
    result = CliRunner().invoke(app, _select(inputs, "--out", str(out), "--quiet"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[-1].startswith("error: the selection is empty") and "--allow-empty" in lines[-1]
    # The warning reaches the user even with --quiet.
    assert any(line.startswith("warning: the selection is empty: kept none of the 12") for line in lines)
    assert not out.exists() and not (tmp_path / "sel.selector.safetensors").exists()
    assert result.stdout == ""


@pytest.mark.usefixtures("keeps_nothing", "one_thread")
def test_allow_empty_writes_the_empty_index_and_records_the_warnings(inputs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sel.tsv"
    result = CliRunner().invoke(app, _select(inputs, "--out", str(out), "--allow-empty", "--json"))
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[:2] == ["#pucli-index v1", "path\tscore"] and read_index(out) == []
    summary = json.loads(result.stdout)
    assert summary["selected"] == 0 and summary["warnings"] and "empty" in summary["warnings"][0]
    report = json.loads((tmp_path / "sel.report.json").read_text())
    assert report["results"]["warnings"] == summary["warnings"]
    assert "warning: the selection is empty" in result.stderr


@pytest.mark.usefixtures("one_thread")
def test_run_selection_fills_the_warnings_of_its_result(inputs: dict[str, str], keeps_nothing: None) -> None:
    from pucli.checkpoints import load_model
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    positive, pool = sorted(Path(inputs["positive"]).rglob("*.png")), sorted(Path(inputs["unlabeled"]).rglob("*.png"))
    options = SelectorOptions(class_prior=0.3, epochs=1, ensemble=1, batch_size=8, graph_neighbors=0)
    result = run_selection(load_model(inputs["teacher"]), positive, pool, options, use_cache=False)
    assert result.counts["selected"] == 0 and "empty" in result.warnings[0]
