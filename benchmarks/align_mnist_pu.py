"""Adversarial feature alignment (issue 18) on mnist-pu: students with and without ``distill --align adversarial``.

Rows (student LeNet-5-half, robust KD, the study's step budget: 20 epochs over 30,000 images at batch
128 = 4,680 optimizer steps), at n_l = 10 (``--nl``: any of the study's):

==============  ================================================================================
KD-pool         L^t + the whole pool (100,000: 30 % digits), no selection
PU-s1           L^t + every pool item with F(x) > 0 (the study's selector, true class prior 0.30)
KD-random       L^t + as many random pool items as PU-s1 kept
==============  ================================================================================

each without alignment (the study's own unit, ``benchmarks/mnist_pu.py``'s ``student_unit``) and with
``--align adversarial`` (Tang et al. 2019 in pucli's reading: a domain discriminator on the student's
early features, labeled L^t against the unlabeled part, through a gradient-reversal layer, DANN's
warm-up; :mod:`pucli.kd.align`). The ablation (PU-s1, one seed) varies the tapped stage (0 or 1 of
LeNet-5-half's two conv stages) and lambda_max (0.1, 0.3, 1.0).

Aligned students also evaluate on the MNIST test set after every epoch (``val_set``, ``keep=last``:
the curve is only monitored, nothing is chosen by it), so the plot puts the discriminator's accuracy
next to the student's over training. The soft targets, selections and expanded sets are the study's
units (``mnist_pu.soft_targets_unit`` / ``selection_unit`` / ``set_unit``), cached under ``--work``;
every student is cached there as one ``result.json``, so a rerun only trains what is missing.

Usage::

    python benchmarks/align_mnist_pu.py --root /root/.cache/pucli-ref-data \\
        --teacher /root/.cache/pucli-ref-teacher/lenet5.safetensors --threads 1 --seeds 0 1
    python benchmarks/align_mnist_pu.py ... --parts ablation --seeds 0
    python benchmarks/align_mnist_pu.py --report      # the Markdown table and docs/align_mnist_pu.png

Results: ``benchmarks/results/align_mnist_pu.json`` (merged over runs: one entry per unit).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mnist_pu as study
from _common import TRUE_PRIOR, Scenario, add_root_argument, load_average, machine, write_json_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROWS = ("KD-pool", "PU-s1", "KD-random")
ABLATION_NL = 10
PARTS = ("main", "ablation")
ABLATION_STAGES = (0, 1)
ABLATION_WEIGHTS = (0.1, 0.3, 1.0)
RESULTS = HERE / "results" / "align_mnist_pu.json"
PLOT = REPO / "docs" / "align_mnist_pu.png"
ROW_COLOURS = {"KD-pool": "tab:blue", "PU-s1": "tab:orange", "KD-random": "tab:green"}


@dataclass(frozen=True)
class Alignment:
    """``--align adversarial`` with these ``--align-stage``, ``--align-weight``, ``--align-hidden``."""

    stage: int = 0
    weight: float = 0.1
    hidden: tuple[int, ...] = (256, 256)

    def name(self) -> str:
        return f"align-st{self.stage}-w{self.weight:g}-h{'x'.join(map(str, self.hidden))}"


def default_alignment() -> Alignment:
    """pucli's defaults (``DistillConfig``), so the main rows measure what a user gets."""
    from pucli.kd.distill import DistillConfig

    config = DistillConfig(align="adversarial")
    return Alignment(config.align_stage, config.align_weight, tuple(config.align_hidden))


def log(message: str) -> None:
    print(f"[align {time.strftime('%H:%M:%S')}] {message} (load {load_average()})", file=sys.stderr, flush=True)


