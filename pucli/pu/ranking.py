"""The default ranking of ``pucli select``: label propagation from the labeled positives.

Which ranking a run uses (``SelectorOptions.ranking``, "auto" resolved by the number of labeled
positives per class) and the pool's scores by propagation over the graph of pool and positives
(:mod:`pucli.pu.graph`); :func:`pucli.pu.selection.run_selection` calls these after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pucli.pu.graph import PoolGraph, Walk, match_count, positive_walk, propagate
from pucli.pu.options import SelectorOptions
from pucli.pu.prior import propagation_applies

__all__ = ["rank_by_propagation", "ranks_by_propagation", "readable_labels"]


def ranks_by_propagation(options: SelectorOptions, positive_count: int, positive_labels: torch.Tensor | None) -> bool:
    """Whether the pool is ranked by label propagation: ``ranking`` "propagation", or "auto" with
    enough labeled positives per class (:func:`pucli.pu.prior.propagation_applies`)."""
    if options.ranking == "auto":
        return propagation_applies(positive_count, positive_labels)
    return options.ranking == "propagation"


def readable_labels(positive_labels: Sequence[int] | None, index: torch.Tensor | None) -> torch.Tensor | None:
    """The classes of the readable positives (``index``: their input positions), or None."""
    if positive_labels is None or index is None:
        return None
    return torch.as_tensor(list(positive_labels), dtype=torch.long)[index]


def rank_by_propagation(graph: PoolGraph, pool_descriptors: torch.Tensor, positive_descriptors: torch.Tensor,
                         options: SelectorOptions, *, walk: Walk | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The pool's scores by label propagation from the labeled positives (the default ranking).

    The positives (with their augmented copies) join the pool's cached k-NN graph
    (:func:`pucli.pu.graph.positive_walk`), carry label 1, and the label spreads over the
    symmetrised graph (:func:`pucli.pu.graph.propagate`); the pool's spread scores are shifted so
    that exactly ``round(class_prior * N)`` are above zero (PU-s1 keeps ``score > 0``; PU-s2 the
    top ``budget`` of the same ranking). ``walk``: that joined graph, if already built. Returns (N,)
    float32 scores and the graph's metadata."""
    if walk is None:
        walk = positive_walk(graph, pool_descriptors, positive_descriptors, seed=options.seed)
    pool_size = len(pool_descriptors)
    seeds = torch.zeros(pool_size + len(positive_descriptors))
    seeds[pool_size:] = 1.0
    spread = propagate(seeds, walk, alpha=options.graph_alpha, steps=options.graph_steps)[:pool_size]
    assert options.class_prior is not None
    keep = round(options.class_prior * pool_size)
    metadata: dict[str, Any] = {"neighbors": int(graph.neighbors.shape[1]), "alpha": options.graph_alpha,
                                "steps": options.graph_steps, "channels": graph.channels, "cache_hit": graph.from_cache,
                                "method": graph.method, "ranking": "propagation", "seeds": len(positive_descriptors),
                                "kept_by_prior": keep}
    if graph.warning:
        metadata["warning"] = graph.warning
    return match_count(spread, keep), metadata
