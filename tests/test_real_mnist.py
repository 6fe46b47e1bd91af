"""Real-data checks on the mnist-pu scenario (slow: materialises the data and trains the teacher
on first use; `pytest -m "not slow"` skips them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pucli.cli import app

pytestmark = pytest.mark.slow


def test_trained_lenet5_teacher_reaches_98_8_percent_on_mnist_test(mnist_pu: Path, mnist_teacher: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(mnist_teacher), "--data", str(mnist_pu / "test"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["models"][0]
    assert row["images"] == 10_000
    assert row["top1"] >= 98.8
    assert row["params"] == 61_706
    # 2 * (117,600 + 240,000 + 48,000 + 10,080 + 840) MACs, as in test_cli_evaluate
    assert row["flops_per_image"] == 833_040
    assert row["latency_ms"] > 0 and row["throughput"] > 0
