"""Hand-computed checks of the non-negative PU risk (Kiryo et al. 2017; Xu et al. 2019, Eq. 3).

Scores are 0 and +-ln 3 so that every sigmoid is an exact fraction:
    sigmoid(0) = 1/2,  sigmoid(ln 3) = 3/4,  sigmoid(-ln 3) = 1/4,
    sigmoid(z) * sigmoid(-z) = 1/4 at z = 0 and 3/16 at z = +-ln 3.
Losses, with s = sigmoid:
    sigmoid loss  l(z, y) = s(-y z),        d l / d z = -y s(z) s(-z)
    logistic loss l(z, y) = log(1 + e^{-y z}), d l / d z = -y s(-y z)
so l_sig(z, +1) has slope -s(z)s(-z) and l_sig(z, -1) slope +s(z)s(-z);
l_log(z, +1) has slope -s(-z) and l_log(z, -1) slope +s(z).
Everything runs in float64 so the default assert_close tolerances are tight.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from pucli.pu.nnpu import (
    SURROGATE_LOSSES,
    NonNegativePULoss,
    PURisk,
    get_surrogate_loss,
    logistic_loss,
    nnpu_risk,
    sigmoid_loss,
)

LN3 = math.log(3.0)


def _scores(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def _value(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _grads(
    scores_positive: torch.Tensor, scores_unlabeled: torch.Tensor, result: PURisk
) -> tuple[torch.Tensor, torch.Tensor]:
    result.objective.backward()
    assert scores_positive.grad is not None and scores_unlabeled.grad is not None
    return scores_positive.grad, scores_unlabeled.grad


# Shared "over-fitted batch" for the ascent tests, sigmoid loss, pi = 1/2:
#   P = [ln3, 0]:   R_p^+ = (1/4 + 1/2)/2 = 3/8,  R_p^- = (3/4 + 1/2)/2 = 5/8
#   U = [-ln3, -ln3]: R_u^- = (1/4 + 1/4)/2 = 1/4
#   pi R_p^+ = 3/16,  r = 1/4 - (1/2)(5/8) = 4/16 - 5/16 = -1/16
ASCENT_P = (LN3, 0.0)
ASCENT_U = (-LN3, -LN3)


# ----------------------------------------------------------------------------- surrogates


def test_sigmoid_loss_is_sigmoid_of_minus_label_times_score() -> None:
    z = torch.tensor([0.0, LN3, -LN3], dtype=torch.float64)
    # s(-z) = [1/2, 1/4, 3/4];  s(z) = [1/2, 3/4, 1/4]
    assert_close(sigmoid_loss(z, 1), torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64))
    assert_close(sigmoid_loss(z, -1.0), torch.tensor([0.5, 0.75, 0.25], dtype=torch.float64))


def test_logistic_loss_is_softplus_of_minus_label_times_score() -> None:
    z = torch.tensor([0.0, LN3, -LN3], dtype=torch.float64)
    # log(1 + e^{-z}) = [log 2, log(1 + 1/3) = log(4/3), log(1 + 3) = log 4]
    expected_positive = torch.tensor(
        [math.log(2), math.log(4 / 3), math.log(4)], dtype=torch.float64
    )
    assert_close(logistic_loss(z, 1.0), expected_positive)
    # y = -1 mirrors the scores: [log 2, log 4, log(4/3)]
    assert_close(logistic_loss(z, -1), expected_positive[[0, 2, 1]])


def test_logistic_loss_does_not_overflow_for_large_scores() -> None:
    z = torch.tensor([1000.0], dtype=torch.float64)
    # log(1 + e^{1000}) = 1000 + log(1 + e^{-1000}) = 1000 to float64 precision
    assert_close(logistic_loss(z, -1), torch.tensor([1000.0], dtype=torch.float64))


@pytest.mark.parametrize("bad_sign", [0, 2, 0.5, -2.0])
def test_surrogate_losses_reject_target_sign_other_than_plus_minus_one(bad_sign: float) -> None:
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="target_sign"):
        sigmoid_loss(z, bad_sign)
    with pytest.raises(ValueError, match="target_sign"):
        logistic_loss(z, bad_sign)


def test_surrogate_lookup_returns_function_by_name() -> None:
    assert get_surrogate_loss("sigmoid") is sigmoid_loss
    assert get_surrogate_loss("logistic") is logistic_loss
    assert set(SURROGATE_LOSSES) == {"sigmoid", "logistic"}


def test_surrogate_lookup_error_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'hinge'.*logistic, sigmoid"):
        get_surrogate_loss("hinge")


# ----------------------------------------------------------------------------- (a) normal branch


def test_nnpu_takes_descent_step_on_full_risk_when_negative_risk_nonnegative() -> None:
    # pi = 1/2, sigmoid loss.
    # P = [ln3, 0]: R_p^+ = (1/4 + 1/2)/2 = 3/8;  R_p^- = (3/4 + 1/2)/2 = 5/8
    # U = [0, -ln3]: R_u^- = (1/2 + 1/4)/2 = 3/8
    # pi R_p^+ = 3/16;  r = 3/8 - 5/16 = 1/16 >= 0  -> descent on pi R_p^+ + r = 4/16 = 1/4
    positive, unlabeled = _scores(LN3, 0.0), _scores(0.0, -LN3)
    result = nnpu_risk(positive, unlabeled, 0.5)

    assert result.ascent is False
    assert_close(result.positive_risk, _value(3 / 16))
    assert_close(result.negative_risk, _value(1 / 16))
    assert_close(result.risk, _value(1 / 4))
    assert_close(result.objective.detach(), _value(1 / 4))

    grad_p, grad_u = _grads(positive, unlabeled, result)
    # d/dz_i [pi R_p^+ - pi R_p^-] = (pi / n_p) (-s s' - s s') = -2 (1/2)/2 s(z)s(-z) = -(1/2) s s'
    #   z = ln3: -(1/2)(3/16) = -3/32;   z = 0: -(1/2)(1/4) = -1/8
    assert_close(grad_p, torch.tensor([-3 / 32, -1 / 8], dtype=torch.float64))
    # d/dz_j R_u^- = (1/n_u) s(z)s(-z):  z = 0: (1/2)(1/4) = 1/8;  z = -ln3: (1/2)(3/16) = 3/32
    assert_close(grad_u, torch.tensor([1 / 8, 3 / 32], dtype=torch.float64))


def test_nnpu_reported_risk_and_parts_are_detached() -> None:
    result = nnpu_risk(_scores(*ASCENT_P), _scores(*ASCENT_U), 0.5)
    assert result.objective.requires_grad
    for part in (result.risk, result.positive_risk, result.negative_risk):
        assert not part.requires_grad
        assert part.shape == ()


# ----------------------------------------------------------------------------- (b) ascent branch


def test_nnpu_takes_ascent_step_when_negative_risk_below_minus_beta() -> None:
    # ASCENT_P / ASCENT_U: pi R_p^+ = 3/16, r = -1/16 < -beta = 0 -> ascent.
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    result = nnpu_risk(positive, unlabeled, 0.5)

    assert result.ascent is True
    assert_close(result.positive_risk, _value(3 / 16))
    assert_close(result.negative_risk, _value(-1 / 16))
    # Reported risk clamps r: 3/16 + max(0, -1/16) = 3/16
    assert_close(result.risk, _value(3 / 16))
    # Objective is -gamma r = -(-1/16) = 1/16 (positive risk is not part of it)
    assert_close(result.objective.detach(), _value(1 / 16))


def test_nnpu_ascent_gradient_excludes_positive_risk() -> None:
    # Objective -r = -R_u^- + pi R_p^-.
    # On P only +pi R_p^- contributes: (pi/n_p) s(z)s(-z) = (1/4) s s'
    #   z = ln3: (1/4)(3/16) = 3/64;   z = 0: (1/4)(1/4) = 1/16
    # A port that keeps pi R_p^+ in the ascent gradient adds -(1/4) s s' and gets [0, 0] instead.
    # On U: -(1/n_u) s(z)s(-z) = -(1/2)(3/16) = -3/32 for both z = -ln3.
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    grad_p, grad_u = _grads(positive, unlabeled, nnpu_risk(positive, unlabeled, 0.5))
    assert_close(grad_p, torch.tensor([3 / 64, 1 / 16], dtype=torch.float64))
    assert_close(grad_u, torch.tensor([-3 / 32, -3 / 32], dtype=torch.float64))


def test_nnpu_ascent_gradient_is_minus_gamma_times_negative_risk_gradient() -> None:
    # Same batch: the ascent gradient must equal -gamma * d r / d scores, computed from scratch.
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    grad_p, grad_u = _grads(positive, unlabeled, nnpu_risk(positive, unlabeled, 0.5, gamma=0.5))

    ref_p, ref_u = _scores(*ASCENT_P), _scores(*ASCENT_U)
    r = sigmoid_loss(ref_u, -1).mean() - 0.5 * sigmoid_loss(ref_p, -1).mean()
    (-0.5 * r).backward()
    assert_close(grad_p, ref_p.grad)
    assert_close(grad_u, ref_u.grad)


# ----------------------------------------------------------------------------- (c) beta


def test_nnpu_beta_above_overfit_margin_keeps_descent_step() -> None:
    # r = -1/16 and beta = 1/8: r < -1/8 is false -> descent on pi R_p^+ + r = 3/16 - 1/16 = 1/8
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    result = nnpu_risk(positive, unlabeled, 0.5, beta=1 / 8)

    assert result.ascent is False
    assert_close(result.objective.detach(), _value(1 / 8))
    # Reported risk is still Eq. 3: 3/16 + max(0, -1/16) = 3/16
    assert_close(result.risk, _value(3 / 16))

    grad_p, grad_u = _grads(positive, unlabeled, result)
    # Descent gradients as in the normal-branch test:
    #   P: -(1/2) s s' = [-(1/2)(3/16), -(1/2)(1/4)] = [-3/32, -1/8]
    #   U: (1/2) s s' = (1/2)(3/16) = 3/32 each
    assert_close(grad_p, torch.tensor([-3 / 32, -1 / 8], dtype=torch.float64))
    assert_close(grad_u, torch.tensor([3 / 32, 3 / 32], dtype=torch.float64))


def test_nnpu_beta_below_overfit_margin_still_takes_ascent_step() -> None:
    # r = -1/16 < -beta = -1/32 -> ascent, objective -r = 1/16
    result = nnpu_risk(_scores(*ASCENT_P), _scores(*ASCENT_U), 0.5, beta=1 / 32)
    assert result.ascent is True
    assert_close(result.objective.detach(), _value(1 / 16))


# ----------------------------------------------------------------------------- (d) gamma


@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.25, 0.0])
def test_nnpu_gamma_scales_ascent_objective_and_gradient(gamma: float) -> None:
    # objective = -gamma r = gamma/16; gradients = gamma * ([3/64, 1/16], [-3/32, -3/32])
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    result = nnpu_risk(positive, unlabeled, 0.5, gamma=gamma)

    assert result.ascent is True
    assert_close(result.objective.detach(), _value(gamma / 16))
    # gamma only scales the step, never the reported risk (3/16)
    assert_close(result.risk, _value(3 / 16))
    grad_p, grad_u = _grads(positive, unlabeled, result)
    assert_close(grad_p, gamma * torch.tensor([3 / 64, 1 / 16], dtype=torch.float64))
    assert_close(grad_u, gamma * torch.tensor([-3 / 32, -3 / 32], dtype=torch.float64))


# ----------------------------------------------------------------------------- (e) uPU


def test_upu_never_ascends_and_reports_negative_unbiased_risk() -> None:
    # pi = 3/4, sigmoid loss.
    # P = [ln3, ln3]: R_p^+ = 1/4, R_p^- = 3/4 -> pi R_p^+ = 3/16, pi R_p^- = 9/16
    # U = [-ln3, -ln3]: R_u^- = 1/4 = 4/16
    # r = 4/16 - 9/16 = -5/16;  unbiased risk = 3/16 - 5/16 = -1/8
    positive, unlabeled = _scores(LN3, LN3), _scores(-LN3, -LN3)
    result = nnpu_risk(positive, unlabeled, 0.75, non_negative=False)

    assert result.ascent is False
    assert_close(result.negative_risk, _value(-5 / 16))
    assert_close(result.risk, _value(-1 / 8))
    assert_close(result.objective.detach(), _value(-1 / 8))

    grad_p, grad_u = _grads(positive, unlabeled, result)
    # P: -2 (pi/n_p) s s' = -2 (3/4)/2 (3/16) = -9/64 each
    # U: (1/n_u) s s' = (1/2)(3/16) = 3/32 each
    assert_close(grad_p, torch.tensor([-9 / 64, -9 / 64], dtype=torch.float64))
    assert_close(grad_u, torch.tensor([3 / 32, 3 / 32], dtype=torch.float64))


def test_nnpu_on_same_batch_as_upu_clamps_risk_and_ascends() -> None:
    # Same batch as the uPU test: nnPU reports 3/16 + max(0, -5/16) = 3/16 and steps on 5/16.
    result = nnpu_risk(_scores(LN3, LN3), _scores(-LN3, -LN3), 0.75)
    assert result.ascent is True
    assert_close(result.risk, _value(3 / 16))
    assert_close(result.objective.detach(), _value(5 / 16))


# ----------------------------------------------------------------------------- (f) logistic


def test_nnpu_logistic_loss_descent_values_and_gradients() -> None:
    # pi = 1/2, logistic loss.
    # P = [ln3, 0]: R_p^+ = (log(4/3) + log 2)/2 = log(8/3)/2
    #               R_p^- = (log 4 + log 2)/2 = (3/2) log 2
    # U = [0, 0]:   R_u^- = log 2
    # r = log 2 - (1/2)(3/2) log 2 = (1/4) log 2 >= 0 -> descent
    # risk = (1/2) log(8/3)/2 + (1/4) log 2 = (log(8/3) + log 2)/4 = log(16/3)/4
    positive, unlabeled = _scores(LN3, 0.0), _scores(0.0, 0.0)
    result = nnpu_risk(positive, unlabeled, 0.5, loss="logistic")

    assert result.ascent is False
    assert_close(result.positive_risk, _value(math.log(8 / 3) / 4))
    assert_close(result.negative_risk, _value(math.log(2) / 4))
    assert_close(result.risk, _value(math.log(16 / 3) / 4))

    grad_p, grad_u = _grads(positive, unlabeled, result)
    # P: pi R_p^+ contributes (pi/n_p)(-s(-z)) and -pi R_p^- contributes -(pi/n_p) s(z), so
    #    (pi/n_p)(-s(-z) - s(z)) = -(pi/n_p) = -1/4 for every z, since s(z) + s(-z) = 1
    # U: (1/n_u) s(z) = (1/2)(1/2) = 1/4 each
    assert_close(grad_p, torch.tensor([-1 / 4, -1 / 4], dtype=torch.float64))
    assert_close(grad_u, torch.tensor([1 / 4, 1 / 4], dtype=torch.float64))


def test_nnpu_logistic_loss_ascent_values_and_gradients() -> None:
    # pi = 1/2, logistic loss.
    # P = [ln3, ln3]: R_p^+ = log(4/3), R_p^- = log 4
    # U = [-ln3, -ln3]: R_u^- = log(1 + e^{-ln3}) = log(4/3)
    # r = log(4/3) - (1/2) log 4 = log(4/3) - log 2 = log(2/3) < 0 -> ascent
    # objective = -r = log(3/2);  risk = (1/2) log(4/3)
    positive, unlabeled = _scores(LN3, LN3), _scores(-LN3, -LN3)
    result = nnpu_risk(positive, unlabeled, 0.5, loss="logistic")

    assert result.ascent is True
    assert_close(result.negative_risk, _value(math.log(2 / 3)))
    assert_close(result.risk, _value(math.log(4 / 3) / 2))
    assert_close(result.objective.detach(), _value(math.log(3 / 2)))

    grad_p, grad_u = _grads(positive, unlabeled, result)
    # Objective -R_u^- + pi R_p^-.
    # P: (pi/n_p) s(z) = (1/4)(3/4) = 3/16 each (no -s(-z) term from R_p^+)
    # U: -(1/n_u) s(z) = -(1/2) s(-ln3) = -(1/2)(1/4) = -1/8 each
    assert_close(grad_p, torch.tensor([3 / 16, 3 / 16], dtype=torch.float64))
    assert_close(grad_u, torch.tensor([-1 / 8, -1 / 8], dtype=torch.float64))


# ----------------------------------------------------------------------------- shapes and module


def test_nnpu_accepts_column_scores_like_a_one_output_linear_head() -> None:
    flat = nnpu_risk(_scores(*ASCENT_P), _scores(*ASCENT_U), 0.5)
    column = nnpu_risk(
        torch.tensor(ASCENT_P, dtype=torch.float64).unsqueeze(1),
        torch.tensor(ASCENT_U, dtype=torch.float64).unsqueeze(1),
        0.5,
    )
    assert column.ascent is flat.ascent
    assert_close(column.risk, flat.risk)
    assert_close(column.objective.detach(), flat.objective.detach())


def test_nonnegative_pu_loss_module_matches_function() -> None:
    criterion = NonNegativePULoss(0.5, loss="sigmoid", beta=1 / 32, gamma=0.5)
    positive, unlabeled = _scores(*ASCENT_P), _scores(*ASCENT_U)
    result = criterion(positive, unlabeled)
    # r = -1/16 < -1/32 -> ascent, objective -gamma r = 1/32; risk 3/16
    assert isinstance(result, PURisk)
    assert result.ascent is True
    assert_close(result.objective.detach(), _value(1 / 32))
    assert_close(result.risk, _value(3 / 16))
    assert "class_prior=0.5" in repr(criterion)


# ----------------------------------------------------------------------------- (g) validation


@pytest.mark.parametrize("class_prior", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_nnpu_rejects_class_prior_outside_open_unit_interval(class_prior: float) -> None:
    with pytest.raises(ValueError, match="class_prior"):
        nnpu_risk(_scores(0.0), _scores(0.0), class_prior)
    with pytest.raises(ValueError, match="class_prior"):
        NonNegativePULoss(class_prior)


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf")])
def test_nnpu_rejects_negative_or_non_finite_beta(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        nnpu_risk(_scores(0.0), _scores(0.0), 0.5, beta=beta)
    with pytest.raises(ValueError, match="beta"):
        NonNegativePULoss(0.5, beta=beta)


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan")])
def test_nnpu_rejects_gamma_outside_unit_interval(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        nnpu_risk(_scores(0.0), _scores(0.0), 0.5, gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        NonNegativePULoss(0.5, gamma=gamma)


def test_nnpu_rejects_unknown_loss_name() -> None:
    with pytest.raises(ValueError, match="valid names: logistic, sigmoid"):
        nnpu_risk(_scores(0.0), _scores(0.0), 0.5, loss="hinge")
    with pytest.raises(ValueError, match="valid names"):
        NonNegativePULoss(0.5, loss="hinge")


def test_nnpu_rejects_empty_scores() -> None:
    empty = torch.empty(0, dtype=torch.float64)
    with pytest.raises(ValueError, match="scores_positive is empty"):
        nnpu_risk(empty, _scores(0.0), 0.5)
    with pytest.raises(ValueError, match="scores_unlabeled is empty"):
        nnpu_risk(_scores(0.0), empty, 0.5)


@pytest.mark.parametrize("shape", [(), (2, 2), (2, 1, 1), (1, 2, 3)])
def test_nnpu_rejects_scores_that_are_not_a_vector(shape: tuple[int, ...]) -> None:
    bad = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"scores_positive must have shape \(N,\) or \(N, 1\)"):
        nnpu_risk(bad, _scores(0.0), 0.5)
    with pytest.raises(ValueError, match=r"scores_unlabeled must have shape"):
        nnpu_risk(_scores(0.0), bad, 0.5)


def test_nnpu_rejects_integer_scores() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        nnpu_risk(torch.tensor([0, 1]), _scores(0.0), 0.5)
