"""benchmarks/descriptor_precision.py on tiny synthetic descriptors: the float16 round trip, the PCA
codec (exact on hand-made data, deterministic, shapes), bytes per image, graph recall, the report
rows, and the selection on a store (float32 gives the float32 graph and selection back)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import descriptor_precision as dp

from pucli.pu.options import SelectorOptions


def test_float16_round_trip_rounds_to_nearest_even() -> None:
    x = torch.tensor([[1.0, 1 / 3, 65504.0, 1e-8, 2049.0, 2051.0, -0.1]])
    out = dp.float16_round_trip(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # 1/3 -> 0.333251953125 (11 significant bits); 1e-8 is below float16's smallest subnormal (5.96e-8);
    # 2049 and 2051 lie halfway between float16 neighbours 2 apart: ties go to the even mantissa.
    assert out.tolist() == [[1.0, 0.333251953125, 65504.0, 0.0, 2048.0, 2052.0, -0.0999755859375]]
    assert torch.isinf(dp.float16_round_trip(torch.tensor([70000.0]))).all()  # beyond float16: overflow, flagged below


def test_pca_is_exact_on_a_line_and_has_hand_values() -> None:
    # Channel b = 2 * channel a: standardised, both are (a - 3) / 2 = [-1, 0, 1], so one component,
    # (1, 1) / sqrt(2) (sign: largest entry positive), holds everything.
    pool = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    codec = dp.fit_pca(pool, 1)
    assert codec.mean.tolist() == [3.0, 6.0] and codec.scale.tolist() == [2.0, 4.0]
    assert codec.components.shape == (2, 1)
    assert codec.components[:, 0].tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert codec.explained == pytest.approx(1.0)
    z = codec.encode(pool)
    assert z.shape == (3, 1) and z[:, 0].tolist() == pytest.approx([-math.sqrt(2), 0.0, math.sqrt(2)], abs=1e-6)
    assert codec.decode(z).tolist() == [pytest.approx(row, abs=1e-5) for row in pool.tolist()]


def test_pca_is_deterministic_and_keeps_the_leading_variance() -> None:
    generator = torch.Generator().manual_seed(0)
    # 6 channels whose standardised variance sits in 2 directions, plus a little noise.
    latent = torch.randn(300, 2, generator=generator)
    mixing = torch.randn(2, 6, generator=generator)
    pool = latent @ mixing + 0.01 * torch.randn(300, 6, generator=generator) + 5.0
    first, second = dp.fit_pca(pool, 2), dp.fit_pca(pool.clone(), 2)
    assert torch.equal(first.components, second.components) and torch.equal(first.mean, second.mean)
    assert first.components.shape == (6, 2) and first.encode(pool).shape == (300, 2)
    assert first.decode(first.encode(pool)).shape == (300, 6)
    assert torch.allclose(first.components.T @ first.components, torch.eye(2), atol=1e-5)  # orthonormal
    assert first.explained > 0.999  # two directions hold nearly all of it
    assert dp.fit_pca(pool, 1).explained < first.explained <= dp.fit_pca(pool, 6).explained + 1e-9
    assert dp.fit_pca(pool, 6).explained == pytest.approx(1.0)
    with pytest.raises(ValueError):
        dp.fit_pca(pool, 7)
    with pytest.raises(ValueError):
        dp.fit_pca(pool, 0)


def test_fit_store_per_variant() -> None:
    pool = torch.tensor([[1.0, 2.0, 0.5], [3.0, 6.0, 0.5], [5.0, 10.0, 0.5], [1 / 3, 2 / 3, 0.5]])
    store, info = dp.fit_store(dp.parse_variant("float32"), pool)
    assert torch.equal(store(pool), pool) and info["relative_error"] == 0.0 and info["non_finite"] == 0
    store, info = dp.fit_store(dp.parse_variant("float16"), pool)
    assert torch.equal(store(pool), dp.float16_round_trip(pool)) and 0.0 < info["relative_error"] < 1e-3
    store, info = dp.fit_store(dp.parse_variant("pca1"), pool)
    assert store(pool).shape == pool.shape and info["explained"] == pytest.approx(1.0)  # b = 2a, c constant
    assert info["relative_error"] < 1e-5
    store, info = dp.fit_store(dp.parse_variant("pca2-coef"), pool)
    assert store(pool).shape == (4, 2) and info["relative_error"] is None


def test_variants_and_bytes() -> None:
    assert dp.parse_variant("pca32") == dp.Variant("pca32", "pca", 32)
    assert dp.parse_variant("pca8-coef") == dp.Variant("pca8-coef", "pca-coef", 8)
    for bad in ("pca", "pca0", "int8", "float64"):
        with pytest.raises(Exception):
            dp.parse_variant(bad)
    widths = {v: dp.parse_variant(v).bytes_per_image(106) for v in ("float32", "float16", "pca64", "pca16")}
    assert widths == {"float32": 424, "float16": 212, "pca64": 256, "pca16": 64}
    assert dp.parse_variant("pca16").side_bytes(106) == 4 * 106 * 18
    ext = {r["variant"]: r for r in dp.extrapolate([dp.parse_variant(v) for v in ("float32", "float16", "pca32")])}
    assert ext["float32"]["bytes_per_image"] == 23_808 and ext["float32"]["total_gb"] == 23.808
    assert ext["float16"]["bytes_per_image"] == 11_904 and ext["float16"]["total_gb"] == 11.904
    assert ext["pca32"]["bytes_per_image"] == 128 and ext["pca32"]["side_bytes"] == 4 * 5952 * 34
    assert ext["pca32"]["total_gb"] == round((128e6 + 4 * 5952 * 34) / 1e9, 3)


def test_graph_recall_counts_shared_neighbours() -> None:
    found = torch.tensor([[1, 2], [0, 2], [0, 1]])
    reference = torch.tensor([[1, 3], [2, 0], [3, 2]])
    # row 0: 1 of {1, 3}; row 1: both of {2, 0}; row 2: none of {3, 2}: 3 of 6.
    assert dp.graph_recall(found, reference) == 0.5
    assert dp.graph_recall(found, reference, rows=1) == 0.5  # the blocks change nothing
    assert dp.graph_recall(reference, reference) == 1.0


def test_report_rows_and_summary() -> None:
    def m(variant: str, seed: int, f1: float, recall: float = 0.9) -> dict:
        return {"variant": variant, "seed": seed, "f1": f1, "precision": f1, "recall": recall,
                "bytes_per_image": 4, "graph_recall_at_10": 1.0 if variant == "float32" else 0.8}

    rows = dp.report_rows([m("float32", 0, 0.98), m("float32", 1, 0.96), m("float16", 0, 0.97), m("float16", 1, 0.96),
                           m("pca4", 2, 0.5)])
    assert [r["delta_f1"] for r in rows] == [0.0, 0.0, -0.01, 0.0, None]  # seed 2 has no float32 row
    summary = {r["variant"]: r for r in dp.summarise(rows)}
    assert list(summary) == ["float32", "float16", "pca4"]
    assert summary["float32"]["f1"] == 0.97 and summary["float16"]["f1"] == 0.965
    assert summary["float16"]["delta_f1"] == -0.005 and summary["float16"]["delta_f1_range"] == [-0.01, 0.0]
    assert summary["pca4"]["delta_f1"] is None and summary["float16"]["seeds"] == [0, 1]
    table = dp.markdown_table(list(summary.values()), 1, dp.extrapolate([dp.parse_variant("float32")]))
    assert "| float16 | 4 | 0.9650 |" in table and "-0.0050 [-0.0100, +0.0000]" in table
    assert ("| float32 | 4 | 0.9700 | 0.9700 | 0.9000 | +0.0000 [+0.0000, +0.0000] | 1.0000 | 23,808 | 23.81 GB |"
            in table)


def test_selection_on_each_store_of_two_clusters() -> None:
    # Two well-separated clusters of 60 pool images each; 5 labeled positives in cluster 0; prior 0.5.
    generator = torch.Generator().manual_seed(1)
    centre = torch.full((8,), 10.0)
    pool = torch.cat([torch.randn(60, 8, generator=generator) + centre, torch.randn(60, 8, generator=generator)]) + 20.0
    positive = torch.randn(5, 8, generator=generator) + centre + 20.0
    truth = torch.arange(120) < 60
    options = SelectorOptions(class_prior=0.5, seed=0)
    reference, selected = dp.select_on(pool, positive, options)
    assert reference.neighbors.shape == (120, 10) and int(selected.sum()) == 60
    assert torch.equal(selected, truth)
    for name in ("float32", "float16", "pca4"):
        store, _ = dp.fit_store(dp.parse_variant(name), pool)
        graph, kept = dp.select_on(store(pool), store(positive), options)
        assert torch.equal(kept, truth), name
        if name == "float32":
            assert torch.equal(graph.neighbors, reference.neighbors)
            assert dp.graph_recall(graph.neighbors, reference.neighbors) == 1.0
