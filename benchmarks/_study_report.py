"""Tables, plots, the docs section and the wall-clock estimate of the mnist-pu study (benchmarks/mnist_pu.py).

Everything here reads the study's results JSON only; nothing trains. The docs section replaces the
text between ``<!-- study:begin -->`` and ``<!-- study:end -->`` in docs/benchmarks.md (added after
the first table when absent); the rest of the file is left as it is.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
ROW_ORDER = ("KD-all", "KD-oracle", "KD-random", "KD-tiny", "KD-pool", "confidence", "PU-s1", "PU-s2", "PU-weighted",
             "PU-s1-auto", "PU-s1-graph", "PU-s2-graph")
PU_ROWS = ("PU-s1", "PU-s2", "PU-weighted", "PU-s1-auto", "PU-s1-graph", "PU-s2-graph")
# Xu et al. 2019, Table 3 (MNIST, LeNet-5 -> half, EMNIST as U, pi_p 0.47), n_l = 1, 2, 5, 10, 20.
PAPER_MNIST = {
    "PU-s1": (98.5, 98.7, 98.7, 98.8, 98.9),
    "PU-s2": (98.3, 98.5, 98.5, 98.6, 98.6),
    "FSKD": (95.5, 97.2, 97.6, 98.0, 98.1),
    "FitNet": (90.3, 94.2, 96.1, 96.7, 97.3),
}
PAPER_NL = (1, 2, 5, 10, 20)
TWO_HOURS_S = 7200.0
Y_FLOOR = 97.5  # the accuracy plot's lowest y; rows below it are named in the legend


# --- aggregation ---------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main_table(results: dict[str, Any]) -> dict[str, dict[Any, list[float]]]:
    """row -> n_l (None for KD-all) -> top-1 per seed."""
    table: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in results["students"]:
        if s["part"] == "main":
            table[s["row"]][s["n_l"]].append(s["top1"])
    return table


def selection_table(results: dict[str, Any]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """row -> n_l -> selection metrics per seed (rows that draw from U)."""
    table: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in results["students"]:
        if s["part"] == "main" and s.get("selection") and s["row"] not in ("KD-all", "KD-tiny", "PU-weighted"):
            table[s["row"]][s["n_l"]].append(s["selection"])
    return table


def prior_estimates(results: dict[str, Any]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for summary in results["selections"].values():
        estimate = summary.get("prior_estimate")
        if estimate and "class_prior" in estimate:
            out[summary["spec"]["n_l"]].append(estimate["class_prior"])
    return out


def verdicts(results: dict[str, Any]) -> list[str]:
    """Plain statements: PU vs KD-pool, KD-random, confidence and the paper / KD-all targets, per n_l."""
    table = main_table(results)
    lines = []
    kd_all = mean_std(table.get("KD-all", {}).get(None, []))[0]
    for n_l in results["nl"]:
        def m(row: str) -> float:
            return mean_std(table.get(row, {}).get(n_l, []))[0]

        pu_rows = {row: m(row) for row in PU_ROWS if not math.isnan(m(row))}
        if not pu_rows:
            continue
        best_row = max(pu_rows, key=pu_rows.get)  # type: ignore[arg-type]
        best = pu_rows[best_row]
        parts = [f"n_l = {n_l}: best PU row {best_row} {best:.2f}"]
        pool = m("KD-pool")
        if not math.isnan(pool):
            parts.append(f"{'beats' if best > pool else 'does not beat' if best < pool else 'ties'} KD-pool "
                         f"({pool:.2f}, {best - pool:+.2f})")
        for s1_row in ("PU-s1", "PU-s1-graph"):
            s1 = m(s1_row)
            if math.isnan(s1):
                continue
            for other in ("KD-random", "confidence"):
                value = m(other)
                if not math.isnan(value):
                    parts.append(f"{s1_row} {'above' if s1 > value else 'not above'} {other} ({s1 - value:+.2f})")
            if n_l in PAPER_NL:
                paper = PAPER_MNIST["PU-s1"][PAPER_NL.index(n_l)]
                target = min(paper, kd_all - 0.3) if not math.isnan(kd_all) else paper
                parts.append(f"{s1_row} target {target:.2f} (min of paper {paper} and KD-all - 0.3) "
                             f"{'met' if s1 >= target else f'missed by {target - s1:.2f}'}")
        lines.append("; ".join(parts))
    return lines


# --- estimate -----------------------------------------------------------------------------------------


def estimate_full_study(results: dict[str, Any], plan: dict[str, Any], finetune_epochs: int) -> dict[str, Any]:
    """Predicted wall-clock of the full study (jobs = 1, this run's threads) from this run's unit timings.

    Students: fixed part (load, decode, evaluate) + training time scaled linearly to the full step
    budget, per row (rows not measured use PU-s1's figures). Selections: measured extraction,
    training (scaled to 20 epochs where this run used fewer), scoring, prior estimate; fine-tuning
    per epoch. Sets: measured build time per kind.
    """
    full_steps = plan["steps"]
    per_row: dict[str, list[float]] = defaultdict(list)
    for s in results["students"]:
        if s["part"] != "main":
            continue
        t = s["timings_s"]
        fixed = t["total"] - t["train"]
        per_row[s["row"]].append(fixed + t["train"] * full_steps / max(1, s["steps"]))
    fallback = statistics.fmean(per_row.get("PU-s1") or [v for vs in per_row.values() for v in vs] or [120.0])
    students_s = 0.0
    by_row_s: dict[str, float] = {}
    for row, count in plan["students_by_row"].items():
        unit = statistics.fmean(per_row[row]) if per_row.get(row) else fallback
        by_row_s[row] = round(unit * count, 1)
        students_s += unit * count

    selections = list(results["selections"].values())
    # Cold extraction (decode-bound, so the last-stage variant's pass times it too); 25 s if none ran cold.
    fresh = [s for s in selections if s["spec"]["variant"] != "finetune" and not s["cache_hit"]]
    extract = statistics.fmean([s["timings_s"].get("extract", 0.0) for s in fresh]) if fresh else 25.0

    def train_20(s: dict[str, Any]) -> float:
        epochs = s["spec"]["epochs"] or 20
        return s["timings_s"].get("train", 0.0) * 20 / epochs

    frozen = [s for s in selections if s["spec"]["variant"] != "finetune"]
    train = statistics.fmean([train_20(s) for s in frozen]) if frozen else 20.0
    prior = statistics.fmean([s["prior_estimate"].get("wall_s", 0.0) for s in selections
                              if s.get("prior_estimate") and "wall_s" in s["prior_estimate"]] or [0.0])
    finetune = [s for s in selections if s["spec"]["variant"] == "finetune"]
    if finetune:
        f = finetune[0]
        finetune_s = f["timings_s"].get("train", 0.0) / (f["spec"]["epochs"] or 20) * finetune_epochs + f["timings_s"].get("score", 0.0)
    else:
        finetune_s = math.nan
    counts = plan["selections"]
    selections_s = (counts["frozen-fresh"] * (extract + train + prior) + counts["frozen-cached"] * train
                    + counts["last-stage"] * (extract + train) + counts["finetune"] * (0.0 if math.isnan(finetune_s) else finetune_s))
    build: dict[str, list[float]] = defaultdict(list)
    for summary in results["sets"].values():
        build[summary["spec"]["kind"]].append(summary["build_s"])
    build_fallback = statistics.fmean([v for vs in build.values() for v in vs] or [5.0])
    sets_s = sum((statistics.fmean(build[k]) if build.get(k) else build_fallback) * n for k, n in plan["sets_by_kind"].items())
    soft = sum(results["soft_targets"].get("timings_s", {}).values())
    expand_check = (results.get("expand_comparison") or {}).get("expand_s", 0.0)
    total = students_s + selections_s + sets_s + soft + expand_check
    dominant = max(by_row_s, key=by_row_s.get) if by_row_s else None  # type: ignore[arg-type]
    return {
        "basis": f"{'quick' if results['quick'] else 'this'} run of {results['started']}: {results['threads']} thread(s), "
                 f"{results['jobs']} job(s), load average at its end {results['machine']['load_avg_at_end']}",
        "full_plan": plan, "finetune_epochs": finetune_epochs, "students_s": round(students_s, 1),
        "students_by_row_s": by_row_s, "student_unit_s": {r: round(statistics.fmean(v), 1) for r, v in per_row.items()},
        "selections_s": round(selections_s, 1), "selection_parts_s": {"extract": round(extract, 1), "train_20_epochs": round(train, 1),
                                                                     "prior_estimate": round(prior, 1),
                                                                     "finetune": None if math.isnan(finetune_s) else round(finetune_s, 1)},
        "sets_s": round(sets_s, 1), "soft_targets_s": round(soft, 1),
        "expand_check_s": round(expand_check, 1), "total_s": round(total, 1), "fits_two_hours": total <= TWO_HOURS_S,
        "dominant": f"student training ({students_s / total:.0%} of the total; largest row {dominant}: {by_row_s.get(dominant, 0) / 60:.0f} min)"
        if total else None,
    }


def print_estimate(e: dict[str, Any]) -> None:
    plan = e["full_plan"]
    print(f"\nEstimated full study ({plan['students']} students x {plan['steps']} steps, "
          f"{sum(plan['selections'].values())} selections, {sum(plan['sets_by_kind'].values())} sets; jobs 1):")
    print(f"  basis: {e['basis']}")
    print(f"  students {e['students_s'] / 60:.0f} min, selections {e['selections_s'] / 60:.1f} min, sets {e['sets_s'] / 60:.1f} min, "
          f"soft targets {e['soft_targets_s'] / 60:.1f} min, expand check {e['expand_check_s'] / 60:.1f} min")
    print(f"  per student unit (s, full budget): " + ", ".join(f"{r} {v:.0f}" for r, v in e["student_unit_s"].items()))
    print(f"  selection parts (s): {e['selection_parts_s']}")
    verdict = "fits in 2 hours" if e["fits_two_hours"] else f"exceeds 2 hours by {(e['total_s'] - TWO_HOURS_S) / 60:.0f} min"
    print(f"  TOTAL {e['total_s'] / 3600:.2f} h: {verdict}; dominated by {e['dominant']}")


def print_summary(results: dict[str, Any]) -> None:
    table = main_table(results)
    flag = f" (REDUCED step budget: {results['steps_per_student']} steps, not {results['full_step_budget']})" if results["reduced_step_budget"] else ""
    print(f"mnist-pu study: student top-1 %, mean ± std over seeds {results['seeds']}{flag}; teacher {results['teacher_top1']:.2f} %")
    print("| row | " + " | ".join(f"n_l = {n}" for n in results["nl"]) + " |")
    print("|---|" + "---:|" * len(results["nl"]))
    for row in ROW_ORDER:
        if row not in table:
            continue
        cells = [fmt(table[row].get(None if row == "KD-all" else n, [])) for n in results["nl"]]
        print(f"| {row} | " + " | ".join(cells) + " |")
    for row, cells in selection_rows(results):
        print(f"| {row} | " + " | ".join(cells) + " |")
    for line in fig2_lines(results) + ablation_lines(results):
        print(line)
    for line in verdicts(results):
        print("- " + line)


def selection_rows(results: dict[str, Any]) -> list[tuple[str, list[str]]]:
    table = selection_table(results)
    rows = []
    for row in ("PU-s1", "PU-s2", "confidence", "KD-random"):
        if row in table:
            cells = []
            for n in results["nl"]:
                entries = table[row].get(n, [])
                cells.append(f"F1 {fmt([e['f1'] for e in entries], 3)}, {fmt([e['selected'] for e in entries], 0)} kept" if entries else "")
            rows.append((f"selection {row}", cells))
    return rows


def fig2_lines(results: dict[str, Any]) -> list[str]:
    data: dict[tuple[float, str], list[float]] = defaultdict(list)
    for s in results["students"]:
        if s["part"] == "fig2":
            data[(s["prior_factor"], s["loss"])].append(s["top1"])
    if not data:
        return []
    factors = sorted({f for f, _ in data})
    lines = ["", "Fig. 2 (n_l = 10): top-1 % by prior factor pi'/pi", "| loss | " + " | ".join(f"{f:g}" for f in factors) + " |",
             "|---|" + "---:|" * len(factors)]
    for loss in ("kd", "weighted-kd", "robust-kd"):
        lines.append(f"| {loss} | " + " | ".join(fmt(data.get((f, loss), [])) for f in factors) + " |")
    return lines


def ablation_lines(results: dict[str, Any]) -> list[str]:
    rows = [s for s in results["students"] if s["part"] == "ablation"]
    if not rows:
        return []
    lines = ["", "Ablation (n_l = 10, robust KD)", "| selector | F1 | kept | top-1 % |", "|---|---:|---:|---:|"]
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in rows:
        by_variant[s["variant"]].append(s)
    for variant, entries in by_variant.items():
        lines.append(f"| {variant} | {fmt([e['selection']['f1'] for e in entries], 3)} | "
                     f"{fmt([e['selection']['selected'] for e in entries], 0)} | {fmt([e['top1'] for e in entries])} |")
    return lines


# --- plots --------------------------------------------------------------------------------------------


def plot_accuracy_vs_nl(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = main_table(results)
    nls = results["nl"]
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    markers = dict(zip(ROW_ORDER, "os^vDPX*hp<>"))
    for row in ROW_ORDER:
        if row not in table:
            continue
        if row == "KD-all":
            mean, std = mean_std(table[row].get(None, []))
            ax.axhline(mean, color="black", lw=1.2, ls="--", label=f"KD-all (30,000 originals) {mean:.2f}")
            if std:
                ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
            continue
        xs = [n for n in nls if table[row].get(n)]
        if not xs:
            continue
        stats = [mean_std(table[row][n]) for n in xs]
        off_scale = [m for m, _ in stats if m < Y_FLOOR]
        label = row + (f" (off scale: {', '.join(f'{m:.1f}' for m in off_scale)})" if off_scale else "")
        # Off-scale points keep no error bar: a huge spread (KD-tiny) would draw a line across the plot.
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s if m >= Y_FLOOR else 0.0 for m, s in stats], marker=markers[row],
                    capsize=3, lw=1.4, label=label)
    paper_x = [n for n in PAPER_NL if n in nls] or list(PAPER_NL)
    ax.plot(paper_x, [PAPER_MNIST["PU-s1"][PAPER_NL.index(n)] for n in paper_x], color="grey", ls=":", marker="o",
            mfc="none", label="paper PU-s1 (EMNIST as U)")
    ax.set_xscale("log")
    ax.set_xticks(nls if len(nls) > 1 else list(PAPER_NL))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("labeled images per class n_l")
    ax.set_ylabel("student MNIST test top-1 (%)")
    values = [v for row in table.values() for vs in row.values() for v in vs]
    low = min(values + [PAPER_MNIST["PU-s1"][0]]) if values else 95
    high = max(values + [PAPER_MNIST["PU-s1"][-1]]) if values else 100
    ax.set_ylim(max(low - 0.2, Y_FLOOR), min(100.0, high + 0.2))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    title = "mnist-pu: LeNet-5-half student, robust KD, same step budget per row"
    if results["reduced_step_budget"]:
        title += f"\nQUICK RUN: {results['steps_per_student']} steps per student (reduced), seeds {results['seeds']}"
    else:
        title += f"\nmean ± std over seeds {results['seeds']}; {results['steps_per_student']} steps per student"
    _finish_plot(fig, ax, title, path, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _finish_plot(fig: Any, ax: Any, title: str, path: Path, **legend: Any) -> None:
    """Title, grid and legend (``legend``: its options), then write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_prior_robustness(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    kept: dict[float, list[int]] = defaultdict(list)
    for s in results["students"]:
        if s["part"] == "fig2":
            data[s["loss"]][s["prior_factor"]].append(s["top1"])
            if s["loss"] == "robust-kd":
                kept[s["prior_factor"]].append(s["selection"]["selected"])
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    for loss, marker in (("kd", "o"), ("weighted-kd", "s"), ("robust-kd", "^")):
        if loss not in data:
            continue
        xs = sorted(data[loss])
        stats = [mean_std(data[loss][x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker=marker, capsize=3, label=loss)
    prior = results["class_prior"]
    xs = sorted(kept)
    ax.set_xscale("log")  # factors 0.5 .. 2 are symmetric around 1 in log scale
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}\n({x * prior:.3g}; {statistics.fmean(kept[x]) / 1000:.1f}k kept)" for x in xs], fontsize=8)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("prior given to the selector: pi' / pi   (pi'; images PU-s1 kept)")
    ax.set_ylabel("student MNIST test top-1 (%)")
    title = f"mnist-pu, n_l = 10: PU-s1 selected with a mis-specified prior (true pi = {prior})"
    if results["reduced_step_budget"]:
        title += f"\nQUICK RUN: {results['steps_per_student']} steps per student (reduced)"
    else:
        title += f"\nseeds {results['fig_seeds']}; {results['steps_per_student']} steps per student"
    _finish_plot(fig, ax, title, path, fontsize=9)


# --- the docs section -------------------------------------------------------------------------------------


def _stage_means(results: dict[str, Any]) -> dict[str, Any]:
    students = [s for s in results["students"] if s["part"] == "main"]
    by_row: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in students:
        by_row[s["row"]].append(s)
    return by_row


def section(results: dict[str, Any], results_path: Path, repo: Path) -> str:
    rel = results_path.resolve().relative_to(repo) if results_path.resolve().is_relative_to(repo) else results_path
    quick = results["reduced_step_budget"]
    out: list[str] = [BEGIN, "", "## The mnist-pu study (issue 5)", ""]
    out.append("Generated by `benchmarks/mnist_pu.py --report" + (" --quick" if results["quick"] else "") +
               f"` from `{rel}` (run started {results['started']}); do not edit by hand.")
    out.append("")
    if quick:
        out += [f"> **Smoke-test figures, not the study.** This section was generated from a `--quick` run: "
                f"{results['steps_per_student']} optimizer steps per student instead of the protocol's "
                f"{results['full_step_budget']}, n_l {results['nl']}, seeds {results['seeds']}, Fig. 2 / ablation selectors at "
                f"{results['selector_epochs_extra']} epochs, fine-tuning {results['finetune_epochs']} epoch(s). "
                "Run `python benchmarks/mnist_pu.py` then `--report` for the real table.", ""]
    out += [
        "```",
        "python benchmarks/mnist_pu_data.py && python benchmarks/train_teacher.py   # once",
        "python benchmarks/mnist_pu.py            # resumable; units cached under <pucli cache>/benchmarks/mnist-pu/study",
        "python benchmarks/mnist_pu.py --report   # this section and docs/study_*.png",
        "```",
        "",
        f"Protocol (../shared/docs/BENCHMARKS.md): every row trains the same student ({results['student']}) with "
        f"{results['main_loss']} and pucli distill's defaults for the same number of optimizer steps "
        f"({results['steps_per_student']:,}; the protocol's budget is 20 epochs over 30,000 images at batch "
        f"{results['batch_size']} = {results['full_step_budget']:,}), so epochs = steps / (steps per epoch of the set). "
        f"Selection with the true class prior {results['class_prior']}; PU-s2 keeps the top {results['pu_s2_budget']:,}. "
        "Soft targets come from one teacher pass over the pool and the original training set, shared by every "
        "row (`pucli.kd.expand.teacher_soft_targets` + `pucli.data.manifest.build_expanded_set`); the per-set `pucli expand` "
        "path is timed beside it below. Teacher top-1: "
        f"{results['teacher_top1']:.2f} %. Machine: {results['machine']['available_cpus']} CPUs, "
        f"{results['threads']} torch thread(s) per job, {results['jobs']} job(s) at a time, load average at the end "
        f"{results['machine']['load_avg_at_end']} (shared with other engineers' jobs: wall-clock figures are inflated).",
        "",
        "![student accuracy vs n_l](study_accuracy_vs_nl.png)",
        "",
        "### Student top-1 % (mean ± std over seeds " + ", ".join(map(str, results["seeds"])) + ")",
        "",
    ]
    table = main_table(results)
    nls = results["nl"]
    out.append("| row | " + " | ".join(f"n_l = {n}" for n in nls) + " |")
    out.append("|---|" + "---:|" * len(nls))
    for row in ROW_ORDER:
        if row in table:
            cells = [fmt(table[row].get(None if row == "KD-all" else n, [])) for n in nls]
            out.append(f"| {row} | " + " | ".join(cells) + " |")
    for name, values in PAPER_MNIST.items():
        cells = [f"{values[PAPER_NL.index(n)]:.1f}" if n in PAPER_NL else "" for n in nls]
        out.append(f"| *paper {name}* | " + " | ".join(f"*{c}*" if c else "" for c in cells) + " |")
    out += ["", "PU-s1, PU-s2, PU-weighted and PU-s1-auto select by the nnPU head's own scores (graph smoothing off, "
            "the selector these rows were first run with); PU-s1-graph and PU-s2-graph by pucli's default, the head's "
            "scores smoothed over the pool's 10-nearest-neighbour graph (`pucli.pu.graph`; PU-s1-graph keeps as many "
            "images as PU-s1, chosen by their neighbourhood).",
            "", "KD-all does not depend on n_l (one student per seed, repeated across the columns). The paper's rows "
            "(Xu et al. 2019, Table 3) are on a different pool (EMNIST, pi_p 0.47) with a 200-epoch recipe; "
            "the paper gives no KD-on-all-data figure for MNIST.", ""]
    out += ["### When selection beats the whole pool", ""]
    out += [f"- {line}" for line in verdicts(results)] + [""]

    out += ["### Selections against the ground truth (mean ± std over seeds)", "",
            "| selection | n_l | kept | precision | recall | F1 | Fashion kept | KMNIST kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    sel = selection_table(results)
    for row in ("PU-s1", "PU-s1-graph", "PU-s1-auto", "PU-s2", "PU-s2-graph", "confidence", "KD-random", "KD-oracle", "KD-pool"):
        for n in nls:
            entries = sel.get(row, {}).get(n, [])
            if entries:
                out.append(f"| {row} | {n} | {fmt([e['selected'] for e in entries], 0)} | {fmt([e['precision'] for e in entries], 3)} | "
                           f"{fmt([e['recall'] for e in entries], 3)} | {fmt([e['f1'] for e in entries], 3)} | "
                           f"{fmt([e['kept_by_source'].get('fashion', 0) for e in entries], 0)} | "
                           f"{fmt([e['kept_by_source'].get('kmnist', 0) for e in entries], 0)} |")
    estimates = prior_estimates(results)
    out += ["", f"Class prior used: {results['class_prior']} (the true one) in every row but PU-s1-auto, which "
            "runs `pucli select --prior auto` (the estimate of `pucli prior`). "
            + ("Estimates (best-bin estimation on cross-fitted scores, refined once with nnPU heads): "
               + "; ".join(f"n_l = {n}: {fmt(v, 3)}" for n, v in sorted(estimates.items())) + "."
               if estimates else "`pucli.pu.prior` gave no estimate in this run."), ""]

    fig2 = fig2_lines(results)
    if fig2:
        out += ["### Mis-specified prior (the paper's Fig. 2), n_l = 10", "",
                "![accuracy vs mis-specified prior](study_prior_robustness.png)", "",
                "Selector trained with pi' = factor x 0.30, PU-s1 kept, then each loss; seeds "
                f"{results['fig_seeds']}." + (f" Selectors other than pi' = pi at {results['selector_epochs_extra']} epochs (quick)." if results["selector_epochs_extra"] else ""), ""]
        out += fig2[2:]
        kept = {}
        for s in results["students"]:
            if s["part"] == "fig2" and s["loss"] == "robust-kd":
                kept.setdefault(s["prior_factor"], []).append(s["selection"])
        out += ["", "| pi'/pi | pi' | kept | precision | recall | F1 |", "|---:|---:|---:|---:|---:|---:|"]
        for factor in sorted(kept):
            e = kept[factor]
            out.append(f"| {factor:g} | {factor * results['class_prior']:.3g} | {fmt([x['selected'] for x in e], 0)} | "
                       f"{fmt([x['precision'] for x in e], 3)} | {fmt([x['recall'] for x in e], 3)} | {fmt([x['f1'] for x in e], 3)} |")
        out.append("")

    abl = [s for s in results["students"] if s["part"] == "ablation"]
    if abl:
        out += ["### Ablation at n_l = 10", "",
                "| selector | what changes | kept | F1 | select s | student top-1 % |", "|---|---|---:|---:|---:|---:|"]
        what = {"frozen": "frozen teacher, SE gate over conv1 + conv2 + pre-logits (106 ch), nnPU; the head's own scores",
                "graph": "the same head, scores smoothed over the pool's 10-NN graph (pucli's default)",
                "finetune": f"backbone fine-tuned end to end ({results['finetune_epochs']} epochs)",
                "no-attention": "plain concatenation, no SE gate (`attention=False`)",
                "last-stage": "last-stage features only (84-d pre-logits)", "upu": "unbiased PU risk (`--risk upu`)"}
        selections = results["selections"]
        for variant in ("frozen", "graph", "finetune", "no-attention", "last-stage", "upu"):
            entries = [s for s in abl if s["variant"] == variant]
            if not entries:
                continue
            wall = [v["wall_s"] for v in selections.values() if v["spec"]["variant"] == variant and v["spec"]["n_l"] == 10
                    and v["spec"]["prior"] is not None and abs(v["spec"]["prior"] - results["class_prior"]) < 1e-9]
            out.append(f"| {variant} | {what[variant]} | {fmt([e['selection']['selected'] for e in entries], 0)} | "
                       f"{fmt([e['selection']['f1'] for e in entries], 3)} | {fmt(wall, 0)} | {fmt([e['top1'] for e in entries])} |")
        losses = [s for s in results["students"] if s["part"] == "fig2" and s["prior_factor"] == 1.0]
        if losses:
            out += ["", "| distillation loss (PU-s1, true prior) | student top-1 % |", "|---|---:|"]
            for loss in ("kd", "weighted-kd", "robust-kd"):
                out.append(f"| {loss} | {fmt([s['top1'] for s in losses if s['loss'] == loss])} |")
        out.append("")

    out += ["### Wall-clock, throughput and memory", ""]
    soft = results["soft_targets"]
    out.append(f"Shared soft-target pass (teacher over pool + originals): {sum(soft.get('timings_s', {}).values()):.0f} s "
               f"({soft.get('timings_s')}), peak RSS {soft.get('peak_rss_mib', 0):.0f} MiB.")
    check = results.get("expand_comparison")
    if check:
        out.append(f"`pucli.kd.expand.expand` on the n_l = 10 PU-s1 set ({check['items']:,} items): {check['expand_s']:.1f} s "
                   f"(peak RSS {check['expand_peak_rss_mib']:.0f} MiB) against {check['shared_build_s']:.1f} s to build it from "
                   f"the shared soft targets; largest soft-target difference {check['max_abs_soft_target_difference']:.1e}, "
                   f"class weights {check['class_weights_max_difference']:.1e}.")
    out += ["", "| stage | units | mean s | min s | max s | mean peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
    fresh = [s for s in results["selections"].values() if not s["cache_hit"] and s["spec"]["variant"] != "finetune"]
    cached = [s for s in results["selections"].values() if s["cache_hit"]]
    for label, group, key in (("select, cold descriptors (extract + train + score)", fresh, "wall_s"),
                              ("select, cached descriptors", cached, "wall_s")):
        if group:
            v = [g[key] for g in group]
            out.append(f"| {label} | {len(v)} | {statistics.fmean(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
                       f"{statistics.fmean([g['peak_rss_mib'] for g in group]):.0f} |")
    for part in ("extract", "train", "score"):
        v = [g["timings_s"].get(part) for g in fresh if g["timings_s"].get(part) is not None]
        if v:
            out.append(f"| select: {part} | {len(v)} | {statistics.fmean(v):.1f} | {min(v):.1f} | {max(v):.1f} | |")
    sets = list(results["sets"].values())
    if sets:
        v = [s["build_s"] for s in sets]
        out.append(f"| expanded set from shared soft targets | {len(v)} | {statistics.fmean(v):.1f} | {min(v):.1f} | {max(v):.1f} | "
                   f"{statistics.fmean([s['peak_rss_mib'] for s in sets]):.0f} |")
    by_row = _stage_means(results)
    for row in ROW_ORDER:
        group = by_row.get(row)
        if not group:
            continue
        v = [g["timings_s"]["total"] for g in group]
        out.append(f"| distill + evaluate, {row} ({fmt([g['items'] for g in group], 0)} items, {group[0]['epochs']} epochs) | {len(v)} | "
                   f"{statistics.fmean(v):.1f} | {min(v):.1f} | {max(v):.1f} | {statistics.fmean([g['peak_rss_mib'] for g in group]):.0f} |")
    out.append("")
    perf, seen = [], set()
    for s in results["students"]:
        # One unit can carry several labels (PU-s1 at n_l = 10 is also the ablation's and Fig. 2's unit).
        if s.get("bound") and (s["row"], s["n_l"], s["seed"]) not in seen:
            seen.add((s["row"], s["n_l"], s["seed"]))
            perf.append(s)
    bound_sel = [s for s in results["selections"].values() if s.get("extract_bound")]
    if perf or bound_sel:
        out += ["| throughput | measured img/s | bound img/s | ratio |", "|---|---:|---:|---:|"]
        for s in bound_sel:
            b = s["extract_bound"]
            if b["extract_img_s"] and not s["cache_hit"]:
                out.append(f"| select pool pass (extraction, n_l = {s['spec']['n_l']}) vs extractor forward on in-memory uint8 | "
                           f"{b['extract_img_s']:,.0f} | {b['bound_img_s']:,.0f} | {b['ratio']:.2f} |")
        for s in perf:
            b = s["bound"]
            out.append(f"| distill {s['row']} vs student fwd+bwd + teacher fwd | {s['images_per_s']:,.0f} | "
                       f"{b['teacher_plus_student_img_s']:,.0f} | {b['ratio']:.2f} |")
            out.append(f"| distill {s['row']} vs student fwd+bwd only | {s['images_per_s']:,.0f} | "
                       f"{b['student_only_img_s']:,.0f} | {b['ratio_student_only']:.2f} |")
        out.append("")
    pu = [s for s in perf if s["row"] == "PU-s1"]
    pool = [s for s in perf if s["row"] == "KD-pool"]
    if pu and pool:
        out.append(f"Distill peak RSS grows little with the set: {pu[0]['peak_rss_mib']:.0f} MiB for {pu[0]['items']:,} items "
                   f"(PU-s1) against {pool[0]['peak_rss_mib']:.0f} MiB for {pool[0]['items']:,} (KD-pool): the decoded uint8 "
                   "set is 784 B per image. Peak RSS is the unit's own (VmHWM reset before each unit, data-loader workers not counted).")
    main_sel = [s for s in results["selections"].values() if s["spec"]["n_l"] == 10 and s["spec"]["variant"] == "frozen"
                and s["spec"]["prior"] is not None and abs(s["spec"]["prior"] - results["class_prior"]) < 1e-9 and not s["spec"]["epochs"]]
    pu10 = [s for s in results["students"] if s["part"] == "main" and s["row"] == "PU-s1" and s["n_l"] == 10]
    if main_sel and pu10 and check:
        sel_s, dist_s = main_sel[0]["wall_s"], pu10[0]["timings_s"]["distill"]
        eval_s = pu10[0]["timings_s"]["evaluate"]
        total = sel_s + check["expand_s"] + dist_s + eval_s
        out.append(f"End to end at n_l = 10 (seed {pu10[0]['seed']}): select {sel_s:.0f} s + expand {check['expand_s']:.0f} s + "
                   f"distill {dist_s:.0f} s + evaluate {eval_s:.0f} s = {total / 60:.1f} min"
                   + (" (reduced step budget)" if quick else "") + ".")
    e = results.get("estimate")
    if e:
        out += ["", f"Whole study, predicted from this run's unit timings ({e['basis']}): {e['total_s'] / 3600:.2f} h at one job "
                f"({'within' if e['fits_two_hours'] else 'over'} the 2-hour target); {e['dominant']}. "
                f"This run itself took {results['run_wall_s'] / 60:.1f} min (units cached by earlier runs are read, "
                "not re-run or re-timed)."]
    out += ["", END]
    return "\n".join(out)


def write_report(results: dict[str, Any], results_path: Path, repo: Path) -> None:
    docs = repo / "docs"
    plot_accuracy_vs_nl(results, docs / "study_accuracy_vs_nl.png")
    if any(s["part"] == "fig2" for s in results["students"]):
        plot_prior_robustness(results, docs / "study_prior_robustness.png")
    text = section(results, results_path, repo)
    target = docs / "benchmarks.md"
    current = target.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        updated = head + text + tail
    else:
        marker = "\n## "
        first_section = current.find(marker)
        updated = current[:first_section] + "\n\n" + text + "\n" + current[first_section:] if first_section >= 0 else current + "\n" + text + "\n"
    target.write_text(updated)
    print(f"wrote {target} (study section), {docs / 'study_accuracy_vs_nl.png'}, {docs / 'study_prior_robustness.png'}",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit("run benchmarks/mnist_pu.py --report")


# --- the web-crawl study (issue 16) ------------------------------------------------------------------------

WEBCRAWL_ROWS = ("KD-pool", "KD-random", "confidence", "KD-oracle", "PU-s1", "PU-weighted")
WEBCRAWL_RESULTS = "benchmarks/results/webcrawl_pu_study.json"
WEBCRAWL_PLOT = "docs/webcrawl_prior.png"
# The prior-0.30 point: the mnist-pu study's rows at n_l = 10 (its PU-s1 / PU-weighted select by the nnPU
# head alone, graph off; PU-s1-graph by the head smoothed over the graph: neither is the propagation default).
REFERENCE_ROWS = {"KD-pool": "KD-pool", "KD-random": "KD-random", "confidence": "confidence", "KD-oracle": "KD-oracle",
                  "PU-s1": "PU-s1", "PU-weighted": "PU-weighted", "PU-s1-graph": "PU-s1-graph"}


def _webcrawl_merge(paths: list[Path]) -> dict[float, dict[str, Any]]:
    """Per prior: students (main, by row and seed), selections, soft targets, wall-clock entries, runs."""
    priors: dict[float, dict[str, Any]] = {}
    for path in paths:
        results = __import__("json").loads(Path(path).read_text())
        if results.get("scenario") != "webcrawl-pu":
            raise SystemExit(f"{path}: scenario {results.get('scenario')!r}, not webcrawl-pu")
        prior = round(results["class_prior"], 6)
        entry = priors.setdefault(prior, {"root": results["root"], "students": {}, "selections": {}, "soft_targets": None,
                                          "wallclock": {}, "runs": [], "teacher_top1": results["teacher_top1"],
                                          "steps_per_student": results["steps_per_student"]})
        entry["soft_targets"] = entry["soft_targets"] or results["soft_targets"]
        entry["runs"].append({"results": str(path), "started": results["started"], "rows": results["rows"],
                              "seeds": results["seeds"], "nl": results["nl"], "parts": results["parts"],
                              "threads": results["threads"], "jobs": results["jobs"],
                              "load_avg_at_end": results["machine"]["load_avg_at_end"], "run_wall_s": results["run_wall_s"],
                              "command": _webcrawl_command(results, path)})
        for s in results["students"]:
            if s["part"] == "main":
                entry["students"][(s["row"], s["seed"])] = s
        for name, summary in results["selections"].items():
            entry["selections"][name] = summary
        for w in (results.get("wallclock") or {}).get("entries", []):
            if "row" in w:
                entry["wallclock"][(w["row"], w["seed"])] = w
        entry["wallclock_formula"] = (results.get("wallclock") or {}).get("formula", entry.get("wallclock_formula"))
    return priors


def _webcrawl_command(results: dict[str, Any], path: Path) -> str:
    parts = ",".join(results["parts"])
    return (f"python benchmarks/mnist_pu.py --root {results['root']} --teacher {results['teacher']} --parts {parts} "
            f"--rows {','.join(results['rows'])} --nl {' '.join(map(str, results['nl']))} "
            f"--seeds {' '.join(map(str, results['seeds']))} --threads {results['threads']} --results {path}")


def _reference_point(reference: Path) -> dict[str, Any] | None:
    """The mnist-pu study's n_l = 10 rows (prior 0.30): row -> top-1 per seed, plus PU-s1's selection figures."""
    import json

    if not Path(reference).is_file():
        return None
    results = json.loads(Path(reference).read_text())
    rows: dict[str, list[float]] = defaultdict(list)
    selection: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in results["students"]:
        if s["part"] == "main" and s["n_l"] == 10 and s["row"] in REFERENCE_ROWS:
            rows[s["row"]].append(s["top1"])
            if s.get("selection") and s["row"] in ("PU-s1", "PU-s1-graph"):
                selection[s["row"]].append(s["selection"])
    return {"results": str(reference), "class_prior": results["class_prior"], "started": results["started"],
            "steps_per_student": results["steps_per_student"], "rows": dict(rows), "selection": dict(selection),
            "note": "mnist-pu (issue 5): 30,000 digits + 60,000 Fashion + 10,000 KMNIST, no augmented copies; its PU-s1 "
                    "and PU-weighted select by the nnPU head alone (graph off), PU-s1-graph by the head smoothed over the "
                    "10-NN graph; neither is today's propagation default"}


def combine_webcrawl(paths: list[Path], repo: Path, *, section_out: Path, reference: Path) -> dict[str, Any]:
    """Merge the web-crawl study's per-run results into benchmarks/results/webcrawl_pu_study.json, draw
    docs/webcrawl_prior.png and write the docs section (markdown) to ``section_out``."""
    import json
    import os

    from _common import write_json_atomic

    merged = _webcrawl_merge(paths)
    ref = _reference_point(reference)
    out: dict[str, Any] = {"scenario": "webcrawl-pu", "issue": 16, "priors": {}, "reference_prior_0.30": ref,
                           "generated_unix": int(__import__("time").time()), "inputs": [str(p) for p in paths]}
    for prior in sorted(merged):
        entry = merged[prior]
        manifest = json.loads((Path(entry["root"]) / "manifest.json").read_text())
        rows: dict[str, Any] = {}
        for (row, seed), s in sorted(entry["students"].items(), key=lambda kv: (kv[0][0], kv[0][1])):
            r = rows.setdefault(row, {"top1_by_seed": {}, "students": []})
            r["top1_by_seed"][str(seed)] = s["top1"]
            r["students"].append({k: s.get(k) for k in ("name", "seed", "top1", "items", "epochs", "steps", "timings_s",
                                                        "images_per_s", "peak_rss_mib", "load_avg_at_end", "selection")})
        for r in rows.values():
            m, sd = mean_std(list(r["top1_by_seed"].values()))
            r.update(mean=round(m, 3), std=round(sd, 3), n=len(r["top1_by_seed"]))
        selections = []
        for name, summary in sorted(entry["selections"].items()):
            selections.append({"name": name, "seed": summary["spec"]["seed"], "n_l": summary["spec"]["n_l"],
                               "prior_given": summary["spec"]["prior"], **{k: summary.get(k) for k in (
                                   "pu_s1", "wall_s", "cli_wall_s", "timings_s", "cache_hit", "soft_targets_selected_s",
                                   "soft_targets_selected_items", "load_avg_before", "load_avg_after", "peak_rss_mib",
                                   "score_quantiles", "sigmoid_score_quantiles", "warnings", "command", "output_folder",
                                   "index", "report", "recommendation")},
                               "graph": (summary.get("metadata") or {}).get("graph")})
        # Refresh the recommendation from the report itself (the lead may add it after the run).
        for sel in selections:
            if sel.get("report") and Path(sel["report"]).is_file():
                report = json.loads(Path(sel["report"]).read_text())
                rec = report.get("recommendation") or (report.get("results") or {}).get("recommendation")
                if rec is not None:
                    sel["recommendation"] = rec
        cold = {sel["seed"]: not (sel["cache_hit"] or (sel.get("graph") or {}).get("cache_hit")) for sel in selections}
        for w in entry["wallclock"].values():
            if w["row"] != "KD-pool":
                w["selection_cold"] = cold.get(w["seed"])
        out["priors"][f"{prior:g}"] = {
            "class_prior": prior, "root": entry["root"], "teacher_top1": entry["teacher_top1"],
            "steps_per_student": entry["steps_per_student"],
            "pool": manifest["counts"], "soft_targets": entry["soft_targets"], "rows": rows, "selections": selections,
            "wallclock": {"formula": entry.get("wallclock_formula"),
                          "entries": [w for _, w in sorted(entry["wallclock"].items())]},
            "runs": entry["runs"],
        }
    out["verdicts"] = webcrawl_verdicts(out)
    out["recommendation_vs_students"] = recommendation_cells(out)
    write_json_atomic(repo / WEBCRAWL_RESULTS, out)
    plot_webcrawl_prior(out, repo / WEBCRAWL_PLOT)
    section_out = Path(section_out)
    section_out.parent.mkdir(parents=True, exist_ok=True)
    text = webcrawl_section(out)
    tmp = section_out.with_name(section_out.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, section_out)
    print(f"wrote {repo / WEBCRAWL_RESULTS}, {repo / WEBCRAWL_PLOT}, {section_out}", file=sys.stderr)
    return out


ACTION_ROW = {"select": "PU-s1", "weight": "PU-weighted", "all": "KD-pool", "take-all": "KD-pool", "pool": "KD-pool"}


def recommendation_cells(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (prior, seed): the selection report's recommended action beside the equal-steps top-1 of the three
    students it chooses between (keep the selection = PU-s1, weight = PU-weighted, whole pool = KD-pool), the
    best of them and whether the recommended one is within 0.2 points of it. Facts for issue 16 item 2; the
    rule itself is pucli's."""
    cells = []
    for prior, data in study["priors"].items():
        for sel in data["selections"]:
            seed = str(sel["seed"])
            top1 = {row: data["rows"].get(row, {}).get("top1_by_seed", {}).get(seed) for row in ("PU-s1", "PU-weighted", "KD-pool")}
            rec = sel.get("recommendation")
            action = rec.get("action") if isinstance(rec, dict) else rec
            cell: dict[str, Any] = {"prior": prior, "seed": sel["seed"], "action": action, "top1": top1}
            known = {r: v for r, v in top1.items() if v is not None}
            if known:
                best = max(known, key=known.get)  # type: ignore[arg-type]
                cell["best"] = best
                row = ACTION_ROW.get(str(action))
                if row in known:
                    cell["recommended_row"] = row
                    cell["within_0.2_of_best"] = known[best] - known[row] <= 0.2 + 1e-9
            cells.append(cell)
    return cells


def _row_stat(study: dict[str, Any], prior: str, row: str) -> tuple[float, float, int]:
    r = study["priors"].get(prior, {}).get("rows", {}).get(row)
    return (r["mean"], r["std"], r["n"]) if r else (math.nan, math.nan, 0)


def webcrawl_verdicts(study: dict[str, Any]) -> list[str]:
    """Plain statements: each selection row against KD-pool per prior (equal steps), and where the advantage ends."""
    lines = []
    diffs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # row -> (prior, diff, noise)
    for prior in study["priors"]:
        pool_m, pool_s, pool_n = _row_stat(study, prior, "KD-pool")
        if not pool_n:
            continue
        parts = []
        for row in ("PU-s1", "PU-weighted", "confidence", "KD-random", "KD-oracle"):
            m, s, n = _row_stat(study, prior, row)
            if not n:
                continue
            diff = m - pool_m
            noise = max(pool_s, s) if min(n, pool_n) > 1 else math.nan
            word = ("beats" if diff > 0 else "is below" if diff < 0 else "ties")
            sig = ("" if math.isnan(noise) else " (more than the larger seed std)" if abs(diff) > noise
                   else " (within the seed std)")
            parts.append(f"{row} {m:.2f} {word} KD-pool {pool_m:.2f} by {abs(diff):.2f} points{sig}, "
                         f"{min(n, pool_n)} seed(s)")
            diffs[row].append((float(prior), diff, noise))
        if parts:
            lines.append(f"prior {prior} (equal steps): " + "; ".join(parts))
    ref = study.get("reference_prior_0.30")
    if ref and ref["rows"].get("KD-pool"):
        pool = statistics.fmean(ref["rows"]["KD-pool"])
        for row in ("PU-s1", "PU-s1-graph", "PU-weighted"):
            if ref["rows"].get(row):
                diffs[row if row != "PU-s1-graph" else "PU-s1-graph (0.30 only)"].append(
                    (0.30, statistics.fmean(ref["rows"][row]) - pool, math.nan))
        lines.append("prior 0.30 (the mnist-pu study, n_l = 10, its own selectors): " + "; ".join(
            f"{row} {statistics.fmean(v):.2f} vs KD-pool {pool:.2f} ({statistics.fmean(v) - pool:+.2f})"
            for row, v in ref["rows"].items() if row in ("PU-s1", "PU-s1-graph", "PU-weighted")))
    for row in ("PU-s1", "PU-weighted"):
        series = sorted(diffs.get(row, []))
        if not series:
            continue
        # A difference counts only beyond the larger seed std (0.2 points at least, or with one seed).
        cat = {p: ("above" if d > max(0.0 if math.isnan(n) else n, 0.2) else
                   "below" if d < -max(0.0 if math.isnan(n) else n, 0.2) else "tie") for p, d, n in series}
        trend = ", ".join(f"{p:g}: {d:+.2f}" for p, d, _ in series)
        groups = {c: [f"{p:g}" for p, _, _ in series if cat[p] == c] for c in ("above", "tie", "below")}
        said = "; ".join(f"{ {'above': 'above KD-pool', 'tie': 'within noise of KD-pool', 'below': 'below KD-pool'}[c]} at "
                         f"{', '.join(ps)}" for c, ps in groups.items() if ps)
        above = [p for p, _, _ in series if cat[p] == "above"]
        if not above:
            ends = "no advantage over KD-pool at any prior run, so none to disappear"
        else:
            later = [p for p, _, _ in series if p > max(above) and cat[p] != "above"]
            ends = (f"the advantage holds up to prior {max(above):g} and is gone at {min(later):g}" if later
                    else f"the advantage holds at every prior run above {min(above):g}")
        lines.append(f"{row} minus KD-pool by prior ({trend} points): {said}; {ends}")
    return lines


def plot_webcrawl_prior(study: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=110)
    markers = dict(zip(WEBCRAWL_ROWS, "os^vDX"))
    ref = study.get("reference_prior_0.30")
    values = []
    for row in WEBCRAWL_ROWS:
        xs, ms, ss = [], [], []
        for prior in study["priors"]:
            m, s, n = _row_stat(study, prior, row)
            if n:
                xs.append(float(prior)), ms.append(m), ss.append(s)
        line = None
        if xs:
            line = ax.errorbar(xs, ms, yerr=ss, marker=markers[row], capsize=3, lw=1.4, label=f"{row} (webcrawl-pu)")
            values += ms
        if ref and ref["rows"].get(row):
            m, s = mean_std(ref["rows"][row])
            color = line[0].get_color() if line is not None else None
            ax.errorbar([0.30], [m], yerr=[s], marker=markers[row], mfc="none", capsize=3, color=color, ls="none",
                        label=None if line is not None else f"{row} (mnist-pu, 0.30)")
            if xs:
                ax.plot([xs[-1], 0.30], [ms[-1], m], color=line[0].get_color(), ls=":", lw=1.0)
            values.append(m)
    # Equal wall-clock points of the selection rows.
    wall_drawn = False
    for row in ("PU-s1", "PU-weighted"):
        xs, ys = [], []
        for prior, data in study["priors"].items():
            got = [w["top1"] for w in data["wallclock"]["entries"] if w["row"] == row and w.get("top1") is not None
                   and w.get("selection_cold")]
            if got:
                xs.append(float(prior)), ys.append(statistics.fmean(got))
        if xs:
            ax.plot(xs, ys, marker=markers[row], ls="--", lw=1.0, mfc="white", label=f"{row}, equal wall-clock (cold select)")
            values += ys
            wall_drawn = True
    ax.set_xscale("log")
    ticks = sorted({float(p) for p in study["priors"]} | ({0.30} if ref else set()))
    ax.set_xticks(ticks)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("class prior of the pool (share of MNIST digits among 100,000 images)")
    ax.set_ylabel("student MNIST test top-1 (%)")
    if values:
        ax.set_ylim(max(min(values) - 0.3, 90.0), min(100.0, max(values) + 0.3))
    n_by_prior = ", ".join(f"{p}: {max((r['n'] for r in d['rows'].values()), default=0)}" for p, d in study["priors"].items())
    title = ("webcrawl-pu: LeNet-5-half, robust KD, n_l = 10, 4,680 steps each\n"
             f"mean ± std over seeds (seeds per prior: {n_by_prior})\n"
             "hollow at 0.30: mnist-pu study (its own selectors); dashed: equal wall-clock")
    if not wall_drawn:
        ax.text(0.98, 0.03, "equal wall-clock: no selection row had steps left\n(a cold selection costs more than KD-pool's whole run)",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="dimgray")
    _finish_plot(fig, ax, title, path, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def webcrawl_section(study: dict[str, Any]) -> str:
    priors = list(study["priors"])
    ref = study.get("reference_prior_0.30")
    out = ["## The web-crawl study (issue 16)", ""]
    out += ["**Scenario `webcrawl-pu`.** A web crawl holds few images of the teacher's task and many near duplicates. "
            "Each pool holds 100,000 28 x 28 grey PNGs: round(pi x 100,000) MNIST digits the teacher never saw (a seeded "
            "subset of MNIST train 30,000..59,999; the roots of different priors are nested), all 80,000 distinct "
            "negatives (Fashion-MNIST train + t10k, KMNIST t10k), topped up to 100,000 with seeded random-affine copies of "
            "negatives (rotation within ±12°, scale 0.9-1.1, shift within ±2 px; labelled `fashion-aug` / `kmnist-aug` "
            "in the ground truth). L^t, the teacher's training set and the test set are mnist-pu's "
            "(`benchmarks/webcrawl_pu_data.py` links them). Teacher: LeNet-5 of mnist-pu; student LeNet-5-half, robust KD, "
            "pucli distill's defaults, n_l = 10.", ""]
    counts = []
    for p in priors:
        c = study["priors"][p]["pool"]
        counts.append(f"pi = {p}: {c['unlabeled_positive']:,} digits, {c['unlabeled_negative_as_is']:,} negatives as-is, "
                      f"{c['unlabeled_negative_augmented']:,} augmented copies")
    out += ["Pools: " + "; ".join(counts) + ".", ""]
    out += ["**Rows.** KD-pool: L^t + the whole pool. KD-random: L^t + as many random pool images as PU-s1 kept. "
            "confidence: L^t + the top-k by the teacher's max softmax (k = PU-s1's count). KD-oracle: L^t + the pool's "
            "true digits. PU-s1: L^t + `pucli select` at its defaults (ranking `auto`, i.e. label propagation at n_l = 10, "
            "which keeps the top pi x N) with `--prior` the true prior. PU-weighted: the whole pool, items drawn with "
            "probability sigmoid(score) of that selection (`--weighting pu-score`).", ""]
    out += ["**Budgets.** Equal steps: every student trains 4,680 optimizer steps (the protocol's 20 epochs over 30,000 "
            "at batch 128; rounded up to whole epochs of the row's set). Equal wall-clock: "
            + (study["priors"][priors[0]]["wallclock"]["formula"] or "not run") + "", ""]
    out += ["### Commands", "", "```", "python benchmarks/webcrawl_pu_data.py   # the four roots, p0.02 .. p0.20 (~30 s)"]
    for p in priors:
        for run in study["priors"][p]["runs"]:
            out.append(run["command"])
    out += ["python benchmarks/mnist_pu.py --combine-webcrawl <per-run JSONs>   # this section, "
            f"{WEBCRAWL_RESULTS}, {WEBCRAWL_PLOT}", "```", ""]
    out += ["![student accuracy against the class prior](webcrawl_prior.png)", ""]

    header_priors = priors + (["0.30 (mnist-pu)"] if ref else [])
    out += ["### Student MNIST-test top-1 % at equal steps (mean ± std over seeds; n = seeds)", "",
            "| row | " + " | ".join(f"pi = {p}" for p in header_priors) + " |", "|---|" + "---:|" * len(header_priors)]
    for row in WEBCRAWL_ROWS + ("PU-s1-graph",):
        cells = []
        for p in priors:
            r = study["priors"][p]["rows"].get(row)
            cells.append(f"{fmt(list(r['top1_by_seed'].values()))} (n={r['n']})" if r else ("not run" if row != "PU-s1-graph" else "—"))
        if ref:
            v = ref["rows"].get(row)
            cells.append(f"{fmt(v)} (n={len(v)})" if v else "not run")
        if row == "PU-s1-graph" and not (ref and ref["rows"].get(row)):
            continue
        out.append(f"| {row} | " + " | ".join(cells) + " |")
    teacher = {study["priors"][p]["teacher_top1"] for p in priors}
    out += ["", f"Teacher top-1: {', '.join(f'{t:.2f}' for t in sorted(teacher))} %."]
    if ref:
        out += [f"The 0.30 column is the mnist-pu study (`{ref['results']}`, n_l = 10, {ref['steps_per_student']} steps): "
                f"{ref['note']}. PU-s1-graph is given there as the closest to a graph-based default."]
    out.append("")

    out += ["### Equal wall-clock", ""]
    any_wall = False
    out += ["Seeds 1 and 2 select on the pool whose k-NN graph seed 0's run cached (descriptors are recomputed: their "
            "cache key holds the positives), so their selection costs less than a first run: marked *graph cached*; a "
            "user who selects once pays the cold cost of seed 0. The plot shows the cold entries only.", "",
            "| pi | seed | row | budget s | overhead s | s / step | steps | top-1 % |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for p in priors:
        for w in study["priors"][p]["wallclock"]["entries"]:
            any_wall = True
            detail = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in w["overhead_s"].items())
            top1 = f"{w['top1']:.2f}" if w.get("top1") is not None else "no student: " + w.get("not_trainable", "")
            label = w["row"] + (" (*graph cached*)" if w.get("selection_cold") is False else "")
            out.append(f"| {p} | {w['seed']} | {label} | {w['budget_s']:.1f} | {w['overhead_total_s']:.1f} ({detail}) | "
                       f"{w['s_per_step'] * 1000:.1f} ms | {w['steps']:,} (target {w['target_steps']:,.0f}) | {top1} |")
    if not any_wall:
        out.append("| not run | | | | | | | |")
    out.append("")
    for p in priors:
        entries = {(w["row"], w["seed"]): w for w in study["priors"][p]["wallclock"]["entries"]}
        for (row, seed), w in sorted(entries.items()):
            pool = entries.get(("KD-pool", seed))
            if row == "KD-pool" or pool is None or "select_s" not in w["overhead_s"]:
                continue
            extra = w["overhead_total_s"] - pool["overhead_total_s"]
            out.append(f"- pi = {p}, seed {seed}, {row}: its overhead exceeds KD-pool's by {extra:.0f} s = "
                       f"{extra / pool['s_per_step']:,.0f} KD-pool optimizer steps ({extra / pool['budget_s']:.1f} x KD-pool's "
                       f"whole budget of {pool['budget_s']:.0f} s); it would get KD-pool's {pool['steps']:,} steps only with a budget of "
                       f"{w['overhead_total_s'] + w['s_per_step'] * pool['steps']:.0f} s "
                       f"({(w['overhead_total_s'] + w['s_per_step'] * pool['steps']) / pool['budget_s']:.1f} x KD-pool's).")
    out.append("")

    out += ["### Selections against the ground truth (PU-s1, `pucli select` defaults, true prior given)", "",
            "| pi | seed | kept | precision | recall | F1 | kept by source | select s (run_selection) | descriptors / graph | own soft-target pass s | load avg (1/5/15 min, before → after) |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|"]
    for p in priors:
        for sel in study["priors"][p]["selections"]:
            s1 = sel["pu_s1"]
            out.append(f"| {p} | {sel['seed']} | {s1['selected']:,} | {s1['precision']:.3f} | {s1['recall']:.3f} | {s1['f1']:.3f} | "
                       f"{', '.join(f'{k} {v:,}' for k, v in sorted(s1['kept_by_source'].items()))} | {sel['wall_s']:.0f} | "
                       f"{'cached' if sel['cache_hit'] else 'cold'} / {'cached' if (sel.get('graph') or {}).get('cache_hit') else 'cold'} | "
                       f"{sel['soft_targets_selected_s']:.1f} | "
                       f"{sel['load_avg_before']} → {sel['load_avg_after']} |")
    others = []
    for p in priors:
        for row in ("confidence", "KD-random"):
            r = study["priors"][p]["rows"].get(row)
            if r:
                f1 = [s["selection"]["f1"] for s in r["students"] if s.get("selection")]
                others.append(f"{row} at {p}: F1 {fmt(f1, 3)}")
    if others:
        out += ["", "Same count, other rules: " + "; ".join(others) + "."]
    recs = [(p, sel["seed"], sel.get("recommendation")) for p in priors for sel in study["priors"][p]["selections"]]
    if any(r for _, _, r in recs):
        out += ["", "`recommendation` of each selection's run report (`pucli select`, issue 16 item 2, as it stood when the "
                "selection ran):", ""]
        out += [f"- pi = {p}, seed {s}: " + (f"**{r.get('action')}** ({r.get('reason')})" if isinstance(r, dict) else str(r))
                for p, s, r in recs]
    else:
        out += ["", "The selection reports carry no `recommendation` field yet (paths in the results JSON)."]
    cells = study.get("recommendation_vs_students") or []
    if any(c.get("action") for c in cells):
        out += ["", "The recommendation against this study's students (equal steps, same seed; the row it names: keep the "
                "selection = PU-s1, weight = PU-weighted, whole pool = KD-pool):", "",
                "| pi | seed | recommended | PU-s1 | PU-weighted | KD-pool | best | recommended within 0.2 of best |",
                "|---:|---:|---|---:|---:|---:|---|---|"]
        for c in cells:
            t = c["top1"]
            cell = lambda v: f"{v:.2f}" if v is not None else "not run"
            within = c.get("within_0.2_of_best")
            out.append(f"| {c['prior']} | {c['seed']} | {c['action']} | {cell(t['PU-s1'])} | {cell(t['PU-weighted'])} | "
                       f"{cell(t['KD-pool'])} | {c.get('best', '')} | {'' if within is None else 'yes' if within else 'no'} |")
        judged = [c for c in cells if c.get("within_0.2_of_best") is not None]
        if judged:
            out += ["", f"Recommended row within 0.2 points of the best: {sum(c['within_0.2_of_best'] for c in judged)} "
                    f"of {len(judged)} cells."]
    quant = [(p, sel["seed"], sel.get("sigmoid_score_quantiles")) for p in priors for sel in study["priors"][p]["selections"]]
    if quant:
        out += ["", "sigmoid(score) quantiles (1/10/50/90/99 %) of the propagation scores PU-weighted draws by: "
                + "; ".join(f"{p} seed {s}: {q}" for p, s, q in quant if q) + "."]
    out.append("")

    out += ["### Timings and load", ""]
    for p in priors:
        d = study["priors"][p]
        st = d["soft_targets"]["timings_s"]
        rows = [f"{row} {statistics.fmean([s['timings_s']['total'] for s in r['students']]):.0f} s "
                f"(decode {statistics.fmean([s['timings_s']['decode'] for s in r['students']]):.0f}, "
                f"train {statistics.fmean([s['timings_s']['train'] for s in r['students']]):.0f})"
                for row, r in d["rows"].items()]
        loads = sorted({str(s.get("load_avg_at_end")) for r in d["rows"].values() for s in r["students"]})
        out.append(f"- pi = {p}: teacher soft-target pass over the pool {st['pool']:.0f} s (and over the 30,000 originals "
                   f"{st['train']:.0f} s, not charged to any row); per student (mean over seeds): " + ", ".join(rows)
                   + f". Load average (1/5/15 min) at the end of each student: {', '.join(loads)}.")
    out += ["", "Machine: 2 shared CPU cores, 1 torch thread, one job at a time; other sessions' jobs ran at the same time "
            "(the load averages above), so every wall-clock figure is inflated and noisy.", ""]
    out += ["### Does selection beat KD-pool here?", ""]
    out += [f"- {line}" for line in study["verdicts"]] or ["- not run"]
    out.append("")
    return "\n".join(out)
