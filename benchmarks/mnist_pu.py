"""The mnist-pu study (issue 5): every row of shared/docs/BENCHMARKS.md, the paper's Fig. 2 and an ablation.

Rows (student LeNet-5-half, robust KD, the same optimizer-step budget for every row: 20 epochs over
30,000 images at distill's default batch size), for n_l in {1, 2, 5, 10, 20} and seeds {0, 1, 2}:

==============  ================================================================================
KD-all          the teacher's whole original training set (30,000; no n_l: one unit per seed)
KD-oracle       L^t + the true positives of U
KD-random       L^t + as many random items of U as PU-s1 kept
KD-tiny         L^t alone
KD-pool         L^t + the whole pool, no selection
confidence      L^t + the top-k of U by teacher max-softmax, k = PU-s1's count
PU-s1           L^t + every item with F(x) > 0 (pucli select, true class prior 0.30)
PU-s2           L^t + the top 30,000 of U by F(x) (the same selector run)
PU-weighted     L^t + the whole pool, items drawn with probability sigmoid(F(x)) (distill --weighting pu-score)
==============  ================================================================================

Fig. 2 (n_l = 10): select with a mis-specified prior pi' = f x 0.30, f in {0.5, 0.75, 1, 1.5, 2}, and
distill PU-s1 with kd, weighted-kd and robust-kd. Ablation (n_l = 10): frozen vs fine-tuned selector,
SE attention vs plain concatenation (``attention=False``) vs last-stage-only features (the 84-d
pre-logits alone), nnPU vs uPU; kd vs weighted-kd vs robust-kd comes from Fig. 2 at f = 1.

Everything goes through pucli's engine: selection ``pucli.pu.selection.run_selection``; soft targets
``pucli.kd.expand.teacher_soft_targets`` (one pass over the pool and the original training set, shared
by every row) and sets ``pucli.data.manifest.build_expanded_set`` / ``write_expanded_set`` (what
``pucli.kd.expand.expand`` does, without a teacher pass per row; one real ``expand`` is timed beside it);
training ``pucli.kd.distill.distill``; accuracy ``pucli.evaluate.evaluate_model``. The ground truth of the
pool (``ground_truth.tsv``) is read only here, for precision / recall / F1 and the oracle row.

Every finished unit (soft targets, selection, expanded set, student + accuracy) is cached under
``--work`` (default ``<pucli cache>/benchmarks/mnist-pu/study``) in a folder named by its parameters;
a rerun only does what is missing. The results go to ``benchmarks/results/mnist_pu_study.json``
(``mnist_pu_study_quick.json`` with ``--quick``).

Usage::

    python benchmarks/mnist_pu.py --quick --threads 1          # smoke test, n_l 10, seed 0, 468 steps
    python benchmarks/mnist_pu.py                              # the full study (resumable)
    python benchmarks/mnist_pu.py --parts main --rows PU-s1,KD-pool --nl 1 10 --seeds 0
    python benchmarks/mnist_pu.py --jobs 2 --threads 1         # two students at a time
    python benchmarks/mnist_pu.py --estimate                   # predicted wall-clock of the plan
    python benchmarks/mnist_pu.py --report [--quick]           # docs/benchmarks.md section + docs/study_*.png

Needs ``benchmarks/mnist_pu_data.py`` and ``benchmarks/train_teacher.py`` to have run; plots need
the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import TRUE_PRIOR, Scenario, Stopwatch, add_root_argument, kept_by_source, machine, prf, write_json_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

ROWS = ("KD-all", "KD-oracle", "KD-random", "KD-tiny", "KD-pool", "confidence", "PU-s1", "PU-s2", "PU-weighted",
        "PU-s1-auto", "PU-s1-graph", "PU-s2-graph")
# PU-s1 / PU-s2 / PU-weighted / PU-s1-auto and every Fig. 2 / ablation selector use the nnPU head's
# own scores (graph smoothing off: the selector these rows were first run with); the -graph rows
# use pucli's default, the head's scores smoothed over the pool's k-NN graph (pucli.pu.graph).
PARTS = ("main", "fig2", "ablation")
# Extra parts, never in the default --parts (so a plain mnist-pu run is as before): "wallclock", the
# equal-wall-clock students of the web-crawl study (issue 16), after the equal-steps ones.
EXTRA_PARTS = ("wallclock",)
WALLCLOCK_ROWS = ("KD-pool", "PU-s1", "PU-weighted")
NLS = (1, 2, 5, 10, 20)
SEEDS = (0, 1, 2)
PRIOR_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
LOSSES = ("kd", "weighted-kd", "robust-kd")
MAIN_LOSS = "robust-kd"
STUDENT = "lenet5_half"
PU_S2_BUDGET = 30_000  # the paper's N: the size of the original training set
BUDGET_EPOCHS, BUDGET_ITEMS = 20, 30_000  # BENCHMARKS.md: 20 epochs over 30,000 images
QUICK_STEPS = 2 * 234  # the protocol's budget scaled by 1/10: 2 epochs over 30,000 at batch 128
QUICK_SELECTOR_EPOCHS = 5  # quick: fig2 / ablation selectors (the main selector keeps the default)
ABLATION_NL = 10
SELECTOR_VARIANTS = ("frozen", "finetune", "no-attention", "last-stage", "upu", "graph")
# The variant of the web-crawl study (issue 16): `pucli select` itself, every selector option at
# pucli's default (ranking "auto", graph on) but the class prior (the true one, given) and the seed;
# its output folder (index, run report, selector) is kept.
DEFAULT_VARIANT = "default"
CACHE_VERSION = 1


# --- small utilities ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def key_of(name: str, params: dict[str, Any]) -> str:
    """A readable folder name for a unit plus a hash of every parameter (a changed parameter is a new unit)."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **params}, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}-{digest[:10]}"


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) so the next unit's peak is its own (Linux; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """VmHWM of this process in MiB (since the last :func:`reset_peak_rss`); ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- units -----------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every unit of one run shares."""

    work: Path
    scenario: Scenario
    steps: int
    quick: bool
    threads: int
    workers: int | None
    finetune_epochs: int
    selector_epochs_extra: int | None  # epochs of fig2/ablation selectors (None: the default)
    batch_size: int = 128
    class_prior: float = TRUE_PRIOR  # the pool's true class prior (the root's manifest; mnist-pu: 0.30)
    scenario_name: str = "mnist-pu"  # the root manifest's "scenario"

    @property
    def main_variant(self) -> str:
        """The selector of the main rows: mnist-pu keeps the study's first one (the nnPU head alone);
        other scenarios (webcrawl-pu) run pucli's defaults."""
        return "frozen" if self.scenario_name == "mnist-pu" else DEFAULT_VARIANT