def aligned_unit(settings: study.Settings, spec: study.StudentSpec, alignment: Alignment) -> dict[str, Any]:
    """Train (``distill`` with ``align="adversarial"``) and evaluate one student; cached in ``result.json``.

    Like ``mnist_pu.student_unit`` (same set, loss, seed, steps), plus the per-epoch history: the
    discriminator's accuracy and loss, and the MNIST test top-1 after every epoch."""
    folder = settings.work / "aligned" / study.key_of(f"{spec.name()}-{alignment.name()}",
                                                      {**spec.params(), "align": asdict(alignment)})
    if (folder / "result.json").is_file():
        return {**json.loads((folder / "result.json").read_text()), "cached": True}
    import torch

    from pucli.checkpoints import load_model, save_model
    from pucli.data.manifest import read_expanded_set
    from pucli.data.sources import LabeledFolder
    from pucli.device import configure_threads, default_workers
    from pucli.errors import PucliError
    from pucli.evaluate import evaluate_model
    from pucli.kd.distill import DistillConfig, distill, steps_per_epoch

    configure_threads(settings.threads)
    folder.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    start = time.perf_counter()
    scenario = settings.scenario
    teacher = load_model(scenario.teacher_path)
    expanded = read_expanded_set(spec.set_folder, check_files=False)
    epochs = math.ceil(spec.steps / steps_per_epoch(len(expanded), spec.batch_size))
    config = DistillConfig(loss=spec.loss, epochs=epochs, batch_size=spec.batch_size, seed=spec.seed,
                           weighting=spec.weighting, align="adversarial", align_stage=alignment.stage,
                           align_weight=alignment.weight, align_hidden=alignment.hidden)
    test = LabeledFolder.from_folder(scenario.root / "test", num_classes=teacher.config.num_classes,
                                     label_names=teacher.config.label_names)
    workers = settings.workers if settings.workers is not None else default_workers(len(expanded))
    checkpoint = folder / "checkpoint.pt"
    result = None
    if checkpoint.is_file():  # an interrupted earlier run: continue it
        try:
            result = distill(teacher, expanded, study.STUDENT, config=config, checkpoint_path=checkpoint,
                             resume=True, val_set=test, workers=workers)
        except PucliError:
            result = None
    if result is None:
        result = distill(teacher, expanded, study.STUDENT, config=config, checkpoint_path=checkpoint, val_set=test,
                         workers=workers)
    distill_s = time.perf_counter() - start
    # The same measurement as the study's students: the saved file, evaluated by pucli.evaluate.
    student_path = folder / "student.safetensors"
    save_model(result.student, student_path, label_names=teacher.config.label_names or expanded.class_names,
               data_config=teacher.config.data_config())
    top1 = evaluate_model(load_model(student_path), scenario.root / "test", device=torch.device("cpu"),
                          measure_speed=False, workers=workers).top1
    record: dict[str, Any] = {
        "spec": {**spec.params(), "align": asdict(alignment)}, "name": f"{spec.name()}-{alignment.name()}",
        "top1": round(float(top1), 2), "items": result.num_items, "epochs": result.epochs,
        "steps": epochs * steps_per_epoch(result.num_items, spec.batch_size),
        "timings_s": {"decode": round(result.decode_s, 2), "train": round(sum(h.train_s for h in result.history), 2),
                      "total": round(distill_s, 2)},
        "images_per_s": round(result.images_per_s, 1), "threads": settings.threads,
        "load_before": load_before, "load_after": load_average(),
        "history": [{"epoch": h.epoch, "loss": round(h.loss, 5), "val_top1": h.val_top1,
                     "domain_accuracy": h.domain_accuracy, "domain_loss": h.domain_loss} for h in result.history],
    }
    write_json_atomic(folder / "result.json", record)
    checkpoint.unlink(missing_ok=True)
    return record


def baseline_unit(settings: study.Settings, spec: study.StudentSpec) -> dict[str, Any]:
    """The study's own student (no alignment): ``mnist_pu.student_unit``, with the load around it."""
    cached = (study.student_folder(settings.work, spec) / "result.json").is_file()
    load_before = load_average()
    record = study.student_unit(str(settings.work), str(settings.scenario.teacher_path),
                                str(settings.scenario.root / "test"), spec, settings.threads, settings.workers)
    if cached:
        return {**record, "cached": True}
    return {**record, "load_before": load_before, "load_after": load_average()}


