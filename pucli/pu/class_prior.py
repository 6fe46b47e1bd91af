"""The class prior ``pi_p`` of an unlabeled pool, from its images or their frozen descriptors: what
``pucli prior`` (:func:`estimate_prior`) and ``pucli select --prior auto``
(:func:`estimate_prior_from_descriptors`) run.

The estimator is best-bin mixture-proportion estimation (:mod:`pucli.pu.mixture_proportion`, Garg
et al. 2021) on held-out scores of the labeled positives and the pool. Which scores: with the
pool's k-NN graph and enough labeled positives (5 per class; :func:`pucli.pu.ranking.prior_by_propagation`),
the label propagation's cross-fit (:func:`held_out_positives`, the same cross-fit the selection's
trust reads, :mod:`pucli.pu.trust`); otherwise cross-fitted P-vs-U scores refined by nnPU heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pucli.checkpoints import LoadedModel
from pucli.data.files import SkippedFile
from pucli.data.loading import Preprocess
from pucli.errors import UsageError
from pucli.progress import ProgressCallback, no_progress, timed
from pucli.pu.descriptors import Descriptors, load_or_extract_descriptors, resolve_positive_augmentation
from pucli.pu.mixture_proportion import (
    Fit,
    HeldOutPositives,
    PriorEstimate,
    cross_fit_propagation,
    estimate_class_prior,
    estimate_prior_by_propagation,
)
from pucli.pu.neighbors import PoolGraph, pool_graph
from pucli.pu.network import MultiScaleExtractor
from pucli.pu.options import Scales, SelectorOptions
from pucli.pu.propagation import positive_walk, propagate
from pucli.pu.ranking import prior_by_propagation
from pucli.pu.training import train_frozen
from pucli.run_context import RunContext

__all__ = ["PRIOR_REFINE_EPOCHS", "PriorResult", "estimate_prior", "estimate_prior_from_descriptors",
           "held_out_positives"]


#: Epochs of each cross-fitted nnPU head in the prior's refinement pass (single heads, no ensemble).
PRIOR_REFINE_EPOCHS = 10


def _nnpu_fit(options: SelectorOptions) -> Callable[[float], Fit]:
    """The refinement scorer of the prior estimate: one nnPU head with the selector's default
    settings, trained with the current estimate as its class prior."""

    def with_prior(class_prior: float) -> Fit:
        def fit(positive: torch.Tensor, unlabeled: torch.Tensor, seed: int) -> nn.Module:
            # The selector's defaults, not the run's training options, so `pucli prior` and
            # `pucli select --prior auto` give the same estimate whatever else select is told.
            member_options = SelectorOptions(class_prior=class_prior, ensemble=1, epochs=PRIOR_REFINE_EPOCHS,
                                             scales=options.scales, seed=seed)
            return train_frozen(positive, unlabeled, member_options)[0]

        return fit

    return with_prior


def estimate_prior_from_descriptors(descriptors: Descriptors, options: SelectorOptions, *,
                                    positive_labels: Sequence[int] | None = None,
                                    progress: ProgressCallback = no_progress,
                                    graph: PoolGraph | None = None,
                                    held_out: HeldOutPositives | None = None) -> PriorEstimate:
    """The class prior of the pool, estimated from frozen descriptors (:mod:`pucli.pu.mixture_proportion`).

    With the pool's k-NN ``graph``, a ranking that may propagate and enough labeled positives
    (:func:`pucli.pu.ranking.prior_by_propagation`: 5 per class): best-bin estimation on cross-fitted
    label-propagation scores (:func:`pucli.pu.mixture_proportion.estimate_prior_by_propagation`),
    the scores the default ranking selects by. Otherwise best-bin estimation on cross-fitted P-vs-U logistic
    scores, refined once with cross-fitted nnPU heads trained at that first estimate (Garg et al.
    2021's alternation of estimation and PU training). The augmented copies of the positives, if
    any, join the training folds (seeds) only. ``positive_labels`` (the class of each input
    positive, in input order) stratify the folds. ``held_out``: the propagation's cross-fit, already
    run (:func:`held_out_positives`), to reuse.

    Raises:
        NoImagesError: fewer than 2 readable positives, or no unlabeled image.
    """
    augmented = None
    if len(descriptors.positive_augmented):
        augmented = descriptors.positive_augmented.view(-1, len(descriptors.positive), descriptors.positive.shape[1])
    labels = None
    if positive_labels is not None:
        labels = torch.as_tensor(list(positive_labels), dtype=torch.long)[descriptors.positive_index]
    if held_out is None and graph is not None and prior_by_propagation(options, len(descriptors.positive), labels):
        walk = positive_walk(graph, descriptors.unlabeled, descriptors.positive_set, seed=options.seed)
        held_out = held_out_positives(walk, len(descriptors.unlabeled), len(descriptors.positive),
                                      len(descriptors.positive_set), options, labels, progress=progress)
    if held_out is not None:
        return estimate_prior_by_propagation(None, len(descriptors.unlabeled), len(descriptors.positive),
                                             seed=options.seed, held_out=held_out)
    return estimate_class_prior(descriptors.positive, descriptors.unlabeled, seed=options.seed,
                                refine_fit=_nnpu_fit(options), positive_augmented=augmented, positive_labels=labels,
                                progress=progress)


def held_out_positives(walk: Any, pool_size: int, positive_count: int, seed_count: int, options: SelectorOptions,
                       positive_labels: torch.Tensor | None, *,
                       progress: ProgressCallback = no_progress) -> HeldOutPositives:
    """The propagation's cross-fit over the graph of pool and positives (``walk``:
    :func:`pucli.pu.propagation.positive_walk`, ``seed_count`` positive nodes: the plain positives, then
    their augmented copies): what the prior estimate and the selection's trust read
    (:func:`pucli.pu.mixture_proportion.cross_fit_propagation`)."""
    copies = seed_count // max(1, positive_count) - 1
    return cross_fit_propagation(
        lambda seeds: propagate(seeds.float(), walk, alpha=options.graph_alpha, steps=options.graph_steps),
        pool_size, positive_count, copies, seed=options.seed, positive_labels=positive_labels, progress=progress,
        batched=True)


@dataclass
class PriorResult:
    """What :func:`estimate_prior` produced: the estimate, the unreadable files left out, seconds
    per stage (``extract``, ``graph``, ``prior``), the descriptor cache used and the teacher's
    nodes the descriptors were tapped at (:meth:`MultiScaleExtractor.tap_summary`)."""

    estimate: PriorEstimate
    skipped: list[SkippedFile]
    timings: dict[str, float]
    cache_path: Path | None
    taps: list[dict[str, object]] = field(default_factory=list)


def estimate_prior(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    *,
    seed: int = 0,
    scales: Scales = Scales(),
    augment_positives: int | None = None,
    batch_size: int = 256,
    use_cache: bool = True,
    positive_labels: Sequence[int] | None = None,
    run: RunContext | None = None,
    **legacy: Any,
) -> PriorResult:
    """Estimate the class prior of ``unlabeled_paths`` (what ``pucli prior`` runs).

    Extracts (or loads from the cache shared with ``pucli select``) the frozen descriptors and
    the pool's k-NN graph (cached too), then :func:`estimate_prior_from_descriptors` with the
    selector's default options.
    ``positive_labels`` (class of each positive) stratify the cross-fitting folds. ``run``: the
    device, loader processes and progress (:class:`pucli.run_context.RunContext`; ``legacy``: those
    given as ``device=``, ``workers=``, ``progress=``); the unreadable files are the result's ``skipped``.

    Raises:
        NoImagesError: fewer than 2 readable positives, or no readable unlabeled image.
    """
    run = RunContext.given(run, **legacy)
    device, progress = run.device, run.progress
    options = SelectorOptions(class_prior=None, augment_positives=augment_positives, scales=scales, seed=seed,
                              batch_size=batch_size)
    timings: dict[str, float] = {}
    extractor = MultiScaleExtractor(teacher.model, scales, input_size=teacher.config.input_size).to(device)
    augmentation = resolve_positive_augmentation(teacher.config, augment_positives, len(positive_paths), seed)
    with timed(timings, "extract"):
        descriptors = load_or_extract_descriptors(
            teacher, extractor, list(positive_paths), list(unlabeled_paths), Preprocess(teacher.config),
            scales=scales, batch_size=batch_size, use_cache=use_cache, augmentation=augmentation, run=run,
            # Reuse, never discard, the saved parts of an interrupted select on the same inputs:
            # they are the same bits this call would extract.
            resume=use_cache,
        )
    extractor.cpu()
    if descriptors is None:
        raise UsageError("pucli prior runs in one process: launch it without torchrun")
    graph = None
    if len(descriptors.unlabeled) > 1:
        # The same cached graph `pucli select` builds, so both give the same estimate.
        with timed(timings, "graph"):
            graph = pool_graph(descriptors.unlabeled, neighbors=options.graph_neighbors, seed=seed, device=device,
                               use_cache=use_cache, exact_max=options.graph_exact_max, progress=progress)
    with timed(timings, "prior"):
        estimate = estimate_prior_from_descriptors(descriptors, options, positive_labels=positive_labels,
                                                   progress=progress, graph=graph)
    return PriorResult(estimate, descriptors.skipped, timings, descriptors.cache_path,
                       extractor.tap_summary(teacher.config.input_size))
