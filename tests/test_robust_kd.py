"""Unit tests for robust KD (Xu et al., NeurIPS 2019, Eq. 1, 7-10), with hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pucli.kd.losses import (
    RobustKDLoss,
    class_weights,
    kd_loss,
    perturbation_set,
    robust_kd_loss,
    sample_weights,
    soft_cross_entropy,
)

LN4 = math.log(4.0)  # 1.3862944
ROBUST_KD_PATH = Path(__file__).resolve().parents[1] / "pucli" / "kd" / "losses.py"


def _two_sample_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """K = 2 batch with known per-sample CE and teacher classes [0, 1].

    Sample A: logits [0, 0] -> student [1/2, 1/2]; target [1, 0]      -> CE = ln 2 = 0.6931472.
    Sample B: logits [0, ln 3] -> student [1/4, 3/4]; target [1/4, 3/4] ->
        CE = 1/4 ln 4 + 3/4 ln(4/3) = 0.3465736 + 0.2157616 = 0.5623352.
    """
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    return logits, targets


# --- Eq. 7: class weights -------------------------------------------------------------------


def test_class_weights_follow_eq7_on_hand_example() -> None:
    # 1/y = [1, 1/2, 1/4], sum = 1.75
    # w = 3 * [1, 0.5, 0.25] / 1.75 = [1.7142857, 0.8571429, 0.4285714]
    weights = class_weights(torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(weights, torch.tensor([1.7142857, 0.8571429, 0.4285714]))


def test_class_weights_average_to_one() -> None:
    counts = torch.rand(10, generator=torch.Generator().manual_seed(0)) * 100 + 1
    assert float(class_weights(counts).mean()) == pytest.approx(1.0, abs=1e-6)


def test_class_weights_give_rarer_classes_larger_weights() -> None:
    weights = class_weights(torch.tensor([30.0, 1.0, 5.0]))
    assert weights[1] > weights[2] > weights[0]


def test_class_weights_are_invariant_to_count_scale() -> None:
    counts = torch.tensor([3.0, 7.0, 11.0])
    torch.testing.assert_close(class_weights(counts), class_weights(1000 * counts))


def test_class_weights_floor_counts_at_explicit_min_count() -> None:
    # Floored counts [0.5, 1, 1]: 1/y = [2, 1, 1], sum 4; w = 3 * [2, 1, 1] / 4 = [1.5, 0.75, 0.75]
    weights = class_weights(torch.tensor([0.0, 1.0, 1.0]), min_count=0.5)
    torch.testing.assert_close(weights, torch.tensor([1.5, 0.75, 0.75]))


def test_class_weights_default_floor_is_one_percent_of_mean_count() -> None:
    # Mean count 2 -> floor 0.02; floored counts [0.02, 2, 4]: 1/y = [50, 0.5, 0.25], sum 50.75;
    # w = 3 * [50, 0.5, 0.25] / 50.75 = [2.9556650, 0.0295567, 0.0147783]
    weights = class_weights(torch.tensor([0.0, 2.0, 4.0]))
    torch.testing.assert_close(weights, torch.tensor([2.9556650, 0.0295567, 0.0147783]))


def test_class_weights_default_floor_leaves_ordinary_counts_untouched() -> None:
    counts = torch.tensor([1.0, 2.0, 4.0])  # floor 0.0233 < every count
    torch.testing.assert_close(class_weights(counts), class_weights(counts, min_count=0.0))


def test_class_weights_raise_on_zero_count_without_floor() -> None:
    with pytest.raises(ValueError, match="zero soft count"):
        class_weights(torch.tensor([0.0, 1.0]), min_count=0.0)


@pytest.mark.parametrize(
    "counts",
    [
        torch.tensor([1.0, -1.0, 2.0]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([1.0, float("inf")]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([]),
        torch.ones(2, 2),
        torch.tensor([1, 2]),
    ],
    ids=["negative", "nan", "inf", "all-zero", "empty", "2-d", "integer"],
)
def test_class_weights_reject_invalid_counts(counts: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        class_weights(counts)


@pytest.mark.parametrize("min_count", [-1.0, float("nan")])
def test_class_weights_reject_invalid_min_count(min_count: float) -> None:
    with pytest.raises(ValueError, match="min_count"):
        class_weights(torch.tensor([1.0, 2.0]), min_count=min_count)


# --- Eq. 8: sample weights and weighted KD --------------------------------------------------


def test_sample_weights_follow_teacher_argmax() -> None:
    targets = torch.tensor(
        [
            [0.1, 0.2, 0.7],  # argmax 2
            [0.6, 0.3, 0.1],  # argmax 0
            [0.2, 0.5, 0.3],  # argmax 1
            [0.3, 0.3, 0.4],  # argmax 2
        ]
    )
    weights = sample_weights(targets, torch.tensor([0.5, 1.0, 1.5]))
    torch.testing.assert_close(weights, torch.tensor([1.5, 0.5, 1.0, 1.5]))


def test_sample_weights_reject_mismatched_class_count() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        sample_weights(torch.rand(4, 3), torch.ones(2))


def test_soft_cross_entropy_of_uniform_student_is_ln_k() -> None:
    # softmax(0) = 1/4 for every class: CE = -sum_k t_k ln(1/4) = ln 4 = 1.3862944 for any target.
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    torch.testing.assert_close(
        soft_cross_entropy(torch.zeros(2, 4), targets), torch.full((2,), LN4)
    )


def test_soft_cross_entropy_matches_hand_value() -> None:
    # student softmax([0, ln 3]) = [1/4, 3/4]; target [1/2, 1/2]:
    # CE = 1/2 ln 4 + 1/2 ln(4/3) = 0.6931472 + 0.1438410 = 0.8369882
    ce = soft_cross_entropy(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(ce, torch.tensor([0.8369882]))


def test_soft_cross_entropy_at_t1_equals_plain_cross_entropy_for_one_hot_targets() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 1, 2, 3])
    ce = soft_cross_entropy(logits, F.one_hot(labels, 4).float())
    torch.testing.assert_close(ce, F.cross_entropy(logits, labels, reduction="none"))


def test_soft_cross_entropy_scales_by_temperature_squared() -> None:
    # T = 2: logits [0, 2 ln 3] / 2 = [0, ln 3] -> the hand example's CE 0.8369882,
    # times T^2 = 4: 3.3479528
    ce = soft_cross_entropy(
        torch.tensor([[0.0, 2 * math.log(3.0)]]), torch.tensor([[0.5, 0.5]]), temperature=2.0
    )
    torch.testing.assert_close(ce, torch.tensor([3.3479528]))


def test_soft_cross_entropy_computes_half_precision_logits_in_float32() -> None:
    ce = soft_cross_entropy(torch.zeros(1, 4, dtype=torch.float16), torch.full((1, 4), 0.25))
    assert ce.dtype == torch.float32


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_soft_cross_entropy_rejects_invalid_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), temperature=temperature)


@pytest.mark.parametrize(
    ("logits", "targets"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4)),
        (torch.zeros(3), torch.zeros(3)),
        (torch.zeros(0, 3), torch.zeros(0, 3)),
    ],
    ids=["class-mismatch", "1-d", "empty-batch"],
)
def test_soft_cross_entropy_rejects_bad_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        soft_cross_entropy(logits, targets)


def test_kd_loss_without_weights_is_mean_cross_entropy() -> None:
    # (0.6931472 + 0.5623352) / 2 = 0.6277412
    logits, targets = _two_sample_batch()
    torch.testing.assert_close(kd_loss(logits, targets), torch.tensor(0.6277412))


def test_kd_loss_applies_per_sample_weights() -> None:
    # (2 * 0.6931472 + 0.5 * 0.5623352) / 2 = (1.3862944 + 0.2811676) / 2 = 0.8337310
    logits, targets = _two_sample_batch()
    loss = kd_loss(logits, targets, weights=torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(loss, torch.tensor(0.8337310))


def test_kd_loss_with_all_ones_weights_equals_plain_kd() -> None:
    logits, targets = _two_sample_batch()
    torch.testing.assert_close(
        kd_loss(logits, targets, weights=torch.ones(2)), kd_loss(logits, targets)
    )


def test_kd_loss_rejects_weights_of_wrong_length() -> None:
    logits, targets = _two_sample_batch()
    with pytest.raises(ValueError, match="weights"):
        kd_loss(logits, targets, weights=torch.ones(3))


# --- Eq. 9: perturbation set ----------------------------------------------------------------

W_KD = torch.tensor([1.7142857, 0.8571429, 0.4285714])  # Eq. 7 weights of counts [1, 2, 4]


def _draw(
    eps: float = 0.1, num_vectors: int = 64, seed: int = 0, weights: torch.Tensor = W_KD
) -> torch.Tensor:
    return perturbation_set(
        weights, eps, num_vectors, generator=torch.Generator().manual_seed(seed)
    )


def test_perturbation_set_has_one_row_per_vector() -> None:
    assert _draw(num_vectors=5).shape == (5, 3)


def test_perturbation_set_keeps_every_entry_within_eps() -> None:
    deviation = (_draw(eps=0.1) - W_KD).abs()
    assert float(deviation.max()) <= 0.1 + 1e-6


def test_perturbation_set_reaches_the_eps_boundary() -> None:
    # Each vector is scaled until one entry moves by exactly eps (no w^k is <= 2 * eps here).
    deviation = (_draw(eps=0.1) - W_KD).abs().amax(dim=1)
    torch.testing.assert_close(deviation, torch.full((64,), 0.1))


def test_perturbation_set_rows_average_to_one() -> None:
    torch.testing.assert_close(_draw().mean(dim=1), torch.ones(64))


def test_perturbation_set_moves_weights_in_both_directions() -> None:
    # The mean-zero perturbation of every vector has entries of both signs.
    deviation = _draw() - W_KD
    assert bool((deviation > 0).any(dim=1).all())
    assert bool((deviation < 0).any(dim=1).all())


def test_perturbation_set_vectors_differ_from_each_other() -> None:
    weight_set = _draw(num_vectors=8)
    assert torch.unique(weight_set, dim=0).shape[0] == 8


def test_perturbation_set_keeps_weights_positive_when_smaller_than_eps() -> None:
    # w^0 = 0.05 < eps = 0.2: it may drop by at most w^0 / 2 = 0.025, so it stays >= 0.025.
    weights = torch.tensor([0.05, 1.45, 1.5])
    weight_set = _draw(eps=0.2, weights=weights)
    assert float(weight_set[:, 0].min()) >= 0.025 - 1e-7
    assert bool((weight_set > 0).all())
    assert float((weight_set - weights).abs().max()) <= 0.2 + 1e-6
    torch.testing.assert_close(weight_set.mean(dim=1), torch.ones(64))


def test_perturbation_set_is_reproducible_with_the_same_seed() -> None:
    torch.testing.assert_close(_draw(seed=7), _draw(seed=7), rtol=0, atol=0)
    assert not torch.equal(_draw(seed=7), _draw(seed=8))


def test_perturbation_set_with_zero_eps_repeats_class_weights_exactly() -> None:
    weight_set = _draw(eps=0.0, num_vectors=4)
    assert torch.equal(weight_set, W_KD.expand(4, 3))


def test_perturbation_set_with_one_class_is_the_single_weight() -> None:
    assert torch.equal(_draw(num_vectors=3, weights=torch.ones(1)), torch.ones(3, 1))


def test_perturbation_set_keeps_dtype_of_class_weights() -> None:
    assert _draw(weights=W_KD.double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("eps", "num_vectors", "match"),
    [
        (-0.1, 4, "eps"),
        (float("nan"), 4, "eps"),
        (0.1, 0, "num_vectors"),
        (0.1, 2.5, "num_vectors"),
    ],
)
def test_perturbation_set_rejects_invalid_arguments(
    eps: float, num_vectors: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        perturbation_set(W_KD, eps, num_vectors)


@pytest.mark.parametrize(
    "weights",
    [
        torch.tensor([2.0, 2.0]),
        torch.tensor([2.0, 0.0]),
        torch.tensor([2.5, -0.5]),
        torch.ones(2, 2),
    ],
    ids=["mean-2", "zero", "negative", "2-d"],
)
def test_perturbation_set_rejects_invalid_class_weights(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="class_weights"):
        perturbation_set(weights, 0.1, 4)


# --- Eq. 10: robust KD minimax --------------------------------------------------------------


def test_robust_kd_picks_the_weight_vector_with_largest_loss() -> None:
    # CE = [0.6931472 (class 0), 0.5623352 (class 1)]
    # W[0] = [1, 1]:     (0.6931472 + 0.5623352) / 2             = 0.6277412
    # W[1] = [1.5, 0.5]: (1.0397208 + 0.2811676) / 2             = 0.6604442  <- max
    # W[2] = [0.5, 1.5]: (0.3465736 + 0.8435028) / 2             = 0.5950382
    logits, targets = _two_sample_batch()
    weight_set = torch.tensor([[1.0, 1.0], [1.5, 0.5], [0.5, 1.5]])
    loss, index = robust_kd_loss(logits, targets, weight_set)
    assert index == 1
    assert isinstance(index, int)
    torch.testing.assert_close(loss, torch.tensor(0.6604442))


def test_robust_kd_gradient_is_the_chosen_vectors_gradient() -> None:
    logits, targets = _two_sample_batch()
    weight_set = torch.tensor([[1.0, 1.0], [1.5, 0.5], [0.5, 1.5]])
    loss, index = robust_kd_loss(logits, targets, weight_set)
    (robust_grad,) = torch.autograd.grad(loss, logits)
    chosen = kd_loss(logits, targets, weights=sample_weights(targets, weight_set[index]))
    (chosen_grad,) = torch.autograd.grad(chosen, logits)
    torch.testing.assert_close(robust_grad, chosen_grad)
    # Sample A (class 0, weight 1.5): d/dz of 1.5 * CE / 2 = 0.75 * (softmax - target)
    #   = 0.75 * ([0.5, 0.5] - [1, 0]) = [-0.375, 0.375]
    torch.testing.assert_close(robust_grad[0], torch.tensor([-0.375, 0.375]))


def test_robust_kd_with_zero_eps_equals_weighted_kd() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 3, generator=generator)
    targets = torch.softmax(torch.randn(16, 3, generator=generator), dim=1)
    weight_set = perturbation_set(W_KD, 0.0, 4)
    loss, _ = robust_kd_loss(logits, targets, weight_set)
    torch.testing.assert_close(
        loss, kd_loss(logits, targets, weights=sample_weights(targets, W_KD))
    )


def test_robust_kd_with_uniform_weights_equals_plain_kd() -> None:
    logits, targets = _two_sample_batch()
    loss, _ = robust_kd_loss(logits, targets, torch.ones(3, 2))
    torch.testing.assert_close(loss, kd_loss(logits, targets))


def test_robust_kd_is_never_below_any_weighted_kd_in_the_set() -> None:
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(32, 3, generator=generator)
    targets = torch.softmax(3 * torch.randn(32, 3, generator=generator), dim=1)
    weight_set = perturbation_set(W_KD, 0.3, 16, generator=generator)
    loss, index = robust_kd_loss(logits, targets, weight_set)
    each = torch.stack(
        [kd_loss(logits, targets, weights=sample_weights(targets, w)) for w in weight_set]
    )
    torch.testing.assert_close(loss, each.max())
    assert index == int(each.argmax())


def test_robust_kd_rejects_weight_set_with_wrong_class_count() -> None:
    logits, targets = _two_sample_batch()
    with pytest.raises(ValueError, match="weight_set"):
        robust_kd_loss(logits, targets, torch.ones(3, 3))


def test_robust_kd_module_redraw_is_reproducible_and_changes_the_set() -> None:
    criterion = RobustKDLoss(
        W_KD, eps=0.1, num_vectors=4, generator=torch.Generator().manual_seed(0)
    )
    first = criterion.weight_set.clone()
    criterion.redraw(torch.Generator().manual_seed(1))
    assert not torch.equal(criterion.weight_set, first)
    criterion.redraw(torch.Generator().manual_seed(0))
    assert torch.equal(criterion.weight_set, first)
    assert "weight_set" in dict(criterion.named_buffers())


def test_robust_kd_module_forward_matches_function() -> None:
    logits, targets = _two_sample_batch()
    criterion = RobustKDLoss(
        torch.ones(2), eps=0.2, num_vectors=5, generator=torch.Generator().manual_seed(2)
    )
    loss, index = criterion(logits, targets)
    expected, expected_index = robust_kd_loss(logits, targets, criterion.weight_set)
    assert index == expected_index
    torch.testing.assert_close(loss, expected)


def test_robust_kd_module_does_not_import_cli_libraries() -> None:
    # Loaded by path, so the package __init__ (which may pull in the CLI) is not imported.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('robust_kd', {str(ROBUST_KD_PATH)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'typer' not in sys.modules and 'rich' not in sys.modules, 'CLI library imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- the objective the training loop calls once per batch -------------------------------------------


def test_objective_gives_bitwise_the_loss_of_each_function_it_stands_for() -> None:
    from pucli.kd.losses import make_objective

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3, generator=generator)
    targets = torch.softmax(torch.randn(6, 3, generator=generator), dim=1)
    w_kd = class_weights(targets.sum(dim=0))

    plain, chosen = make_objective("kd", w_kd, temperature=2.0)(logits, targets)
    assert chosen is None and torch.equal(plain, kd_loss(logits, targets, 2.0))
    weighted, chosen = make_objective("weighted-kd", w_kd, temperature=2.0)(logits, targets)
    assert chosen is None and torch.equal(weighted, kd_loss(logits, targets, 2.0, sample_weights(targets, w_kd)))
    objective = make_objective("robust-kd", w_kd, temperature=2.0, eps=0.2, num_weight_vectors=4,
                               generator=torch.Generator().manual_seed(0))
    assert objective.num_vectors == 4
    assert torch.equal(objective.weight_set, perturbation_set(w_kd, 0.2, 4, torch.Generator().manual_seed(0)))
    robust, chosen = objective(logits, targets)
    expected, expected_index = robust_kd_loss(logits, targets, objective.weight_set, 2.0)
    assert chosen == expected_index and torch.equal(robust, expected)


def test_objective_redraws_and_restores_the_weight_set_only_for_robust_kd() -> None:
    from pucli.kd.losses import make_objective

    w_kd = torch.tensor([1.5, 0.75, 0.75])
    robust = make_objective("robust-kd", w_kd, eps=0.1, num_weight_vectors=3,
                            generator=torch.Generator().manual_seed(0))
    first = robust.weight_set.clone()
    robust.redraw(torch.Generator().manual_seed(1))
    assert not torch.equal(robust.weight_set, first)
    robust.restore_weight_set(first)
    assert torch.equal(robust.weight_set, first)
    plain = make_objective("kd", w_kd)
    plain.redraw(torch.Generator().manual_seed(1))
    plain.restore_weight_set(first)
    assert plain.weight_set is None and plain.num_vectors == 0


def test_make_objective_rejects_an_unknown_loss() -> None:
    from pucli.kd.losses import make_objective

    with pytest.raises(ValueError, match="loss must be one of"):
        make_objective("rkd", torch.ones(3))
