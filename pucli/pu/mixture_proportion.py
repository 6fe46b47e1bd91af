"""Class-prior estimation: the share of positives in the unlabeled pool.

nnPU needs the class prior ``pi_p = p(y = +1)`` of the unlabeled pool (METHOD.md, Stage 1). The
paper assumes it is known; no user knows it for a web crawl. pucli estimates it with **best-bin
estimation** (BBE; Garg, Wu, Smola, Balakrishnan, Lipton, "Mixture Proportion Estimation and PU
Learning: A Modern Approach", NeurIPS 2021, https://arxiv.org/abs/2111.00980, Algorithm 1):

1. Train a positive-vs-unlabeled classifier (here: a logistic head on the frozen teacher
   descriptors) and score images it did not train on. pucli cross-fits: P and U are split into
   ``folds`` parts and every image is scored by the classifier that did not see its part, so all
   of the (tiny) positive set serves as held-out evidence.
   Then, as in the paper's (TED)^n alternation of estimation and PU training, the estimate
   can be refined: a PU classifier (pucli's nnPU head, trained with the first estimate as its
   prior) ranks the pool far better than a plain P-vs-U classifier, and BBE on its cross-fitted
   scores gives the final estimate (``refine`` passes; what refining gains on mnist-pu: see
   docs/benchmarks.md, section "Class prior: `pucli prior` and `pucli select --prior auto`").
2. For a threshold ``c`` on those scores, ``q_p(c)`` and ``q_u(c)`` are the fractions of held-out
   positives and unlabeled images scoring at least ``c``. Since ``U = pi_p P + (1 - pi_p) N``,
   ``q_u(c) >= pi_p q_p(c)`` for every ``c``, with equality in a "top bin" that holds no
   negatives; BBE picks the ``c`` minimising the upper confidence bound
   ``q_u/q_p + (1 + gamma)/q_p * (sqrt(log(4/delta)/(2 n_p)) + sqrt(log(4/delta)/(2 n_u)))``
   and returns ``q_u(c)/q_p(c)``.

The uncertainty is a bootstrap over the held-out scores (P and U resampled with replacement, the
bin re-chosen each time): its standard deviation and a central interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pucli.errors import NoImagesError, UsageError
from pucli.progress import ProgressCallback, no_progress

__all__ = [
    "Fit",
    "HeldOutPositives",
    "PriorEstimate",
    "best_bin_estimate",
    "bootstrap_best_bin",
    "cross_fit_propagation",
    "cross_fitted_scores",
    "estimate_class_prior",
    "estimate_prior_by_propagation",
    "logistic_fit",
    "propagation_applies",
]

#: Trains a scorer on (positive (N, C), unlabeled (M, C)) descriptors with a seed; the returned
#: module maps (B, C) descriptors to (B,) scores (higher = more positive-like).
Fit = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]

#: Estimates are clipped to this range: nnPU needs a prior strictly inside (0, 1).
PRIOR_FLOOR, PRIOR_CEILING = 1e-3, 1.0 - 1e-3
#: Below this many labeled positives an estimate carries a warning (see PriorEstimate.warning).
MIN_RELIABLE_POSITIVES = 40
#: Interval width above which an estimate carries a warning.
WIDE_INTERVAL = 0.15


@dataclass(frozen=True)
class PriorEstimate:
    """An estimated class prior and its uncertainty.

    Attributes:
        class_prior: the point estimate of ``pi_p``, clipped to [0.001, 0.999].
        std: bootstrap standard deviation of the estimate.
        low, high: bootstrap central interval (``level``, e.g. 0.9 gives the 5th-95th percentiles).
        level: coverage of ``low``-``high``.
        threshold: the chosen top bin's lower edge, a P-vs-U classifier logit.
        positive_in_bin, unlabeled_in_bin: ``q_p`` and ``q_u`` at that threshold (fractions).
        positive, unlabeled: how many held-out scores each side had.
        folds, bootstrap: cross-fitting folds and bootstrap replicates used.
        initial: the first, P-vs-U estimate, before refinement (equal to ``class_prior``
            without refinement).
        refined: refinement passes run.
        method: the estimator's name and source.
    """

    class_prior: float
    std: float
    low: float
    high: float
    level: float
    threshold: float
    positive_in_bin: float
    unlabeled_in_bin: float
    positive: int
    unlabeled: int
    folds: int
    bootstrap: int
    initial: float
    refined: int
    method: str = "best-bin estimation (Garg et al. 2021) on cross-fitted P-vs-U scores"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warning": self.warning()}

    def warning(self) -> str | None:
        """Why the estimate should not be trusted blindly, or None. With fewer than
        :data:`MIN_RELIABLE_POSITIVES` positives the top bin cannot be narrow, so BBE over-counts
        (on mnist-pu, 10 positives: see docs/benchmarks.md, section "Class prior: `pucli prior`
        and `pucli select --prior auto`"); a wide interval says the same."""
        if self.positive < MIN_RELIABLE_POSITIVES:
            return (f"class prior estimated from only {self.positive} labeled positives (needs about "
                    f"{MIN_RELIABLE_POSITIVES}): it is likely too high; give `class_prior` if you know the pool's share")
        if self.high - self.low > WIDE_INTERVAL:
            return (f"class prior estimate is uncertain ({self.level:.0%} interval {self.low:.2f}-{self.high:.2f}); "
                    "more labeled positives or `class_prior` would make selection safer")
        return None


def _upper_bound_penalty(n_p: int, n_u: int, delta: float, gamma: float) -> float:
    return (1.0 + gamma) * (math.sqrt(math.log(4.0 / delta) / (2 * n_p)) + math.sqrt(math.log(4.0 / delta) / (2 * n_u)))


def _best_bin_sorted(positive_desc: torch.Tensor, unlabeled_desc: torch.Tensor, penalty: float) -> tuple[float, float, float, float]:
    """BBE on scores already sorted in descending order (float64). Returns (alpha, c, q_p, q_u)."""
    n_p, n_u = len(positive_desc), len(unlabeled_desc)
    # Candidate thresholds: every distinct held-out positive score. q(c) = #{score >= c} / n.
    thresholds = positive_desc
    count_p = torch.searchsorted(-positive_desc, -thresholds, right=True).to(torch.float64)
    count_u = torch.searchsorted(-unlabeled_desc, -thresholds, right=True).to(torch.float64)
    q_p, q_u = count_p / n_p, count_u / n_u
    bound = (q_u + penalty) / q_p
    best = int(torch.argmin(bound))
    return float(q_u[best] / q_p[best]), float(thresholds[best]), float(q_p[best]), float(q_u[best])


def best_bin_estimate(positive_scores: torch.Tensor, unlabeled_scores: torch.Tensor, *, delta: float = 0.1,
                      gamma: float = 0.01) -> tuple[float, float, float, float]:
    """Best-bin mixture-proportion estimate (Garg et al. 2021, Algorithm 1).

    Args:
        positive_scores: (N_P,) held-out P-vs-U classifier scores of labeled positives (any
            monotone score: logits or probabilities; higher = more positive-like).
        unlabeled_scores: (N_U,) held-out scores of the unlabeled pool.
        delta: confidence level of the bound that picks the bin (the paper's delta).
        gamma: the paper's slack gamma in the bound's multiplier ``(1 + gamma)``.

    Returns:
        ``(class_prior, threshold, q_p, q_u)``: the unclipped estimate ``q_u(c) / q_p(c)`` at the
        chosen threshold ``c``, and the two fractions there.

    Raises:
        NoImagesError: either side has no score.
    """
    if len(positive_scores) == 0 or len(unlabeled_scores) == 0:
        raise NoImagesError("the class-prior estimate needs at least one positive and one unlabeled image")
    positive_desc = positive_scores.detach().double().flatten().sort(descending=True).values
    unlabeled_desc = unlabeled_scores.detach().double().flatten().sort(descending=True).values
    penalty = _upper_bound_penalty(len(positive_desc), len(unlabeled_desc), delta, gamma)
    return _best_bin_sorted(positive_desc, unlabeled_desc, penalty)


def bootstrap_best_bin(positive_scores: torch.Tensor, unlabeled_scores: torch.Tensor, *, replicates: int = 200,
                       seed: int = 0, delta: float = 0.1, gamma: float = 0.01) -> torch.Tensor:
    """BBE on ``replicates`` bootstrap resamples of both score sets.

    Returns:
        (replicates,) float64 estimates (unclipped), one per resample.
    """
    generator = torch.Generator().manual_seed(seed)
    positive = positive_scores.detach().double().flatten()
    unlabeled = unlabeled_scores.detach().double().flatten()
    penalty = _upper_bound_penalty(len(positive), len(unlabeled), delta, gamma)
    estimates = torch.empty(replicates, dtype=torch.float64)
    for r in range(replicates):
        p = positive[torch.randint(len(positive), (len(positive),), generator=generator)]
        u = unlabeled[torch.randint(len(unlabeled), (len(unlabeled),), generator=generator)]
        estimates[r] = _best_bin_sorted(p.sort(descending=True).values, u.sort(descending=True).values, penalty)[0]
    return estimates


class _LogisticHead(nn.Module):
    """Standardisation + linear logit: the P-vs-U classifier on frozen descriptors."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), 1)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.linear((descriptors - self.mean) / self.std).squeeze(-1)


def _fit_classifier(positive: torch.Tensor, unlabeled: torch.Tensor, *, steps: int, batch_size: int,
                    lr: float, weight_decay: float, generator: torch.Generator) -> nn.Module:
    """Class-balanced logistic regression, P (label 1) vs U (label 0), trained with AdamW.

    A fixed number of steps, each on ``batch_size`` unlabeled and ``batch_size / 4`` positive
    descriptors drawn with replacement, so the fit does not depend on the pool's size."""
    mean = unlabeled.mean(0)
    std = unlabeled.std(0, correction=0).clamp_min(1e-6)
    head = _LogisticHead(mean, std)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    n_p = max(1, batch_size // 4)
    targets = torch.cat([torch.ones(n_p), torch.zeros(batch_size)])
    weights = torch.cat([torch.full((n_p,), 0.5 / n_p), torch.full((batch_size,), 0.5 / batch_size)])
    for _ in range(steps):
        batch_p = positive[torch.randint(len(positive), (n_p,), generator=generator)]
        batch_u = unlabeled[torch.randint(len(unlabeled), (batch_size,), generator=generator)]
        logits = head(torch.cat([batch_p, batch_u]))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return head.eval()


def logistic_fit(steps: int = 200, batch_size: int = 2048, lr: float = 1e-2, weight_decay: float = 1e-2) -> Fit:
    """The default P-vs-U scorer: class-balanced logistic regression on standardised descriptors."""

    def fit(positive: torch.Tensor, unlabeled: torch.Tensor, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            return _fit_classifier(positive, unlabeled, steps=steps, batch_size=batch_size, lr=lr,
                                   weight_decay=weight_decay, generator=torch.Generator().manual_seed(seed))

    return fit


def _positive_folds(count: int, folds: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """(count,) fold of each positive: random, or dealt class by class (stratified) with labels."""
    shuffled = torch.randperm(count, generator=generator)
    if labels is None:
        return shuffled % folds
    # Shuffle, then stable-sort by class: each class's positives are consecutive in random order,
    # and dealing folds round-robin along that order spreads every class evenly over the folds.
    order = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    fold = torch.empty(count, dtype=torch.long)
    fold[order] = torch.arange(count) % folds
    return fold


def cross_fitted_scores(positive: torch.Tensor, unlabeled: torch.Tensor, *, folds: int = 5, fit: Fit | None = None,
                        positive_augmented: torch.Tensor | None = None, positive_labels: torch.Tensor | None = None,
                        seed: int = 0, progress: ProgressCallback = no_progress,
                        stage: str = "prior") -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out P-vs-U scores for every positive and unlabeled descriptor, by K-fold cross-fitting.

    Args:
        positive: (N_P, C) float32 descriptors of the labeled positives (no augmented copies:
            BBE needs held-out positives drawn like the pool's positives).
        unlabeled: (N_U, C) float32 descriptors of the pool.
        folds: K; each image is scored by the classifier trained on the other K - 1 parts.
            Capped at N_P (every fold needs a held-out positive).
        fit: trains each fold's scorer (:data:`Fit`); default :func:`logistic_fit`.
        positive_augmented: optional (copies, N_P, C) descriptors of augmented copies of each
            positive: a fold trains on the copies of its training positives too, but is scored
            on plain images only (copies are not draws from the pool's positives).
        positive_labels: optional (N_P,) int64 teacher classes of the positives: the folds are
            then stratified by class. With a few positives per class this matters: with random
            folds a held-out positive has fewer same-class positives in its fold's training part
            than the pool's positives do (5 per class, 5 folds: 3.2 against 4 on average), so it
            scores lower and the prior comes out too high.

    Returns:
        ``(positive_scores (N_P,), unlabeled_scores (N_U,))`` float32 logits.

    Raises:
        NoImagesError: fewer than 2 positives or no unlabeled descriptor.
        UsageError: ``folds`` < 2.
    """
    if folds < 2:
        raise UsageError(f"prior estimation folds {folds}: must be >= 2")
    if len(positive) < 2 or len(unlabeled) == 0:
        raise NoImagesError("estimating the class prior needs at least 2 readable positives and 1 unlabeled "
                            "image; give `class_prior` instead")
    fit = fit or logistic_fit()
    folds = min(folds, len(positive))
    if len(unlabeled) < 2 * folds:
        raise NoImagesError(f"estimating the class prior needs at least {2 * folds} readable unlabeled images "
                            f"({len(unlabeled)} here); give `class_prior` instead")
    generator = torch.Generator().manual_seed(seed)
    fold_p = _positive_folds(len(positive), folds, positive_labels, generator)
    fold_u = torch.randperm(len(unlabeled), generator=generator) % folds
    positive_scores = torch.empty(len(positive))
    unlabeled_scores = torch.empty(len(unlabeled))
    for k in range(folds):
        progress(stage, k, folds)
        train_p = positive[fold_p != k]
        if positive_augmented is not None and positive_augmented.numel():
            train_p = torch.cat([train_p, positive_augmented[:, fold_p != k].flatten(0, 1)])
        head = fit(train_p, unlabeled[fold_u != k], seed * 1000 + k).eval()
        with torch.inference_mode():
            positive_scores[fold_p == k] = head(positive[fold_p == k]).float()
            unlabeled_scores[fold_u == k] = head(unlabeled[fold_u == k]).float()
    progress(stage, folds, folds)
    return positive_scores, unlabeled_scores


def estimate_class_prior(positive: torch.Tensor, unlabeled: torch.Tensor, *, folds: int = 5, bootstrap: int = 200,
                         level: float = 0.9, seed: int = 0, delta: float = 0.1, gamma: float = 0.01,
                         refine_fit: Callable[[float], Fit] | None = None, refine: int = 1,
                         positive_augmented: torch.Tensor | None = None,
                         positive_labels: torch.Tensor | None = None,
                         progress: ProgressCallback = no_progress) -> PriorEstimate:
    """Estimate the class prior of the pool from frozen descriptors (BBE on cross-fitted scores).

    Args:
        positive: (N_P, C) float32 descriptors of the labeled positives.
        unlabeled: (N_U, C) float32 descriptors of the unlabeled pool.
        folds: cross-fitting folds (see :func:`cross_fitted_scores`).
        bootstrap: bootstrap replicates for the uncertainty (0 skips it: std 0, interval = point).
        level: coverage of the reported interval, in (0, 1).
        seed: seeds the folds, the classifiers and the bootstrap.
        refine_fit: given the current estimate, returns the :data:`Fit` of a PU scorer trained
            with it as the class prior (e.g. an nnPU head); None skips refinement.
        refine: refinement passes with ``refine_fit`` (each: cross-fit, then BBE again).
        positive_augmented: (copies, N_P, C) augmented copies of the positives, added to the
            training folds of the refinement passes (see :func:`cross_fitted_scores`).
        positive_labels: (N_P,) int64 classes of the positives, to stratify the folds.

    Returns:
        A :class:`PriorEstimate`; the bootstrap runs on the last pass's scores.

    Raises:
        NoImagesError: fewer than 2 positives or no unlabeled descriptor.
        UsageError: ``level`` outside (0, 1) or ``bootstrap`` < 0.
    """
    if not 0.0 < level < 1.0:
        raise UsageError(f"prior interval level {level}: must be in (0, 1)")
    if bootstrap < 0:
        raise UsageError(f"prior bootstrap replicates {bootstrap}: must be >= 0")
    if refine < 0:
        raise UsageError(f"prior refinement passes {refine}: must be >= 0")
    positive_scores, unlabeled_scores = cross_fitted_scores(positive, unlabeled, folds=folds, seed=seed,
                                                            positive_labels=positive_labels, progress=progress)
    estimate, threshold, q_p, q_u = best_bin_estimate(positive_scores, unlabeled_scores, delta=delta, gamma=gamma)
    initial = _clip(estimate)
    passes = refine if refine_fit is not None else 0
    for _ in range(passes):
        positive_scores, unlabeled_scores = cross_fitted_scores(
            positive, unlabeled, folds=folds, fit=refine_fit(_clip(estimate)), positive_augmented=positive_augmented,
            positive_labels=positive_labels, seed=seed, progress=progress, stage="prior (refine)")
        estimate, threshold, q_p, q_u = best_bin_estimate(positive_scores, unlabeled_scores, delta=delta, gamma=gamma)
    return _with_uncertainty(positive_scores, unlabeled_scores, estimate, threshold, q_p, q_u, bootstrap=bootstrap,
                             level=level, seed=seed, delta=delta, gamma=gamma, folds=min(folds, len(positive)),
                             initial=initial, refined=passes)


def _clip(value: float) -> float:
    return min(PRIOR_CEILING, max(PRIOR_FLOOR, value))


def _with_uncertainty(positive_scores: torch.Tensor, unlabeled_scores: torch.Tensor, estimate: float, threshold: float,
                      q_p: float, q_u: float, *, bootstrap: int, level: float, seed: int, delta: float, gamma: float,
                      folds: int, initial: float, refined: int, method: str | None = None) -> PriorEstimate:
    """The :class:`PriorEstimate` of a BBE point estimate, with its bootstrap interval."""
    clip = _clip
    if bootstrap:
        replicates = bootstrap_best_bin(positive_scores, unlabeled_scores, replicates=bootstrap, seed=seed,
                                        delta=delta, gamma=gamma).clamp(PRIOR_FLOOR, PRIOR_CEILING)
        tail = (1.0 - level) / 2
        low, high = (float(v) for v in torch.quantile(replicates, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)))
        std = float(replicates.std()) if bootstrap > 1 else 0.0
    else:
        low = high = clip(estimate)
        std = 0.0
    return PriorEstimate(
        class_prior=clip(estimate), std=std, low=low, high=high, level=level, threshold=threshold,
        positive_in_bin=q_p, unlabeled_in_bin=q_u, positive=len(positive_scores), unlabeled=len(unlabeled_scores),
        folds=folds, bootstrap=bootstrap, initial=initial, refined=refined,
        **({"method": method} if method is not None else {}),
    )


#: The propagation estimate needs at least this many labeled positives in every class (each
#: held-out positive needs same-class positives left among the seeds of its fold); with fewer,
#: or without class labels and fewer than :data:`MIN_RELIABLE_POSITIVES`, the P-vs-U estimate
#: (:func:`estimate_class_prior`) is used.
PROPAGATION_MIN_PER_CLASS = 5

PROPAGATION_METHOD = ("best-bin estimation (Garg et al. 2021) on cross-fitted label-propagation scores "
                      "(Zhou et al. 2003) over the pool's k-NN graph")


def propagation_applies(positive_count: int, positive_labels: torch.Tensor | None) -> bool:
    """Whether the labeled positives suffice for :func:`estimate_prior_by_propagation`
    (:data:`PROPAGATION_MIN_PER_CLASS` per class; without labels, :data:`MIN_RELIABLE_POSITIVES`)."""
    if positive_labels is None or len(positive_labels) != positive_count:
        return positive_count >= MIN_RELIABLE_POSITIVES
    counts = torch.bincount(positive_labels.long())
    counts = counts[counts > 0]
    return len(counts) > 0 and int(counts.min()) >= PROPAGATION_MIN_PER_CLASS


@dataclass(frozen=True)
class HeldOutPositives:
    """Cross-fitted label-propagation scores of the labeled positives (each scored by the
    propagation seeded without its fold) and of the pool.

    Attributes:
        scores: (N_P,) float32, each positive's score in the run that held it out.
        rank: (N_P,) int64, how many pool images scored strictly above it in that run: the
            positive would be kept by a top-``K`` selection of that run iff ``rank < K``.
        pool_scores: (N,) float32, the pool's scores averaged over the folds.
        folds: the folds run.
    """

    scores: torch.Tensor
    rank: torch.Tensor
    pool_scores: torch.Tensor
    folds: int


def cross_fit_propagation(score: Callable[[torch.Tensor], torch.Tensor], pool_size: int, positive_count: int,
                          copies: int = 0, *, folds: int = 5, seed: int = 0,
                          positive_labels: torch.Tensor | None = None,
                          progress: ProgressCallback = no_progress, batched: bool = False) -> HeldOutPositives:
    """Hold out each fold of the labeled positives in turn and propagate from the others.

    The graph's nodes are the pool (``0..N-1``), the plain positives (``N..N+N_P-1``) and their
    augmented copies (copy-major after them). Fold ``k`` seeds the positives outside it (and their
    copies) with label 1 and propagates (``score``); its held-out positives are unseeded nodes of
    the same graph, scored like the pool's positives. What BBE (:func:`estimate_prior_by_propagation`)
    and the selection's recall estimate (:mod:`pucli.pu.trust`) both read.

    Args:
        score: (V,) bool seeds -> (V,) float32 propagated scores, V = N + N_P * (1 + copies); with
            ``batched``, (V, K) bool seeds of all K folds at once -> (V, K) float32 (one call;
            :func:`pucli.pu.propagation.propagate` spreads the columns together, with the same result).
        pool_size, positive_count, copies: N, N_P and the augmented copies per positive.
        folds: K, capped at N_P; seed: seeds the folds; positive_labels: (N_P,) int64 classes, to
            stratify the folds.

    Raises:
        NoImagesError: fewer than 2 positives or fewer than ``2 * folds`` pool images.
        UsageError: ``folds`` < 2.
    """
    if folds < 2:
        raise UsageError(f"prior estimation folds {folds}: must be >= 2")
    if positive_count < 2 or pool_size < 2 * folds:
        raise NoImagesError("estimating the class prior needs at least 2 readable positives and "
                            f"{2 * folds} unlabeled images; give `class_prior` instead")
    folds = min(folds, positive_count)
    generator = torch.Generator().manual_seed(seed)
    fold_p = _positive_folds(positive_count, folds, positive_labels, generator)
    nodes = pool_size + positive_count * (1 + copies)
    positive_scores = torch.empty(positive_count)
    rank = torch.empty(positive_count, dtype=torch.long)
    unlabeled_scores = torch.zeros(pool_size, dtype=torch.float64)

    def fold_seeds(k: int) -> torch.Tensor:
        train = torch.nonzero(fold_p != k)[:, 0]
        seeds = torch.zeros(nodes, dtype=torch.bool)
        for copy in range(1 + copies):
            seeds[pool_size + copy * positive_count + train] = True
        return seeds

    if batched:
        progress("prior", 0, folds)
        all_scores = score(torch.stack([fold_seeds(k) for k in range(folds)], dim=1))
    for k in range(folds):
        if not batched:
            progress("prior", k, folds)
        scores = all_scores[:, k] if batched else score(fold_seeds(k))
        held = torch.nonzero(fold_p == k)[:, 0]
        positive_scores[held] = scores[pool_size + held]
        pool = scores[:pool_size].contiguous()
        ascending = torch.sort(pool).values
        rank[held] = pool_size - torch.searchsorted(ascending, positive_scores[held].contiguous(), right=True)
        unlabeled_scores += pool.double()
    progress("prior", folds, folds)
    return HeldOutPositives(scores=positive_scores, rank=rank, pool_scores=(unlabeled_scores / folds).float(),
                            folds=folds)


def estimate_prior_by_propagation(score: Callable[[torch.Tensor], torch.Tensor] | None, pool_size: int,
                                  positive_count: int, copies: int = 0, *, folds: int = 5, bootstrap: int = 200,
                                  level: float = 0.9, seed: int = 0, delta: float = 0.1, gamma: float = 0.01,
                                  positive_labels: torch.Tensor | None = None,
                                  progress: ProgressCallback = no_progress,
                                  held_out: HeldOutPositives | None = None) -> PriorEstimate:
    """The class prior by BBE on cross-fitted label-propagation scores.

    Fold ``k`` seeds the positives outside it and propagates (:func:`cross_fit_propagation`); its
    held-out positives' scores and the pool's (averaged over the folds) feed BBE
    (:func:`best_bin_estimate`), as the P-vs-U scores do in :func:`estimate_class_prior`. The
    held-out positives are nodes of the same graph as the pool's positives, scored the same way,
    which is what BBE needs; a P-vs-U classifier trained on 10 images per class ranks the pool's
    positives below its held-out ones, and over-estimates low priors (docs/benchmarks.md, section
    "Pool grid").

    Args:
        score: (V,) bool seeds -> (V,) float32 propagated scores, V = N + N_P * (1 + copies);
            unused (may be None) when ``held_out`` is given.
        pool_size, positive_count, copies: N, N_P and the augmented copies per positive.
        folds, bootstrap, level, seed, delta, gamma: as in :func:`estimate_class_prior`.
        positive_labels: (N_P,) int64 classes of the positives, to stratify the folds.
        held_out: the cross-fit already run (:func:`cross_fit_propagation`), to reuse.

    Returns:
        A :class:`PriorEstimate` (``method`` names this estimator; ``initial`` equals the estimate).

    Raises:
        NoImagesError: fewer than 2 positives or fewer than ``2 * folds`` pool images.
        UsageError: ``folds`` < 2, or neither ``score`` nor ``held_out``.
    """
    if held_out is None:
        if score is None:
            raise UsageError("estimate_prior_by_propagation needs score or held_out")
        held_out = cross_fit_propagation(score, pool_size, positive_count, copies, folds=folds, seed=seed,
                                         positive_labels=positive_labels, progress=progress)
    positive_scores, unlabeled_scores = held_out.scores, held_out.pool_scores
    estimate, threshold, q_p, q_u = best_bin_estimate(positive_scores, unlabeled_scores, delta=delta, gamma=gamma)
    return _with_uncertainty(positive_scores, unlabeled_scores, estimate, threshold, q_p, q_u, bootstrap=bootstrap,
                             level=level, seed=seed, delta=delta, gamma=gamma, folds=held_out.folds,
                             initial=_clip(estimate), refined=0, method=PROPAGATION_METHOD)