def plan_units(args: argparse.Namespace, alignment: Alignment) -> list[tuple[dict[str, Any], Alignment | None]]:
    """(label, alignment or None for the baseline) in the order they run: the main rows seed by seed,
    then the ablation."""
    units: list[tuple[dict[str, Any], Alignment | None]] = []
    if "main" in args.parts:
        for n_l in args.nl:
            for seed in args.seeds:
                for row in args.rows:
                    for align in (None, alignment):
                        units.append(({"part": "main", "row": row, "n_l": n_l, "seed": seed}, align))
    if "ablation" in args.parts:
        seed = args.seeds[0]
        variants = [Alignment(stage, alignment.weight, alignment.hidden) for stage in ABLATION_STAGES]
        variants += [Alignment(alignment.stage, weight, alignment.hidden) for weight in ABLATION_WEIGHTS]
        seen: set[Alignment] = set()
        for variant in variants:
            if variant not in seen:
                seen.add(variant)
                units.append(({"part": "ablation", "row": "PU-s1", "n_l": ABLATION_NL, "seed": seed}, variant))
    return units


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    scenario = Scenario(args.root, args.teacher)
    scenario.require()
    torch.set_num_threads(args.threads)
    settings = study.Settings(work=args.work or scenario.root / "align-study", scenario=scenario,
                              steps=args.steps or study.budget_steps(128), quick=False, threads=args.threads,
                              workers=args.workers, finetune_epochs=5, selector_epochs_extra=None)
    alignment = default_alignment()
    units = plan_units(args, alignment)
    log(f"{len(units)} students ({settings.steps} steps each, {settings.threads} thread(s)); work {settings.work}")
    soft = study.soft_targets_unit(settings)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {"units": {}}
    for label, align in units:
        kind = study.ROW_SET[label["row"]]
        selection = study.SelectionSpec(label["n_l"], label["seed"], TRUE_PRIOR)
        study.selection_unit(settings, selection)
        set_spec = study.SetSpec(kind, label["n_l"], label["seed"], selection)
        set_summary = study.set_unit(settings, set_spec, soft)
        spec = study.StudentSpec(set_spec, set_summary["folder"], study.MAIN_LOSS, "uniform", label["seed"],
                                 settings.steps, settings.batch_size, set_summary["items"])
        what = (f"{label['part']} {label['row']} n_l {label['n_l']} seed {label['seed']} "
                f"{align.name() if align else 'no alignment'}")
        log(f"start {what}")
        record = aligned_unit(settings, spec, align) if align else baseline_unit(settings, spec)
        log(f"done {what}: top-1 {record['top1']:.2f} % ({record['timings_s']['total']:.0f} s"
            f"{', cached' if record.get('cached') else ''})")
        key = f"{label['part']}|{label['row']}|nl{label['n_l']}|{label['seed']}|{align.name() if align else 'none'}"
        if record.get("cached") and key in results["units"]:
            continue  # keep the entry of the run that trained it (its load figures)
        results["units"][key] = {**label, "align": asdict(align) if align else None,
                                 "selection": set_summary.get("selection"), **record}
        results.update(scenario="mnist-pu", root=str(scenario.root), teacher=str(scenario.teacher_path),
                       work=str(settings.work), steps_per_student=settings.steps,
                       full_step_budget=study.budget_steps(128), student=study.STUDENT, loss=study.MAIN_LOSS,
                       default_alignment=asdict(alignment),
                       machine=machine(torch=torch.__version__, threads=settings.threads))
        write_json_atomic(args.results, results)
    return results


# --- report ------------------------------------------------------------------------------------------


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _final_domain_accuracy(unit: dict[str, Any]) -> float | None:
    history = unit.get("history") or []
    return history[-1]["domain_accuracy"] if history else None


