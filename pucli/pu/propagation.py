"""Ranking the pool over its k-NN graph: label propagation from the labeled positives, and graph
smoothing of the nnPU head's scores. Both are label spreading (Zhou, Bousquet, Lal, Weston,
Schölkopf, "Learning with Local and Global Consistency", NeurIPS 2003, Eq. (1)-(2), here with the
random-walk normalisation ``S = D^-1 W``):

    y_{t+1} = alpha * S y_t + (1 - alpha) * y_0

**Label propagation** (the ``"propagation"`` ranking, what ``"auto"`` picks when every class has at
least 5 labeled positives): the labeled positives join the pool's cached k-NN graph
(:func:`pucli.pu.neighbors.join_positives`), the graph is symmetrised (:func:`symmetric_walk`), and
``y_0`` = 1 on the positives, 0 on the pool spreads over it (:func:`propagate`; :func:`positive_walk`
builds the walk). An image's score is how much of the positives' label reaches it. Unlike the nnPU
head it needs no class prior to rank, so it holds at web-crawl priors of 2-5 %, under a capture
shift between labeled and pool images, and with BatchNorm teachers, where the head's ranking fails
(docs/benchmarks.md, "Pool grid"). The selection keeps the top ``class_prior * N``
(:func:`match_count`; :func:`pucli.pu.ranking.rank_by_propagation`).

**Graph smoothing** (the ``"nnpu"`` ranking): the nnPU head scores every pool image on its own, but
a pool image's nearest neighbours have its ground-truth label far more often than the head alone is
right (docs/benchmarks.md, "Graph smoothing"), so ``y_0 = F(x)`` spreads along the pool's graph
(:func:`spread_scores`) and each score becomes a blend of its neighbourhood's and its own. The head
still decides *how many* images to keep (its ``F(x) > 0`` count, which the nnPU risk ties to the
class prior); the graph decides *which* ones: :func:`smooth_scores` shifts the spread scores so that
exactly as many are above zero (PU-s1 keeps ``score > 0`` as before).

The defaults are k = 10, alpha = 0.99, 200 steps. A larger alpha reaches further along the graph
but over-smooths small pools; 0.99 improved on the head alone at every pool size tried (the figures,
``benchmarks/graph_mnist_pu.py``, and how alpha was chosen: docs/benchmarks.md, "Graph smoothing").
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pucli.errors import OptionError
from pucli.pu.neighbors import PoolGraph, graph_transform, join_positives

__all__ = [
    "GraphSummary",
    "Walk",
    "match_count",
    "positive_walk",
    "propagate",
    "smooth_over_graph",
    "smooth_scores",
    "spread_scores",
    "symmetric_walk",
]


@dataclass(frozen=True)
class GraphSummary:
    """How the pool's graph ranked it, for the run report and the selector file (``as_dict``).

    Attributes:
        neighbors: k of the graph; 0 when no graph ranked the pool (the nnPU head's ``F(x)`` did).
        alpha, steps: label spreading's settings.
        channels: the width of the space the graph was searched in.
        cache_hit: whether the pool's graph came from the cache.
        method: how it was searched: ``"exact"`` or the IVF-Flat settings.
        ranking: ``"propagation"`` or ``"nnpu"`` (the head's scores smoothed).
        seeds: labeled positive nodes the label spread from (propagation; augmented copies included).
        kept_by_prior: ``round(class_prior * N)``, the count the propagation's scores keep.
        warning: one line when the search is not the one asked for (faiss missing).
        changed: images the graph moved across the selection threshold, against the head's own scores.
    """

    neighbors: int = 0
    alpha: float | None = None
    steps: int | None = None
    channels: int | None = None
    cache_hit: bool | None = None
    method: str | None = None
    ranking: str | None = None
    seeds: int | None = None
    kept_by_prior: int | None = None
    warning: str | None = None
    changed: int | None = None

    @classmethod
    def of(cls, graph: PoolGraph, *, alpha: float, steps: int, ranking: str, **more: Any) -> GraphSummary:
        """The summary of ranking by ``ranking`` over ``graph`` with these spreading settings."""
        return cls(neighbors=int(graph.neighbors.shape[1]), alpha=alpha, steps=steps, channels=graph.channels,
                   cache_hit=graph.from_cache, method=graph.method, ranking=ranking, warning=graph.warning, **more)

    def as_dict(self) -> dict[str, Any]:
        """The fields that apply (``{"neighbors": 0}`` without a graph)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def _check_spreading(alpha: float, steps: int) -> None:
    """Raises OptionError for a label-spreading ``alpha`` outside [0, 1) or ``steps`` < 0."""
    if not 0.0 <= alpha < 1.0:
        raise OptionError("graph_alpha", alpha, "must be in [0, 1)")
    if steps < 0:
        raise OptionError("graph_steps", steps, "must be >= 0")


def spread_scores(scores: torch.Tensor, neighbors: torch.Tensor, *, alpha: float, steps: int) -> torch.Tensor:
    """Label spreading of ``scores`` over a k-NN graph (Zhou et al. 2003, Eq. (1), ``S = D^-1 W``).

    The iteration converges for ``alpha`` < 1 (to ``(1 - alpha) (I - alpha S)^-1 scores``, Zhou et
    al.'s closed form); at the default 0.99 it has converged by the default 200 steps (see
    docs/benchmarks.md, "Graph smoothing").

    ``y_0 = scores``, ``y_{t+1} = alpha * mean_{j in N(i)} y_t[j] + (1 - alpha) * y_0``.

    Args:
        scores: (N,) float32, the head's ``F(x)``.
        neighbors: (N, k) int64 from :func:`pucli.pu.neighbors.knn_graph`.
        alpha: in [0, 1); how much of each step comes from the neighbours (0 returns ``scores``).
        steps: iterations, >= 0.

    Returns:
        (N,) float32 spread scores (same scale as ``scores``: each is a weighted average of them).

    Raises:
        UsageError: ``alpha`` outside [0, 1) or ``steps`` < 0.
    """
    _check_spreading(alpha, steps)
    base = scores.float()
    if neighbors.shape[1] == 0:
        return base.clone()
    current = base.clone()
    for _ in range(steps):
        current = alpha * current[neighbors].mean(1) + (1.0 - alpha) * base
    return current


def match_count(spread: torch.Tensor, count: int) -> torch.Tensor:
    """Shift ``spread`` so that exactly its ``count`` highest values are > 0 (ties aside).

    The threshold is the ``count + 1``-th highest value itself (not a midpoint, which float32
    rounding can put onto the ``count``-th value): every value above it stays > 0, it and
    everything below it end at or below 0.

    Args:
        spread: (N,) float32.
        count: how many values should end above 0; <= 0 puts every value at or below 0,
            >= N every value above it.

    Returns:
        (N,) float32, ``spread`` minus a constant (plus 1 for ``count`` >= N). Exactly ``count``
        values are > 0 unless several values tie with the threshold.
    """
    n = len(spread)
    if n == 0:
        return spread.clone()
    ordered = torch.sort(spread, descending=True, stable=True).values
    if count >= n:
        return (spread - ordered[-1]) + 1.0
    return spread - ordered[max(0, count)]


def smooth_scores(scores: torch.Tensor, neighbors: torch.Tensor, *, alpha: float = 0.99, steps: int = 200) -> torch.Tensor:
    """The graph-smoothed PU scores pucli selects by: spread, then shifted to keep the head's count.

    Args:
        scores: (N,) float32 head scores ``F(x)`` of the pool.
        neighbors: (N, k) int64 k-NN graph of the pool (:func:`pucli.pu.neighbors.knn_graph`).
        alpha, steps: see :func:`spread_scores`.

    Returns:
        (N,) float32; ``(result > 0).sum() == (scores > 0).sum()`` unless spread values tie at
        the threshold.

    Raises:
        UsageError: ``alpha`` outside [0, 1) or ``steps`` < 0.
    """
    return match_count(spread_scores(scores, neighbors, alpha=alpha, steps=steps), int((scores > 0).sum()))


def smooth_over_graph(scores: torch.Tensor, graph: PoolGraph, *, alpha: float,
                      steps: int) -> tuple[torch.Tensor, GraphSummary]:
    """Head scores (N,) float32 -> graph-smoothed scores (N,) float32 with the same count above
    zero (:func:`smooth_scores`, the ``"nnpu"`` ranking), and the graph's :class:`GraphSummary`."""
    smoothed = smooth_scores(scores, graph.neighbors, alpha=alpha, steps=steps)
    return smoothed, GraphSummary.of(graph, alpha=alpha, steps=steps, ranking="nnpu")


@dataclass(frozen=True)
class Walk:
    """The symmetric k-NN graph as a sparse matrix: ``adjacency`` (V, V) float32 CSR of 0/1
    (an edge where either node lists the other) and ``degree`` (V,) float32 its row sums."""

    adjacency: torch.Tensor
    degree: torch.Tensor


def symmetric_walk(neighbors: torch.Tensor) -> Walk:
    """(V, k) int64 k-NN lists -> :class:`Walk` of the symmetrised graph (``W = A or A^T``)."""
    v, k = neighbors.shape
    rows = torch.arange(v).repeat_interleave(k)
    cols = neighbors.reshape(-1)
    keys = torch.unique(torch.cat([rows * v + cols, cols * v + rows]))  # sorted: CSR order
    rows, cols = keys // v, keys % v
    crow = torch.zeros(v + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=v), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        adjacency = torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols)), (v, v), check_invariants=False)
    return Walk(adjacency, torch.bincount(rows, minlength=v).float().clamp(min=1.0))


