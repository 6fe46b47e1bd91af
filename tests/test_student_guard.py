"""benchmarks/student_guard.py (issue 30): its command line and its comparison, on fake records.

The guard itself (the pipeline on the issue-30 pool) is a benchmark check, not a test: it is not run here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "benchmarks" / "student_guard.py"
_spec = importlib.util.spec_from_file_location("student_guard", _PATH)
guard = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("student_guard", guard)  # dataclasses look their module up there
_spec.loader.exec_module(guard)

INPUTS = {"teacher_sha256": "t" * 64, "pool_sha256": "p" * 64, "positive_sha256": "l" * 64,
          "student": "lenet5_half", "prior": "0.2"}


def _record(top1: dict[str, float], **inputs: str) -> dict:
    return {"format": guard.RECORD_FORMAT, "format_version": guard.RECORD_VERSION,
            "inputs": {**INPUTS, **inputs}, "top1": top1}


def test_defaults_are_this_checkout_three_seeds_and_a_tolerance_of_0_3_points():
    args = guard.parse_args([])
    assert args.pucli_root == guard.REPO
    assert args.seeds == [0, 1, 2]
    assert args.tolerance == 0.3
    assert args.record == guard.REPO / "benchmarks" / "results" / "student_guard.json"
    assert args.jobs == 1 and not args.write_record


def test_options_parse(tmp_path):
    args = guard.parse_args(["--pucli-root", str(tmp_path), "--seeds", "0", "--tolerance", "0.5", "--jobs", "2",
                             "--record", str(tmp_path / "r.json"), "--write-record"])
    assert (args.pucli_root, args.seeds, args.tolerance, args.jobs) == (tmp_path, [0], 0.5, 2)
    assert args.record == tmp_path / "r.json" and args.write_record


@pytest.mark.parametrize("argv", [["--tolerance", "-1"], ["--jobs", "0"], ["--seeds", "1", "1"], ["--seeds"]])
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(SystemExit) as raised:
        guard.parse_args(argv)
    assert raised.value.code == 2


def test_a_mean_within_the_tolerance_passes():
    verdict = guard.compare(_record({"0": 97.6, "1": 97.7, "2": 97.8}), _record({"0": 97.9, "1": 97.9, "2": 97.9}))
    assert (verdict.status, verdict.exit_code) == ("ok", 0)
    assert verdict.measured_mean == pytest.approx(97.7) and verdict.recorded_mean == pytest.approx(97.9)
    assert verdict.line.startswith("student guard: ok: mean top-1 97.70 %")


def test_a_drop_of_exactly_the_tolerance_passes_and_more_fails():
    record = _record({"0": 98.0, "1": 98.0, "2": 98.0})
    assert guard.compare(_record({"0": 97.7, "1": 97.7, "2": 97.7}), record).exit_code == 0
    verdict = guard.compare(_record({"0": 97.69, "1": 97.7, "2": 97.7}), record)
    assert (verdict.status, verdict.exit_code) == ("DROP", 1)
    assert "-0.30 points" in verdict.line or "-0.31 points" in verdict.line


def test_one_bad_seed_is_judged_by_the_mean():
    record = _record({"0": 98.0, "1": 98.0, "2": 98.0})
    assert guard.compare(_record({"0": 97.4, "1": 98.2, "2": 98.2}), record).exit_code == 0  # mean 97.93
    assert guard.compare(_record({"0": 96.9, "1": 98.0, "2": 98.0}), record).exit_code == 1  # mean 97.63


def test_only_the_seeds_both_ran_are_compared():
    record = _record({"0": 97.0, "1": 98.0, "2": 99.0})
    verdict = guard.compare(_record({"0": 96.8}), record)
    assert verdict.exit_code == 0 and verdict.recorded_mean == pytest.approx(97.0)
    assert guard.compare(_record({"0": 96.6}), record).exit_code == 1
    assert guard.compare(_record({"7": 99.0}), record).exit_code == 2


@pytest.mark.parametrize("key", guard.COMPARABLE_KEYS)
def test_other_inputs_are_not_comparable(key):
    verdict = guard.compare(_record({"0": 99.0}, **{key: "other"}), _record({"0": 97.0}))
    assert (verdict.status, verdict.exit_code) == ("not comparable", 2)
    assert key in verdict.line


def test_read_record_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(SystemExit, match="--write-record"):
        guard.read_record(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SystemExit, match="not a student-guard record"):
        guard.read_record(tmp_path / "other.json")
    (tmp_path / "ok.json").write_text(json.dumps(_record({"0": 97.5})))
    assert guard.read_record(tmp_path / "ok.json")["top1"] == {"0": 97.5}


def test_the_recorded_figure_in_the_repository_is_a_readable_record():
    record = guard.read_record(guard.DEFAULT_RECORD)
    assert set(guard.COMPARABLE_KEYS) <= set(record["inputs"])
    assert record["top1"] and all(90.0 < float(v) <= 100.0 for v in record["top1"].values())


def test_pool_digest_does_not_depend_on_where_mnist_pu_was_built():
    paths_a = ["/a/root/unlabeled/mnist/x.png", "/a/root/unlabeled/fashion/y.png"]
    paths_b = ["/b/other/unlabeled/mnist/x.png", "/b/other/unlabeled/fashion/y.png"]
    digest = guard._sha256_relative_list
    assert digest(paths_a, Path("/a/root")) == digest(paths_b, Path("/b/other"))