def report(results: dict[str, Any]) -> str:
    """The Markdown tables of the main rows and the ablation."""
    units = list(results["units"].values())
    lines = [("| row | n_l | seeds | top-1 % without | top-1 % with alignment | difference (per seed) | "
              "discriminator accuracy, last epoch |"), "|---|---|---|---|---|---|---|"]
    for row, n_l in sorted({(u["row"], u["n_l"]) for u in units if u["part"] == "main"},
                           key=lambda rn: (ROWS.index(rn[0]), rn[1])):
        main = [u for u in units if u["part"] == "main" and u["row"] == row and u["n_l"] == n_l]
        seeds = sorted({u["seed"] for u in main})
        base = {u["seed"]: u["top1"] for u in main if u["align"] is None}
        aligned = {u["seed"]: u for u in main if u["align"] is not None}
        paired = [s for s in seeds if s in base and s in aligned]
        if not paired:
            continue
        diffs = [aligned[s]["top1"] - base[s] for s in paired]
        accs = [_final_domain_accuracy(aligned[s]) for s in paired]
        lines.append(f"| {row} | {n_l} | {', '.join(map(str, paired))} | {_fmt([base[s] for s in paired])} | "
                     f"{_fmt([aligned[s]['top1'] for s in paired])} | "
                     f"{_fmt(diffs)} ({', '.join(f'{d:+.2f}' for d in diffs)}) | "
                     f"{', '.join(f'{a:.3f}' for a in accs if a is not None)} |")
    ablation = [u for u in units if u["part"] == "ablation"]
    if ablation:
        lines += ["", "| stage | lambda_max | seed | top-1 % | discriminator accuracy, last epoch | train s | load (1-min) |",
                  "|---|---|---|---|---|---|---|"]
        for u in sorted(ablation, key=lambda u: (u["align"]["stage"], u["align"]["weight"])):
            acc = _final_domain_accuracy(u)
            lines.append(f"| {u['align']['stage']} | {u['align']['weight']:g} | {u['seed']} | {u['top1']:.2f} | "
                         f"{acc:.3f} | {u['timings_s']['train']:.0f} | "
                         f"{u.get('load_before', ['-'])[0]} -> {u.get('load_after', ['-'])[0]} |")
    lines += ["", "| unit | top-1 % | train s | total s | load before -> after (1, 5, 15 min) |", "|---|---|---|---|---|"]
    for key, u in results["units"].items():
        lines.append(f"| {key} | {u['top1']:.2f} | {u['timings_s'].get('train', 0):.0f} | "
                     f"{u['timings_s'].get('total', 0):.0f} | {u.get('load_before', 'cached')} -> "
                     f"{u.get('load_after', '')} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Per epoch of every aligned unit: the discriminator's accuracy (left) and the student's MNIST
    test top-1 (right); the main rows on top (dashed: n_l = 1), the ablation below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [part for part in PARTS if any(u["part"] == part and u["align"] for u in results["units"].values())]
    fig, axes = plt.subplots(len(parts), 2, figsize=(12, 4 * len(parts)), squeeze=False)
    for (left, right), part in zip(axes, parts):
        for u in results["units"].values():
            if u["part"] != part or u["align"] is None or not u.get("history"):
                continue
            progress = [h["epoch"] / len(u["history"]) for h in u["history"]]
            label = (f"{u['row']} n_l {u['n_l']} seed {u['seed']}" if part == "main"
                     else f"stage {u['align']['stage']}, λ_max {u['align']['weight']:g}")
            # Main rows: one colour per row, solid n_l = 10, dashed n_l = 1, a marker per seed.
            look = ({"color": ROW_COLOURS[u["row"]], "ls": "--" if u["n_l"] == 1 else "-",
                     "marker": "o^s"[u["seed"] % 3], "ms": 3} if part == "main" else {"marker": "."})
            left.plot(progress, [h["domain_accuracy"] for h in u["history"]], label=label, **look)
            right.plot(progress, [h["val_top1"] for h in u["history"]], label=label, **look)
        left.axhline(0.5, color="grey", lw=0.8)
        left.set(xlabel="training progress p", ylabel="discriminator accuracy (L^t vs unlabeled)",
                 title=f"{part}: domain discriminator (0.5 = aligned)", ylim=(0.4, 1.0))
        right.set(xlabel="training progress p", ylabel="MNIST test top-1 % (monitor only)",
                  title=f"{part}: student, aligned runs", ylim=(96, 99.5))
        right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="main,ablation", help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--rows", default="KD-pool,PU-s1", help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--nl", type=int, nargs="+", default=[10], help="n_l of the main rows (the ablation: 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (the ablation: the first)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per student [default: 4,680]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one job at a time)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading processes [default: pucli's]")
    add_root_argument(parser)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher [default: ROOT/teacher/lenet5.safetensors]")
    parser.add_argument("--work", type=Path, default=None, help="unit cache [default: ROOT/align-study]")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the plot from --results")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.rows = [r for r in args.rows.split(",") if r]
    for value, allowed, what in ((args.parts, PARTS, "--parts"), (args.rows, ROWS, "--rows")):
        if set(value) - set(allowed):
            parser.error(f"{what}: choose from {', '.join(allowed)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = json.loads(args.results.read_text()) if args.report else run(args)
    print(report(results))
    plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
