"""`pucli select --finetune` against the frozen mode on pool-grid cells (issue 15, "--finetune works").

For each cell (``benchmarks/pool_grid.py``'s ``Cell`` spec; the pool and L^t are that harness's
``build_pool`` / ``positives_of``, its images cached under ``<work>/images``), PU-s1 with the true
prior given, pucli's defaults otherwise, in up to three modes:

* ``frozen``: the default mode (cached frozen descriptors, a 3-head ensemble);
* ``finetune``: ``--finetune`` as it is now (:data:`pucli.pu.training.FINETUNE_SCHEDULE`: the head
  warmed up on frozen descriptors, then end to end at low rates, clipped, BatchNorm frozen);
* ``frozen-1``: the frozen mode with one head and no augmented positives: what the fine-tuning
  warm-up trains, so ``finetune`` against it is what the end-to-end epochs add;
* ``finetune:<field>=<value>,...``: a variant of the schedule (fields of
  :class:`pucli.pu.training.FinetuneSchedule`), for the ablations;
* ``legacy`` (``--legacy``): ``--finetune`` as it was before issue 15
  (:data:`pucli.pu.training.LEGACY_FINETUNE_SCHEDULE`), the one that collapsed.

Each row: precision / recall / F1 against the ground truth (``_common.prf``; pucli never sees it),
the kept count, the collapse guard's warnings, the last epoch's risks, seconds per stage and the
load average before and after (the machine is shared). Rows are merged into the results JSON by
(cell, mode, ranking), so a rerun adds what is missing (``--force`` reruns).

Usage::

    python benchmarks/finetune_pool.py --threads 1                      # the four default cells
    python benchmarks/finetune_pool.py --cell prior=0.05 --legacy --threads 1
    python benchmarks/finetune_pool.py --cell teacher=bn --modes finetune --threads 1
    python benchmarks/finetune_pool.py --cell prior=0.05 --modes 'frozen-1;finetune:backbone_lr_scale=0.001' --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _common import Stopwatch, load_average, machine, prf, write_json_atomic
from mnist_pu_data import default_data_dir
from pool_grid import Cell, Sources, build_pool, positives_of

from pucli.paths import cache_dir

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "finetune_pool.json"
DEFAULT_CELLS = ("", "prior=0.05", "teacher=bn", "nl=1")  # the base cell and three changes from it
MODES = ("frozen", "frozen-1", "finetune", "legacy")  # and finetune:<field>=<value>,... (a schedule variant)


def log(message: str) -> None:
    print(f"[finetune-pool {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_mode(cell: Cell, mode: str, args: argparse.Namespace, sources: Sources) -> dict[str, Any]:
    import torch

    from pucli.checkpoints import load_model
    from pucli.pu import training
    from pucli.pu.options import SelectorOptions
    from pucli.pu.selection import run_selection

    built = build_pool(cell, sources, args.work)
    if isinstance(built, dict):
        return {"cell": cell.name, "mode": mode, **built}
    pool, truth, _ = built
    positive_paths, positive_labels = positives_of(cell, args.root)
    teacher = load_model(args.teacher if cell.teacher == "lenet" else args.bn_teacher)
    options = SelectorOptions(class_prior=cell.prior, finetune=not mode.startswith("frozen"), seed=cell.seed)
    if mode == "frozen-1":
        options = replace(options, ensemble=1, augment_positives=0)  # what the fine-tuning warm-up trains
    if args.ranking is not None:
        options = replace(options, ranking=args.ranking)
    row: dict[str, Any] = {"cell": cell.name, "spec": asdict(cell), "mode": mode, "threads": torch.get_num_threads(),
                           "ranking": getattr(options, "ranking", "nnpu"), "load_avg_before": load_average()}
    schedule = training.FINETUNE_SCHEDULE
    if mode == "legacy":
        training.FINETUNE_SCHEDULE = training.LEGACY_FINETUNE_SCHEDULE  # read by train_finetune at each call
    elif mode.startswith("finetune:"):
        training.FINETUNE_SCHEDULE = replace(schedule, **_schedule_fields(mode.partition(":")[2]))
    try:
        row["schedule"] = None if mode.startswith("frozen") else asdict(training.FINETUNE_SCHEDULE)
        with Stopwatch() as watch:
            result = run_selection(teacher, positive_paths, pool, options, workers=0, positive_labels=positive_labels)
    finally:
        training.FINETUNE_SCHEDULE = schedule
    if len(result.paths) != len(pool):
        raise SystemExit(f"{cell.name}: {len(pool) - len(result.paths)} unreadable pool images")
    row.update(prf(result.selected, torch.from_numpy(truth)))
    row.update({"pool": len(pool), "expected": round(cell.prior * len(pool)), "warnings": result.warnings,
                "last_epoch": result.history[-1] if result.history else None,
                "timings_s": {k: round(v, 2) for k, v in result.timings.items()}, "wall_s": round(watch.seconds, 1),
                "load_avg_after": load_average(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return row


def _schedule_fields(spec: str) -> dict[str, Any]:
    """``head_lr_scale=0.01,clip_norm=none`` -> FinetuneSchedule fields, typed as their defaults."""
    from pucli.pu.training import FinetuneSchedule

    defaults = asdict(FinetuneSchedule())
    fields: dict[str, Any] = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in defaults:
            raise SystemExit(f"finetune:{spec}: unknown schedule field {key!r} (one of {', '.join(defaults)})")
        default = defaults[key]
        if value.lower() == "none":
            fields[key] = None
        elif isinstance(default, bool):
            fields[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            fields[key] = type(default)(float(value)) if isinstance(default, int) else float(value)
        else:
            fields[key] = value
    return fields


def _default_ranking() -> str:
    from pucli.pu.options import SelectorOptions

    return getattr(SelectorOptions(class_prior=0.5), "ranking", "nnpu")


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    """A row's identity in the results: (cell, mode, ranking)."""
    return row["cell"], row["mode"], row.get("ranking", "nnpu")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| cell | mode | ranking | kept | precision | recall | F1 | warnings | wall s | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "f1" not in row:
            lines.append(f"| {row['cell']} | {row['mode']} | | {row.get('infeasible', '-')} | | | | | | |")
            continue
        lines.append(f"| {row['cell']} | {row['mode']} | {row.get('ranking', 'nnpu')} | {row['selected']:,} / {row['expected']:,} | "
                     f"{row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {len(row['warnings'])} | "
                     f"{row['wall_s']:.0f} | {row['load_avg_before'][0]:.1f}-{row['load_avg_after'][0]:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", action="append", default=[],
                        help="a pool-grid cell, key=value pairs (repeatable) [default: the base cell, prior=0.05, "
                             "teacher=bn, nl=1]")
    parser.add_argument("--modes", default="frozen;finetune",
                        help=f"';'-separated, of {', '.join(MODES)}, or finetune:<schedule field>=<value>,... "
                             "(a FinetuneSchedule variant, e.g. 'finetune:backbone_lr_scale=0.001,clip_norm=none')")
    parser.add_argument("--legacy", action="store_true", help="also run the pre-issue-15 fine-tuning (mode legacy)")
    parser.add_argument("--force", action="store_true", help="rerun rows already in the results")
    parser.add_argument("--ranking", default=None,
                        help="SelectorOptions.ranking (nnpu: the head's F(x) > 0, the rule every row before "
                             "2026-12-01 22:10 UTC was measured with) [default: pucli's]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", type=Path, default=None, help="the IDX files [default: ../shared/data]")
    parser.add_argument("--root", type=Path, default=Path("/root/.cache/pucli-ref-data"),
                        help="mnist-pu root with the positive/ subsets")
    parser.add_argument("--teacher", type=Path, default=Path("/root/.cache/pucli-ref-teacher/lenet5.safetensors"))
    parser.add_argument("--bn-teacher", type=Path,
                        default=cache_dir() / "benchmarks" / "mnist-pu" / "bn-teacher" / "test_resnet.safetensors")
    parser.add_argument("--work", type=Path, default=cache_dir() / "benchmarks" / "pool-grid",
                        help="pool-grid's cache of images [default: <pucli cache>/benchmarks/pool-grid]")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or default_data_dir()
    args.modes = [m for m in args.modes.split(";") if m] + (["legacy"] if args.legacy else [])
    unknown = {m for m in args.modes if not m.startswith("finetune:")} - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))} (one of {', '.join(MODES)})")
    return args


def main(argv: list[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {"rows": []}
    rows: list[dict[str, Any]] = previous["rows"]
    sources = Sources(args.data_dir)
    ranking = args.ranking or _default_ranking()
    for spec in args.cell or DEFAULT_CELLS:
        cell = Cell.parse(spec)
        for mode in args.modes:
            done = next((r for r in rows if _key(r) == (cell.name, mode, ranking)), None)
            if done is not None and not args.force:
                log(f"{cell.name} {mode}: done (F1 {done.get('f1')})")
                continue
            log(f"{cell.name} {mode}: start, load {load_average()}")
            row = run_mode(cell, mode, args, sources)
            rows = [r for r in rows if _key(r) != _key(row)] + [row]
            write_json_atomic(args.results, {"machine": machine(), "rows": rows})
            log(f"{cell.name} {mode}: F1 {row.get('f1')} (P {row.get('precision')} R {row.get('recall')}, "
                f"kept {row.get('selected')}), {row.get('wall_s')} s, warnings {row.get('warnings')}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
