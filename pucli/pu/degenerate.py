"""The collapse guard: a degenerate PU selection is never silent.

A PU selector can fail without any error: every score below zero (nothing kept), every score above
(the whole pool kept), or a kept count far from what the class prior says the pool holds. The
surest sign of the first is in the training history: with the sigmoid surrogate
``l(z, y) = sigmoid(-y z)`` (Kiryo et al. 2017), once every score is far below zero the nnPU risk
``R_pu = pi R_p^+ + max(0, R_u^- - pi R_p^-)`` sits at exactly ``pi`` (positive risk
``pi R_p^+ = pi``, negative risk ``r = 0``, no ascent step) and the saturated loss gives no
gradient to climb out. Its mirror, every score far above zero, sits at ``r = 1 - pi`` with a
positive risk of 0.

:func:`selection_warnings` turns these signs into one-line warnings; ``pucli select`` prints them
on stderr, records them in the run report and the ``--json`` output, and refuses to write an empty
index unless ``--allow-empty``. Pure Python on counts and the per-epoch history (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "COUNT_RATIO",
    "NEARLY_ALL",
    "STUCK_TOLERANCE",
    "risk_stuck",
    "selection_warnings",
]

#: "nearly the whole pool": more than this share of it kept (or more than halfway from the prior
#: to the whole pool, for priors above 0.9).
NEARLY_ALL = 0.95
#: A kept count below ``expected / COUNT_RATIO`` or above ``expected * COUNT_RATIO``, with
#: ``expected = class_prior * pool_size``, is far from the prior.
COUNT_RATIO = 4.0
#: Relative tolerance of "risk stuck": the last epoch's positive risk within this share of ``pi``
#: (or of 0) and its negative risk within this share of ``pi`` of 0 (or of ``1 - pi``).
STUCK_TOLERANCE = 0.02


def risk_stuck(history: Sequence[Mapping[str, float]], class_prior: float | None) -> str | None:
    """Which way the last epoch's risk is stuck: ``"below"`` (every score below zero: positive risk
    ``~ pi``, negative risk ``~ 0``), ``"above"`` (every score above: positive risk ``~ 0``,
    negative risk ``~ 1 - pi``), or None (not stuck, no history or no prior).

    ``history``: one mapping per epoch with ``positive_risk`` (``pi R_p^+``), ``negative_risk``
    (``r = R_u^- - pi R_p^-``) and ``ascent_steps`` (the count of ascent steps in the epoch), as
    :func:`pucli.pu.training.train_frozen` and ``train_finetune`` return it. A run with any ascent
    step in its last epoch is not stuck: the ascent branch is moving it; nor is one whose last epoch
    went back from a collapse (``rollbacks`` > 0, fine-tuning): its means mix the collapsed steps
    with the healthy state it returned to (:func:`selection_warnings` says so instead).
    """
    if not history or class_prior is None:
        return None
    last = history[-1]
    try:
        positive, negative, ascent = (float(last["positive_risk"]), float(last["negative_risk"]),
                                      float(last.get("ascent_steps", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None
    if ascent > 0 or float(last.get("rollbacks", 0.0)) > 0:
        return None
    tolerance = STUCK_TOLERANCE * class_prior
    # The sigmoid surrogate's positive risk cannot exceed pi; the logistic one can, and a collapsed
    # logistic run reports more than pi: "at least pi" covers both.
    if positive >= class_prior - tolerance and abs(negative) <= tolerance:
        return "below"
    if positive <= tolerance and abs(negative - (1.0 - class_prior)) <= tolerance:
        return "above"
    return None


def selection_warnings(
    kept: int,
    pool_size: int,
    class_prior: float | None,
    history: Sequence[Mapping[str, float]] = (),
    *,
    budget: int | None = None,
) -> list[str]:
    """One-line warnings about a degenerate selection; [] for a healthy one.

    Args:
        kept: images the selection keeps.
        pool_size: readable images of the pool it chose from.
        class_prior: the prior the selector trained with (given or estimated); None skips the
            checks that need it.
        history: the training history (see :func:`risk_stuck`).
        budget: PU-s2's N; the kept count is then the user's choice, so only the risk is checked.

    Warnings, in this order (each at most once):

    * none of the pool kept (PU-s1);
    * nearly all of it kept: more than ``max(NEARLY_ALL, (1 + pi) / 2)`` of the pool;
    * otherwise a kept count far from ``pi * pool_size``: below a quarter of it or above four times;
    * fine-tuning went back from a collapse (``rollbacks`` in the history);
    * the risk stuck at ``pi`` (every score below zero) or at ``1 - pi`` (every score above).
    """
    warnings: list[str] = []
    if pool_size <= 0:
        return warnings
    share = kept / pool_size
    if budget is None:
        expected = class_prior * pool_size if class_prior is not None else None
        prior_text = f"class prior {class_prior:.3g}, about {expected:,.0f} expected" if expected is not None else ""
        if kept == 0:
            warnings.append(f"the selection is empty: kept none of the {pool_size:,} pool images"
                            + (f" ({prior_text})" if prior_text else "")
                            + "; see docs/troubleshooting.md#degenerate-selections")
        elif share > max(NEARLY_ALL, (1.0 + (class_prior or 0.0)) / 2):
            warnings.append(f"kept nearly the whole pool: {kept:,} of {pool_size:,} images ({share:.1%}"
                            + (f"; {prior_text}" if prior_text else "")
                            + "); the selector tells nothing apart; see docs/troubleshooting.md#degenerate-selections")
        elif expected is not None and expected > 0 and (kept < expected / COUNT_RATIO or kept > expected * COUNT_RATIO):
            side = "under a quarter of" if kept < expected else f"over {COUNT_RATIO:g} times"
            warnings.append(f"kept {kept:,} of {pool_size:,} images, {side} what the class prior says the pool "
                            f"holds ({prior_text}); check `class_prior`, or see docs/troubleshooting.md#degenerate-selections")
    rollbacks = sum(int(float(epoch.get("rollbacks", 0.0))) for epoch in history)
    if rollbacks:
        warnings.append(f"fine-tuning collapsed {rollbacks} time(s) (every score on one side of zero) and went back "
                        "each time to its last healthy state at half the rate; the selection comes from where it "
                        "ended; see docs/troubleshooting.md#degenerate-selections")
    stuck = risk_stuck(history, class_prior)
    if stuck is not None:
        last = history[-1]
        positive, negative = float(last["positive_risk"]), float(last["negative_risk"])
        risk = float(last.get("risk", positive + max(0.0, negative)))
        scores = "every score fell below zero" if stuck == "below" else "every score rose above zero"
        warnings.append(f"PU training collapsed: the risk is stuck at {risk:.3g} (positive risk {positive:.3g}, "
                        f"negative risk {negative:.3g}, no ascent step in the last epoch): {scores} and the loss "
                        "saturated; see docs/troubleshooting.md#degenerate-selections")
    return warnings
