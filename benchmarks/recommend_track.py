"""The recommendation's track record on pool-grid cells (issue 16): does ``pucli select`` pick the
best of keep-the-selection, weight-the-pool and take-the-pool?

For each pool-grid cell (``benchmarks/pool_grid.py``; ``--cell`` in its syntax) this runs pucli's
default selection with the true class prior, reads its trust estimate and recommendation
(:mod:`pucli.pu.trust`), and trains the three students the recommendation chooses between, each
with robust KD for the same optimizer steps (the mnist-pu protocol's 4,680 at batch 128, rounded up
to whole epochs) on L^t plus:

==========  ==================================================================================
select      the selection (PU-s1), uniform weighting
weight      the whole pool, drawn with probability sigmoid(score) (``distill --weighting pu-score``)
pool        the whole pool, uniform weighting (KD-pool)
==========  ==================================================================================

Student LeNet-5-half, MNIST t10k top-1 (for a near-task cell, the t10k images of the task's
digits 0-4 only). Soft targets come from one teacher pass over L^t + pool, shared by the three sets.
A recommendation "hits" when its student is the best of the three or within ``--tolerance`` points
(0.2) of the best. Each finished unit (soft targets, selection, set, student) is cached under
``--work`` (default ``<pucli cache>/benchmarks/recommend-track``); a rerun only does what is missing.

Usage::

    python benchmarks/recommend_track.py --threads 1 --cell capture=mixed,seed=0 --cell prior=0.02,seed=0
    python benchmarks/recommend_track.py --report      # benchmarks/results/recommend_track.json + table

The true labels are read only to score the selection (P / R / F1) and never reach pucli.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pool_grid as pg
from _common import load_average, prf, write_json_atomic

from pucli.paths import cache_dir

STUDENT = "lenet5_half"
STEPS, BATCH = 4_680, 128
KINDS = ("select", "weight", "pool")
RESULTS = Path(__file__).resolve().parent / "results" / "recommend_track.json"


def log(message: str) -> None:
    print(f"[recommend-track {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _teacher_path(cell: Any, args: argparse.Namespace) -> str:
    if cell.teacher == "lenet":
        return args.teacher
    if cell.teacher == "bn":
        return args.bn_teacher
    return str(pg.default_timm_teacher())


def _test_root(cell: Any, args: argparse.Namespace, work: Path) -> Path:
    test = Path(args.root) / "test"
    if cell.neg != "near":
        return test
    near = work / "test-digits-0-4"
    if not near.is_dir():
        staging = work / ".test-digits-0-4.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for digit in range(5):
            (staging / str(digit)).symlink_to(test / str(digit), target_is_directory=True)
        os.replace(staging, near)
    return near


def run_cell(spec: str, args: argparse.Namespace, sources: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file, save_file

    from pucli.checkpoints import load_model, save_model
    from pucli.data.manifest import read_expanded_set, write_expanded_set
    from pucli.kd.expand import build_expanded_set
    from pucli.device import configure_threads
    from pucli.evaluate import evaluate_model
    from pucli.kd.distill import DistillConfig, distill, steps_per_epoch
    from pucli.kd.expand import teacher_soft_targets
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    configure_threads(args.threads)
    cell = pg.Cell.parse(spec)
    work = Path(args.work) / cell.name
    work.mkdir(parents=True, exist_ok=True)
    done = work / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    built = pg.build_pool(cell, sources, Path(args.grid_work))
    if isinstance(built, dict):
        return {"cell": cell.name, "infeasible": built}
    pool, truth, _roles = built
    positives, labels = pg.positives_of(cell, Path(args.root))
    teacher = load_model(_teacher_path(cell, args))
    class_names = teacher.config.label_names or [str(k) for k in range(teacher.config.num_classes)]
    record: dict[str, Any] = {"cell": cell.name, "spec": spec, "load_before": load_average()}

    # The selection, with pucli's defaults and the true prior.
    selection_file = work / "selection.json"
    if selection_file.is_file():
        record["selection"] = json.loads(selection_file.read_text())
        scores = load_file(str(work / "scores.safetensors"))["scores"]
    else:
        start = time.perf_counter()
        result = run_selection(teacher, positives, pool, SelectorOptions(class_prior=cell.prior, seed=cell.seed),
                               positive_labels=labels)
        assert len(result.paths) == len(pool), "unreadable pool images in a benchmark pool"
        scores = result.scores.contiguous()
        selection = {"wall_s": round(time.perf_counter() - start, 1), **prf(result.selected.numpy(), truth),
                     "ranking": result.metadata["graph"].get("ranking"),
                     "trust": result.trust.as_dict() if result.trust is not None else None,
                     "recommendation": result.recommendation.as_dict() if result.recommendation else None,
                     "warnings": list(result.warnings)}
        save_file({"scores": scores}, str(work / "scores.safetensors"))
        write_json_atomic(selection_file, selection)
        record["selection"] = selection
    selected = scores > 0

    # One teacher pass over L^t + pool.
    soft_file = work / "soft.safetensors"
    if soft_file.is_file():
        soft = load_file(str(soft_file))["soft"]
    else:
        kept, soft = teacher_soft_targets(teacher, list(positives) + list(pool), workers=0)
        assert len(kept) == len(positives) + len(pool), "unreadable images in a benchmark pool"
        save_file({"soft": soft.contiguous()}, str(soft_file))
    n_p = len(positives)
    test_root = _test_root(cell, args, Path(args.work))
    students: dict[str, Any] = {}
    for kind in KINDS:
        student_file = work / f"student-{kind}.json"
        if student_file.is_file():
            students[kind] = json.loads(student_file.read_text())
            continue
        take = torch.ones(len(pool), dtype=torch.bool) if kind != "select" else selected
        rows = torch.nonzero(take)[:, 0].tolist()
        paths = list(positives) + [pool[i] for i in rows]
        expanded = build_expanded_set(
            paths=paths, origins=["positive"] * n_p + ["unlabeled"] * len(rows),
            labels=list(labels) + [-1] * len(rows),
            scores=[None] * n_p + [float(scores[i]) for i in rows],
            soft_targets=torch.cat([soft[:n_p], soft[n_p:][take]]), temperature=1.0,
            teacher_digest=teacher.digest, class_names=class_names, teacher=str(teacher.path))
        set_folder = work / f"set-{kind}"
        shutil.rmtree(set_folder, ignore_errors=True)
        set_folder.mkdir()
        write_expanded_set(expanded, set_folder)
        expanded = read_expanded_set(set_folder, check_files=False)
        epochs = math.ceil(STEPS / steps_per_epoch(len(expanded), BATCH))
        config = DistillConfig(epochs=epochs, batch_size=BATCH, seed=cell.seed,
                               weighting="pu-score" if kind == "weight" else "uniform")
        start = time.perf_counter()
        checkpoint = work / f"student-{kind}.ckpt.pt"
        checkpoint.unlink(missing_ok=True)
        trained = distill(teacher, expanded, STUDENT, config=config, checkpoint_path=checkpoint, workers=0)
        checkpoint.unlink(missing_ok=True)
        train_s = time.perf_counter() - start
        student_path = work / f"student-{kind}.safetensors"
        save_model(trained.student, student_path, label_names=teacher.config.label_names or expanded.class_names,
                   data_config=teacher.config.data_config())
        evaluation = evaluate_model(load_model(student_path), test_root, device=torch.device("cpu"),
                                    measure_speed=False, workers=0)
        students[kind] = {"top1": round(evaluation.top1, 2), "items": len(expanded), "epochs": epochs,
                          "steps": epochs * steps_per_epoch(len(expanded), BATCH), "distill_s": round(train_s, 1),
                          "load_after": load_average()}
        write_json_atomic(student_file, students[kind])
        shutil.rmtree(set_folder, ignore_errors=True)
        log(f"{cell.name} {kind}: {students[kind]['top1']} % ({train_s:.0f} s)")
    record["students"] = students
    record["load_after"] = load_average()
    write_json_atomic(done, _judge(record, args.tolerance))
    return json.loads(done.read_text())


def _judge(record: dict[str, Any], tolerance: float) -> dict[str, Any]:
    top = {kind: record["students"][kind]["top1"] for kind in KINDS}
    best = max(top.values())
    recommendation = (record["selection"].get("recommendation") or {}).get("action")
    record["best"] = [kind for kind in KINDS if top[kind] == best]
    record["recommended"] = recommendation
    record["regret"] = round(best - top[recommendation], 2) if recommendation in top else None
    record["hit"] = record["regret"] is not None and record["regret"] <= tolerance
    return record


def report(args: argparse.Namespace) -> None:
    from pucli.pu.trust import SelectionTrust, recommend  # the current rule, re-applied to stored evidence

    records = []
    for done in sorted(Path(args.work).glob("*/cell.json")):
        record = json.loads(done.read_text())
        trust = record["selection"].get("trust")
        fields = SelectionTrust.__dataclass_fields__
        cell = pg.Cell.parse(record["spec"])
        _, labels = pg.positives_of(cell, Path(args.root))
        rule = recommend(SelectionTrust(**{k: v for k, v in trust.items() if k in fields}) if trust else None,
                         task_classes=len(set(labels)), teacher_classes=10)  # every teacher here has 10 classes
        record["selection"]["recommendation"] = rule.as_dict()
        records.append(_judge(record, args.tolerance))
    for study in args.study:
        records.extend(_study_records(Path(study), args.tolerance))
    hits = sum(r["hit"] for r in records)
    write_json_atomic(RESULTS, {"tolerance_points": args.tolerance, "cells": records, "hits": hits,
                                "total": len(records)})
    header = ("| cell | selection F1 (P / R) | estimated F1 (interval) | placement | select | weight | pool | "
              "recommended | best | regret (points) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        s, t = r["selection"], r["selection"].get("trust")
        estimate = f"{t['f1']:.3f} ({t['f1_low']:.3f}-{t['f1_high']:.3f})" if t else "none"
        placement = f"{t['placement']:.2f}" if t else "-"
        top = [f"{r['students'][k]['top1']:.2f}" for k in KINDS]
        lines.append(f"| {r['cell']} | {s['f1']:.3f} ({s['precision']:.3f} / {s['recall']:.3f}) | {estimate} | "
                     f"{placement} | {' | '.join(top)} | {r['recommended']} | {', '.join(r['best'])} | {r['regret']} |")
    lines.append(f"\nHits (best, or within {args.tolerance} points of it): {hits} of {len(records)}.")
    print("\n".join(lines))


ROW_KIND = {"PU-s1": "select", "PU-weighted": "weight", "KD-pool": "pool"}


def _study_records(path: Path, tolerance: float) -> list[dict[str, Any]]:
    """Track-record entries from a study results file of ``benchmarks/mnist_pu.py`` (the web-crawl
    study): per (n_l, seed), the equal-steps PU-s1, PU-weighted and KD-pool students and the
    trust that the PU-s1 selection's run report holds, judged by the current rule."""
    from pucli.pu.trust import SelectionTrust, recommend

    study = json.loads(path.read_text())
    units: dict[tuple[int, int], dict[str, Any]] = {}
    for student in study.get("students", []):
        kind = ROW_KIND.get(student.get("row"))
        if student.get("part") != "main" or kind is None or student.get("top1") is None:
            continue
        units.setdefault((student["n_l"], student["seed"]), {})[kind] = {"top1": student["top1"],
                                                                         "items": student.get("items")}
    selections = {(v["spec"]["n_l"], v["spec"]["seed"]): v for v in study.get("selections", {}).values()
                  if v["spec"].get("variant") == "default"}
    records = []
    fields = SelectionTrust.__dataclass_fields__
    for (n_l, seed), students in sorted(units.items()):
        selection = selections.get((n_l, seed))
        if len(students) < len(KINDS) or selection is None:
            continue
        report = Path(selection.get("report") or "")
        trust = json.loads(report.read_text())["results"].get("trust") if report.is_file() else None
        rule = recommend(SelectionTrust(**{k: v for k, v in trust.items() if k in fields}) if trust else None,
                         task_classes=10, teacher_classes=10)  # webcrawl-pu: L^t covers the 10 digits
        name = f"{study.get('scenario', path.stem)} prior {study['class_prior']:g}, n_l {n_l}, seed {seed}"
        record = {"cell": name, "spec": str(path), "students": students,
                  "selection": {**selection["pu_s1"], "trust": trust, "recommendation": rule.as_dict()}}
        records.append(_judge(record, tolerance))
    return records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", action="append", default=[], help="a pool-grid cell (pool_grid.py syntax); repeat")
    parser.add_argument("--root", default="/root/.cache/pucli-ref-data", help="the mnist-pu root (positive/, test/)")
    parser.add_argument("--teacher", default="/root/.cache/pucli-ref-teacher/lenet5.safetensors")
    parser.add_argument("--bn-teacher", default=str(cache_dir() / "benchmarks" / "mnist-pu" / "bn-teacher" /
                                                     "test_resnet.safetensors"))
    parser.add_argument("--grid-work", default=str(cache_dir() / "benchmarks" / "pool-grid"))
    parser.add_argument("--work", default=str(cache_dir() / "benchmarks" / "recommend-track"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.2, help="points of top-1 within which a pick counts")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--study", action="append", default=[],
                        help="with --report: also judge the students of a mnist_pu.py results file (the web-crawl study)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        report(args)
        return 0
    sources = pg.Sources(pg.default_data_dir())
    for spec in args.cell:
        start = time.perf_counter()
        record = run_cell(spec, args, sources)
        log(f"{spec}: {json.dumps({k: record.get(k) for k in ('recommended', 'best', 'regret')})} "
            f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