def propagate(initial: torch.Tensor, walk: Walk, *, alpha: float, steps: int) -> torch.Tensor:
    """Label spreading of ``initial`` over the symmetric graph (Zhou et al. 2003, Eq. (1), with
    ``S = D^-1 W``): ``y_{t+1} = alpha * S y_t + (1 - alpha) * y_0``.

    Args:
        initial: (V,) float32 ``y_0``; 1 on the labeled positives, 0 elsewhere for the ranking. Or
            (V, F): F labelings spread together (one sparse product a step for all of them, e.g.
            the folds of :func:`pucli.pu.mixture_proportion.cross_fit_propagation`; about 4.6x faster than F
            single spreads at a million nodes), each column as it would spread alone.
        walk: :func:`symmetric_walk` of the graph.
        alpha: in [0, 1); steps: >= 0.

    Returns:
        (V,) or (V, F) float32, as ``initial``: each node's share of positive label reaching it
        (in [0, 1] for a 0/1 ``y_0``).

    Raises:
        OptionError: ``alpha`` outside [0, 1) or ``steps`` < 0.
    """
    _check_spreading(alpha, steps)
    single = initial.ndim == 1
    base = initial.float()[:, None] if single else initial.float()
    current = base.clone()
    degree = walk.degree[:, None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for _ in range(steps):
            current = alpha * (walk.adjacency @ current) / degree + (1.0 - alpha) * base
    return current[:, 0] if single else current


def positive_walk(graph: PoolGraph, pool_descriptors: torch.Tensor, positive_descriptors: torch.Tensor, *,
                  seed: int = 0) -> Walk:
    """The :class:`Walk` over the pool (nodes ``0..N-1``) and the labeled positives (``N..``):
    the cached pool graph joined with the positives (:func:`pucli.pu.neighbors.join_positives`), symmetrised.

    Args:
        graph: the pool's :class:`PoolGraph`.
        pool_descriptors: (N, C) float32; positive_descriptors: (M, C) float32 (augmented copies included).
        seed: the seed the pool's graph features were made with (their PCA).
    """
    transform = graph_transform(pool_descriptors, seed=seed)
    joined = join_positives(graph.neighbors, transform(pool_descriptors), transform(positive_descriptors))
    return symmetric_walk(joined)
