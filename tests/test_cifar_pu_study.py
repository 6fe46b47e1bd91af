"""benchmarks/cifar_pu.py, the cifar-pu study harness, on tiny synthetic inputs: rows as selections plus how
to expand and distill them, cache keys, equal-steps and equal-wall-clock arithmetic, a selection's F1 and
makeup, the index files it writes, the whole run through a stand-in ``pucli`` command line (what is run,
what is cached, what resumes), and the report. One slow test drives the real pucli on a few real images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _cifar_pu_report as report
import cifar_pu as cp
from conftest import REAL_CACHE_DIR, REPO_ROOT

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- rows and keys ---------------------------------------------------------------------------------------


def test_rows_are_a_selection_plus_how_to_expand_and_distill_it() -> None:
    assert tuple(cp.ROWS) == ("KD-original", "Baseline-1", "KD-random", "KD-pool", "PU-s1", "PU-s2", "confidence",
                              "PU-weighted")
    # KD-pool and PU-weighted share one expanded set (the scored whole pool); only the weighting differs.
    assert cp.ROWS["KD-pool"].selection == cp.ROWS["PU-weighted"].selection
    assert cp.ROWS["KD-pool"].selection.whole_pool and cp.ROWS["PU-weighted"].weighting == "pu-score"
    assert cp.ROWS["PU-s2"].selection.size == cp.PU_S2_SIZE == 5_000
    needs_select = {name for name, row in cp.ROWS.items() if row.selection.needs_select}
    assert needs_select == {"KD-random", "KD-pool", "PU-s1", "PU-s2", "confidence", "PU-weighted"}
    assert not cp.POOL_ONLY.selection.needs_select  # a pool with no prior to give (cifar100) needs no select
    names = {row.selection.name() for row in cp.ROWS.values()}
    assert len(names) == 7  # 8 rows, 7 sets


def test_a_new_select_criterion_is_one_variant_and_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cp.SELECT_VARIANTS, "domain", ("--criterion", "domain"))
    spec = cp.SelectionSpec("pu-s1", variant="domain")
    row = cp.Row("PU-domain", spec)
    assert spec.name() == "pu-s1-domain" and spec.needs_select
    assert spec.params()["select_args"] == ["--criterion", "domain"]
    assert cp.key_of(spec.name(), spec.params()) != cp.key_of("pu-s1", cp.SelectionSpec("pu-s1").params())
    assert row.weighting == "uniform"
    with pytest.raises(ValueError, match="SELECT_VARIANTS"):
        cp.SelectionSpec("pu-s1", variant="nonexistent")
    with pytest.raises(ValueError, match="unknown selection kind"):
        cp.SelectionSpec("oracle")


def test_cache_key_is_stable_readable_and_moves_with_every_parameter() -> None:
    params = {"cell": {"pool": "mixed", "n_l": 100, "seed": 0}, "loss": "robust-kd", "epochs": 10}
    key = cp.key_of("mixed-nl100-seed0-pu-s1-resnet20", params)
    assert key == cp.key_of("mixed-nl100-seed0-pu-s1-resnet20", dict(reversed(list(params.items()))))
    assert key.startswith("mixed-nl100-seed0-pu-s1-resnet20-") and len(key.rsplit("-", 1)[1]) == 10
    for change in ({"epochs": 11}, {"loss": "kd"}, {"cell": {"pool": "mixed", "n_l": 100, "seed": 1}}):
        assert cp.key_of("x", {**params, **change}) != cp.key_of("x", params)


def test_student_params_name_the_users_file_not_its_folder(tmp_path: Path) -> None:
    a = cp.students(tmp_path / "a")["resnet20"].params()
    b = cp.students(tmp_path / "b")["resnet20"].params()
    assert a == b == {"name": "resnet20", "arch": "resnet.py:resnet20", "kwargs": None}
    timm = cp.students(tmp_path)["resnet10t"]
    assert timm.distill_args() == ["--student", "resnet10t", "--student-kwargs", '{"output_stride": 16}']
    assert timm.evaluate_args() == []
    assert cp.students(tmp_path)["resnet20"].evaluate_args() == ["--arch", f"{tmp_path}/resnet.py:resnet20"]


# --- arithmetic ----------------------------------------------------------------------------------------


def test_steps_per_epoch_follows_distills_rule() -> None:
    assert cp.steps_per_epoch(42_420) == 331  # a last partial batch is dropped
    assert cp.steps_per_epoch(256) == 2 and cp.steps_per_epoch(255) == 2 and cp.steps_per_epoch(200) == 2
    assert cp.steps_per_epoch(100) == 1


@pytest.mark.parametrize(("items", "epochs", "steps"), [
    (42_420, 3, 993),    # the whole pool + L^t at n_l = 100
    (12_500, 10, 970),   # PU-s1 / random / confidence / class map
    (10_000, 13, 1_014),  # KD-original
    (6_000, 22, 1_012),  # PU-s2
    (100, 1_000, 1_000),  # a set smaller than a batch: one step an epoch
])
def test_equal_steps_is_the_nearest_whole_epoch(items: int, epochs: int, steps: int) -> None:
    assert cp.epochs_for_steps(items, 1_000) == epochs
    assert epochs * cp.steps_per_epoch(items) == steps
    assert abs(steps - 1_000) <= cp.steps_per_epoch(items) / 2
    assert cp.epochs_for_steps(items, 1) == 1  # never zero epochs


def test_equal_wallclock_epochs_are_what_the_budget_leaves() -> None:
    # A 1,000 s budget, 200 s overhead, 50 s fixed cost, 1 s a step; 1,280 items = 10 steps an epoch.
    assert cp.wallclock_epochs(1_000, 200, 50, 1.0, 1_280) == 75
    assert cp.wallclock_epochs(1_000, 990, 0, 1.0, 1_280) == 1  # exactly one epoch left
    assert cp.wallclock_epochs(1_000, 995, 0, 1.0, 1_280) == 0  # not even one epoch
    assert cp.wallclock_epochs(1_000, 2_000, 0, 1.0, 1_280) == 0


def test_row_overhead_counts_select_only_for_rows_that_use_the_ranking() -> None:
    select = {"run": {"wall_s": 600.0}}
    sets = {name: {"run": {"wall_s": seconds}} for name, seconds in
            (("pool-scored", 300.0), ("pu-s1", 90.0), ("random", 80.0), ("confidence", 85.0), ("class-map", 70.0))}
    assert cp.row_overhead(cp.ROWS["KD-pool"], select, sets) == {"expand_s": 300.0}
    assert cp.row_overhead(cp.ROWS["PU-weighted"], select, sets) == {"select_s": 600.0, "expand_s": 300.0}
    assert cp.row_overhead(cp.ROWS["PU-s1"], select, sets) == {"select_s": 600.0, "expand_s": 90.0}
    assert cp.row_overhead(cp.ROWS["KD-random"], select, sets) == {"expand_s": 80.0}
    assert cp.row_overhead(cp.ROWS["confidence"], select, sets) == {"expand_pool_s": 300.0, "expand_s": 85.0}
    assert cp.row_overhead(cp.ROWS["Baseline-1"], select, sets) == {"expand_s": 70.0}
    unit = {"distill": {"wall_s": 1_100.0}, "train_s": 1_000.0, "steps": 1_000}
    assert cp.student_costs(unit) == (100.0, 1.0)


def test_plan_follows_the_parts_in_order_without_duplicates() -> None:
    jobs = cp.make_plan(["main", "loss", "timm", "pools"], rows=list(cp.MAIN_ROWS), pool="mixed", nls=[100], seeds=[0])
    main = [j for j in jobs if j.part == "main"]
    assert [j.row.name for j in main] == list(cp.MAIN_ROWS)
    # The loss part's robust-kd PU-s1 is main's own student: planned once.
    loss = [j for j in jobs if j.part == "loss"]
    assert [j.loss for j in loss] == ["kd", "weighted-kd"]
    noaug = cp.make_plan(["noaug"], rows=[], pool="mixed", nls=[100], seeds=[0], steps_hint=1_000)
    assert {(j.augment, j.steps) for j in noaug} == {("none", 2_000)} and len(noaug) == len(cp.NOAUG_ROWS)
    assert [j.row.name for j in jobs if j.part == "timm"] == list(cp.TIMM_ROWS)
    assert {j.student for j in jobs if j.part == "timm"} == {"resnet10t"}
    assert [j.cell.pool for j in jobs if j.part == "pools"] == ["cifar100", "tinyimagenet"]
    assert jobs.index(main[-1]) < jobs.index(loss[0])
    seeds = cp.make_plan(["main"], rows=["PU-s1"], pool="mixed", nls=[100, 10], seeds=[0, 1])
    assert [(j.cell.n_l, j.cell.seed) for j in seeds] == [(100, 0), (100, 1), (10, 0), (10, 1)]
    with pytest.raises(ValueError, match="unknown part"):
        cp.make_plan(["bogus"], rows=[], pool="mixed", nls=[100], seeds=[0])


# --- selections and index files -----------------------------------------------------------------------


def _truth_rows() -> list[dict[str, str]]:
    rows = []
    for i in range(10):
        source = "cifar100" if i < 4 else "tinyimagenet"
        positive = "1" if i >= 7 else "0"
        rows.append({"path": f"/p/s.tar#{i:06d}.png", "positive": positive, "source": source})
    return rows


def test_selection_metrics_give_f1_and_makeup_by_source() -> None:
    truth = _truth_rows()  # 3 positives (7, 8, 9), all Tiny ImageNet; 4 CIFAR-100
    metrics = cp.selection_metrics([truth[i]["path"] for i in (0, 1, 8, 9)], truth)
    assert metrics["selected"] == 4 and metrics["true_positive"] == 2
    assert metrics["precision"] == 0.5 and metrics["recall"] == round(2 / 3, 4) and metrics["f1"] == round(4 / 7, 4)
    assert metrics["by_source"] == {"cifar100": 2, "tinyimagenet": 2}
    assert metrics["positives_by_source"] == {"tinyimagenet": 2}
    assert cp.precision_recall_f1(0, 0, 5)["f1"] == 0.0
    assert cp.selection_metrics([], truth)["recall"] == 0.0


def test_index_files_are_read_back_by_pucli(tmp_path: Path) -> None:
    from pucli.data.index import read_index

    entries = [(f"/pool/a.tar#{i:06d}.png", 1.5 - i) for i in range(3)]
    assert cp.write_index(tmp_path / "plain.tsv", entries) == 3
    assert cp.write_index(tmp_path / "all.tsv", entries, with_selected=True) == 3
    for name in ("plain.tsv", "all.tsv"):
        read = read_index(tmp_path / name)
        assert [str(e.path) for e in read] == [p for p, _ in entries]
        assert [e.score for e in read] == [1.5, 0.5, -0.5] and all(e.selected for e in read)
    assert cp.read_index(tmp_path / "all.tsv") == [(p, s, True) for p, s in entries]


# --- the run, through a stand-in pucli -----------------------------------------------------------------------

STUB = textwrap.dedent('''
    """A stand-in for pucli's command line: what cifar_pu.py reads of each command, deterministically."""
    import hashlib, json, os, sys
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    CLASSES = %(classes)r
    argv = sys.argv[1:]
    with open(os.environ["STUB_CALLS"], "a") as log:
        log.write(json.dumps(argv) + "\\n")
    if argv == ["--version"]:
        print("pucli stub"); sys.exit(0)
    command = argv[0]

    def opt(name, default=None):
        return argv[argv.index(name) + 1] if name in argv else default

    def unit(text):
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    def labeled(folder):
        return [(i, str(f)) for i, c in enumerate(CLASSES) for f in sorted((Path(folder) / c).glob("*"))]

    def read_index(path):
        rows, header = [], None
        for line in Path(path).read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            f = line.split("\\t")
            if header is None:
                header = f
                continue
            r = dict(zip(header, f))
            rows.append((r["path"], float(r["score"]), r.get("selected", "1") == "1"))
        return rows

    if command == "select":
        pool = [p for p in Path(opt("--unlabeled")).read_text().split()]
        prior = float(opt("--prior"))
        scores = sorted(((unit(p) * 2 - 1, p) for p in pool), reverse=True)
        keep = round(prior * len(pool))
        lines = ["#pucli-index v1", "path\\tscore\\tselected"] + [
            f"{p}\\t{s:.6g}\\t{1 if i < keep else 0}" for i, (s, p) in enumerate(scores)]
        Path(opt("--out")).write_text("\\n".join(lines) + "\\n")
        print(json.dumps({"selected": keep, "ranking": "propagation", "warnings": [],
                          "trust": {"f1": 0.8, "f1_low": 0.7, "f1_high": 0.9, "placement": 0.1},
                          "recommendation": {"action": "pool", "reason": "placement 0.10 < 0.3"}}))
    elif command == "expand":
        positives = labeled(opt("--positive"))
        index = [r for r in read_index(opt("--index")) if "--whole-pool" in argv or r[2]]
        out = Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
        rows = [(p, "positive", str(c), "") for c, p in positives]
        rows += [(p, "unlabeled", "-1", f"{s:g}") for p, s, _ in index]
        soft = np.array([[unit(p + str(k)) ** 4 for k in range(10)] for p, *_ in rows], dtype=np.float32)
        soft /= soft.sum(axis=1, keepdims=True)
        save_file({"soft_targets": soft}, str(out / "soft_targets.safetensors"))
        (out / "manifest.tsv").write_text("#pucli-manifest v1\\npath\\torigin\\tlabel\\tscore\\n"
                                          + "".join("\\t".join(r) + "\\n" for r in rows))
        top = soft[len(positives):].argmax(axis=1) if index else np.zeros(0, dtype=int)
        print(json.dumps({"out": str(out), "items": len(rows), "skipped": 0, "classes": [
            {"class": c, "positive": sum(1 for k, _ in positives if k == i), "selected": int((top == i).sum()),
             "soft_count": 1.0, "weight": 1.0} for i, c in enumerate(CLASSES)]}))
    elif command == "distill":
        data = Path(opt("--data"))
        items = len((data / "manifest.tsv").read_text().splitlines()) - 2
        epochs = int(opt("--epochs"))
        steps = epochs * (items // 128 if items >= 256 else max(1, -(-items // 128)))
        quality = unit(str(data) + opt("--loss") + opt("--weighting") + opt("--student"))
        top1 = round(50 + 10 * quality + steps / 1000, 2)
        Path(opt("--out")).write_text(json.dumps({"top1": top1}))
        print(json.dumps({"items": items, "epochs": epochs, "augment": "flip-crop", "images_per_s": 100.0,
                          "final_loss": 1.0, "history": [{"train_s": steps * 0.01} for _ in range(epochs)]}))
    elif command == "evaluate":
        top1 = json.loads(Path(argv[1]).read_text())["top1"]
        print(json.dumps({"models": [{"top1": top1, "top5": 99.0, "params": 1, "flops_per_image": 2}]}))
    else:
        sys.exit(f"stub: no command {command}")
''') % {"classes": CLASSES}


def _synthetic_root(root: Path) -> Path:
    """A cifar-pu root in the layout of benchmarks/cifar_pu_data.py: 40 pool 'images' (12 class-map
    positives), 3 train images a class (2 of them L^t, nl2-seed0), 1 test image a class."""
    pool = root / "pools" / "mixed"
    pool.mkdir(parents=True)
    rows = []
    for i in range(40):
        source = "cifar100" if i % 3 == 0 else "tinyimagenet"
        positive = "1" if source == "tinyimagenet" and i % 2 == 0 else "0"
        rows.append(f"{pool}/mixed-000000.tar#{i:06d}.png\t{positive}\t{source}\tlabel{i}\t\torig{i}")
    header = "path\tpositive\tsource\tlabel\tcifar10_class\toriginal\n"
    (pool / "ground_truth.tsv").write_text(header + "\n".join(rows) + "\n")
    (pool / "shards.txt").write_text("\n".join(r.split("\t")[0] for r in rows) + "\n")
    positives = sum(r.split("\t")[1] == "1" for r in rows)
    (pool / "manifest.json").write_text(json.dumps({"images": 40, "positive": positives,
                                                    "true_class_prior": positives / 40}))
    for cls in CLASSES:
        for part, count in (("train", 3), ("test", 1)):
            (root / part / cls).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                (root / part / cls / f"{cls}_{k}.png").write_bytes(b"png")
        (root / "positive" / "nl2-seed0" / cls).mkdir(parents=True)
        for k in range(2):
            os.link(root / "train" / cls / f"{cls}_{k}.png", root / "positive" / "nl2-seed0" / cls / f"{cls}_{k}.png")
    (root / "manifest.json").write_text(json.dumps({"scenario": "cifar-pu"}))
    return root


@pytest.fixture()
def stub_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[cp.Study, Path]:
    stub = tmp_path / "stub_pucli.py"
    stub.write_text(STUB)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STUB_CALLS", str(calls))
    models = tmp_path / "models"
    models.mkdir()
    (models / cp.TEACHER_FILE).write_bytes(b"weights")
    (models / "resnet.py").write_text("# the user's file\n")
    scenario = cp.Scenario(_synthetic_root(tmp_path / "root"))
    settings = cp.Settings(scenario=scenario, work=tmp_path / "work",
                           pucli=cp.PucliCommand([sys.executable, str(stub)]),
                           models=models, steps=4)
    settings.teacher = cp.prepare_teacher(scenario, models)
    return cp.Study(settings), calls


def _calls(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_the_main_rows_run_through_the_command_line_once_and_are_cached(stub_study: tuple[cp.Study, Path]) -> None:
    study, calls = stub_study
    scenario = study.scenario
    sidecar = scenario.root / "teacher" / "resnet56-4bfd9763.config.json"
    assert json.loads(sidecar.read_text()) == cp.TEACHER_PREPROCESSING
    cell = cp.Cell("mixed", 2, 0)
    table = cp.students(study.settings.models)
    units = {name: study.student_unit(cell, row, table["resnet20"]) for name, row in cp.ROWS.items()}
    commands = [c[0] for c in _calls(calls)]
    assert commands.count("select") == 1 and commands.count("distill") == 8 and commands.count("evaluate") == 8
    assert commands.count("expand") == 7  # KD-pool and PU-weighted share the scored pool's set
    select_call = next(c for c in _calls(calls) if c[0] == "select")
    for flag in ("--all", "--no-cache", "--json", "--threads", "--workers"):
        assert flag in select_call
    positives = sum(row["positive"] == "1" for row in scenario.truth("mixed"))
    assert select_call[select_call.index("--prior") + 1] == repr(round(positives / 40, 6))

    truth = scenario.truth("mixed")
    selections = {u["name"]: u for u in (study.selection_unit(cell, r.selection) for r in cp.ROWS.values())}
    k = selections["pu-s1"]["images"]
    assert k == positives and selections["random"]["images"] == k and selections["confidence"]["images"] == k
    assert selections["class-map"]["metrics"]["precision"] == 1.0 and selections["class-map"]["images"] == positives
    assert selections["pool-scored"]["images"] == 40 and selections["pu-s25000"]["images"] == 40
    assert selections["original"]["images"] == 10  # 3 train images a class, 2 of them L^t
    assert all("_2.png" in p for p, *_ in cp.read_index(Path(selections["original"]["index"])))
    # confidence = the top-k of the teacher's max-softmax on the pool, read from KD-pool's expanded set
    confidence = study.pool_confidence(cell)
    expected = sorted(confidence, key=lambda p: -confidence[p])[:k]
    assert [p for p, *_ in cp.read_index(Path(selections["confidence"]["index"]))] == expected
    assert len(confidence) == len(truth)
    # equal steps: every student's epochs are the nearest whole epochs to --steps for its set
    for unit in units.values():
        assert unit["epochs"] == cp.epochs_for_steps(unit["items"], 4)
    assert units["PU-weighted"]["weighting"] == "pu-score"
    distill = [c for c in _calls(calls) if c[0] == "distill"]
    assert sum(c[c.index("--weighting") + 1] == "pu-score" for c in distill) == 1
    assert all(c[c.index("--student") + 1].endswith("resnet.py:resnet20") for c in distill)
    # a rerun is served from the cache
    before = len(_calls(calls))
    for name, row in cp.ROWS.items():
        assert study.student_unit(cell, row, table["resnet20"]) == units[name]
    assert len(_calls(calls)) == before

    results = cp.collect(study.settings.work, {"steps": 4, "recommendation_tolerance": 0.3})
    assert len(results["students"]) == 8 and all(s["equal_steps"] for s in results["students"])
    record = report.recommendation_record(results, 0.3)
    assert len(record) == 1 and record[0]["recommended"] == "pool"
    top = record[0]["top1"]
    assert record[0]["regret"] == round(max(top.values()) - top["pool"], 2)


def test_a_student_with_a_checkpoint_resumes(stub_study: tuple[cp.Study, Path]) -> None:
    study, calls = stub_study
    cell = cp.Cell("mixed", 2, 0)
    row = cp.ROWS["Baseline-1"]
    student = cp.students(study.settings.models)["resnet20"]
    train_set = study.set_unit(cell, row.selection)
    epochs = cp.epochs_for_steps(train_set["items"], study.settings.steps)
    folder, _ = study.student_folder(cell, row, student, loss="robust-kd", epochs=epochs, augment="auto")
    folder.mkdir(parents=True)
    (folder / "student.ckpt.pt").write_bytes(b"an interrupted run")
    unit = study.student_unit(cell, row, student)
    distill = [c for c in _calls(calls) if c[0] == "distill"][-1]
    assert "--resume" in distill and "--force" not in distill and unit["resumed"]
    assert not (folder / "student.ckpt.pt").exists() and (folder / "unit.json").is_file()


def test_equal_wallclock_cell_trains_what_each_rows_budget_leaves(stub_study: tuple[cp.Study, Path]) -> None:
    study, _ = stub_study
    cell = cp.Cell("mixed", 2, 0)
    record = cp.wallclock_cell(study, cell, list(cp.MAIN_ROWS), cp.students(study.settings.models)["resnet20"])
    entries = {e["row"]: e for e in record["entries"]}
    assert entries["KD-pool"]["overhead_s"].keys() == {"expand_s"}
    assert entries["KD-pool"]["steps"] == entries["KD-pool"]["equal_steps"]
    assert record["budget_s"] == pytest.approx(entries["KD-pool"]["overhead_total_s"]
                                               + read_distill_wall(study, cell), abs=0.2)
    for entry in entries.values():
        assert (entry["top1"] is None) == (entry["epochs"] < 1)
    assert (study.cell_dir(cell) / "wallclock-resnet20.json").is_file()


def read_distill_wall(study: cp.Study, cell: cp.Cell) -> float:
    unit = study.student_unit(cell, cp.ROWS["KD-pool"], cp.students(study.settings.models)["resnet20"])
    return unit["distill"]["wall_s"]


def test_estimate_counts_only_what_is_not_cached(stub_study: tuple[cp.Study, Path]) -> None:
    study, _ = stub_study
    table = cp.students(study.settings.models)
    jobs = cp.make_plan(["main"], rows=["PU-s1", "Baseline-1"], pool="mixed", nls=[2], seeds=[0])
    before = cp.estimate_plan(study, jobs, table)
    assert before["total_s"] > 0 and {u["unit"] for u in before["units"]} == {"select", "expand", "student"}
    study.student_unit(jobs[0].cell, jobs[0].row, table["resnet20"])
    after = cp.estimate_plan(study, jobs, table)
    assert 0 < after["total_s"] < before["total_s"]
    cached = {u["label"] for u in after["units"] if u["cached"]}
    assert any("select" in label for label in cached) and any("PU-s1" in label for label in cached)


def test_provenance_names_the_pucli_a_prefix_imports(tmp_path: Path) -> None:
    info = cp.PucliCommand([sys.executable, "-m", "pucli"]).provenance()
    assert Path(info["imports"]).name == "pucli" and info["version"]
    snapshot = tmp_path / "snapshot"
    shutil.copytree(REPO_ROOT / "pucli", snapshot / "pucli")
    info = cp.PucliCommand([sys.executable, "-m", "pucli"], pythonpath=str(snapshot)).provenance()
    assert info["imports"] == str(snapshot / "pucli")


# --- the report ----------------------------------------------------------------------------------------------


def _student(row: str, seed: int, top1: float, *, n_l: int = 100, student: str = "resnet20", loss: str = "robust-kd",
             scored: bool = True, pool: str = "mixed", items: int = 12_500) -> dict:
    selection = {v.name: v.selection for v in cp.ROWS.values()}[row].params()
    if row == "KD-pool":
        selection["scored"] = scored
    return {"row": row, "cell": {"pool": pool, "n_l": n_l, "seed": seed}, "student": student, "loss": loss,
            "top1": top1, "items": items, "steps": 970, "epochs": 10, "equal_steps": True, "selection": selection,
            "set_name": cp.ROWS[row].selection.name(), "weighting": cp.ROWS[row].weighting,
            "distill": {"wall_s": 1000.0, "load_after": [2.0, 2.0, 2.0]}}


def _results() -> dict:
    tops = {"KD-original": 80.0, "Baseline-1": 65.0, "KD-random": 70.0, "KD-pool": 71.0, "PU-s1": 72.5,
            "PU-s2": 69.0, "confidence": 70.5, "PU-weighted": 71.2}
    students = [_student(row, seed, value + seed * 0.1) for row, value in tops.items() for seed in (0, 1)]
    students.append(_student("PU-s1", 0, 71.0, loss="kd"))
    students.append(_student("PU-s1", 0, 71.8, loss="weighted-kd"))
    cell = {"pool": "mixed", "n_l": 100, "seed": 0}
    selects = [{"cell": {**cell, "seed": seed}, "variant": "default", "kept": 11_500, "run": {"wall_s": 900.0},
                "trust": {"f1": 0.9, "f1_low": 0.85, "f1_high": 0.95, "placement": 0.05},
                "recommendation": {"action": "pool", "reason": "placement 0.05 < 0.3"}} for seed in (0, 1)]
    selections = [{"cell": cell, "name": "pu-s1", "images": 11_500,
                   "metrics": {"selected": 11_500, "precision": 0.31, "recall": 0.31, "f1": 0.31,
                               "by_source": {"cifar100": 3_794, "tinyimagenet": 7_706},
                               "positives_by_source": {"tinyimagenet": 3_565}}}]
    sets = [{"cell": cell, "name": "pu-s1", "teacher_histogram": list(range(10)), "run": {"wall_s": 90.0}}]
    return {"steps": 1000, "recommendation_tolerance": 0.3,
            "pucli": {"commit": "68efebf" + "0" * 33, "imports": "/x/pucli"},
            "students": students, "selects": selects, "selections": selections, "sets": sets, "wallclock": []}


def test_report_renders_the_table_the_target_and_what_was_not_run() -> None:
    text = report.render_section(_results(), plots=["cifar_pu_rows.png"])
    assert text.startswith(report.BEGIN) and text.rstrip().endswith(report.END)
    assert report.TITLE in text
    assert ("| PU-s1 | `pucli select` (PU-s1, true prior) | 12,500 | 0.310 | 3,794 / 7,706 | 970 | 72.50 | 72.60 "
            "| not run |") in text
    assert "PU-s1 - KD-random = **+2.50** points (target >= +3: missed by 0.50)" in text
    assert "PU-s1 - KD-pool = **+1.50** points (target >= +1: met)" in text
    assert "The best selection of the pool, PU-s1, is 1.50 points above the whole pool (KD-pool)." in text
    assert "| kd | 71.00 | 970 |" in text and "| weighted-kd | 71.80 | 970 |" in text
    assert "n_l 100 seed 2: every row" in text and "n_l 10 seed 0: every row" in text
    assert "the timm student" in text and "equal wall-clock" in text
    # the recommendation said "pool"; the best of select / weight / pool was PU-s1 (select): regret 1.5, a miss
    assert "**0 of 2**" in text
    assert "![student accuracy per row](cifar_pu_rows.png)" in text


def _with_selections(f1_share_top1: dict[str, tuple[float, float, float]]) -> dict:
    """Results whose mixed-pool rows have the given (class F1, CIFAR-100 share, top-1)."""
    results = _results()
    cell = {"pool": "mixed", "n_l": 100, "seed": 0}
    results["students"] = [_student(row, 0, top1) for row, (_, _, top1) in f1_share_top1.items()]
    results["selections"] = [
        {"cell": cell, "name": cp.ROWS[row].selection.name(), "images": 10_000,
         "metrics": {"selected": 10_000, "precision": f1, "recall": f1, "f1": f1,
                     "by_source": {"cifar100": int(share * 10_000)}}}
        for row, (f1, share, _) in f1_share_top1.items()]
    return results


def test_the_why_paragraph_follows_the_data_not_a_fixed_story() -> None:
    # the student tracks the CIFAR-100 share, against the class F1 (Spearman by hand: ranks of top-1 1 2 3 4
    # in the order Baseline-1, KD-random, KD-pool, PU-s1; of F1 4 1 3 2: 1 - 6 x 14 / 60 = -0.40; of the share
    # 1 2.5 2.5 4: 4.5 / sqrt(4.5 x 5) = +0.95)
    capture = report.render_section(_with_selections({
        "Baseline-1": (1.0, 0.0, 60.0), "KD-random": (0.28, 0.24, 68.0), "PU-s1": (0.38, 0.37, 71.0),
        "KD-pool": (0.43, 0.24, 69.0)}))
    assert "rank correlation of -0.40 with the class F1 and +0.95 with the share" in capture
    assert "follows the share of images captured like the teacher's data" in capture
    # the student tracks the class F1
    classes = report.render_section(_with_selections({
        "Baseline-1": (1.0, 0.0, 75.0), "KD-random": (0.28, 0.24, 68.0), "PU-s1": (0.38, 0.37, 70.0),
        "KD-pool": (0.43, 0.24, 71.0)}))
    assert "follows the class F1 more than the share of CIFAR-100 images" in classes
    assert "captured like the teacher's data" not in classes
    # the trust estimate against the truth, from the select unit and the selection
    assert "pucli's own estimate of its selection's F1 was 0.90 (0.85-0.95)" in capture


def test_targets_compare_only_the_seeds_both_rows_ran() -> None:
    results = _results()
    results["students"] = [s for s in results["students"] if not (s["row"] == "KD-random" and s["cell"]["seed"] == 1)]
    results["students"].append(_student("PU-s1", 2, 90.0))  # would lift PU-s1's own mean by about 6 points
    text = report.render_section(results)
    # seed 0 alone: PU-s1 72.5 - KD-random 70.0
    assert "PU-s1 - KD-random = **+2.50** points on seed 0 (target >= +3: missed by 0.50)" in text
    # seeds 0 and 1: (72.5 + 72.6) / 2 - (71.0 + 71.1) / 2
    assert "PU-s1 - KD-pool = **+1.50** points on seeds 0, 1 (target >= +1: met)" in text
    assert "means over the seeds each row has run" in text


def test_report_section_replaces_its_earlier_self_under_the_title() -> None:
    page = "# Benchmarks\n\nIntro of others.\n\n## Other section\n"
    once = report.insert_section(page, report.BEGIN + "\nfirst\n" + report.END + "\n")
    assert once.startswith("# Benchmarks\n\n" + report.BEGIN) and "Intro of others." in once
    twice = report.insert_section(once, report.BEGIN + "\nsecond\n" + report.END + "\n")
    assert "first" not in twice and "second" in twice and twice.count(report.BEGIN) == 1
    assert twice.endswith("## Other section\n") and "Intro of others." in twice


def test_plots_are_drawn_from_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = _results()
    assert report.plot_rows(results, tmp_path / "rows.png") and (tmp_path / "rows.png").stat().st_size > 0
    assert report.plot_wallclock(results, tmp_path / "wall.png") and (tmp_path / "wall.png").is_file()
    assert not report.plot_rows({"students": []}, tmp_path / "none.png")


# --- the real command line, a few steps on a few images --------------------------------------------------------


@pytest.mark.slow
def test_real_pucli_runs_a_row_on_a_few_real_images(tmp_path: Path) -> None:
    real_root = REAL_CACHE_DIR / "benchmarks" / "cifar-pu"
    models = REPO_ROOT.parent / "shared" / "models" / "resnet-cifar10"
    if not (real_root / "manifest.json").is_file() or not (models / cp.TEACHER_FILE).is_file():
        pytest.skip("the cifar-pu root (benchmarks/cifar_pu_data.py) or ../shared/models is not present")
    root = tmp_path / "root"
    truth = (real_root / "pools" / "mixed" / "ground_truth.tsv").read_text().splitlines()
    rows = truth[1:61]
    pool = root / "pools" / "mixed"
    pool.mkdir(parents=True)
    (pool / "ground_truth.tsv").write_text("\n".join([truth[0], *rows]) + "\n")
    (pool / "shards.txt").write_text("\n".join(r.split("\t")[0] for r in rows) + "\n")
    positives = sum(r.split("\t")[1] == "1" for r in rows)
    manifest = {"images": 60, "positive": positives, "true_class_prior": positives / 60}
    (pool / "manifest.json").write_text(json.dumps(manifest))
    for cls in CLASSES:
        for part, count, target in (("train", 6, "train"), ("test", 2, "test"), ("train", 5, "positive/nl5-seed0")):
            (root / target / cls).mkdir(parents=True, exist_ok=True)
            for file in sorted((real_root / part / cls).iterdir())[:count]:
                os.link(file, root / target / cls / file.name)
    (root / "manifest.json").write_text(json.dumps({"scenario": "cifar-pu"}))
    scenario = cp.Scenario(root)
    settings = cp.Settings(scenario=scenario, work=tmp_path / "work",
                           pucli=cp.PucliCommand([sys.executable, "-m", "pucli"]), models=models, steps=2)
    settings.teacher = cp.prepare_teacher(scenario, models)
    study = cp.Study(settings)
    cell = cp.Cell("mixed", 5, 0)
    unit = study.student_unit(cell, cp.ROWS["PU-s1"], cp.students(models)["resnet20"])
    assert unit["items"] == 50 + study.selection_unit(cell, cp.ROWS["PU-s1"].selection)["images"]
    assert 0.0 <= unit["top1"] <= 100.0 and unit["augment"] == "flip-crop" and unit["steps"] == 2
    select = study.select_unit(cell, "default")
    assert select["recommendation"]["action"] in ("select", "weight", "pool") and 0 < select["kept"] < 60
    assert subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "cifar_pu.py"), "--help"],
                          capture_output=True).returncode == 0
