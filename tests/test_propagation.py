"""Label propagation from the labeled positives (the default ranking) and its class-prior estimate.

Hand-computed values for the walk and the spreading; small synthetic pools of two or three
clusters where the right selection and the right prior are known.
"""

from __future__ import annotations

import pytest
import torch

from pucli.errors import OptionError
from pucli.pu.neighbors import PoolGraph, graph_features, graph_transform, join_positives, knn_graph
from pucli.pu.propagation import positive_walk, propagate, symmetric_walk
from pucli.pu.options import SelectorOptions
from pucli.pu.mixture_proportion import PROPAGATION_METHOD, estimate_prior_by_propagation, propagation_applies
from pucli.pu.ranking import rank_by_propagation, ranks_by_propagation


def clusters(sizes: list[int], *, dim: int = 8, spread: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters at distance 3 along separate axes: (sum(sizes), dim) points and the cluster of each."""
    generator = torch.Generator().manual_seed(seed)
    points, labels = [], []
    for c, size in enumerate(sizes):
        centre = torch.zeros(dim)
        centre[c] = 3.0
        points.append(centre + spread * torch.randn(size, dim, generator=generator))
        labels.append(torch.full((size,), c))
    return torch.cat(points), torch.cat(labels)


def test_symmetric_walk_by_hand() -> None:
    # 0 -> 1, 1 -> 2, 2 -> 1: undirected edges {0-1, 1-2}.
    walk = symmetric_walk(torch.tensor([[1], [2], [1]]))
    assert walk.adjacency.to_dense().tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert walk.degree.tolist() == [1.0, 2.0, 1.0]


def test_propagate_by_hand() -> None:
    walk = symmetric_walk(torch.tensor([[1], [2], [1]]))  # the path 0 - 1 - 2
    y0 = torch.tensor([1.0, 0.0, 0.0])
    # one step: 0.5 * S y0 + 0.5 y0, S y0 = [y0[1], (y0[0] + y0[2]) / 2, y0[1]] = [0, 0.5, 0]
    assert propagate(y0, walk, alpha=0.5, steps=1).tolist() == [0.5, 0.25, 0.0]
    # two steps: S y1 = [0.25, 0.25, 0.25] -> 0.5 * that + 0.5 * y0
    assert propagate(y0, walk, alpha=0.5, steps=2).tolist() == [0.625, 0.125, 0.125]
    assert propagate(y0, walk, alpha=0.0, steps=5).tolist() == y0.tolist()
    with pytest.raises(OptionError) as error:
        propagate(y0, walk, alpha=1.0, steps=1)
    assert error.value.parameter == "graph_alpha"
    with pytest.raises(OptionError):
        propagate(y0, walk, alpha=0.5, steps=-1)


def test_join_positives_is_the_exact_graph_of_pool_and_positives() -> None:
    generator = torch.Generator().manual_seed(3)
    pool, positives = torch.randn(300, 6, generator=generator), torch.randn(20, 6, generator=generator)
    pool_graph = knn_graph(pool, 5)
    joined = join_positives(pool_graph, pool, positives, block_elements=1000)  # several blocks
    exact = knn_graph(torch.cat([pool, positives]), 5)
    assert joined.shape == (320, 5)
    assert joined.tolist() == exact.tolist()
    assert not (joined == torch.arange(320)[:, None]).any()  # never its own neighbour


def test_graph_transform_matches_graph_features() -> None:
    generator = torch.Generator().manual_seed(0)
    descriptors = torch.randn(500, 200, generator=generator) * torch.linspace(0.1, 5.0, 200)
    transform = graph_transform(descriptors, seed=4)
    assert transform.components is not None  # wider than MAX_GRAPH_CHANNELS: projected
    assert torch.equal(transform(descriptors), graph_features(descriptors, seed=4))


def test_propagation_selects_the_positive_cluster_at_a_low_prior() -> None:
    # 2,000 pool images: 60 positives (prior 0.03), two negative clusters; 10 labeled positives.
    pool, cluster = clusters([60, 1000, 940], seed=1)
    positives, _ = clusters([10, 0, 0], seed=2)
    truth = cluster == 0
    graph = PoolGraph(knn_graph(graph_features(pool), 10), pool.shape[1], False, "exact")
    options = SelectorOptions(class_prior=0.03)
    scores, metadata = rank_by_propagation(graph, pool, positives, options)
    assert metadata.ranking == "propagation" and metadata.kept_by_prior == 60
    kept = scores > 0
    assert int(kept.sum()) == 60
    assert torch.equal(kept, truth)


def test_propagation_prior_estimate_on_clusters() -> None:
    pool, _ = clusters([200, 900, 900], seed=5)  # prior 0.10
    positives, _ = clusters([30, 0, 0], seed=6)
    graph = PoolGraph(knn_graph(graph_features(pool), 10), pool.shape[1], False, "exact")
    walk = positive_walk(graph, pool, positives)
    calls = []

    def score(seeds: torch.Tensor) -> torch.Tensor:
        calls.append(int(seeds.sum()))
        return propagate(seeds.float(), walk, alpha=0.99, steps=200)

    estimate = estimate_prior_by_propagation(score, len(pool), len(positives), seed=0, bootstrap=50)
    assert calls == [24] * 5  # 5 folds, each seeding the 24 positives outside it
    assert estimate.method == PROPAGATION_METHOD
    assert abs(estimate.class_prior - 0.10) < 0.01
    assert estimate.low <= estimate.class_prior <= estimate.high


def test_propagation_prior_seeds_the_copies_of_training_positives_only() -> None:
    seen = []

    def score(seeds: torch.Tensor) -> torch.Tensor:
        seen.append(seeds.clone())
        return torch.zeros(len(seeds))

    # 20 pool nodes, 10 positives, 2 copies each (copy-major): 20 + 10 + 20 nodes.
    estimate_prior_by_propagation(score, 20, 10, 2, folds=5, bootstrap=0)
    for seeds in seen:
        plain = seeds[20:30]
        assert int(plain.sum()) == 8
        for copy in range(2):
            assert torch.equal(seeds[30 + 10 * copy:40 + 10 * copy], plain)
        assert not seeds[:20].any()


def test_propagation_applies_needs_five_per_class() -> None:
    assert propagation_applies(50, torch.tensor([0] * 5 + [1] * 45))
    assert not propagation_applies(50, torch.tensor([0] * 4 + [1] * 46))
    assert not propagation_applies(10, torch.arange(10))  # one per class (n_l = 1)
    assert propagation_applies(40, None) and not propagation_applies(39, None)


def test_ranking_option_is_checked() -> None:
    assert SelectorOptions(class_prior=0.3).ranking == "auto"
    SelectorOptions(class_prior=0.3, ranking="nnpu")
    SelectorOptions(class_prior=0.3, ranking="propagation")
    with pytest.raises(OptionError) as error:
        SelectorOptions(class_prior=0.3, ranking="head")
    assert error.value.parameter == "ranking"


def test_auto_ranking_propagates_with_five_positives_per_class_else_ranks_by_the_head() -> None:
    auto = SelectorOptions(class_prior=0.3)
    ten_per_class, one_per_class = torch.arange(10).repeat(10), torch.arange(10)
    assert ranks_by_propagation(auto, 100, ten_per_class)
    assert not ranks_by_propagation(auto, 10, one_per_class)
    assert ranks_by_propagation(auto, 40, None) and not ranks_by_propagation(auto, 39, None)
    assert ranks_by_propagation(SelectorOptions(class_prior=0.3, ranking="propagation"), 10, one_per_class)
    assert not ranks_by_propagation(SelectorOptions(class_prior=0.3, ranking="nnpu"), 100, ten_per_class)


def test_spreading_several_labelings_together_gives_each_ones_own_spread() -> None:
    """propagate on (V, F) is F single spreads in one sparse product a step, bit for bit."""
    pool, _ = clusters([40, 60, 50], seed=2)
    graph = PoolGraph(knn_graph(graph_features(pool), 6), pool.shape[1], False, "exact")
    walk = positive_walk(graph, pool, pool[:5])
    generator = torch.Generator().manual_seed(0)
    labelings = torch.rand(len(pool) + 5, 3, generator=generator) > 0.8
    together = propagate(labelings.float(), walk, alpha=0.9, steps=30)
    assert together.shape == (len(pool) + 5, 3)
    for column in range(3):
        alone = propagate(labelings[:, column].float(), walk, alpha=0.9, steps=30)
        assert torch.equal(together[:, column], alone)


def test_the_batched_cross_fit_is_the_fold_by_fold_one() -> None:
    from pucli.pu.mixture_proportion import cross_fit_propagation

    pool, _ = clusters([100, 300, 300], seed=5)
    positives, _ = clusters([12, 0, 0], seed=6)
    graph = PoolGraph(knn_graph(graph_features(pool), 8), pool.shape[1], False, "exact")
    walk = positive_walk(graph, pool, positives)
    calls = []

    def score(seeds: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(seeds.shape))
        return propagate(seeds.float(), walk, alpha=0.99, steps=100)

    one_by_one = cross_fit_propagation(score, len(pool), len(positives), seed=3)
    together = cross_fit_propagation(score, len(pool), len(positives), seed=3, batched=True)
    assert calls == [(len(pool) + 12,)] * 5 + [(len(pool) + 12, 5)]
    assert torch.equal(one_by_one.scores, together.scores) and torch.equal(one_by_one.rank, together.rank)
    assert torch.equal(one_by_one.pool_scores, together.pool_scores) and together.folds == 5
