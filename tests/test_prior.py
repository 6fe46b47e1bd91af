"""Class-prior estimation (best-bin estimation, Garg et al. 2021): hand-computed bins and
synthetic mixtures of known proportion."""

from __future__ import annotations

import math

import pytest
import torch

from pucli.errors import NoImagesError, UsageError
from pucli.pu.mixture_proportion import best_bin_estimate, bootstrap_best_bin, cross_fitted_scores, estimate_class_prior

# P scores and U scores of the hand example. Thresholds are the P scores 3, 2, 1, 0 with
# q_p = 1/4, 2/4, 3/4, 4/4; U has 1, 1, 3, 5 of its 8 scores at or above them, so
# q_u = 1/8, 1/8, 3/8, 5/8 and q_u / q_p = 0.5, 0.25, 0.5, 0.625.
HAND_P = [3.0, 2.0, 1.0, 0.0]
HAND_U = [3.5, 1.5, 1.2, 0.5, 0.2, -1.0, -2.0, -3.0]


def _repeat(values: list[float], times: int) -> torch.Tensor:
    return torch.tensor(values).repeat(times)


def test_best_bin_with_few_scores_prefers_the_widest_bin_because_the_bound_penalises_small_q_p() -> None:
    # n_p = 4, n_u = 8, delta = 0.1, gamma = 0.01:
    # penalty = 1.01 * (sqrt(ln 40 / 8) + sqrt(ln 40 / 16)) = 1.01 * (0.679051 + 0.480163) = 1.170806.
    # (q_u + penalty) / q_p = 5.1832, 2.5916, 2.0611, 1.7958 -> the last bin, estimate 5/8.
    estimate, threshold, q_p, q_u = best_bin_estimate(torch.tensor(HAND_P), torch.tensor(HAND_U))
    assert estimate == pytest.approx(0.625)
    assert threshold == 0.0
    assert (q_p, q_u) == (pytest.approx(1.0), pytest.approx(0.625))


def test_best_bin_with_many_scores_picks_the_bin_with_the_smallest_ratio() -> None:
    # The same distributions, each score repeated 1000 times: n_p = 4000, n_u = 8000,
    # penalty = 1.01 * (sqrt(ln 40 / 8000) + sqrt(ln 40 / 16000)) = 0.037025;
    # (q_u + penalty) / q_p = 0.6481, 0.3241, 0.5494, 0.6620 -> threshold 2, estimate 0.25.
    penalty = 1.01 * (math.sqrt(math.log(40) / 8000) + math.sqrt(math.log(40) / 16000))
    assert penalty == pytest.approx(0.037025, abs=1e-6)
    estimate, threshold, q_p, q_u = best_bin_estimate(_repeat(HAND_P, 1000), _repeat(HAND_U, 1000))
    assert estimate == pytest.approx(0.25)
    assert threshold == 2.0
    assert (q_p, q_u) == (pytest.approx(0.5), pytest.approx(0.125))


def test_best_bin_is_invariant_to_a_monotone_transform_of_the_scores() -> None:
    p, u = _repeat(HAND_P, 1000), _repeat(HAND_U, 1000)
    logits = best_bin_estimate(p, u)[0]
    probabilities = best_bin_estimate(torch.sigmoid(p), torch.sigmoid(u))[0]
    assert probabilities == pytest.approx(logits)


def test_best_bin_refuses_empty_inputs() -> None:
    with pytest.raises(NoImagesError):
        best_bin_estimate(torch.empty(0), torch.tensor([1.0]))
    with pytest.raises(NoImagesError):
        best_bin_estimate(torch.tensor([1.0]), torch.empty(0))


