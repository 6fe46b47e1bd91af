"""The PU selector: which unlabeled images belong to the teacher's task (stage 1 of pucli).

Implements stage 1 of

* Xu, Wang, Chen, Han, Xu, Tao, Xu, "Positive-Unlabeled Compression on the Cloud", NeurIPS 2019,
  https://arxiv.org/abs/1909.09757 (Sec. 2.2-2.3, Eq. 3-6),

trained with the non-negative PU risk of Kiryo et al. 2017 (:mod:`pucli.pu.nnpu`).

Network ``N_A`` (Eq. 4-6): the teacher's feature maps at several scales are global-average-pooled
to channel descriptors ``o^j`` and concatenated to ``o`` (C channels); a squeeze-and-excitation
gate ``w = sigmoid(W2 relu(W1 o))`` (timm's :class:`timm.layers.SEModule`) rescales it,
``o~ = w * o``, and a linear head gives the score ``F(x)``.

Scales (:class:`Scales`): the stages of timm's feature API (``forward_intermediates`` where the
model has it, else forward hooks on the modules its ``feature_info`` names, which is what
``features_only`` wraps) plus, by default, the penultimate features
``forward_head(x, pre_logits=True)``. The pre-logits scale matters for small backbones such as
LeNet-5, whose conv stages have only 6 and 16 channels while its 84-d penultimate layer holds the
class evidence; for ResNets it equals the pooled last stage, so it only repeats that scale.

Two training modes:

* frozen (default): the teacher stays fixed, so each image's descriptor is computed once, with
  the deterministic evaluation transform, and cached on disk (:func:`load_or_extract_descriptors`);
  the gate and head then train for many epochs in seconds, and scoring the pool is the head on
  the cached descriptors (bit-identical to streaming the images through extractor and head).
* fine-tune (:attr:`SelectorOptions.finetune`): the backbone starts from the teacher and trains end
  to end, as in the paper's code; images are streamed, and the pool is scored by streaming it
  again through the trained network.

PU training choices beyond the paper, for P of 1-10 images per class:
when P is tiny (at most 5 images per class by default), each positive image also contributes
randomly augmented copies (small random affine: rotation, shift, scale; plus a horizontal flip
for natural images), extracted once and cached with the other descriptors
(:class:`PositiveAugmentation`; the issue's "augmenting P"; what it does by size of P: see
docs/benchmarks.md, section "`pucli select` on mnist-pu", "Augmenting P"); descriptors are
standardised with the pool's statistics (the pool is large, P is not); P is tiny,
so every mini-batch resamples it with replacement and can jitter it with Gaussian noise in the
standardised space (an optional augmentation, off by default);
AdamW with a high learning rate (3e-2: at the usual 1e-3 the head under-fits within 20 epochs),
weight decay and a cosine schedule (the rates and the jitter tried: see docs/benchmarks.md,
section "`pucli select` on mnist-pu", "Against the targets"); several heads trained from
different seeds are averaged (an ensemble lowers the variance that a 10-image P brings).

Selection (:attr:`SelectorOptions.ranking`, resolved once by :func:`pucli.pu.ranking.resolve_ranking`
and kept in the result as ``ranking``, with its ``rule``): with ``"propagation"`` (what the default
``"auto"`` picks when every class has at least 5 labeled positives) the labeled positives (and their
augmented copies) join the pool's k-nearest-neighbour graph (:mod:`pucli.pu.neighbors`), carry
label 1, and the label spreads over the symmetrised graph (Zhou et al. 2003; :mod:`pucli.pu.propagation`);
the pool's spread scores are shifted so that the top ``round(class_prior * N)`` score above zero,
the class prior given or estimated on the same propagation
(:func:`pucli.pu.class_prior.estimate_prior_from_descriptors`). The nnPU head is still trained (its
scores are ``head_scores``; the saved selector), but at the low class priors of a web crawl, under a
capture shift, or with a BatchNorm teacher, its ranking falls far below the propagation's
(docs/benchmarks.md, "Pool grid"). ``"nnpu"`` ranks by the head: its scores smoothed over the pool's
graph and shifted so that as many images score above zero as ``F(x) > 0`` keeps (the paper's rule;
docs/benchmarks.md, "Graph smoothing"); it is what ``"auto"`` picks with 1-4 labeled positives per
class, where the propagation's few seeds miss too much of each class. Without the graph
(``graph_neighbors`` 0) the head's ``F(x)`` ranks.
PU-s1 then keeps every unlabeled image with a score > 0; PU-s2 keeps the top ``budget``.
Everything random draws from ``torch.Generator`` objects seeded by :attr:`SelectorOptions.seed`,
so the same inputs and seed give the same scores. No ground truth is ever read here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pucli import distributed
from pucli.checkpoints import LoadedModel
from pucli.data.augment import PositiveAugmentation
from pucli.data.files import SkippedFile
from pucli.data.index import IndexEntry, SelectionFacts, write_index
from pucli.data.loading import ImageDataset, Preprocess, iterate_batches
from pucli.errors import DataError, NoImagesError, UsageError
from pucli.paths import replace_atomically
from pucli.progress import ProgressCallback, no_progress, timed
from pucli.pu.class_prior import estimate_prior, estimate_prior_from_descriptors, held_out_positives
from pucli.pu.descriptors import Descriptors, load_or_extract_descriptors, resolve_positive_augmentation
from pucli.pu.mixture_proportion import HeldOutPositives, PriorEstimate
from pucli.pu.neighbors import PoolGraph, pool_graph
from pucli.pu.network import AttentionScoreHead, MultiScaleExtractor, PUSelectorNet
from pucli.pu.options import SelectorOptions, options_record
from pucli.pu.propagation import GraphSummary, positive_walk, smooth_over_graph
from pucli.pu.ranking import (
    may_propagate,
    prior_by_propagation,
    rank_by_propagation,
    readable_labels,
    resolve_ranking,
    selection_rule,
)
from pucli.pu.training import train_finetune, train_frozen, training_state_path
from pucli.pu.trust import MIN_PLACEMENT, Recommendation, SelectionTrust, graph_agreement, recommend, selection_trust
from pucli.run_context import RunContext

__all__ = ["SELECTOR_FORMAT_VERSION", "SelectionResult", "run_selection", "save_selector", "score_images",
           "select_indices", "write_selection"]


SELECTOR_FORMAT_VERSION = 1


@dataclass
class SelectionResult:
    """What :func:`run_selection` produced.

    Attributes:
        paths: the readable unlabeled images, in pool order.
        scores: (len(paths),) float32, the scores selection keeps by: label propagation from the
            positives shifted to keep the top ``class_prior * N`` (the default ranking), the
            head's ``F(x)`` smoothed over the pool's k-NN graph (``ranking="nnpu"``;
            :mod:`pucli.pu.propagation`), or ``F(x)`` itself with the graph off. Either way PU-s1
            keeps ``scores > 0``.
        head_scores: (len(paths),) float32, the head's own ``F(x)`` (the same tensor as ``scores``
            with graph smoothing off).
        selected: (len(paths),) bool, the images kept (PU-s1 or PU-s2).
        network: the trained selector (head alone in frozen mode, extractor + head fine-tuned).
        history: one dict per epoch (``epoch``, ``risk``, ``positive_risk``, ``negative_risk``,
            ``ascent_steps``; means over the ensemble's members in frozen mode).
        timings: seconds per stage (``extract``, ``train``, ``score``).
        skipped: unreadable files (positive or unlabeled), left out.
        counts: ``positive``, ``unlabeled``, ``selected``, ``skipped``.
        cache_path, from_cache: the descriptor cache used (frozen mode).
        ranking: the ranking the scores come from, ``"propagation"`` or ``"nnpu"``
            (:func:`pucli.pu.ranking.resolve_ranking`: ``"auto"`` resolved).
        rule: the selection rule applied, in words (:func:`pucli.pu.ranking.selection_rule`).
        class_prior: the class prior the selector was trained with (given or estimated).
        class_prior_source: ``"given"`` or ``"estimated"``.
        prior_estimate: the estimate, when the prior was estimated (``options.class_prior`` None).
        mode: ``"frozen"`` or ``"finetune"``.
        channels, scale_channels, scales: the descriptor's width, its width per scale, and the
            scales it was tapped at (:meth:`pucli.pu.options.Scales.describe`).
        positive_augmentation, positive_augmented: how the labeled positives were augmented
            (``"none"`` or the augmentation's description) and the augmented copies made.
        graph: how the pool's graph ranked it (:class:`pucli.pu.propagation.GraphSummary`;
            ``neighbors`` 0 without a graph).
        warnings: one-line warnings of a degenerate selection (:mod:`pucli.pu.degenerate`): none
            or nearly all of the pool kept, a count far from the prior, a collapsed training.
        trust: the selection's estimated precision, recall and F1 from held-out labeled positives
            (:mod:`pucli.pu.trust`); None with the nnPU ranking or without the graph.
        recommendation: keep the selection, weight the pool by the scores, or take the whole pool
            (:func:`pucli.pu.trust.recommend`).
        taps: the teacher's nodes the descriptors were tapped at and the shape each gives per
            image (:meth:`MultiScaleExtractor.tap_summary`), for the run report.
    """

    paths: list[Path]
    scores: torch.Tensor
    selected: torch.Tensor
    network: nn.Module
    history: list[dict[str, float]]
    timings: dict[str, float]
    skipped: list[SkippedFile]
    counts: dict[str, int]
    cache_path: Path | None = None
    from_cache: bool = False
    ranking: str = "nnpu"
    rule: str = "PU-s1 (score > 0)"
    class_prior: float | None = None
    class_prior_source: str = "given"
    prior_estimate: PriorEstimate | None = None
    head_scores: torch.Tensor | None = None
    mode: str = "frozen"
    channels: int = 0
    scale_channels: list[int] = field(default_factory=list)
    scales: str = ""
    positive_augmentation: str = "none"
    positive_augmented: int = 0
    graph: GraphSummary = field(default_factory=GraphSummary)
    warnings: list[str] = field(default_factory=list)
    trust: SelectionTrust | None = None
    recommendation: Recommendation | None = None
    taps: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.head_scores is None:
            self.head_scores = self.scores

    @property
    def facts(self) -> SelectionFacts:
        """What an index written from this result does not say itself: the class prior, where it came
        from, the rule (:class:`pucli.data.index.SelectionFacts`)."""
        return SelectionFacts(self.class_prior, self.class_prior_source, self.rule)

    @property
    def metadata(self) -> dict[str, Any]:
        """How the selector was built, as its file records it (:func:`save_selector`): ``mode``,
        ``channels``, ``scale_channels``, ``scales``, ``positive_augmentation``,
        ``positive_augmented`` and ``graph`` (:meth:`GraphSummary.as_dict`)."""
        return {"mode": self.mode, "channels": self.channels, "scale_channels": self.scale_channels,
                "scales": self.scales, "positive_augmentation": self.positive_augmentation,
                "positive_augmented": self.positive_augmented, "graph": self.graph.as_dict()}


@torch.inference_mode()
def score_images(
    net: PUSelectorNet,
    paths: Sequence[Path],
    preprocess: Preprocess,
    *,
    batch_size: int = 512,
    run: RunContext | None = None,
    skipped: list[SkippedFile] | None = None,
    descriptors: list[torch.Tensor] | None = None,
    **legacy: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stream ``paths`` through the selector with the deterministic evaluation transform, on
    ``run.device`` with ``run.workers`` loader processes, reporting to ``run.progress`` (``legacy``:
    ``device=``, ``workers=``, ``progress=`` given directly); unreadable files go to ``skipped``.

    Returns ``(index (N',) int64, scores (N',) float32)`` for the readable images; memory holds
    one batch of pixels at a time. With ``descriptors`` (a list), the extractor's (B, C) float32
    output of the readable images is appended to it as one (N', C) tensor (what graph smoothing
    needs after fine-tuning), filled in place rather than concatenated, so it is held once.
    """
    run = RunContext.given(run, **legacy)
    device, workers, progress = run.device, run.workers, run.progress
    net.eval()
    indices: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    buffer: torch.Tensor | None = None
    filled = 0
    started = time.perf_counter()
    for batch in iterate_batches(ImageDataset(paths, preprocess), batch_size=batch_size, workers=workers,
                                 pin_memory=device.type == "cuda", skipped=skipped):
        features = net.extractor(preprocess.normalize(batch.images.to(device, non_blocking=True)))
        scores.append(net.head(features).float().cpu())
        if descriptors is not None:
            if buffer is None:
                buffer = torch.empty(len(paths), features.shape[1])
            buffer[filled:filled + len(features)] = features.float().cpu()
            filled += len(features)
        indices.append(batch.indices)
        done = int(batch.indices[-1]) + 1
        elapsed = time.perf_counter() - started
        progress("score", done, len(paths), img_s=done / elapsed if elapsed > 0 else 0.0)
    if descriptors is not None and buffer is not None:
        descriptors.append(buffer[:filled])
    if not scores:
        return torch.empty(0, dtype=torch.int64), torch.empty(0)
    return torch.cat(indices), torch.cat(scores)


def select_indices(scores: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """The selection rule of Xu et al. 2019, Sec. 2.3, as a (N,) bool mask over ``scores`` (N,).

    PU-s1 (``budget`` None): ``F(x) > 0``. PU-s2: the ``budget`` highest scores (all of them when
    the pool is smaller); ties are broken by position, so the rule is deterministic.
    """
    if budget is None:
        return scores > 0
    keep = torch.zeros(len(scores), dtype=torch.bool)
    if len(scores):
        # A stable descending sort breaks ties by pool order.
        order = torch.sort(scores, descending=True, stable=True).indices
        keep[order[: min(budget, len(scores))]] = True
    return keep


def run_selection(
    teacher: LoadedModel,
    positive_paths: Sequence[Path],
    unlabeled_paths: Sequence[Path],
    options: SelectorOptions,
    *,
    use_cache: bool = True,
    resume: bool = False,
    positive_labels: Sequence[int] | None = None,
    run: RunContext | None = None,
    **legacy: Any,
) -> SelectionResult:
    """Stage 1 end to end: descriptors (or fine-tuning), nnPU training, scoring, selection.

    Args:
        teacher: the loaded teacher (its weights initialise the backbone; never modified).
        positive_paths: the labeled positives P (their class labels are not needed here).
        unlabeled_paths: the pool U, in a fixed order.
        options: hyper-parameters; ``options.seed`` makes the run reproducible.
        use_cache: frozen mode reads/writes the descriptor cache.
        resume: continue an interrupted run: reuse the parts of the pool's descriptors and the
            ensemble members it finished (frozen mode, with the cache). Without it they are
            discarded and the run starts over. Either way the result is the same bits.
        positive_labels: the teacher class of each positive (input order); used only to
            stratify the folds of the class-prior estimate when ``options.class_prior`` is None.
        run: where the networks run, the loader processes for the pool and the progress callback
            (:class:`pucli.run_context.RunContext`; the CPU, none and none by default). The
            unreadable files are the result's ``skipped`` (the descriptor cache keeps them too).
        legacy: ``device=``, ``workers=``, ``progress=`` given directly
            (:meth:`pucli.run_context.RunContext.given`).

    Raises:
        NoImagesError: no readable positive or unlabeled image.
        UsageError: the teacher exposes no feature stages; ``resume`` with fine-tuning or
            without the cache.
    """
    if resume and (options.finetune or not use_cache):
        raise UsageError("resume continues from the descriptor cache and saved ensemble members: "
                         "it cannot be used with finetune or without the cache")
    if options.finetune and distributed.is_distributed():
        raise UsageError("`finetune` trains in one process: run it without torchrun, or drop `finetune`")
    context = RunContext.given(run, **legacy)
    device, progress = context.device, context.progress
    positive_paths, unlabeled_paths = list(positive_paths), list(unlabeled_paths)
    timings: dict[str, float] = {}
    run = _Run(teacher, positive_paths, unlabeled_paths, Preprocess(teacher.config), context=context,
               use_cache=use_cache, positive_labels=positive_labels, timings=timings)
    trained = _train_finetuned(run, options) if options.finetune else _train_frozen(run, options, resume=resume)
    if trained is None:  # a rank other than 0 under torchrun: rank 0 trains and scores alone
        return _share_selection(None, None, unlabeled_paths)
    options = trained.options
    if len(trained.index) == 0:
        raise NoImagesError("no image of the unlabeled pool could be read; check `unlabeled_paths`")
    head_scores = scores = trained.scores
    uses_graph = options.graph_neighbors > 0 and trained.pool_descriptors is not None and len(scores) > 1
    seeded = trained.positive_descriptors is not None and len(trained.positive_descriptors) > 0
    ranking = resolve_ranking(options, trained.positive_count, trained.positive_labels,
                              can_propagate=uses_graph and seeded)
    summary = GraphSummary()
    graph = walk = None
    if uses_graph:
        assert trained.pool_descriptors is not None
        with timed(timings, "graph"):
            graph = trained.graph or pool_graph(trained.pool_descriptors, neighbors=options.graph_neighbors,
                                                seed=options.seed, device=device, use_cache=use_cache,
                                                exact_max=options.graph_exact_max, progress=progress)
            assert graph is not None
            if ranking == "propagation":
                assert trained.positive_descriptors is not None
                walk = positive_walk(graph, trained.pool_descriptors, trained.positive_descriptors, seed=options.seed)
                scores, summary = rank_by_propagation(graph, trained.pool_descriptors, trained.positive_descriptors,
                                                      options, walk=walk)
            else:
                scores, summary = smooth_over_graph(head_scores, graph, alpha=options.graph_alpha,
                                                    steps=options.graph_steps)
        summary = dataclasses.replace(summary, changed=int((select_indices(scores, options.budget)
                                                            != select_indices(head_scores, options.budget)).sum()))
    selected = select_indices(scores, options.budget)
    paths = [unlabeled_paths[int(i)] for i in trained.index]
    counts = {"positive": trained.positive_count, "unlabeled": len(paths), "selected": int(selected.sum()),
              "skipped": len(trained.skipped)}
    augmentation = trained.augmentation
    result = SelectionResult(
        paths=paths, scores=scores, selected=selected, network=trained.network, history=trained.history,
        timings=timings, skipped=trained.skipped, counts=counts, cache_path=trained.cache_path,
        from_cache=trained.from_cache, ranking=ranking, rule=selection_rule(ranking, options.budget),
        class_prior=options.class_prior,
        class_prior_source="estimated" if trained.prior_estimate is not None else "given",
        prior_estimate=trained.prior_estimate, head_scores=head_scores,
        mode="finetune" if options.finetune else "frozen", channels=trained.extractor.channels,
        scale_channels=trained.extractor.scale_channels, scales=options.scales.describe(),
        positive_augmentation=augmentation.describe() if augmentation is not None else "none",
        positive_augmented=trained.augmented_count, graph=summary,
        taps=trained.extractor.tap_summary(teacher.config.input_size),
    )
    from pucli.pu.degenerate import selection_warnings  # the collapse guard: no degenerate selection is silent

    result.warnings = selection_warnings(counts["selected"], counts["unlabeled"], options.class_prior, trained.history,
                                         budget=options.budget)
    with timed(timings, "trust"):
        result.trust = _trust(trained, options, walk, graph, selected, progress)
    labels = trained.positive_labels
    result.recommendation = recommend(result.trust, teacher_classes=teacher.config.num_classes,
                                      task_classes=len(torch.unique(labels)) if labels is not None and len(labels) else None)
    if result.trust is not None and result.trust.placement < MIN_PLACEMENT:
        result.warnings.append(
            f"the labeled positives rank far above the pool's own task images (placement {result.trust.placement:.2f}, "
            f"about 0.5 when they are alike): the pool may differ in capture (colour, size, compression); the "
            f"estimated recall is optimistic{' and the estimated class prior likely too low' if trained.prior_estimate else ''}")
    return _share_selection(result, trained.index, unlabeled_paths)


def _trust(trained: _Trained, options: SelectorOptions, walk: Any, graph: PoolGraph | None, selected: torch.Tensor,
           progress: ProgressCallback) -> SelectionTrust | None:
    """The selection's trust (:mod:`pucli.pu.trust`) when the pool was ranked by propagation,
    reusing the prior estimate's cross-fit when there was one; None otherwise."""
    if walk is None or trained.positive_descriptors is None or trained.pool_descriptors is None:
        return None
    held_out = trained.held_out
    if held_out is None:
        try:
            held_out = held_out_positives(walk, len(trained.pool_descriptors), trained.positive_count,
                                          len(trained.positive_descriptors), options, trained.positive_labels,
                                          progress=progress)
        except NoImagesError:  # too few positives or pool images to hold any out
            return None
    assert options.class_prior is not None and graph is not None
    return selection_trust(held_out, int(selected.sum()), options.class_prior, prior_estimate=trained.prior_estimate,
                           agreement=graph_agreement(graph.neighbors, selected))


@dataclass
class _Run:
    """The inputs and settings both training modes share; ``context`` is the run's
    :class:`pucli.run_context.RunContext`."""

    teacher: LoadedModel
    positive_paths: list[Path]
    unlabeled_paths: list[Path]
    preprocess: Preprocess
    context: RunContext
    use_cache: bool
    positive_labels: Sequence[int] | None
    timings: dict[str, float]


@dataclass
class _Trained:
    """What a training mode hands to graph smoothing and selection: the pool positions of the
    scored images (``index``), the head's scores, the pool's descriptors for the graph (None
    without smoothing), the graph itself when torchrun ranks built it early, and what the result
    reports. ``options`` carries the class prior trained with (estimated when it was None)."""

    options: SelectorOptions
    index: torch.Tensor
    scores: torch.Tensor
    pool_descriptors: torch.Tensor | None
    skipped: list[SkippedFile]
    positive_count: int
    network: nn.Module
    history: list[dict[str, float]]
    extractor: MultiScaleExtractor
    prior_estimate: PriorEstimate | None = None
    graph: PoolGraph | None = None
    cache_path: Path | None = None
    from_cache: bool = False
    augmentation: PositiveAugmentation | None = None
    augmented_count: int = 0
    positive_descriptors: torch.Tensor | None = None
    positive_labels: torch.Tensor | None = None
    held_out: HeldOutPositives | None = None


def _train_finetuned(run: _Run, options: SelectorOptions) -> _Trained:
    """Fine-tune extractor + head end to end, then score the pool by streaming it through them."""
    import copy

    prior_estimate = None
    if options.class_prior is None:
        # Fine-tuning has no frozen descriptors of its own: estimate on those of the start backbone.
        prior_result = estimate_prior(run.teacher, run.positive_paths, run.unlabeled_paths, seed=options.seed,
                                      scales=options.scales, batch_size=options.batch_size, use_cache=run.use_cache,
                                      positive_labels=run.positive_labels, run=run.context)
        prior_estimate = prior_result.estimate
        run.timings.update(prior_result.timings)
        options = dataclasses.replace(options, class_prior=prior_estimate.class_prior)
    torch.manual_seed(options.seed)
    extractor = MultiScaleExtractor(copy.deepcopy(run.teacher.model), options.scales,
                                    input_size=run.teacher.config.input_size)
    net = PUSelectorNet(extractor, AttentionScoreHead(extractor.channels, reduction=options.reduction,
                                                      attention=options.attention)).to(run.context.device)
    skipped: list[SkippedFile] = []
    with timed(run.timings, "train"):
        history = train_finetune(net, run.positive_paths, run.unlabeled_paths, run.preprocess, options,
                                 run=run.context.with_(skipped=skipped))
    streamed: list[torch.Tensor] | None = [] if options.graph_neighbors > 0 else None
    with timed(run.timings, "score"):
        index, scores = score_images(net, run.unlabeled_paths, run.preprocess, batch_size=options.batch_size,
                                     run=run.context, descriptors=streamed)
        positive_streamed: list[torch.Tensor] | None = None
        positive_index: torch.Tensor | None = None
        if streamed is not None and may_propagate(options):
            # The seeds of the propagation, in the fine-tuned network's feature space.
            positive_streamed = []
            positive_index, _ = score_images(net, run.positive_paths, run.preprocess, batch_size=options.batch_size,
                                             run=run.context.with_(workers=0, progress=no_progress),
                                             descriptors=positive_streamed)
    positive_names = {str(p) for p in run.positive_paths}
    return _Trained(options=options, index=index, scores=scores, pool_descriptors=streamed[0] if streamed else None,
                    skipped=skipped,
                    positive_count=len(run.positive_paths) - sum(1 for s in skipped if s.path in positive_names),
                    network=net.cpu(), history=history, extractor=extractor, prior_estimate=prior_estimate,
                    positive_descriptors=positive_streamed[0] if positive_streamed else None,
                    positive_labels=readable_labels(run.positive_labels, positive_index))


def _train_frozen(run: _Run, options: SelectorOptions, *, resume: bool) -> _Trained | None:
    """Frozen descriptors (cached), then the head ensemble on them; the head on the descriptors is
    the pool's score. Under torchrun, None on every rank but 0."""
    device, progress = run.context.device, run.context.progress
    extractor = MultiScaleExtractor(run.teacher.model, options.scales,
                                    input_size=run.teacher.config.input_size).to(device)
    augmentation = resolve_positive_augmentation(run.teacher.config, options.augment_positives,
                                                 len(run.positive_paths), options.seed)
    with timed(run.timings, "extract"):
        descriptors = load_or_extract_descriptors(
            run.teacher, extractor, run.positive_paths, run.unlabeled_paths, run.preprocess, scales=options.scales,
            batch_size=options.batch_size, use_cache=run.use_cache, augmentation=augmentation, resume=resume,
            run=run.context,
        )
    graph = None
    estimate_on_graph = options.class_prior is None and may_propagate(options)
    if options.graph_neighbors > 0 and (distributed.is_distributed() or estimate_on_graph):
        # The graph needs only the descriptors: every rank searches its share of it now, before
        # rank 0 estimates the prior on it and trains the head alone.
        with timed(run.timings, "graph"):
            graph = pool_graph(descriptors.unlabeled if descriptors is not None else None,
                               neighbors=options.graph_neighbors, seed=options.seed, device=device,
                               use_cache=run.use_cache, exact_max=options.graph_exact_max, progress=progress)
    if descriptors is None:
        return None
    extractor.cpu()
    _check_readable(descriptors, run)
    prior_estimate = held_out = None
    labels = readable_labels(run.positive_labels, descriptors.positive_index)
    if options.class_prior is None:
        with timed(run.timings, "prior"):
            if graph is not None and prior_by_propagation(options, len(descriptors.positive), labels):
                # The same cross-fit serves the prior estimate and, later, the selection's trust.
                walk = positive_walk(graph, descriptors.unlabeled, descriptors.positive_set, seed=options.seed)
                held_out = held_out_positives(walk, len(descriptors.unlabeled), len(descriptors.positive),
                                              len(descriptors.positive_set), options, labels, progress=progress)
            prior_estimate = estimate_prior_from_descriptors(descriptors, options, positive_labels=run.positive_labels,
                                                             progress=progress, graph=graph, held_out=held_out)
        options = dataclasses.replace(options, class_prior=prior_estimate.class_prior)
    state_path = training_state_path(descriptors.key, options) if descriptors.key else None
    if state_path is not None and not resume:
        state_path.unlink(missing_ok=True)
    with timed(run.timings, "train"):
        head, history = train_frozen(descriptors.positive_set, descriptors.unlabeled, options, progress=progress,
                                     state_path=state_path)
    with timed(run.timings, "score"):
        # The descriptors were computed with the evaluation transform, so the head on them is
        # exactly the streamed score of each image; no second pass over the pool is needed.
        with torch.inference_mode():
            scores = torch.cat([head(chunk) for chunk in descriptors.unlabeled.split(65536)]) \
                if len(descriptors.unlabeled) else torch.empty(0)
        progress("score", len(run.unlabeled_paths), len(run.unlabeled_paths))
    return _Trained(options=options, index=descriptors.unlabeled_index, scores=scores,
                    pool_descriptors=descriptors.unlabeled, skipped=descriptors.skipped,
                    positive_count=len(descriptors.positive), network=head, history=history, extractor=extractor,
                    prior_estimate=prior_estimate, graph=graph, cache_path=descriptors.cache_path,
                    from_cache=descriptors.from_cache, augmentation=augmentation,
                    augmented_count=len(descriptors.positive_augmented), positive_descriptors=descriptors.positive_set,
                    positive_labels=labels, held_out=held_out)


def _check_readable(descriptors: Descriptors, run: _Run) -> None:
    """Raises NoImagesError when no positive, or no pool image, could be read."""
    for images, paths, parameter in ((descriptors.positive, run.positive_paths, "positive_paths"),
                                     (descriptors.unlabeled, run.unlabeled_paths, "unlabeled_paths")):
        if len(images) == 0:
            names = {str(p) for p in paths}
            first = next((s for s in descriptors.skipped if s.path in names), None)
            raise NoImagesError(f"none of the {len(paths)} images of `{parameter}` could be read"
                                + (f" (first: {first.path}: {first.reason})" if first else "")
                                + f"; check `{parameter}`")


def _share_selection(result: SelectionResult | None, index: torch.Tensor | None,
                     unlabeled_paths: Sequence[Path]) -> SelectionResult:
    """Under torchrun, rank 0's result on every rank (each rebuilds the paths from the pool and
    ``index``, the pool positions of the scored images, rather than receiving them). One process:
    ``result`` itself."""

    if not distributed.is_distributed():
        assert result is not None
        return result
    sent = (dataclasses.replace(result, paths=[]), index) if distributed.is_main() else None
    shared, shared_index = distributed.broadcast_object(sent)
    if distributed.is_main():
        assert result is not None
        return result
    shared.paths = [unlabeled_paths[int(i)] for i in shared_index]
    return shared


def save_selector(result: SelectionResult, options: SelectorOptions, path: str | os.PathLike[str],
                  teacher: LoadedModel) -> Path:
    """Write the trained selector's weights to ``path`` (safetensors, atomic).

    The metadata records the format version, mode, teacher architecture, descriptor layout and
    options, so the file says what produced it.

    Raises:
        DataError: ``path`` does not end in .safetensors.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise DataError(f"selector weights are safetensors: {path} must end in .safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.network.state_dict().items()}
    options_dict = options_record(options)
    options_dict["class_prior"] = result.class_prior if result.class_prior is not None else options.class_prior
    metadata = {
        "format_version": str(SELECTOR_FORMAT_VERSION),
        "teacher_architecture": teacher.config.architecture,
        "selector": json.dumps({**result.metadata, "options": options_dict}, default=str),
    }
    return replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def write_selection(result: SelectionResult, out: str | os.PathLike[str], *, all_items: bool = False) -> None:
    """Write the selection index (:mod:`pucli.data.index`) to ``out``, a path or ``-`` for stdout.

    Rows are sorted by descending score, ties in pool order (a stable sort, so the index is
    deterministic); paths are absolute (the index may be read from another folder). Only the kept
    images unless ``all_items``, which writes every scored pool image with a ``selected`` column.
    Rows are generated one by one, so a large index is never held as a second list.

    Raises:
        DataError: a path cannot be written in an index (tab, newline or NUL in it).
        OSError: ``out`` cannot be written.
    """
    order = torch.sort(result.scores, descending=True, stable=True).indices.tolist()
    scores, selected = result.scores.tolist(), result.selected.tolist()
    entries = (IndexEntry(result.paths[i].absolute(), scores[i], selected[i])
               for i in order if all_items or selected[i])
    write_index(entries, out, with_selected=all_items)
