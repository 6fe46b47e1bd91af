"""How far a selection can be trusted, and what to train on: keep it, weight the pool, or take it all.

``pucli select`` keeps the top ``K`` of the pool by label propagation from the labeled positives
(:mod:`pucli.pu.ranking`). Whether the student should then train on that selection, on the whole
pool weighted by the scores (``distill --weighting pu-score``), or on the whole pool unselected
depends on two things no user knows: how good the selection is, and how much of the pool is task
data. Both are estimated here from the data alone, never from ground truth:

* **Recall** from held-out positives. Under SCAR (the labeled positives are a random sample of the
  task's images, the standard PU assumption; Elkan & Noto 2008) a labeled positive held out of the
  propagation's seeds ranks among the pool like a pool positive, so the share of held-out positives
  that a top-``K`` cut of their own fold's run would keep estimates the share of the pool's
  positives the cut keeps (:func:`pucli.pu.mixture_proportion.cross_fit_propagation`; each fold is seeded by 4/5
  of the positives, so the estimate is slightly pessimistic). The interval is Wilson's score
  interval for a binomial share (Wilson 1927) at ``level``.
* **Precision** from recall and the class prior: the kept set holds ``recall * pi * N`` of the
  pool's ``pi * N`` positives, so ``precision = recall * pi * N / K`` (capped at 1); with the prior
  estimated, its interval (:class:`pucli.pu.mixture_proportion.PriorEstimate`) widens the precision's. With
  ``K = round(pi * N)`` (PU-s1) precision equals recall.
* **The labeled positives' placement**, a check on SCAR: under SCAR and a good ranking the kept
  held-out positives' ranks spread evenly over ``0..K``, so their median rank is about ``K / 2``
  (``placement`` near 0.5). When the labeled files differ in capture from the pool's task images
  (clean scans against tinted, resized, recompressed crawl images), the held-out positives rank
  above the pool's positives (``placement`` near 0) and the recall estimate is optimistic.
* **Graph agreement**: the share of the kept images' pool neighbours that are kept too.

The recommendation (:func:`recommend`) rests on the students measured so far (docs/benchmarks.md,
sections "Web-crawl study" and "Select, weight or take the pool"): at equal optimizer
steps a student distilled on the whole pool matched or beat one distilled on the selection in every
pool whose selection held fewer than 30,000 images, at class priors of 2-20 %, and even on a
perfect selection (the true task images alone), because the teacher's soft targets on unrelated
images still carry transfer; with about 30,000 images kept (mnist-pu) the selection came within
0.16 points of the whole pool with 30 % of its images. Weighting the pool by the scores was never
more than 0.2 points above taking it whole. So, in order:

1. no held-out estimate (the nnPU ranking with fewer than 5 positives per class, or no graph), or
   the labeled positives placed far above the pool's (``placement`` < :data:`MIN_PLACEMENT`): take
   the whole pool;
2. the labeled positives cover only some of the teacher's classes: keep the selection. The pool's
   other images are then likely images of the teacher's other classes, which distilling on the
   whole pool spends its steps on although the student will never be asked them (pools of digits
   5-9 around a task of digits 0-4: the selection's student 1.05-2.38 points ahead at priors of
   2-5 %, 0.14 at 20 %);
3. an F1 estimate whose lower bound is below :data:`MIN_SELECT_F1`, or a selection of fewer than
   :data:`MIN_SELECTED` images: take the whole pool (a small selection costs accuracy; the whole
   pool costs only a longer teacher pass);
4. otherwise keep the selection: the same accuracy from fewer images (a cheaper ``expand`` and
   epochs, less to store).

``weight`` (the pool weighted by the scores) is what to use instead of the whole pool when the pool
is too large for the step budget to cover it; no pool measured here was, so the rule does not pick
it (:func:`recommend` takes ``pool_covered=False`` to say so).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pucli.pu.mixture_proportion import HeldOutPositives, PriorEstimate

__all__ = [
    "MIN_PLACEMENT",
    "MIN_SELECTED",
    "MIN_SELECT_F1",
    "Recommendation",
    "SelectionTrust",
    "graph_agreement",
    "recommend",
    "selection_trust",
    "wilson_interval",
]

#: Below this lower bound of the estimated F1 the selection is not kept on its own.
MIN_SELECT_F1 = 0.95
#: Below this many kept images a selection is not kept on its own (docs/benchmarks.md: smaller
#: selections cost 0.9-4.2 points of student accuracy against the whole pool at equal steps).
MIN_SELECTED = 30_000
#: Below this placement of the held-out positives the recall estimate is taken as optimistic.
MIN_PLACEMENT = 0.3

#: The three recommendations, in the words of the report.
ACTIONS = {
    "select": "keep the selection",
    "weight": "weight the whole pool by the scores",
    "pool": "take the whole pool",
}


def wilson_interval(successes: int, trials: int, level: float = 0.9) -> tuple[float, float]:
    """Wilson's score interval for a binomial share ``successes / trials`` (Wilson 1927).

    Returns:
        (low, high) in [0, 1]; (0, 1) without trials.

    Raises:
        ValueError: ``level`` outside (0, 1), or ``successes`` outside ``0..trials``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level {level}: must be in (0, 1)")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    if trials == 0:
        return 0.0, 1.0
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
    share = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(share * (1.0 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class SelectionTrust:
    """An estimate of a selection's precision, recall and F1, from held-out labeled positives.

    Attributes:
        recall, recall_low, recall_high: the share of the pool's task images kept, and its
            interval at ``level`` (Wilson).
        precision, precision_low, precision_high: the share of kept images that are task images.
        f1, f1_low, f1_high: their harmonic mean (the bounds pair the bounds).
        level: the intervals' coverage.
        held_out: labeled positives behind the estimate; kept_held_out: those a top-``kept`` cut keeps.
        kept: images the selection keeps; pool: images in the pool.
        class_prior, class_prior_low, class_prior_high: the prior used, with its interval (the
            point, twice, when the prior was given).
        placement: median rank of the kept held-out positives over ``kept`` (about 0.5 under SCAR;
            near 0 when the labeled positives rank above the pool's: see the module docstring).
        graph_agreement: share of the kept images' pool neighbours that are kept; None without a graph.
        basis: how the estimate was made.
    """

    recall: float
    recall_low: float
    recall_high: float
    precision: float
    precision_low: float
    precision_high: float
    f1: float
    f1_low: float
    f1_high: float
    level: float
    held_out: int
    kept_held_out: int
    kept: int
    pool: int
    class_prior: float
    class_prior_low: float
    class_prior_high: float
    placement: float
    graph_agreement: float | None
    basis: str = ("held-out labeled positives (cross-fitted label propagation), SCAR assumed; "
                  "precision = recall * class prior * N / kept")

    def as_dict(self) -> dict[str, Any]:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def selection_trust(held_out: HeldOutPositives, kept: int, class_prior: float, *,
                    prior_estimate: PriorEstimate | None = None, level: float = 0.9,
                    agreement: float | None = None) -> SelectionTrust:
    """Estimate the precision, recall and F1 of a top-``kept`` selection of the pool.

    Args:
        held_out: the cross-fitted propagation (:func:`pucli.pu.mixture_proportion.cross_fit_propagation`): its
            ``rank`` (N_P,) int64 says where each held-out positive falls among the pool.
        kept: K, the images the selection keeps (>= 0).
        class_prior: the class prior the selection used (given or estimated), in (0, 1).
        prior_estimate: the estimate, when the prior was estimated: its interval widens precision's.
        level: the intervals' coverage, in (0, 1).
        agreement: :func:`graph_agreement` of the selection, if known.

    Returns:
        A :class:`SelectionTrust`.

    Raises:
        ValueError: no held-out positive, ``kept`` < 0, or ``class_prior`` outside (0, 1).
    """
    held = len(held_out.rank)
    if held == 0:
        raise ValueError("a selection's trust needs at least one held-out positive")
    if kept < 0:
        raise ValueError(f"kept {kept}: must be >= 0")
    if not 0.0 < class_prior < 1.0:
        raise ValueError(f"class prior {class_prior}: must be in (0, 1)")
    pool = len(held_out.pool_scores)
    inside = held_out.rank < kept
    hits = int(inside.sum())
    recall = hits / held
    recall_low, recall_high = wilson_interval(hits, held, level)
    prior_low = prior_high = class_prior
    if prior_estimate is not None:
        prior_low, prior_high = min(prior_estimate.low, class_prior), max(prior_estimate.high, class_prior)

    def precision_of(share: float, prior: float) -> float:
        return 0.0 if kept == 0 else min(1.0, share * prior * pool / kept)

    precision = precision_of(recall, class_prior)
    precision_low, precision_high = precision_of(recall_low, prior_low), precision_of(recall_high, prior_high)
    placement = float(held_out.rank[inside].double().median()) / kept if hits else 0.0
    return SelectionTrust(
        recall=recall, recall_low=recall_low, recall_high=recall_high, precision=precision,
        precision_low=precision_low, precision_high=precision_high, f1=_f1(precision, recall),
        f1_low=_f1(precision_low, recall_low), f1_high=_f1(precision_high, recall_high), level=level,
        held_out=held, kept_held_out=hits, kept=kept, pool=pool, class_prior=class_prior,
        class_prior_low=prior_low, class_prior_high=prior_high, placement=placement, graph_agreement=agreement,
    )


def graph_agreement(neighbors: torch.Tensor, selected: torch.Tensor) -> float | None:
    """The share of the selected images' graph neighbours that are selected too.

    Args:
        neighbors: (N, k) int64 pool k-NN graph (-1 marks a missing neighbour).
        selected: (N,) bool.

    Returns:
        A share in [0, 1], or None when nothing is selected or the graph has no edge.
    """
    rows = neighbors[selected]
    valid = rows >= 0
    if rows.numel() == 0 or not bool(valid.any()):
        return None
    return float(selected[rows[valid]].double().mean())


@dataclass(frozen=True)
class Recommendation:
    """What to train the student on.

    Attributes:
        action: "select" (keep the selection: ``pucli expand`` on the index), "weight" (the whole
            pool, weighted by the scores: ``distill --weighting pu-score``) or "pool" (the whole
            pool, unselected).
        reason: one sentence: which evidence decided.
    """

    action: str
    reason: str

    @property
    def summary(self) -> str:
        return ACTIONS[self.action]

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "summary": self.summary, "reason": self.reason}


def recommend(trust: SelectionTrust | None, *, task_classes: int | None = None, teacher_classes: int | None = None,
              min_select_f1: float = MIN_SELECT_F1, min_selected: int = MIN_SELECTED,
              min_placement: float = MIN_PLACEMENT, pool_covered: bool = True) -> Recommendation:
    """Keep the selection, weight the whole pool by the scores, or take the whole pool.

    The rule of the module docstring, on the data-only evidence of :func:`selection_trust` (None
    when there is no held-out estimate). ``task_classes``: how many of the teacher's
    ``teacher_classes`` classes the labeled positives cover (None: unknown, taken as all).
    ``pool_covered``: whether the student's step budget
    sweeps the whole pool at least once; when it does not, ``weight`` replaces ``pool``, spending
    the steps the pool cannot fill on its likely task images.

    Returns:
        A :class:`Recommendation`.
    """
    whole = "pool" if pool_covered else "weight"
    if trust is None:
        return Recommendation(whole, "no held-out estimate of the selection's quality (fewer than 5 labeled "
                                     "positives per class, or no graph): the whole pool is the safe choice")
    if trust.placement < min_placement:
        return Recommendation(whole, f"the labeled positives rank far above the pool's (placement "
                                     f"{trust.placement:.2f} < {min_placement}): the pool may differ in capture, and "
                                     "the selection may miss task images that look unlike your files")
    if task_classes is not None and teacher_classes is not None and task_classes < teacher_classes:
        return Recommendation("select", f"the labeled positives cover {task_classes} of the teacher's "
                                        f"{teacher_classes} classes: the rest of the pool is likely images of the "
                                        "other classes, which the whole pool would spend the student's steps on")
    if trust.f1_low < min_select_f1:
        return Recommendation(whole, f"estimated F1 {trust.f1:.2f} (lower bound {trust.f1_low:.2f} < "
                                     f"{min_select_f1}): too uncertain to drop the rest of the pool")
    if trust.kept < min_selected:
        return Recommendation(whole, f"the selection holds {trust.kept:,} images (< {min_selected:,}): on the "
                                     "benchmarks a student on the whole pool matched or beat one on a selection "
                                     "that small, even a perfect one, at the same number of steps")
    return Recommendation("select", f"estimated F1 {trust.f1:.2f} ({trust.f1_low:.2f}-{trust.f1_high:.2f}) on "
                                    f"{trust.kept:,} images: the same accuracy as the whole pool from "
                                    f"{trust.kept / max(1, trust.pool):.0%} of it")