def _mixture(prior: float, *, positives: int = 200, pool: int = 20_000, dim: int = 8, separation: float = 4.0,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gaussian descriptors: positives around +separation/2 on every axis, negatives around -separation/2.
    Returns (labeled positives, pool, number of positives in the pool)."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.full((dim,), separation / 2)
    in_pool = round(prior * pool)

    def draw(n: int, sign: float) -> torch.Tensor:
        return sign * centre + torch.randn(n, dim, generator=generator)

    unlabeled = torch.cat([draw(in_pool, 1.0), draw(pool - in_pool, -1.0)])
    unlabeled = unlabeled[torch.randperm(pool, generator=generator)]
    return draw(positives, 1.0), unlabeled, in_pool


@pytest.mark.parametrize("prior", [0.1, 0.3, 0.6])
def test_estimate_recovers_the_proportion_of_a_synthetic_mixture(prior: float) -> None:
    positive, unlabeled, _ = _mixture(prior)
    estimate = estimate_class_prior(positive, unlabeled, bootstrap=50, seed=0)
    assert abs(estimate.class_prior - prior) <= 0.03
    assert estimate.low <= estimate.class_prior <= estimate.high
    assert estimate.low - 0.02 <= prior <= estimate.high + 0.02
    assert 0.0 < estimate.std < 0.05
    assert estimate.positive == 200 and estimate.unlabeled == 20_000 and estimate.folds == 5


def test_estimate_on_overlapping_classes_errs_upwards_not_downwards() -> None:
    # With overlap no bin is free of negatives, so q_u / q_p over-counts: BBE is an upper estimate.
    positive, unlabeled, _ = _mixture(0.3, separation=1.0)
    estimate = estimate_class_prior(positive, unlabeled, bootstrap=0, seed=0)
    assert estimate.class_prior >= 0.3 - 0.03
    assert estimate.std == 0.0 and estimate.low == estimate.high == estimate.class_prior


def test_estimate_is_reproducible_for_a_seed() -> None:
    positive, unlabeled, _ = _mixture(0.3, pool=5_000)
    first = estimate_class_prior(positive, unlabeled, bootstrap=20, seed=3)
    second = estimate_class_prior(positive, unlabeled, bootstrap=20, seed=3)
    assert first == second


def test_cross_fitting_scores_every_item_once_with_a_classifier_that_did_not_see_it() -> None:
    positive, unlabeled, _ = _mixture(0.3, positives=7, pool=2_000)
    positive_scores, unlabeled_scores = cross_fitted_scores(positive, unlabeled, folds=10, seed=0)
    assert positive_scores.shape == (7,) and unlabeled_scores.shape == (2_000,)
    assert torch.isfinite(positive_scores).all() and torch.isfinite(unlabeled_scores).all()
    # Separable classes: held-out positives outscore the pool's median.
    assert positive_scores.min() > unlabeled_scores.median()


def test_bootstrap_returns_one_estimate_per_replicate_and_is_seeded() -> None:
    p, u = _repeat(HAND_P, 50), _repeat(HAND_U, 50)
    first = bootstrap_best_bin(p, u, replicates=30, seed=1)
    assert first.shape == (30,)
    assert torch.equal(first, bootstrap_best_bin(p, u, replicates=30, seed=1))
    assert not torch.equal(first, bootstrap_best_bin(p, u, replicates=30, seed=2))


def test_estimate_refuses_too_few_positives_and_bad_settings() -> None:
    positive, unlabeled, _ = _mixture(0.3, pool=1_000)
    with pytest.raises(NoImagesError, match="`class_prior`"):
        estimate_class_prior(positive[:1], unlabeled)
    with pytest.raises(UsageError):
        cross_fitted_scores(positive, unlabeled, folds=1)
    with pytest.raises(UsageError):
        estimate_class_prior(positive, unlabeled, level=1.0)
    with pytest.raises(UsageError):
        estimate_class_prior(positive, unlabeled, bootstrap=-1)


def test_folds_with_labels_hold_out_each_class_evenly() -> None:
    from pucli.pu.mixture_proportion import _positive_folds

    labels = torch.arange(10).repeat_interleave(5)[torch.randperm(50, generator=torch.Generator().manual_seed(1))]
    folds = _positive_folds(50, 5, labels, torch.Generator().manual_seed(0))
    for k in range(5):
        # 5 positives per class and 5 folds: every fold holds out exactly one of each class.
        assert sorted(labels[folds == k].tolist()) == list(range(10))
    unstratified = _positive_folds(50, 5, None, torch.Generator().manual_seed(0))
    assert sorted(torch.bincount(unstratified).tolist()) == [10] * 5


@pytest.mark.parametrize("pool", [1, 5, 9])
def test_estimate_refuses_a_pool_too_small_to_cross_fit(pool: int) -> None:
    positive, unlabeled, _ = _mixture(0.3, positives=20, pool=50)
    with pytest.raises(NoImagesError, match="at least 10 readable unlabeled images.*`class_prior`"):
        estimate_class_prior(positive, unlabeled[:pool], bootstrap=0)
