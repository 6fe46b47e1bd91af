"""``pucli select``: find the unlabeled images that belong to the teacher's task (PU selector)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from pucli.cli._errors import FLAGS, handles_errors, in_flags
from pucli.cli._options import (
    ArchOption,
    ArchKwargsOption,
    CropPctOption,
    InputSizeOption,
    InterpolationOption,
    MeanOption,
    StdOption,
    TapsOption,
    BatchSizeOption,
    ClassesOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    PositiveOption,
    QuietOption,
    ReportOption,
    SeedOption,
    TeacherArgument,
    TeacherCommand,
    ThreadsOption,
    UnlabeledOption,
    WorkersOption,
    load_pu_inputs,
    model_spec,
)
from pucli.cli._output import (
    command_help,
    console,
    escape,
    info,
    progress_bars,
    run_context,
    show_result,
    start_run,
    warn_skipped,
)
from pucli.cli._prompts import guard_output

HELP = """Select the unlabeled images that belong to the teacher's task, from a few labeled positives.

Ranks the pool by label propagation from the labeled positives over the k-nearest-neighbour graph of the teacher's multi-scale features (Zhou et al. 2003), trains the positive-unlabeled (nnPU) head of Xu et al. 2019 (Eq. 3-6) on the same features (--ranking nnpu ranks by it), and writes an index (TSV: path, score; best first). PU-s1 (default) keeps the images with score > 0: the top class prior x N by propagation, or the head's score > 0 with the nnPU ranking (what --ranking auto uses with fewer than 5 labeled images per class); --budget N (PU-s2) keeps the N best. Also written beside the index: the selector's weights (<stem>.selector.safetensors) and the run report (<stem>.report.json).

[bold]Example[/]

  pucli select teacher.safetensors --positive ./labeled --unlabeled ./pool.txt --out selected.tsv
  pucli select teacher.safetensors ... --prior 0.3 --budget 30000 --out - | pucli expand teacher.safetensors ... --index -   (a known prior; PU-s2)
  torchrun --nproc_per_node=8 -m pucli select ...   (one process per GPU; the same index)
  pucli select resnet56.th --arch resnet.py:resnet56 --input-size 3 32 32 --positive ./labeled --unlabeled 'pool-{000..009}.tar' --out selected.tsv   (a teacher from your own code: docs/models.md)

