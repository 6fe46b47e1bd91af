"""Graph smoothing of PU scores (pucli.graph): k-NN search, label spreading, count matching."""

from __future__ import annotations

import pytest
import torch

from pucli.errors import UsageError
from pucli.pu.neighbors import MAX_GRAPH_CHANNELS, block_rows, graph_features, knn_graph
from pucli.pu.propagation import match_count, smooth_scores, spread_scores


def test_knn_graph_on_a_line_by_hand() -> None:
    # Points 0, 1, 3, 7 on a line: nearest first, never the point itself.
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    graph = knn_graph(points, 2)
    assert graph.dtype == torch.int64
    assert graph.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


@pytest.mark.parametrize("block_elements", [1, 7, 1 << 26])
def test_knn_graph_matches_brute_force_in_any_block_size(block_elements: int) -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(57, 5, generator=generator)
    graph = knn_graph(points, 4, block_elements=block_elements)
    distances = torch.cdist(points.double(), points.double())
    distances.fill_diagonal_(float("inf"))
    expected = distances.topk(4, dim=1, largest=False).indices
    assert torch.equal(graph, expected)


def test_knn_graph_clips_k_and_reports_progress() -> None:
    calls = []
    graph = knn_graph(torch.tensor([[0.0], [2.0], [5.0]]), 10,
                      progress=lambda stage, done, total, **_: calls.append((stage, done, total)))
    assert graph.tolist() == [[1, 2], [0, 2], [1, 0]]
    assert calls[-1] == ("graph", 3, 3)
    assert knn_graph(torch.zeros(1, 3), 5).shape == (1, 0)


def test_knn_graph_rejects_k_below_one() -> None:
    with pytest.raises(UsageError, match="^graph_neighbors 0"):
        knn_graph(torch.zeros(3, 2), 0)


def test_spread_scores_two_steps_by_hand() -> None:
    # k = 1: 0 <-> 1, 2 -> 1. y0 = [2, -1, 4], alpha 0.5:
    # y1 = 0.5 * y0[nb] + 0.5 * y0 = [0.5, 0.5, 1.5]
    # y2 = 0.5 * y1[nb] + 0.5 * y0 = [1.25, -0.25, 2.25]
    neighbors = torch.tensor([[1], [0], [1]])
    scores = torch.tensor([2.0, -1.0, 4.0])
    torch.testing.assert_close(spread_scores(scores, neighbors, alpha=0.5, steps=1), torch.tensor([0.5, 0.5, 1.5]))
    torch.testing.assert_close(spread_scores(scores, neighbors, alpha=0.5, steps=2), torch.tensor([1.25, -0.25, 2.25]))


def test_spread_scores_averages_over_k_neighbours() -> None:
    # k = 2, alpha 0.75, one step: 0.75 * (mean of the two neighbours' scores) + 0.25 * own score.
    # Node 0: 0.75 * (0 - 6) / 2 + 0.25 * 3 = -1.5; node 1: 0.75 * (3 - 6) / 2 + 0 = -1.125;
    # node 2: 0.75 * (3 + 0) / 2 + 0.25 * -6 = -0.375.
    neighbors = torch.tensor([[1, 2], [0, 2], [0, 1]])
    scores = torch.tensor([3.0, 0.0, -6.0])
    torch.testing.assert_close(spread_scores(scores, neighbors, alpha=0.75, steps=1), torch.tensor([-1.5, -1.125, -0.375]))


def test_spread_scores_identity_cases_and_errors() -> None:
    scores = torch.tensor([1.0, -2.0, 3.0])
    neighbors = torch.tensor([[1], [2], [0]])
    assert torch.equal(spread_scores(scores, neighbors, alpha=0.0, steps=50), scores)
    assert torch.equal(spread_scores(scores, neighbors, alpha=0.9, steps=0), scores)
    assert torch.equal(spread_scores(scores, torch.empty(3, 0, dtype=torch.int64), alpha=0.9, steps=5), scores)
    with pytest.raises(UsageError, match="^graph_alpha 1.5"):
        spread_scores(scores, neighbors, alpha=1.5, steps=1)
    with pytest.raises(UsageError, match=r"\[0, 1\)"):
        spread_scores(scores, neighbors, alpha=1.0, steps=1)
    with pytest.raises(UsageError, match="^graph_steps -1"):
        spread_scores(scores, neighbors, alpha=0.5, steps=-1)