def scenario_prior(root: Path) -> tuple[str, float]:
    """(scenario name, true class prior) from a root's ``manifest.json``; mnist-pu's prior stays the
    constant 0.30 it always was (its manifest says the same), so its cache keys do not move."""
    try:
        manifest = json.loads((Path(root) / "manifest.json").read_text())
    except (OSError, ValueError):
        return "mnist-pu", TRUE_PRIOR  # not built: Scenario.require says what to run
    name = manifest.get("scenario", "mnist-pu")
    if name == "mnist-pu":
        return name, TRUE_PRIOR
    prior = manifest.get("true_class_prior")
    if prior is None:
        raise SystemExit(f"{root}/manifest.json has no true_class_prior")
    return name, round(float(prior), 6)


def soft_targets_unit(settings: Settings) -> dict[str, Any]:
    """One teacher pass (``pucli.kd.expand.teacher_soft_targets``) over the pool and the original training set."""
    import torch
    from safetensors.torch import load_file, save_file

    from pucli.data.sources import LabeledFolder
    from pucli.kd.expand import teacher_soft_targets

    scenario = settings.scenario
    folder = settings.work / "soft-targets" / key_of("teacher", {"teacher": str(scenario.teacher_path),
                                                                 "mtime": scenario.teacher_path.stat().st_mtime_ns})
    if (folder / "summary.json").is_file():
        tensors = load_file(str(folder / "soft_targets.safetensors"))
        return {"tensors": tensors, **json.loads((folder / "summary.json").read_text())}
    log("soft targets: one teacher pass over the pool (100,000) and the original training set (30,000)")
    teacher = scenario.teacher()
    train = LabeledFolder.from_folder(scenario.root / "train", num_classes=teacher.config.num_classes,
                                      label_names=teacher.config.label_names)
    reset_peak_rss()
    timings = {}
    tensors = {}
    for name, paths in (("pool", scenario.pool), ("train", train.paths)):
        with Stopwatch() as watch:
            kept, targets = teacher_soft_targets(teacher, paths, workers=_workers(settings, len(paths)))
        timings[name] = round(watch.seconds, 2)
        if len(kept) != len(paths):
            raise SystemExit(f"{len(paths) - len(kept)} unreadable images in {name}: rebuild the scenario")
        tensors[name] = targets
    tensors["train_labels"] = torch.tensor(train.labels)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "soft_targets.safetensors"))
    summary = {"timings_s": timings, "peak_rss_mib": round(peak_rss_mib(), 1),
               "train_paths": [str(p) for p in train.paths], "items": {k: len(v) for k, v in tensors.items()}}
    write_json_atomic(folder / "summary.json", summary)
    return {"tensors": tensors, **summary}


def _workers(settings: Settings, items: int) -> int:
    from pucli.device import default_workers

    return settings.workers if settings.workers is not None else default_workers(items)


@dataclass(frozen=True)
class SelectionSpec:
    n_l: int
    seed: int
    prior: float | None  # None: estimated (`pucli select --prior auto`)
    variant: str = "frozen"
    epochs: int | None = None  # None: the selector's default

    def params(self) -> dict[str, Any]:
        params = asdict(self)
        if self.variant == "graph":
            # Only this variant depends on the graph options: record them, so a change of pucli's
            # defaults is a new unit. (Other variants' keys stay as they were first cached.)
            from pucli.pu.options import SelectorOptions

            params["graph"] = {k: getattr(SelectorOptions, k) for k in ("graph_neighbors", "graph_alpha", "graph_steps")}
        elif self.variant == DEFAULT_VARIANT:
            from pucli.pu.options import SelectorOptions

            params["defaults"] = {k: getattr(SelectorOptions, k, None) for k in
                                  ("ranking", "graph_neighbors", "graph_alpha", "graph_steps", "epochs", "ensemble")}
        return params

    def name(self) -> str:
        prior = "auto" if self.prior is None else f"{self.prior:g}"
        return f"nl{self.n_l}-seed{self.seed}-prior{prior}-{self.variant}" + (f"-e{self.epochs}" if self.epochs else "")


def selection_unit(settings: Settings, spec: SelectionSpec, *, perf: bool = False) -> dict[str, Any]:
    """``pucli.pu.selection.run_selection`` for one (n_l, seed, prior, variant); scores in pool order."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = settings.work / "selections" / key_of(spec.name(), spec.params())
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        return {**summary, "scores": load_file(str(folder / "scores.safetensors"))["scores"]}
    if spec.variant == DEFAULT_VARIANT:
        return default_selection_unit(settings, spec, folder)
    from pucli.pu.options import Scales, SelectorOptions
    from pucli.pu.selection import run_selection, select_indices

    scenario = settings.scenario
    log(f"select {spec.name()}")
    teacher = scenario.teacher()
    positives = scenario.positives(spec.n_l, spec.seed, teacher)
    options: dict[str, Any] = {"class_prior": spec.prior, "seed": spec.seed}
    if spec.epochs:
        options["epochs"] = spec.epochs
    # Every variant but "graph" is the nnPU head alone (graph_neighbors=0), as the study first ran it.
    options["graph_neighbors"] = 0
    options.update({"frozen": {}, "finetune": {"finetune": True}, "no-attention": {"attention": False},
                    "last-stage": {"scales": Scales(stages=(), pre_logits=True)}, "upu": {"risk": "upu"},
                    "graph": {"graph_neighbors": SelectorOptions.graph_neighbors}}[spec.variant])
    selector_options = SelectorOptions(**options)
    reset_peak_rss()
    with Stopwatch() as watch:
        result = run_selection(teacher, positives.paths, scenario.pool, selector_options,
                               workers=_workers(settings, len(scenario.pool)), positive_labels=positives.labels)
    if len(result.paths) != len(scenario.pool):
        raise SystemExit(f"{len(scenario.pool) - len(result.paths)} unreadable pool images: rebuild the scenario")
    scores = result.scores.float()
    truth, sources = scenario.ground_truth()
    s1 = select_indices(scores)
    s2 = select_indices(scores, PU_S2_BUDGET)
    summary: dict[str, Any] = {
        "spec": spec.params(), "wall_s": round(watch.seconds, 2), "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "peak_rss_mib": round(peak_rss_mib(), 1), "cache_hit": result.from_cache, "metadata": result.metadata,
        "final_risk": result.history[-1] if result.history else None,
        "pu_s1": {**prf(s1, truth), "kept_by_source": kept_by_source(s1, sources)},
        "pu_s2": {**prf(s2, truth), "kept_by_source": kept_by_source(s2, sources), "budget": PU_S2_BUDGET},
        "score_quantiles": [round(float(q), 3) for q in torch.quantile(scores, torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99]))],
    }
    summary["class_prior"] = result.class_prior
    if result.prior_estimate is not None:
        summary["prior_estimate"] = {**result.prior_estimate.as_dict(), "wall_s": round(result.timings.get("prior", 0.0), 2)}
    if perf:
        summary["extract_bound"] = _extract_bound(teacher, selector_options, len(scenario.pool),
                                                  None if result.from_cache else result.timings.get("extract"))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"scores": scores.contiguous()}, str(folder / "scores.safetensors"))
    write_json_atomic(folder / "summary.json", summary)
    return {**summary, "scores": scores}


def _run_select_cli(argv: list[str]) -> tuple[Any, float]:
    """``pucli select`` in this process (what a user runs: it writes the index, the selector and the
    run report), with ``run_selection`` wrapped to time it and keep its result. Returns (result, wall s)."""
    import pucli.pu.selection as selection_module
    from pucli.cli import app

    captured: dict[str, Any] = {}
    original = selection_module.run_selection

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        captured["wall_s"] = time.perf_counter() - start
        captured["result"] = result
        return result

    selection_module.run_selection = timed
    try:
        app(args=argv, prog_name="pucli", standalone_mode=False)
    except SystemExit as exit_:  # typer.Exit / sys.exit of the command
        if exit_.code:
            raise SystemExit(f"pucli select failed (exit {exit_.code}): pucli {' '.join(argv)}") from None
    finally:
        selection_module.run_selection = original
    if "result" not in captured:
        raise SystemExit(f"pucli select ran no selection: pucli {' '.join(argv)}")
    return captured["result"], captured["wall_s"]


def _find_recommendation(report: dict[str, Any]) -> Any:
    """The report's ``recommendation`` (being added to ``pucli select`` by issue 16), wherever it sits; None if absent."""
    if "recommendation" in report:
        return report["recommendation"]
    for value in report.values():
        if isinstance(value, dict) and "recommendation" in value:
            return value["recommendation"]
    return None