TEACHER may also be given as --teacher FILE. --positive has one subfolder per class; --unlabeled is a folder, a file listing image paths, - (a list on stdin), or WebDataset-style tar shards (a brace pattern such as 'pool-{000000..000099}.tar'; `pucli shards pack` makes them). Frozen descriptors are cached, so a second run on the same inputs trains in seconds. Ctrl-C or SIGTERM keeps the finished parts of the extraction and the trained ensemble members: the same command with --resume continues and writes the same index. An existing --out is replaced only with --force (or a yes on a terminal). A degenerate selection (nothing or nearly the whole pool kept, a count far from the prior, a collapsed training) is reported by a warning on stderr, even with --quiet, and in the report; an empty one is an error (exit 1) unless --allow-empty."""

_PU = "PU training"


def register(app: typer.Typer) -> None:
    app.command("select", cls=TeacherCommand, help=command_help(HELP), no_args_is_help=True)(select)


@handles_errors(flags=FLAGS["select"])
def select(
    teacher: TeacherArgument,
    positive: PositiveOption,
    unlabeled: UnlabeledOption,
    out: Annotated[str, typer.Option("--out", help="Index file to write (TSV), or - for stdout.", show_default=False)],
    prior: Annotated[str, typer.Option("--prior", help="Class prior: the fraction of the pool that belongs to the teacher's task, in (0, 1), or auto to estimate it (best-bin estimation; see `pucli prior`).")] = "auto",
    budget: Annotated[int | None, typer.Option("--budget", help="PU-s2: keep the N best-scored images \\[default: PU-s1, keep score > 0].", show_default=False)] = None,
    arch: ArchOption = None,
    arch_kwargs: ArchKwargsOption = None,
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    interpolation: InterpolationOption = None,
    crop_pct: CropPctOption = None,
    taps: TapsOption = None,
    classes: ClassesOption = None,
    all_items: Annotated[bool, typer.Option("--all", help="Write every pool item with a selected column (1/0), not only the kept ones.", rich_help_panel="Output")] = False,
    preview: Annotated[Path | None, typer.Option("--preview", dir_okay=False, help="Also draw the selection's contact sheet here (.png or .html, as `pucli show`).", rich_help_panel="Output", show_default=False)] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Write the index even when the selection kept no image (without it an empty selection is an error, exit 1).", rich_help_panel="Output")] = False,
    finetune: Annotated[bool, typer.Option("--finetune", help="Train the backbone end to end (slower; the paper's code path): the head is first trained on frozen descriptors, then head and backbone at low rates; a collapse (every score on one side of zero) goes back to the last healthy state.", rich_help_panel=_PU)] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the pool.", rich_help_panel=_PU)] = 20,
    batch_size: BatchSizeOption = 256,
    train_batch_size: Annotated[int, typer.Option("--train-batch-size", help="Unlabeled descriptors per training step (frozen mode).", rich_help_panel=_PU)] = 4096,
    epoch_pool_max: Annotated[int, typer.Option("--epoch-pool-max", help="At most this many pool images per training epoch: a larger pool gives each epoch a fresh seeded random sample of this size, so training costs the same from this size on. 0: the whole pool every epoch.", rich_help_panel=_PU)] = 131_072,
    reduction: Annotated[int, typer.Option("--reduction", help="Squeeze-and-excitation reduction ratio r.", rich_help_panel=_PU)] = 16,
    attention: Annotated[bool, typer.Option("--attention/--no-attention", help="Gate the multi-scale descriptor with squeeze-and-excitation (Eq. 5); --no-attention feeds the plain concatenation to the head (ablation).", rich_help_panel=_PU)] = True,
    risk: Annotated[str, typer.Option("--risk", help="nnpu (non-negative risk) or upu (unbiased, for ablation).", rich_help_panel=_PU)] = "nnpu",
    loss: Annotated[str, typer.Option("--loss", help="Surrogate loss: sigmoid or logistic.", rich_help_panel=_PU)] = "sigmoid",
    beta: Annotated[float, typer.Option("--beta", help="nnPU ascent threshold (>= 0).", rich_help_panel=_PU)] = 0.0,
    gamma: Annotated[float, typer.Option("--gamma", help="nnPU ascent step scale, in [0, 1].", rich_help_panel=_PU)] = 1.0,
    ensemble: Annotated[int, typer.Option("--ensemble", help="Heads trained from different seeds and averaged (frozen mode).", rich_help_panel=_PU)] = 3,
    augment_positives: Annotated[int | None, typer.Option("--augment-positives", help="Randomly augmented copies (small affine) of each labeled positive added to P, cached with the descriptors \\[default: 32 with at most 5 positives per class, else 0].", show_default=False, rich_help_panel=_PU)] = None,
    ranking: Annotated[str, typer.Option("--ranking", help="How the pool is ranked: propagation (label propagation from the labeled positives over the k-nearest-neighbour graph of pool and positives; PU-s1 keeps the top prior x N), nnpu (the nnPU head's score smoothed over the pool's graph; PU-s1 keeps as many as the head's score > 0, the paper's rule), or auto: propagation when every class has at least 5 labeled positives, else nnpu.", rich_help_panel=_PU)] = "auto",
    graph_neighbors: Annotated[int, typer.Option("--graph-neighbors", help="k of the k-nearest-neighbour graph the scores are ranked over (label spreading); 0 turns the graph off (the nnPU head's own score > 0).", rich_help_panel=_PU)] = 10,
    graph_alpha: Annotated[float, typer.Option("--graph-alpha", help="Label spreading's alpha in [0, 1): the share of each step taken from the neighbours (higher reaches further along the graph).", rich_help_panel=_PU)] = 0.99,
    graph_steps: Annotated[int, typer.Option("--graph-steps", help="Label-spreading iterations over the graph.", rich_help_panel=_PU)] = 200,
    graph_exact_max: Annotated[int, typer.Option("--graph-exact-max", help="Pools of up to this many images get the exact neighbour search; larger ones an approximate index (faiss IVF-Flat, seeded; pip install 'pucli\\[scale]', else exact with a warning). 0: always approximate.", rich_help_panel=_PU)] = 200_000,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the descriptor and graph caches.", rich_help_panel=_PU)] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (same command): reuse the descriptors and ensemble members it finished; same index as an uninterrupted run.", rich_help_panel=_PU)] = False,
    force: ForceOption = False,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    report_path: ReportOption = None,
) -> None:
    from pucli.errors import UsageError
    from pucli.pu.options import Scales, SelectorOptions, parse_taps  # no torch yet: a usage error answers at once

    _check_option_pairs(out, json_output=json_output, finetune=finetune, no_cache=no_cache, resume=resume,
                        augment_positives=augment_positives)
    if epoch_pool_max < 0:
        raise UsageError(f"--epoch-pool-max {epoch_pool_max}: must be >= 1 pool images per training epoch, or 0 for "
                         "the whole pool every epoch")
    options = SelectorOptions(
        class_prior=_parse_prior(prior), budget=budget, finetune=finetune, epochs=epochs, batch_size=batch_size,
        train_batch_size=train_batch_size, epoch_pool_max=epoch_pool_max or None, reduction=reduction, risk=risk, loss=loss, beta=beta, gamma=gamma,
        ensemble=ensemble, augment_positives=augment_positives, attention=attention, graph_neighbors=graph_neighbors,
        graph_alpha=graph_alpha, graph_steps=graph_steps, graph_exact_max=graph_exact_max, seed=seed, ranking=ranking,
        scales=Scales(taps=parse_taps(taps)),
    )
    spec = model_spec(arch, arch_kwargs, input_size, mean, std, interpolation, crop_pct)
    guard_output(out, force=force or resume)
    _check_preview(preview, force=force)

    from pucli import distributed
    from pucli.device import default_workers
    from pucli.pu.selection import run_selection, save_selector, write_selection
    from pucli.report import report_location, side_file

    # Under torchrun every rank runs this command; only rank 0 reports and writes the outputs.
    report, run_device = start_run(device=device, threads=threads, torchrun=True)
    _check_stdin_under_torchrun(unlabeled)
    with report.stage("load"):
        loaded, positive_set, pool = load_pu_inputs(teacher, spec, positive, classes, unlabeled,
                                                  model_files=report.model_files)
    _check_budget(budget, len(pool))
    with progress_bars(quiet=quiet) as progress, _keeps_finished_work(finetune or no_cache):
        run = run_context(report, run_device, workers if workers is not None else default_workers(len(pool)), progress)
        result = run_selection(loaded, positive_set.paths, pool.paths, options, resume=resume, use_cache=not no_cache,
                               positive_labels=positive_set.labels, run=run)
    if not distributed.is_main():
        return
    _guard_degenerate(result, allow_empty=allow_empty)
    report_file = report_location("select", out, report_path)
    with report.stage("write"):
        write_selection(result, out, all_items=all_items)
        # With the index on stdout, the selector goes beside the report.
        selector = save_selector(result, options, side_file(report_file if out == "-" else out, ".selector.safetensors"), loaded)
        _write_preview(preview, result, positive)
    _record(report, result, selector)
    summary = _summary(result, out, selector, report.write(report_file))
    show_result(summary, json_output=json_output, quiet=quiet, table=_print_table)
    _print_notes(result, summary, quiet=quiet)


def _guard_degenerate(result: Any, *, allow_empty: bool) -> None:
    """The collapse guard's warnings (:mod:`pucli.pu.degenerate`) on stderr, even with ``--quiet``
    (a degenerate selection is never silent); then an empty selection is an error unless ``--allow-empty``.

    Raises:
        DataError: nothing was kept and ``--allow-empty`` was not given (no output is written).
    """
    from pucli.errors import DataError

    for warning in result.warnings:
        info(f"[yellow]warning:[/] {escape(in_flags(warning))}")
    if result.counts["selected"] == 0 and not allow_empty:
        raise DataError(f"the selection is empty: none of the {result.counts['unlabeled']:,} pool images was kept, "
                        "so no index was written; see the warnings above, or pass --allow-empty to write the empty index")


def _check_preview(preview: Path | None, *, force: bool) -> None:
    """``--preview`` must name a .png or .html file that may be written (checked before any work)."""
    if preview is not None:
        from pucli.show.render import sheet_format

        sheet_format(preview, parameter="preview")
        guard_output(str(preview), force=force, option="--preview")


def _write_preview(preview: Path | None, result: Any, positive: Path) -> None:
    """The contact sheet of ``--preview`` (:func:`pucli.show.write_preview`), drawn from the result
    in memory (its class prior and where that came from included)."""
    if preview is not None:
        from pucli.show import write_preview

        write_preview(result, preview, positive=positive, words=in_flags)


def _check_option_pairs(out: str, *, json_output: bool, finetune: bool, no_cache: bool, resume: bool,
                        augment_positives: int | None) -> None:
    """The checks that tie two options together (each option alone is checked by SelectorOptions).

    Raises:
        UsageError: options that cannot go together.
    """
    from pucli.errors import UsageError

    if json_output and out == "-":
        raise UsageError("--json and --out - both write to stdout: write the index to a file, or drop --json")
    if finetune and augment_positives:
        raise UsageError("--augment-positives applies to frozen descriptors: drop it or --finetune")
    if resume and (finetune or no_cache):
        raise UsageError("--resume continues from the descriptor cache and saved ensemble members: drop --finetune and --no-cache")


def _check_stdin_under_torchrun(unlabeled: str) -> None:
    from pucli import distributed
    from pucli.errors import UsageError

    if unlabeled == "-" and distributed.is_distributed():
        raise UsageError("--unlabeled - under torchrun: every rank would read its own part of stdin; give a list file")


def _check_budget(budget: int | None, pool_size: int) -> None:
    from pucli.errors import UsageError

    if budget is not None and budget > pool_size:
        raise UsageError(f"--budget {budget} is larger than the pool ({pool_size} images): it would keep every image; "
                         "give a smaller number, or leave --budget out for PU-s1")


@contextmanager
def _keeps_finished_work(nothing_kept: bool) -> Iterator[None]:
    """Ctrl-C or SIGTERM during the selection: say what was kept and how to go on."""
    from pucli.errors import Interrupted

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted("select interrupted; " + (
            "nothing is kept with --finetune or --no-cache: run it again" if nothing_kept else
            "the finished descriptors and ensemble members are kept: run the same command with --resume to continue"
        )) from None


def _facts(result: Any) -> dict[str, Any]:
    """What the run report and the ``--json`` summary both say of the selection (docs/run-report.md),
    from the result's fields, its warnings in the command line's words."""
    from pucli.cli.prior import estimate_record

    return {
        **result.facts.as_record(),
        "prior_estimate": estimate_record(result.prior_estimate) if result.prior_estimate is not None else None,
        "ranking": result.ranking,
        "cache_hit": result.from_cache,
        "graph": result.graph.as_dict(),
        "warnings": [in_flags(warning) for warning in result.warnings],
        "trust": result.trust.as_dict() if result.trust is not None else None,
        "recommendation": _recommendation(result),
    }


def _record(report: Any, result: Any, selector: Path) -> None:
    """What the run did, in its report (docs/run-report.md)."""
    report.timings.update({k: round(v, 4) for k, v in result.timings.items()})
    report.skipped = list(result.skipped)
    report.counts = dict(result.counts)
    report.results = {
        **_facts(result),
        "mode": result.mode,
        "descriptor_channels": result.scale_channels, "scales": result.scales,
        "positive_augmentation": result.positive_augmentation, "positive_augmented": result.positive_augmented,
        "descriptor_cache": str(result.cache_path) if result.cache_path else None,
        "risks_per_epoch": result.history,
        "selector": str(selector),
        "taps": result.taps,
    }


def _recommendation(result: Any) -> dict[str, Any] | None:
    """The recommendation (:mod:`pucli.pu.trust`) with the commands that carry it out."""
    if result.recommendation is None:
        return None
    return {**result.recommendation.as_dict(), "next": _NEXT[result.recommendation.action]}


#: What each recommendation means on the command line (docs/usage.md, "Select, weight or take the pool").
_NEXT = {
    "select": "pucli expand TEACHER --positive P --index INDEX --out SET, then pucli distill TEACHER --data SET",
    "weight": "pucli select ... --all, pucli expand ... --whole-pool, then pucli distill ... --weighting pu-score",
    "pool": "pucli select ... --all, pucli expand ... --whole-pool, then pucli distill ... (uniform weighting)",
}


def _print_notes(result: Any, summary: dict[str, Any], *, quiet: bool) -> None:
    """Warnings, then where the outputs went (with the index on stdout, the others must still reach the user)."""
    if summary["prior_estimate"] is not None and summary["prior_estimate"]["warning"]:
        info(f"[yellow]warning:[/] {escape(summary['prior_estimate']['warning'])}", quiet=quiet)
    if result.graph.warning:
        info(f"[yellow]warning:[/] {escape(in_flags(result.graph.warning))}", quiet=quiet)
    warn_skipped(result.skipped, quiet=quiet)
    recommendation = summary["recommendation"]
    if recommendation is not None:
        info(f"[bold]recommendation:[/] {recommendation['summary']}: {recommendation['reason']}\n"
             f"  next: {recommendation['next']}", quiet=quiet)
    index = "" if summary["index"] == "-" else f"index: {summary['index']}\n"
    info(f"{index}selector: {summary['selector']}\nreport: {summary['report']}", quiet=quiet)


def _parse_prior(value: str) -> float | None:
    """``--prior``: a number (SelectorOptions checks it is in (0, 1)), or ``auto`` (None: estimate it).

    Raises:
        UsageError: neither a number nor auto.
    """
    from pucli.errors import UsageError

    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--prior {value}: give a number between 0 and 1 (the fraction of the pool that is "
                         "positive), or auto to estimate it") from None


def _summary(result: Any, out: str, selector: Path, report: Path) -> dict[str, Any]:
    """The ``--json`` summary: :func:`_facts`, the counts, the timings and where the outputs went."""
    return {
        **_facts(result),
        "positive": result.counts["positive"],
        "unlabeled": result.counts["unlabeled"],
        "selected": result.counts["selected"],
        "selected_fraction": result.counts["selected"] / max(1, result.counts["unlabeled"]),
        "skipped": result.counts["skipped"],
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "final_risk": result.history[-1]["risk"] if result.history else None,
        "index": out,
        "selector": str(selector),
        "report": str(report),
    }


def _print_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"pucli select: {summary['rule']}", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("labeled positives", f"{summary['positive']:,}")
    table.add_row("unlabeled pool", f"{summary['unlabeled']:,}")
    estimate = summary["prior_estimate"]
    if estimate is None:
        table.add_row("class prior (given)", f"{summary['class_prior']:.3f}")
    else:
        table.add_row("class prior (estimated)", f"{summary['class_prior']:.3f} "
                      f"({estimate['level']:.0%} interval {estimate['low']:.3f}-{estimate['high']:.3f})")
    table.add_row("selected", f"{summary['selected']:,} ({summary['selected_fraction']:.1%})")
    trust = summary["trust"]
    if trust is not None:
        level = f"{trust['level']:.0%}"
        table.add_row("estimated precision", f"{trust['precision']:.3f} ({level} interval "
                      f"{trust['precision_low']:.3f}-{trust['precision_high']:.3f})")
        table.add_row("estimated recall", f"{trust['recall']:.3f} ({level} interval "
                      f"{trust['recall_low']:.3f}-{trust['recall_high']:.3f}; {trust['held_out']} held-out positives)")
        table.add_row("estimated F1", f"{trust['f1']:.3f} ({trust['f1_low']:.3f}-{trust['f1_high']:.3f})")
    if summary["recommendation"] is not None:
        table.add_row("recommendation", summary["recommendation"]["summary"])
    table.add_row("skipped files", f"{summary['skipped']:,}")
    graph = summary["graph"]
    if graph.get("neighbors"):
        table.add_row("graph smoothing", f"k = {graph['neighbors']}, {graph['steps']} steps: "
                      f"{graph['changed']:,} images changed sides")
    for stage, seconds in summary["timings_s"].items():
        note = " (cached)" if (stage == "extract" and summary["cache_hit"]) or (
            stage == "graph" and graph.get("cache_hit")) else ""
        table.add_row(f"{stage} time", f"{seconds:.2f} s{note}")
    console.print(table)
