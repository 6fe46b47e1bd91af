"""How far a selection can be trusted, and the select / weight / take-the-pool recommendation.

Hand-computed values for the interval, the precision / recall estimate and each branch of the rule;
then small synthetic pools where the right answer is known (the rule's size threshold scaled to
them): a clean pool whose selection can be kept, labeled positives that differ from the pool's task
images, and a pool whose classes overlap (both: take the whole pool).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from pucli.pu.neighbors import knn_graph
from pucli.pu.propagation import propagate, symmetric_walk
from pucli.pu.mixture_proportion import HeldOutPositives, PriorEstimate, cross_fit_propagation
from pucli.pu.trust import (
    MIN_PLACEMENT,
    MIN_SELECT_F1,
    MIN_SELECTED,
    SelectionTrust,
    graph_agreement,
    recommend,
    selection_trust,
    wilson_interval,
)


def test_wilson_interval_by_hand() -> None:
    z = NormalDist().inv_cdf(0.95)  # level 0.9: the 5th-95th percentiles
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(8, 10, 0.9)
    assert low == pytest.approx(centre - half, abs=1e-6) and high == pytest.approx(centre + half, abs=1e-6)
    assert (round(low, 4), round(high, 4)) == (0.5408, 0.9314)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] > 0.7
    assert wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, level=1.0)


def _held_out(ranks: list[int], pool: int) -> HeldOutPositives:
    return HeldOutPositives(scores=torch.zeros(len(ranks)), rank=torch.tensor(ranks), pool_scores=torch.zeros(pool),
                            folds=2)


def test_selection_trust_by_hand() -> None:
    # 4 held-out positives; a top-10 cut keeps those ranked 0, 3 and 5 (rank 12 falls outside).
    trust = selection_trust(_held_out([0, 3, 5, 12], 100), kept=10, class_prior=0.1)
    assert trust.kept_held_out == 3 and trust.held_out == 4
    assert trust.recall == 0.75
    assert trust.precision == pytest.approx(0.75 * 0.1 * 100 / 10)  # recall x pi x N / K = 0.75
    assert trust.f1 == pytest.approx(0.75)
    assert trust.placement == pytest.approx(3 / 10)  # median rank of the kept ones over K
    low, high = wilson_interval(3, 4, 0.9)
    assert (trust.recall_low, trust.recall_high) == (low, high)
    assert trust.precision_low == pytest.approx(low) and trust.precision_high == pytest.approx(high)
    # Keeping 20 at the same prior: twice the images for the same positives, so half the precision.
    wide = selection_trust(_held_out([0, 3, 5, 12], 100), kept=20, class_prior=0.1)
    assert wide.recall == 1.0 and wide.precision == pytest.approx(0.5)


def test_an_estimated_prior_widens_the_precision_interval() -> None:
    estimate = PriorEstimate(class_prior=0.1, std=0.01, low=0.08, high=0.12, level=0.9, threshold=0.0,
                             positive_in_bin=0.5, unlabeled_in_bin=0.05, positive=4, unlabeled=100, folds=2,
                             bootstrap=10, initial=0.1, refined=0)
    trust = selection_trust(_held_out([0, 3, 5, 12], 100), kept=10, class_prior=0.1, prior_estimate=estimate)
    low, high = wilson_interval(3, 4, 0.9)
    assert trust.precision_low == pytest.approx(low * 0.08 * 100 / 10)
    assert trust.precision_high == pytest.approx(min(1.0, high * 0.12 * 100 / 10))
    assert (trust.class_prior_low, trust.class_prior_high) == (0.08, 0.12)


def test_selection_trust_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        selection_trust(_held_out([], 10), kept=1, class_prior=0.1)
    with pytest.raises(ValueError):
        selection_trust(_held_out([1], 10), kept=-1, class_prior=0.1)
    with pytest.raises(ValueError):
        selection_trust(_held_out([1], 10), kept=1, class_prior=1.0)


def test_graph_agreement_by_hand() -> None:
    neighbors = torch.tensor([[1, 2], [0, 3], [0, -1], [1, 2]])
    selected = torch.tensor([True, True, False, False])
    # kept 0: neighbours 1 (kept), 2 (not); kept 1: 0 (kept), 3 (not) -> 2 of 4
    assert graph_agreement(neighbors, selected) == 0.5
    assert graph_agreement(neighbors, torch.zeros(4, dtype=torch.bool)) is None


def _trust(f1_low: float = 0.97, placement: float = 0.5, kept: int = 40_000) -> SelectionTrust:
    return SelectionTrust(recall=0.98, recall_low=f1_low, recall_high=0.99, precision=0.98, precision_low=f1_low,
                          precision_high=0.99, f1=0.98, f1_low=f1_low, f1_high=0.99, level=0.9, held_out=100,
                          kept_held_out=98, kept=kept, pool=200_000, class_prior=0.2, class_prior_low=0.2,
                          class_prior_high=0.2, placement=placement, graph_agreement=0.97)


def test_recommendation_rule_branch_by_branch() -> None:
    keep = recommend(_trust())
    assert keep.action == "select" and "20%" in keep.reason  # 40,000 of 200,000
    assert recommend(None).action == "pool"  # no estimate: the safe choice
    assert recommend(_trust(f1_low=MIN_SELECT_F1 - 0.01)).action == "pool"
    assert recommend(_trust(kept=MIN_SELECTED - 1)).action == "pool"
    shifted = recommend(_trust(placement=MIN_PLACEMENT - 0.01))
    assert shifted.action == "pool" and "capture" in shifted.reason
    # A task of some of the teacher's classes: keep even a small, imperfect selection.
    partial = recommend(_trust(kept=400, f1_low=0.8), task_classes=5, teacher_classes=10)
    assert partial.action == "select" and "5 of the teacher's 10" in partial.reason
    assert recommend(_trust(kept=400), task_classes=10, teacher_classes=10).action == "pool"
    assert recommend(_trust(kept=400, placement=0.1), task_classes=5, teacher_classes=10).action == "pool"
    # A pool the step budget cannot sweep: weight it by the scores instead of taking it whole.
    assert recommend(_trust(kept=10), pool_covered=False).action == "weight"
    assert recommend(None, pool_covered=False).as_dict()["summary"] == "weight the whole pool by the scores"
    assert recommend(_trust(), pool_covered=False).action == "select"


def _pool(positives: int, negatives: int, labeled: int, *, distance: float = 4.0, shift: bool = False,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pool of one positive cluster among two negative ones (8-d Gaussians), and labeled
    positives drawn from the positive cluster (SCAR) or, with ``shift``, from one tight corner of it."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.zeros(8)
    centre[0] = distance
    pos = centre + torch.randn(positives, 8, generator=generator)
    negative_centres = torch.zeros(2, 8)
    negative_centres[0, 1] = distance
    negative_centres[1, 2] = distance
    neg = negative_centres[torch.arange(negatives) % 2] + torch.randn(negatives, 8, generator=generator)
    order = torch.randperm(positives + negatives, generator=generator)
    pool = torch.cat([pos, neg])[order]
    truth = torch.cat([torch.ones(positives, dtype=torch.bool), torch.zeros(negatives, dtype=torch.bool)])[order]
    if shift:  # the labeled files all sit at the cluster's far side: unlike the pool's task images
        corner = centre.clone()
        corner[0] += 2.5
        corner[3] = 2.5
        labeled_points = corner + 0.15 * torch.randn(labeled, 8, generator=generator)
    else:
        labeled_points = centre + torch.randn(labeled, 8, generator=generator)
    return pool, truth, labeled_points


def _select_and_trust(pool: torch.Tensor, labeled: torch.Tensor, prior: float) -> tuple[torch.Tensor, SelectionTrust]:
    """What pucli select does on descriptors: the graph of pool and positives, propagation, the
    top round(pi x N), and the cross-fitted held-out positives."""
    n, m = len(pool), len(labeled)
    neighbors = knn_graph(torch.cat([pool, labeled]), 10)
    walk = symmetric_walk(neighbors)

    def score(seeds: torch.Tensor) -> torch.Tensor:
        return propagate(seeds.float(), walk, alpha=0.99, steps=200)

    seeds = torch.zeros(n + m, dtype=torch.bool)
    seeds[n:] = True
    spread = score(seeds)[:n]
    kept = round(prior * n)
    selected = torch.zeros(n, dtype=torch.bool)
    selected[torch.sort(spread, descending=True, stable=True).indices[:kept]] = True
    held_out = cross_fit_propagation(score, n, m, seed=0)
    pool_neighbors = torch.where(neighbors[:n] < n, neighbors[:n], torch.full_like(neighbors[:n], -1))
    return selected, selection_trust(held_out, kept, prior, agreement=graph_agreement(pool_neighbors, selected))


def _f1(selected: torch.Tensor, truth: torch.Tensor) -> float:
    hits = int((selected & truth).sum())
    return 2 * hits / (int(selected.sum()) + int(truth.sum()))


def test_clean_low_prior_pool_keeps_the_selection_and_the_estimate_brackets_the_truth() -> None:
    pool, truth, labeled = _pool(120, 3880, 60)  # prior 0.03, well separated, SCAR
    selected, trust = _select_and_trust(pool, labeled, 0.03)
    true_f1 = _f1(selected, truth)
    assert true_f1 > 0.95
    assert trust.f1_low <= true_f1 + 0.02 and trust.f1_high >= true_f1 - 0.02
    assert trust.placement > MIN_PLACEMENT
    # At the benchmark threshold 120 images are far too few to keep; scaled to this pool, kept.
    assert recommend(trust).action == "pool"
    assert recommend(trust, min_selected=100, min_select_f1=0.85).action == "select"


def test_labeled_positives_unlike_the_pool_are_caught_and_weighted() -> None:
    pool, _, labeled = _pool(120, 3880, 60, shift=True)
    _, trust = _select_and_trust(pool, labeled, 0.03)
    assert trust.placement < MIN_PLACEMENT  # the held-out labeled positives rank above every pool image
    assert recommend(trust, min_selected=100, min_select_f1=0.85).action == "pool"


def test_overlapping_classes_give_a_low_estimate_and_weighting() -> None:
    pool, truth, labeled = _pool(120, 3880, 60, distance=1.2)  # clusters overlap: no clean selection exists
    selected, trust = _select_and_trust(pool, labeled, 0.03)
    true_f1 = _f1(selected, truth)
    assert true_f1 < 0.85
    assert trust.f1_low < 0.85 and trust.f1_low <= true_f1 + 0.05
    assert recommend(trust, min_selected=100, min_select_f1=0.85).action == "pool"