def default_selection_unit(settings: Settings, spec: SelectionSpec, folder: Path) -> dict[str, Any]:
    """PU-s1 of pucli's defaults, through ``pucli select`` (true prior given, the seed, 1 job's threads):
    the output folder (``index.tsv``, ``index.report.json``, ``index.selector.safetensors``) is kept.
    ``wall_s`` is ``run_selection``'s wall-clock (the teacher's pass over the pool for descriptors, the
    graph, training, scoring); ``cli_wall_s`` the whole command. Also times the teacher's soft-target
    pass over the selected images alone (what the selection rows pay on top, issue 16's wall-clock)."""
    import torch
    from safetensors.torch import save_file

    from pucli.kd.expand import teacher_soft_targets
    from pucli.pu.selection import select_indices

    scenario = settings.scenario
    log(f"select {spec.name()} (pucli select, defaults, prior {spec.prior:g})")
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.tsv"
    argv = ["select", str(scenario.teacher_path), "--positive", str(scenario.positive_dir(spec.n_l, spec.seed)),
            "--unlabeled", str(scenario.pool_list), "--out", str(index), "--prior", f"{spec.prior!r}",
            "--seed", str(spec.seed), "--threads", str(settings.threads), "--device", "cpu", "--force"]
    if spec.epochs:
        argv += ["--epochs", str(spec.epochs)]
    if settings.workers is not None:
        argv += ["--workers", str(settings.workers)]
    reset_peak_rss()
    load_before = os.getloadavg()
    with Stopwatch() as cli_watch:
        result, wall_s = _run_select_cli(argv)
    if len(result.paths) != len(scenario.pool) or [str(p) for p in result.paths[:5]] != [str(p) for p in scenario.pool[:5]]:
        raise SystemExit(f"{len(scenario.pool) - len(result.paths)} unreadable pool images: rebuild the scenario")
    scores = result.scores.float()
    truth, sources = scenario.ground_truth()
    s1 = select_indices(scores)
    s2 = select_indices(scores, PU_S2_BUDGET)
    reports = sorted(folder.glob("*.report.json"))
    report = json.loads(reports[0].read_text()) if reports else {}
    teacher = scenario.teacher()
    chosen = [scenario.pool[int(i)] for i in s1.nonzero().flatten()]
    with Stopwatch() as soft_watch:
        teacher_soft_targets(teacher, chosen, workers=_workers(settings, len(chosen)))
    summary: dict[str, Any] = {
        "spec": spec.params(), "wall_s": round(wall_s, 2), "cli_wall_s": round(cli_watch.seconds, 2),
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "soft_targets_selected_s": round(soft_watch.seconds, 2), "soft_targets_selected_items": len(chosen),
        "load_avg_before": [round(v, 2) for v in load_before], "load_avg_after": [round(v, 2) for v in os.getloadavg()],
        "peak_rss_mib": round(peak_rss_mib(), 1), "cache_hit": result.from_cache, "metadata": result.metadata,
        "final_risk": result.history[-1] if result.history else None,
        "pu_s1": {**prf(s1, truth), "kept_by_source": kept_by_source(s1, sources)},
        "pu_s2": {**prf(s2, truth), "kept_by_source": kept_by_source(s2, sources), "budget": PU_S2_BUDGET},
        "score_quantiles": [round(float(q), 4) for q in torch.quantile(scores, torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99]))],
        "sigmoid_score_quantiles": [round(float(q), 4) for q in
                                    torch.quantile(torch.sigmoid(scores), torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99]))],
        "class_prior": result.class_prior, "warnings": list(result.warnings),
        "command": "pucli " + " ".join(argv), "output_folder": str(folder), "index": str(index),
        "report": str(reports[0]) if reports else None, "recommendation": _find_recommendation(report),
    }
    if result.prior_estimate is not None:
        summary["prior_estimate"] = {**result.prior_estimate.as_dict(), "wall_s": round(result.timings.get("prior", 0.0), 2)}
    save_file({"scores": scores.contiguous()}, str(folder / "scores.safetensors"))
    write_json_atomic(folder / "summary.json", summary)
    return {**summary, "scores": scores}


def _extract_bound(teacher: Any, options: Any, pool_size: int, extract: float | None) -> dict[str, Any]:
    """select's pool pass (extraction, img/s; None when the descriptors came from the cache) against the
    same extractor on uint8 batches in memory."""
    import torch

    from pucli.data.loading import Preprocess
    from pucli.pu.network import MultiScaleExtractor

    extractor = MultiScaleExtractor(teacher.model, options.scales).eval()
    preprocess = Preprocess(teacher.config)
    images = torch.randint(0, 256, (options.batch_size, *teacher.config.input_size), dtype=torch.uint8)
    with torch.inference_mode():
        for _ in range(3):
            extractor(preprocess.normalize(images))
        runs, start = 0, time.perf_counter()
        while runs < 5 or time.perf_counter() - start < 3.0:
            extractor(preprocess.normalize(images))
            runs += 1
        bound = runs * options.batch_size / (time.perf_counter() - start)
    measured = pool_size / extract if extract else None
    return {"extract_img_s": round(measured, 1) if measured else None, "bound_img_s": round(bound, 1),
            "ratio": round(measured / bound, 3) if measured else None, "batch_size": options.batch_size}


# --- expanded sets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSpec:
    """One training set. ``kind``: all, oracle, random, tiny, pool, confidence, pu-s1, pu-s2."""

    kind: str
    n_l: int | None
    seed: int
    selection: SelectionSpec | None = None

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_l": self.n_l, "seed": self.seed,
                "selection": self.selection.params() if self.selection else None}

    def name(self) -> str:
        if self.kind == "all":
            return "all"
        tail = f"-{self.selection.name()}" if self.selection and self.kind in ("pu-s1", "pu-s2", "pool") else ""
        return f"{self.kind}-nl{self.n_l}-seed{self.seed}" + tail


