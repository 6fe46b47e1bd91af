"""Which ranking a ``pucli select`` run uses, its selection rule, and the pool's scores by label propagation.

Every choice that depends on the ranking is made here, once per question:

- :func:`may_propagate`: whether the run needs what propagation needs (the positives' descriptors,
  the graph) before its labeled positives are counted;
- :func:`resolve_ranking`: the ranking the run uses, ``"propagation"`` or ``"nnpu"`` (``SelectorOptions.ranking``
  with ``"auto"`` resolved by the labeled positives per class, :func:`ranks_by_propagation`; without
  the pool's graph, the nnPU head's own ``F(x)``);
- :func:`prior_by_propagation`: whether an estimated class prior comes from the propagation's
  cross-fit (:func:`pucli.pu.class_prior.estimate_prior_from_descriptors`) rather than from P-vs-U
  scores;
- :func:`selection_rule`: the rule that keeps images, in words (PU-s1 or PU-s2);
- :func:`rank_by_propagation`: the pool's scores by propagation over the graph of pool and positives
  (:mod:`pucli.pu.propagation`).

:func:`pucli.pu.selection.run_selection` asks them after training and records the answers in its
result (``ranking``, ``rule``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pucli.pu.mixture_proportion import propagation_applies
from pucli.pu.neighbors import PoolGraph
from pucli.pu.options import SelectorOptions
from pucli.pu.propagation import GraphSummary, Walk, match_count, positive_walk, propagate

__all__ = ["RANKINGS", "may_propagate", "prior_by_propagation", "rank_by_propagation", "ranks_by_propagation", "readable_labels",
           "resolve_ranking", "selection_rule"]

#: The rankings a run can use (``"auto"`` resolves to one of them).
RANKINGS = ("propagation", "nnpu")


def ranks_by_propagation(options: SelectorOptions, positive_count: int, positive_labels: torch.Tensor | None) -> bool:
    """Whether ``options.ranking`` asks for label propagation: ``"propagation"``, or ``"auto"`` with
    enough labeled positives per class (:func:`pucli.pu.mixture_proportion.propagation_applies`)."""
    if options.ranking == "auto":
        return propagation_applies(positive_count, positive_labels)
    return options.ranking == "propagation"


def may_propagate(options: SelectorOptions) -> bool:
    """Whether a run may rank by propagation, before its labeled positives are counted: a ranking
    other than ``"nnpu"``, over the pool's graph (``graph_neighbors`` > 0). Such a run needs the
    positives' descriptors and the graph early."""
    return options.ranking != "nnpu" and options.graph_neighbors > 0


def resolve_ranking(options: SelectorOptions, positive_count: int, positive_labels: torch.Tensor | None, *,
                    can_propagate: bool) -> str:
    """The ranking a run uses: ``"propagation"`` when the pool has its graph and the positives their
    descriptors to join it (``can_propagate``) and :func:`ranks_by_propagation`; else ``"nnpu"``
    (the head's scores, smoothed over the graph when there is one)."""
    if can_propagate and ranks_by_propagation(options, positive_count, positive_labels):
        return "propagation"
    return "nnpu"


def prior_by_propagation(options: SelectorOptions, positive_count: int, positive_labels: torch.Tensor | None) -> bool:
    """Whether an estimated class prior comes from the propagation's cross-fit: a run that
    :func:`may_propagate`, with enough labeled positives per class for the estimate
    (:func:`pucli.pu.mixture_proportion.propagation_applies`), whatever the ranking then resolves to."""
    return may_propagate(options) and propagation_applies(positive_count, positive_labels)


def selection_rule(ranking: str, budget: int | None) -> str:
    """The selection rule of Xu et al. 2019 (Sec. 2.3) a run applies, in words: PU-s2 keeps the
    ``budget`` best; PU-s1 keeps ``score > 0``, which the propagation's scores make the top
    ``class_prior x N``."""
    if budget is not None:
        return f"PU-s2 (top {budget})"
    if ranking == "propagation":
        return "PU-s1 (top class prior x N by label propagation; score > 0)"
    return "PU-s1 (score > 0)"


def readable_labels(positive_labels: Sequence[int] | None, index: torch.Tensor | None) -> torch.Tensor | None:
    """The classes of the readable positives (``index``: their input positions), or None."""
    if positive_labels is None or index is None:
        return None
    return torch.as_tensor(list(positive_labels), dtype=torch.long)[index]


def rank_by_propagation(graph: PoolGraph, pool_descriptors: torch.Tensor, positive_descriptors: torch.Tensor,
                        options: SelectorOptions, *, walk: Walk | None = None) -> tuple[torch.Tensor, GraphSummary]:
    """The pool's scores by label propagation from the labeled positives (the default ranking).

    The positives (with their augmented copies) join the pool's cached k-NN graph
    (:func:`pucli.pu.propagation.positive_walk`), carry label 1, and the label spreads over the
    symmetrised graph (:func:`pucli.pu.propagation.propagate`); the pool's spread scores are shifted so
    that exactly ``round(class_prior * N)`` are above zero (PU-s1 keeps ``score > 0``; PU-s2 the
    top ``budget`` of the same ranking). ``walk``: that joined graph, if already built. Returns (N,)
    float32 scores and the graph's :class:`~pucli.pu.propagation.GraphSummary`."""
    if walk is None:
        walk = positive_walk(graph, pool_descriptors, positive_descriptors, seed=options.seed)
    pool_size = len(pool_descriptors)
    seeds = torch.zeros(pool_size + len(positive_descriptors))
    seeds[pool_size:] = 1.0
    spread = propagate(seeds, walk, alpha=options.graph_alpha, steps=options.graph_steps)[:pool_size]
    assert options.class_prior is not None
    keep = round(options.class_prior * pool_size)
    summary = GraphSummary.of(graph, alpha=options.graph_alpha, steps=options.graph_steps, ranking="propagation",
                              seeds=len(positive_descriptors), kept_by_prior=keep)
    return match_count(spread, keep), summary