def test_match_count_by_hand_and_at_the_edges() -> None:
    spread = torch.tensor([3.0, -1.0, 2.0, 0.5])
    # Count 2: the threshold is the third highest value, 0.5.
    torch.testing.assert_close(match_count(spread, 2), torch.tensor([2.5, -1.5, 1.5, 0.0]))
    assert int((match_count(spread, 0) > 0).sum()) == 0
    assert int((match_count(spread, 4) > 0).sum()) == 4
    assert len(match_count(torch.empty(0), 3)) == 0


def test_match_count_is_exact_for_neighbouring_floats_and_huge_values() -> None:
    # A midpoint of two adjacent float32 values rounds onto one of them; the count must not drop.
    close = torch.tensor([1.0000002, 1.0000001, 0.0])
    assert int((match_count(close, 1) > 0).sum()) == 1
    assert int((match_count(close, 2) > 0).sum()) == 2
    huge = torch.tensor([3e8, 2e8, 1e8])
    assert int((match_count(huge, 3) > 0).sum()) == 3
    assert int((match_count(huge, 2) > 0).sum()) == 2


def test_match_count_with_ties_at_the_threshold_keeps_fewer_never_more() -> None:
    tied = torch.tensor([5.0, 1.0, 1.0, 1.0, -2.0])
    assert int((match_count(tied, 2) > 0).sum()) == 1


def test_smooth_scores_fixes_isolated_mistakes_and_keeps_the_count() -> None:
    # Two tight clusters of 20 (positives around 0, negatives around 10); the head gets two
    # items of each cluster wrong. Spreading over the graph puts every item on its cluster's side.
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(20, 3, generator=generator), 10 + torch.randn(20, 3, generator=generator)])
    truth = torch.arange(40) < 20
    scores = torch.where(truth, 2.0, -2.0)
    scores[[3, 11]] = -1.0  # positives the head missed
    scores[[25, 33]] = 1.0  # negatives the head kept
    smoothed = smooth_scores(scores, knn_graph(points, 5), alpha=0.9, steps=50)
    assert int((smoothed > 0).sum()) == int((scores > 0).sum()) == 20
    assert torch.equal(smoothed > 0, truth)


def test_graph_features_standardise_and_project_wide_descriptors() -> None:
    generator = torch.Generator().manual_seed(0)
    narrow = torch.randn(300, 6, generator=generator) * torch.tensor([1.0, 10.0, 100.0, 0.1, 5.0, 2.0]) + 7
    features = graph_features(narrow)
    torch.testing.assert_close(features.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.std(0), torch.ones(6), atol=1e-5, rtol=0)
    wide = torch.randn(400, MAX_GRAPH_CHANNELS + 72, generator=generator)
    projected = graph_features(wide, seed=3)
    assert projected.shape == (400, MAX_GRAPH_CHANNELS)
    assert torch.equal(projected, graph_features(wide, seed=3))  # seeded: reproducible


def test_row_ranges_on_block_boundaries_give_the_bits_of_the_whole_search() -> None:
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(50, 4, generator=generator)
    step = block_rows(50, block_elements=7 * 50)
    assert step == 7
    whole = knn_graph(points, 3, block_elements=7 * 50)
    parts = [knn_graph(points, 3, block_elements=7 * 50, rows=(start, min(50, start + 14))) for start in range(0, 50, 14)]
    assert torch.equal(torch.cat(parts), whole)
    assert knn_graph(points, 3, rows=(10, 10)).shape == (0, 3)