def set_unit(settings: Settings, spec: SetSpec, soft: dict[str, Any]) -> dict[str, Any]:
    """Write one expanded set (``pucli.data.manifest``) from the shared soft targets; returns its summary."""
    folder = settings.work / "sets" / key_of(spec.name(), spec.params())
    if (folder / "set.json").is_file():
        return {**json.loads((folder / "set.json").read_text()), "folder": str(folder)}
    import torch

    from pucli.data.manifest import write_expanded_set
    from pucli.kd.expand import build_expanded_set
    from pucli.kd.expand import teacher_soft_targets
    from pucli.pu.selection import select_indices

    scenario = settings.scenario
    reset_peak_rss()
    start = time.perf_counter()
    teacher = scenario.teacher()
    class_names = teacher.config.label_names or [str(k) for k in range(teacher.config.num_classes)]
    tensors = soft["tensors"]
    truth, sources = scenario.ground_truth()
    if spec.kind == "all":
        paths = [Path(p) for p in soft["train_paths"]]
        origins = ["positive"] * len(paths)
        labels = tensors["train_labels"].tolist()
        scores: list[float | None] = [None] * len(paths)
        targets = tensors["train"]
        mask = None
    else:
        positives = scenario.positives(spec.n_l, spec.seed, teacher)
        # L^t: tiny, so its soft targets come from a pass of its own.
        kept, positive_targets = teacher_soft_targets(teacher, positives.paths)
        if len(kept) != len(positives.paths):
            raise SystemExit(f"unreadable positives in {scenario.positive_dir(spec.n_l, spec.seed)}")
        pool_scores = torch.zeros(len(scenario.pool))
        k = None
        if spec.selection is not None:
            selection = selection_unit(settings, spec.selection)
            pool_scores = selection["scores"]
            k = selection["pu_s1"]["selected"]
        confidence = tensors["pool"].max(dim=1).values
        if spec.kind == "tiny":
            mask = torch.zeros(len(scenario.pool), dtype=torch.bool)
        elif spec.kind == "oracle":
            mask = truth.clone()
        elif spec.kind == "pool":
            mask = torch.ones(len(scenario.pool), dtype=torch.bool)
        elif spec.kind == "pu-s1":
            mask = select_indices(pool_scores)
        elif spec.kind == "pu-s2":
            mask = select_indices(pool_scores, PU_S2_BUDGET)
        elif spec.kind == "random":
            generator = torch.Generator().manual_seed(1000 * spec.seed + spec.n_l)
            mask = torch.zeros(len(scenario.pool), dtype=torch.bool)
            mask[torch.randperm(len(scenario.pool), generator=generator)[:k]] = True
        elif spec.kind == "confidence":
            mask = select_indices(confidence, k)
        else:
            raise ValueError(spec.kind)
        chosen = mask.nonzero().flatten()
        # The manifest's score column is the selector's F(x) where a selector ran, else the teacher's confidence.
        column = pool_scores if spec.selection is not None else confidence
        paths = list(positives.paths) + [scenario.pool[int(i)] for i in chosen]
        origins = ["positive"] * len(positives.paths) + ["unlabeled"] * len(chosen)
        labels = list(positives.labels) + [-1] * len(chosen)
        scores = [None] * len(positives.paths) + [float(v) for v in column[chosen]]
        targets = torch.cat([positive_targets, tensors["pool"][chosen]])
    expanded = build_expanded_set(paths=paths, origins=origins, labels=labels, scores=scores, soft_targets=targets,
                                  temperature=1.0, teacher_digest=teacher.digest, class_names=list(class_names),
                                  teacher=str(scenario.teacher_path))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    write_expanded_set(expanded, staging)
    summary: dict[str, Any] = {
        "spec": spec.params(), "items": len(expanded), "unlabeled": len(expanded) - origins.count("positive"),
        "build_s": round(time.perf_counter() - start, 2), "peak_rss_mib": round(peak_rss_mib(), 1),
        "class_weights": [round(float(w), 4) for w in expanded.class_weights],
    }
    if mask is not None:
        summary["selection"] = {**prf(mask, truth), "kept_by_source": kept_by_source(mask, sources)}
    write_json_atomic(staging / "set.json", summary)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return {**summary, "folder": str(folder)}


# --- students ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSpec:
    set_spec: SetSpec
    set_folder: str
    loss: str
    weighting: str
    seed: int
    steps: int
    batch_size: int
    items: int
    perf: bool = False

    def params(self) -> dict[str, Any]:
        return {"set": self.set_spec.params(), "loss": self.loss, "weighting": self.weighting, "seed": self.seed,
                "steps": self.steps, "batch_size": self.batch_size, "student": STUDENT}

    def name(self) -> str:
        return f"{self.set_spec.name()}-{self.loss}-{self.weighting}-s{self.seed}-{self.steps}steps"


def student_folder(settings_work: Path, spec: StudentSpec) -> Path:
    return settings_work / "students" / key_of(spec.name(), spec.params())


def student_unit(work: str, teacher_path: str, test_root: str, spec: StudentSpec, threads: int,
                 workers: int | None) -> dict[str, Any]:
    """Train (``pucli.kd.distill.distill``) and evaluate (``pucli.evaluate.evaluate_model``) one student.

    Runs in the main process or in a worker process (``--jobs``); only plain arguments cross over."""
    import torch

    from pucli.checkpoints import load_model, save_model
    from pucli.data.manifest import read_expanded_set
    from pucli.device import configure_threads, default_workers
    from pucli.errors import PucliError
    from pucli.evaluate import evaluate_model
    from pucli.kd.distill import DistillConfig, distill, steps_per_epoch, training_bound_throughput

    folder = student_folder(Path(work), spec)
    if (folder / "result.json").is_file():
        return json.loads((folder / "result.json").read_text())
    configure_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    reset_peak_rss()
    start = time.perf_counter()
    teacher = load_model(teacher_path)
    expanded = read_expanded_set(spec.set_folder, check_files=False)
    epochs = math.ceil(spec.steps / steps_per_epoch(len(expanded), spec.batch_size))
    config = DistillConfig(loss=spec.loss, epochs=epochs, batch_size=spec.batch_size, seed=spec.seed,
                           weighting=spec.weighting)
    checkpoint = folder / "checkpoint.pt"
    n_workers = workers if workers is not None else default_workers(len(expanded))
    result = None
    if checkpoint.is_file():  # an interrupted earlier run: continue it
        try:
            result = distill(teacher, expanded, STUDENT, config=config, checkpoint_path=checkpoint, resume=True,
                             workers=n_workers)
        except PucliError:
            result = None
    if result is None:
        result = distill(teacher, expanded, STUDENT, config=config, checkpoint_path=checkpoint, workers=n_workers)
    train_s = sum(h.train_s for h in result.history)
    distill_s = time.perf_counter() - start
    student_path = folder / "student.safetensors"
    save_model(result.student, student_path, label_names=teacher.config.label_names or expanded.class_names,
               data_config=teacher.config.data_config())
    eval_start = time.perf_counter()
    evaluation = evaluate_model(load_model(student_path), test_root, device=torch.device("cpu"), measure_speed=False,
                                workers=workers if workers is not None else default_workers(10_000))
    evaluate_s = time.perf_counter() - eval_start
    record: dict[str, Any] = {
        "spec": spec.params(), "name": spec.name(), "top1": round(evaluation.top1, 2), "top5": round(evaluation.top5, 2),
        "items": result.num_items, "epochs": result.epochs,
        "steps": epochs * steps_per_epoch(result.num_items, spec.batch_size),
        "timings_s": {"decode": round(result.decode_s, 2), "train": round(train_s, 2), "distill": round(distill_s, 2),
                      "evaluate": round(evaluate_s, 2), "total": round(time.perf_counter() - start, 2)},
        "images_per_s": round(result.images_per_s, 1), "peak_rss_mib": round(peak_rss_mib(), 1), "threads": threads,
        "final_loss": round(result.history[-1].loss, 5) if result.history else None,
        "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    if spec.perf:
        bound = training_bound_throughput(result.student, teacher.model, tuple(teacher.config.input_size),
                                          spec.batch_size, torch.device("cpu"))
        student_only = training_bound_throughput(result.student, None, tuple(teacher.config.input_size),
                                                 spec.batch_size, torch.device("cpu"))
        record["bound"] = {"teacher_plus_student_img_s": round(bound, 1), "student_only_img_s": round(student_only, 1),
                           "ratio": round(result.images_per_s / bound, 3),
                           "ratio_student_only": round(result.images_per_s / student_only, 3)}
    write_json_atomic(folder / "result.json", record)
    checkpoint.unlink(missing_ok=True)
    return record


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# --- the plan ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Units to run, in dependency order; ``students`` carry (part, row, n_l, seed, extra) labels."""

    selections: list[tuple[SelectionSpec, bool]] = field(default_factory=list)
    sets: list[SetSpec] = field(default_factory=list)
    students: list[tuple[dict[str, Any], SetSpec, str, str, int, bool]] = field(default_factory=list)

    def add_selection(self, spec: SelectionSpec, perf: bool = False) -> None:
        if all(existing != spec for existing, _ in self.selections):
            self.selections.append((spec, perf))
        elif perf:
            self.selections = [(s, p or s == spec) for s, p in self.selections]

    def add_set(self, spec: SetSpec) -> None:
        if spec not in self.sets:
            self.sets.append(spec)


ROW_SET = {"KD-all": "all", "KD-oracle": "oracle", "KD-random": "random", "KD-tiny": "tiny", "KD-pool": "pool",
           "confidence": "confidence", "PU-s1": "pu-s1", "PU-s2": "pu-s2", "PU-weighted": "pool", "PU-s1-auto": "pu-s1",
           "PU-s1-graph": "pu-s1", "PU-s2-graph": "pu-s2"}


def make_plan(args: argparse.Namespace, settings: Settings) -> Plan:
    plan = Plan()
    prior_true = settings.class_prior
    main_spec = lambda n_l, seed: SelectionSpec(n_l, seed, prior_true, settings.main_variant)  # noqa: E731
    extra_epochs = settings.selector_epochs_extra

    def row_set(row: str, n_l: int, seed: int, selection: SelectionSpec | None = None) -> SetSpec:
        kind = ROW_SET[row]
        if kind == "all":
            return SetSpec("all", None, 0)
        needs_selection = kind in ("random", "pool", "confidence", "pu-s1", "pu-s2")
        if needs_selection:
            selection = selection or main_spec(n_l, seed)
            plan.add_selection(selection, perf=(n_l == ABLATION_NL and seed == min(args.seeds) and selection == main_spec(n_l, seed)))
        return SetSpec(kind, n_l, seed, selection if needs_selection else None)

    if "main" in args.parts:
        for seed in args.seeds:
            for n_l in args.nl:
                for row in args.rows:
                    if row == "KD-all" and n_l != args.nl[0]:
                        continue  # KD-all does not depend on n_l
                    selection = (SelectionSpec(n_l, seed, None) if row == "PU-s1-auto"
                                 else SelectionSpec(n_l, seed, prior_true, "graph") if row.endswith("-graph") else None)
                    spec = row_set(row, n_l, seed, selection)
                    plan.add_set(spec)
                    perf = n_l == ABLATION_NL and seed == min(args.seeds) and row in ("PU-s1", "KD-pool")
                    label = {"part": "main", "row": row, "n_l": None if row == "KD-all" else n_l, "seed": seed}
                    plan.students.append((label, spec, MAIN_LOSS, "pu-score" if row == "PU-weighted" else "uniform", seed, perf))
    fig_seeds = args.fig_seeds
    if "fig2" in args.parts:
        for seed in fig_seeds:
            for factor in PRIOR_FACTORS:
                prior = round(prior_true * factor, 6)
                exact = abs(factor - 1.0) < 1e-9
                selection = main_spec(ABLATION_NL, seed) if exact else SelectionSpec(ABLATION_NL, seed, prior, "frozen", extra_epochs)
                spec = row_set("PU-s1", ABLATION_NL, seed, selection)
                plan.add_set(spec)
                for loss in LOSSES:
                    label = {"part": "fig2", "row": "PU-s1", "n_l": ABLATION_NL, "seed": seed, "prior": prior,
                             "prior_factor": factor, "loss": loss}
                    plan.students.append((label, spec, loss, "uniform", seed, False))
    if "ablation" in args.parts:
        for seed in fig_seeds:
            for variant in SELECTOR_VARIANTS:
                if variant == "frozen":
                    selection = main_spec(ABLATION_NL, seed)
                elif variant == "graph":  # the same unit as the main PU-s1-graph row at n_l = 10
                    selection = SelectionSpec(ABLATION_NL, seed, prior_true, "graph")
                elif variant == "finetune":
                    selection = SelectionSpec(ABLATION_NL, seed, prior_true, variant, settings.finetune_epochs)
                else:
                    selection = SelectionSpec(ABLATION_NL, seed, prior_true, variant, extra_epochs)
                spec = row_set("PU-s1", ABLATION_NL, seed, selection)
                plan.add_set(spec)
                label = {"part": "ablation", "row": "PU-s1", "n_l": ABLATION_NL, "seed": seed, "variant": variant,
                         "loss": MAIN_LOSS}
                plan.students.append((label, spec, MAIN_LOSS, "uniform", seed, False))
    return plan


# --- running ---------------------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace, settings: Settings, plan: Plan) -> dict[str, Any]:
    started = time.perf_counter()
    scenario = settings.scenario
    soft = soft_targets_unit(settings)
    selections = {}
    for spec, perf in plan.selections:
        summary = selection_unit(settings, spec, perf=perf)
        selections[spec.name()] = {k: v for k, v in summary.items() if k != "scores"}
    sets = {}
    for spec in plan.sets:
        summary = set_unit(settings, spec, soft)
        sets[spec.name()] = summary
    expand_check = _expand_comparison(settings, plan, sets) if "main" in args.parts else None

    jobs = []
    for label, set_spec, loss, weighting, seed, perf in plan.students:
        summary = sets[set_spec.name()]
        jobs.append((label, StudentSpec(set_spec, summary["folder"], loss, weighting, seed, settings.steps,
                                        settings.batch_size, summary["items"], perf)))
    # Same unit asked by two parts (fig2 f = 1 robust-kd is main's PU-s1 n_l = 10): run once.
    unique: dict[str, StudentSpec] = {}
    for _, spec in jobs:
        unique.setdefault(student_folder(settings.work, spec).name, spec)
    results: dict[str, dict[str, Any]] = {}
    pending = [spec for name, spec in unique.items() if not (settings.work / "students" / name / "result.json").is_file()]
    log(f"students: {len(unique)} units, {len(unique) - len(pending)} cached, {len(pending)} to train "
        f"({settings.steps} steps each, {args.jobs} at a time, {settings.threads} thread(s) each)")
    common = (str(settings.work), str(scenario.teacher_path), str(scenario.root / "test"))
    done = 0

    def finished(spec: StudentSpec, record: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        results[student_folder(settings.work, spec).name] = record
        log(f"[{done}/{len(pending)}] {spec.name()}: top-1 {record['top1']:.2f} % "
            f"({record['items']:,} items, {record['steps']} steps, {record['timings_s']['total']:.0f} s)")

    if args.jobs > 1 and len(pending) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(settings.threads,)) as pool:
            futures = {pool.submit(student_unit, *common, spec, settings.threads, settings.workers): spec for spec in pending}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for spec in pending:
            finished(spec, student_unit(*common, spec, settings.threads, settings.workers))
    students = []
    for label, spec in jobs:
        name = student_folder(settings.work, spec).name
        record = results.get(name) or json.loads((settings.work / "students" / name / "result.json").read_text())
        set_summary = sets[spec.set_spec.name()]
        students.append({**label, "loss": spec.loss, "weighting": spec.weighting, "set": spec.set_spec.name(),
                         "selection": set_summary.get("selection"), "set_build_s": set_summary["build_s"], **record})
    wallclock = wallclock_part(args, settings, soft, selections, sets, students) if "wallclock" in args.parts else None
    return {
        "soft_targets": {k: v for k, v in soft.items() if k not in ("tensors", "train_paths")},
        "selections": selections, "sets": {k: {kk: vv for kk, vv in v.items() if kk != "folder"} for k, v in sets.items()},
        "students": students, "expand_comparison": expand_check, "wallclock": wallclock,
        "run_wall_s": round(time.perf_counter() - started, 1),
    }


WALLCLOCK_FORMULA = (
    "budget = T_pool (the teacher's soft-target pass over the whole pool) + train_s(KD-pool at the equal-steps budget); "
    "s_per_step(row) = train_s / steps of the row's own equal-steps student; overhead: KD-pool = T_pool, "
    "PU-s1 = select_s (run_selection wall-clock: descriptors' teacher pass over the pool, graph, training, scoring) "
    "+ T_selected (the teacher's soft-target pass over the selected images), PU-weighted = select_s + T_pool; "
    "steps(row) = (budget - overhead(row)) / s_per_step(row), rounded down to whole epochs of the row's set "
    "(KD-pool: its equal-steps student, by definition); no student where that is < 1 epoch. Decoding the set "
    "and evaluating are not counted (recorded beside)."
)


def wallclock_part(args: argparse.Namespace, settings: Settings, soft: dict[str, Any], selections: dict[str, Any],
                   sets: dict[str, Any], students: list[dict[str, Any]]) -> dict[str, Any]:
    """Equal wall-clock (issue 16): every row of ``args.wallclock_rows`` gets the steps KD-pool's budget leaves it
    after its own overhead (:data:`WALLCLOCK_FORMULA`), from the equal-steps students of the same n_l and seed."""
    from pucli.kd.distill import steps_per_epoch

    t_pool = soft["timings_s"]["pool"]
    main = {(s["row"], s["n_l"], s["seed"]): s for s in students if s["part"] == "main"}
    entries = []
    pending: list[tuple[dict[str, Any], StudentSpec]] = []
    for seed in args.seeds:
        for n_l in args.nl:
            pool_record = main.get(("KD-pool", n_l, seed))
            if pool_record is None:
                entries.append({"n_l": n_l, "seed": seed, "skipped": "no equal-steps KD-pool student: add KD-pool to --rows"})
                continue
            budget = t_pool + pool_record["timings_s"]["train"]
            for row in args.wallclock_rows:
                record = main.get((row, n_l, seed))
                if record is None:
                    entries.append({"row": row, "n_l": n_l, "seed": seed, "skipped": f"no equal-steps {row} student: add it to --rows"})
                    continue
                selection_spec = _set_spec_from_params(record["spec"]["set"]).selection
                selection = selections.get(selection_spec.name()) if selection_spec else None
                s_per_step = record["timings_s"]["train"] / record["steps"]
                if row == "KD-pool":
                    overhead = {"teacher_pass_pool_s": t_pool}
                elif row == "PU-s1":
                    overhead = {"select_s": selection["wall_s"], "teacher_pass_selected_s": selection["soft_targets_selected_s"]}
                elif row == "PU-weighted":
                    overhead = {"select_s": selection["wall_s"], "teacher_pass_pool_s": t_pool}
                else:
                    raise SystemExit(f"--wallclock-rows: no overhead rule for {row}; choose from {', '.join(WALLCLOCK_ROWS)}")
                total_overhead = sum(overhead.values())
                target = (budget - total_overhead) / s_per_step
                per_epoch = steps_per_epoch(record["items"], settings.batch_size)
                entry: dict[str, Any] = {
                    "row": row, "n_l": n_l, "seed": seed, "budget_s": round(budget, 2), "overhead_s": overhead,
                    "overhead_total_s": round(total_overhead, 2), "s_per_step": round(s_per_step, 6),
                    "target_steps": round(target, 1), "steps_per_epoch": per_epoch, "items": record["items"],
                    "selection_cache_hit": selection.get("cache_hit") if selection else None,
                    "selection_graph_cache_hit": ((selection or {}).get("metadata") or {}).get("graph", {}).get("cache_hit"),
                    "equal_steps_student": record["name"], "equal_steps_top1": record["top1"],
                }
                if row == "KD-pool":
                    entry.update(steps=record["steps"], top1=record["top1"], student=record["name"],
                                 student_timings_s=record["timings_s"], same_unit_as_equal_steps=True)
                    entries.append(entry)
                    continue
                epochs = math.floor(round(target, 6) / per_epoch)
                if epochs < 1:
                    entry.update(steps=0, top1=None, not_trainable=f"overhead {total_overhead:.0f} s leaves "
                                 f"{max(0.0, budget - total_overhead):.0f} s of a {budget:.0f} s budget: under one epoch")
                    entries.append(entry)
                    continue
                entry["steps"] = epochs * per_epoch
                entries.append(entry)
                pending.append((entry, record))
    for entry, record in pending:
        spec_params = record["spec"]
        set_name = record["set"]
        summary = sets[set_name]
        set_spec = _set_spec_from_params(spec_params["set"])
        spec = StudentSpec(set_spec, summary["folder"], record["loss"], record["weighting"], entry["seed"], entry["steps"],
                           settings.batch_size, summary["items"], False)
        result = student_unit(str(settings.work), str(settings.scenario.teacher_path), str(settings.scenario.root / "test"),
                              spec, settings.threads, settings.workers)
        log(f"wall-clock {entry['row']} n_l {entry['n_l']} seed {entry['seed']}: {result['steps']} steps, top-1 {result['top1']:.2f} %")
        entry.update(top1=result["top1"], student=result["name"], student_timings_s=result["timings_s"],
                     steps=result["steps"], used_s=round(entry["overhead_total_s"] + result["timings_s"]["train"], 2),
                     load_avg_at_end=result.get("load_avg_at_end"))
    return {"formula": WALLCLOCK_FORMULA, "teacher_pass_pool_s": t_pool, "entries": entries}


def _set_spec_from_params(params: dict[str, Any]) -> SetSpec:
    selection = SelectionSpec(**{k: v for k, v in params["selection"].items() if k in ("n_l", "seed", "prior", "variant", "epochs")}) \
        if params["selection"] else None
    return SetSpec(params["kind"], params["n_l"], params["seed"], selection)


def _expand_comparison(settings: Settings, plan: Plan, sets: dict[str, Any]) -> dict[str, Any] | None:
    """Time ``pucli.kd.expand.expand`` (a teacher pass per set) on one PU-s1 set against building it from the
    shared soft targets; checks the two agree. Cached like a unit."""
    target = next((s for s in plan.sets if s.kind == "pu-s1" and s.n_l == ABLATION_NL and s.selection is not None
                   and s.selection.variant == "frozen" and abs(s.selection.prior - TRUE_PRIOR) < 1e-9), None)
    if target is None:
        return None
    folder = settings.work / "expand-check" / key_of(target.name(), target.params())
    if (folder / "check.json").is_file():
        return json.loads((folder / "check.json").read_text())
    import torch

    from pucli.data.index import IndexEntry
    from pucli.data.manifest import read_expanded_set
    from pucli.kd.expand import expand

    scenario = settings.scenario
    teacher = scenario.teacher()
    shared = read_expanded_set(sets[target.name()]["folder"], check_files=False)
    positives = scenario.positives(target.n_l, target.seed, teacher)
    entries = [IndexEntry(p, float(s)) for p, s, o in zip(shared.paths, shared.scores, shared.origins) if o == "unlabeled"]
    folder.mkdir(parents=True, exist_ok=True)
    reset_peak_rss()
    with Stopwatch() as watch:
        direct = expand(positives, entries, teacher, folder / "expanded", workers=_workers(settings, len(entries)))
    expand_s = watch.seconds
    order = {p: i for i, p in enumerate(direct.paths)}
    rows = torch.tensor([order[p] for p in shared.paths])
    check = {"set": target.name(), "items": len(direct), "expand_s": round(expand_s, 2),
             "expand_peak_rss_mib": round(peak_rss_mib(), 1), "shared_build_s": sets[target.name()]["build_s"],
             "max_abs_soft_target_difference": float((direct.soft_targets[rows] - shared.soft_targets).abs().max()),
             "class_weights_max_difference": float((direct.class_weights - shared.class_weights).abs().max())}
    shutil.rmtree(folder / "expanded", ignore_errors=True)
    write_json_atomic(folder / "check.json", check)
    return check


# --- estimate ----------------------------------------------------------------------------------------------


def estimate(results: dict[str, Any], full: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Predict the full study's wall-clock from a run's per-unit timings (linear in steps / epochs)."""
    from _study_report import estimate_full_study

    return estimate_full_study(results, full_plan_counts(settings), settings.finetune_epochs)


def full_plan_counts(settings: Settings) -> dict[str, Any]:
    """Units of the full study (every part, every n_l and seed), counted by kind."""
    args = argparse.Namespace(parts=list(PARTS), rows=list(ROWS), nl=list(NLS), seeds=list(SEEDS), fig_seeds=[0])
    full_settings = Settings(**{**settings.__dict__, "steps": budget_steps(settings.batch_size), "quick": False,
                                "selector_epochs_extra": None})
    plan = make_plan(args, full_settings)
    unique_students: dict[str, tuple[str, int | None]] = {}
    for label, set_spec, loss, weighting, seed, _ in plan.students:
        key = f"{set_spec.name()}-{loss}-{weighting}-{seed}"
        unique_students.setdefault(key, (label["row"] if label["part"] == "main" else f"{label['part']}:{label['row']}",
                                         set_spec.n_l))
    by_row: dict[str, int] = {}
    for row, _ in unique_students.values():
        by_row[row] = by_row.get(row, 0) + 1
    selections = {"frozen-fresh": 0, "frozen-cached": 0, "finetune": 0, "last-stage": 0}
    seen_descriptors = set()
    for spec, _ in plan.selections:
        if spec.variant == "finetune":
            selections["finetune"] += 1
            continue
        descriptor_key = (spec.n_l, spec.seed, spec.variant == "last-stage")
        if descriptor_key in seen_descriptors:
            selections["frozen-cached"] += 1
        else:
            seen_descriptors.add(descriptor_key)
            selections["last-stage" if spec.variant == "last-stage" else "frozen-fresh"] += 1
    sets_by_kind: dict[str, int] = {}
    for spec in plan.sets:
        sets_by_kind[spec.kind] = sets_by_kind.get(spec.kind, 0) + 1
    return {"students_by_row": by_row, "students": len(unique_students), "selections": selections,
            "sets_by_kind": sets_by_kind, "steps": budget_steps(settings.batch_size)}


def budget_steps(batch_size: int) -> int:
    from pucli.kd.distill import steps_per_epoch  # the rule distill trains by (drops a small last batch)

    return BUDGET_EPOCHS * steps_per_epoch(BUDGET_ITEMS, batch_size)


# --- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: n_l 10, seed 0, {QUICK_STEPS} steps per student (reduced, flagged), "
                             f"fig2/ablation selectors at {QUICK_SELECTOR_EPOCHS} epochs, fine-tuning 1 epoch")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma list of {', '.join(PARTS + EXTRA_PARTS)} [default: {','.join(PARTS)}]; wallclock "
                             "(equal wall-clock students, issue 16) needs main with KD-pool and the --wallclock-rows")
    parser.add_argument("--wallclock-rows", default=",".join(WALLCLOCK_ROWS),
                        help=f"rows of the wallclock part [default: {','.join(WALLCLOCK_ROWS)}]")
    parser.add_argument("--rows", default=None, help=f"comma list of main rows [default: all: {', '.join(ROWS)}]")
    parser.add_argument("--nl", type=int, nargs="+", default=None, help="n_l values [default: 1 2 5 10 20; quick: 10]")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds [default: 0 1 2; quick: 0]")
    parser.add_argument("--fig-seeds", type=int, nargs="+", default=None,
                        help="seeds of Fig. 2 and the ablation [default: the first of --seeds]")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per student [default: 20 epochs over 30,000 at batch 128 = 4,680]")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="epochs of the fine-tuned selector [default: 5; quick: 1]")
    parser.add_argument("--jobs", type=int, default=1, help="students trained at a time (worker processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job [default: CPUs / jobs]")
    parser.add_argument("--workers", type=int, default=None, help="data-loading processes [default: pucli's]")
    add_root_argument(parser)
    parser.add_argument("--teacher", type=Path, default=None,
                        help="teacher [default: <root>/teacher/lenet5.safetensors, benchmarks/train_teacher.py's]")
    parser.add_argument("--work", type=Path, default=None, help="unit cache [default: <pucli cache>/benchmarks/mnist-pu/study]")
    parser.add_argument("--results", type=Path, default=None,
                        help="results JSON [default: benchmarks/results/mnist_pu_study.json, _quick with --quick; "
                             "other scenarios: <work>/results.json]")
    parser.add_argument("--combine-webcrawl", type=Path, nargs="+", default=None, metavar="RESULTS",
                        help="only merge webcrawl-pu results JSONs (one or more per prior) into "
                             "benchmarks/results/webcrawl_pu_study.json, docs/webcrawl_prior.png and the docs section "
                             "(--section-out)")
    parser.add_argument("--section-out", type=Path, default=Path("/work/notes/webcrawl_section.md"),
                        help="where --combine-webcrawl writes the docs section [default: %(default)s]")
    parser.add_argument("--reference-study", type=Path, default=HERE / "results" / "mnist_pu_study.json",
                        help="mnist-pu study results whose n_l = 10 rows are the prior-0.30 point of --combine-webcrawl")
    parser.add_argument("--report", action="store_true", help="only write docs/benchmarks.md's study section and the plots from --results")
    parser.add_argument("--estimate", action="store_true", help="only print the full study's predicted wall-clock from --results")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    args.rows = [r for r in (args.rows or ",".join(ROWS)).split(",") if r]
    args.wallclock_rows = [r for r in args.wallclock_rows.split(",") if r]
    for value, allowed, what in ((args.parts, PARTS + EXTRA_PARTS, "--parts"), (args.rows, ROWS, "--rows"),
                                 (args.wallclock_rows, WALLCLOCK_ROWS, "--wallclock-rows")):
        unknown = set(value) - set(allowed)
        if unknown:
            parser.error(f"{what}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    args.nl = args.nl or ([ABLATION_NL] if args.quick else list(NLS))
    args.seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    args.fig_seeds = args.fig_seeds or [args.seeds[0]]
    args.default_results = HERE / "results" / ("mnist_pu_study_quick.json" if args.quick else "mnist_pu_study.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine_webcrawl:
        from _study_report import combine_webcrawl

        combine_webcrawl(args.combine_webcrawl, REPO, section_out=args.section_out, reference=args.reference_study)
        return 0
    if args.results is None and (args.root is None or scenario_prior(args.root)[0] == "mnist-pu"):
        args.results = args.default_results
    if args.report:
        from _study_report import write_report

        write_report(json.loads(args.results.read_text()), args.results, REPO)
        return 0
    from pucli.device import available_cpus

    scenario = Scenario(args.root, args.teacher)
    scenario.require()
    root, teacher = scenario.root, scenario.teacher_path
    scenario_name, class_prior = scenario_prior(root)
    threads = args.threads or max(1, available_cpus() // max(1, args.jobs))
    settings = Settings(
        work=args.work or root / "study", scenario=scenario,
        steps=args.steps or (QUICK_STEPS if args.quick else budget_steps(128)), quick=args.quick, threads=threads,
        workers=args.workers, finetune_epochs=args.finetune_epochs or (1 if args.quick else 5),
        selector_epochs_extra=QUICK_SELECTOR_EPOCHS if args.quick else None,
        class_prior=class_prior, scenario_name=scenario_name,
    )
    if args.results is None:
        args.results = settings.work / "results.json"
    if args.estimate:
        from _study_report import print_estimate

        print_estimate(json.loads(args.results.read_text())["estimate"])
        return 0
    import torch

    torch.set_num_threads(threads)
    plan = make_plan(args, settings)
    log(f"plan: {len(plan.selections)} selections, {len(plan.sets)} sets, {len(plan.students)} students; work {settings.work}")
    started = time.time()
    outcome = run_plan(args, settings, plan)
    results = {
        "scenario": scenario_name, "root": str(root), "teacher": str(teacher), "work": str(settings.work),
        "quick": args.quick, "reduced_step_budget": settings.steps != budget_steps(settings.batch_size),
        "steps_per_student": settings.steps, "full_step_budget": budget_steps(settings.batch_size),
        "batch_size": settings.batch_size, "student": STUDENT, "main_loss": MAIN_LOSS, "class_prior": class_prior,
        "pu_s2_budget": PU_S2_BUDGET, "parts": args.parts, "rows": args.rows, "nl": args.nl, "seeds": args.seeds,
        "fig_seeds": args.fig_seeds, "finetune_epochs": settings.finetune_epochs,
        "selector_epochs_extra": settings.selector_epochs_extra, "threads": threads, "jobs": args.jobs,
        "teacher_top1": _teacher_top1(settings),
        "machine": machine(available_cpus=available_cpus(), torch=torch.__version__),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), **outcome,
    }
    if scenario_name == "mnist-pu":
        results["estimate"] = estimate(results, args, settings)
    else:  # the full-study estimate is mnist-pu's plan; the web-crawl study records its timings instead
        results["wallclock_rows"] = args.wallclock_rows
    write_json_atomic(args.results, results)
    from _study_report import print_estimate, print_summary

    print_summary(results)
    if "estimate" in results:
        print_estimate(results["estimate"])
    log(f"results: {args.results}; then: python benchmarks/mnist_pu.py --report{' --quick' if args.quick else ''}")
    return 0


def _teacher_top1(settings: Settings) -> float:
    folder = settings.work / "teacher-eval"
    path = folder / "result.json"
    if path.is_file():
        return json.loads(path.read_text())["top1"]
    import torch

    from pucli.evaluate import evaluate_model

    top1 = evaluate_model(settings.scenario.teacher(), settings.scenario.root / "test", device=torch.device("cpu"),
                          measure_speed=False).top1
    write_json_atomic(path, {"top1": round(top1, 2), "teacher": str(settings.scenario.teacher_path)})
    return round(top1, 2)


if __name__ == "__main__":
    sys.exit(main())
