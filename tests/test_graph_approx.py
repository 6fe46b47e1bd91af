"""Approximate neighbours above a pool-size threshold (pucli.pu.neighbors): the IVF-Flat
index of faiss, the exact search below the threshold, the fallback without faiss, the cache key."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pucli.errors import OptionError
from pucli.pu import neighbors as graph
from pucli.pu.neighbors import (
    GRAPH_CACHE_VERSION,
    GRAPH_EXACT_MAX,
    ApproximateSearch,
    graph_features,
    ivf_settings,
    knn_graph,
    pool_graph,
    search_method,
)
from pucli.pu.propagation import smooth_over_graph
from pucli.pu.options import SelectorOptions

needs_faiss = pytest.mark.skipif(graph.load_faiss() is None, reason="faiss-cpu not installed (the scale extra)")


def _clustered(count: int = 2000, channels: int = 8, clusters: int = 20, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, channels, generator=generator) * 4
    members = torch.randint(0, clusters, (count,), generator=generator)
    return centres[members] + torch.randn(count, channels, generator=generator)


def _recall(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approximate[:, :, None] == exact[:, None, :]).any(2).sum()) / exact.numel()


def test_default_threshold_keeps_mnist_pu_and_the_options_default_on_the_exact_search() -> None:
    assert SelectorOptions(class_prior=0.3).graph_exact_max == GRAPH_EXACT_MAX > 100_000
    assert search_method(100_000, exact_max=GRAPH_EXACT_MAX, seed=0) == (None, None)


def test_selector_options_reject_a_negative_graph_exact_max() -> None:
    with pytest.raises(OptionError, match="^graph_exact_max -1"):
        SelectorOptions(class_prior=0.3, graph_exact_max=-1)
    assert SelectorOptions(class_prior=0.3, graph_exact_max=0).graph_exact_max == 0


def test_ivf_settings_grow_as_the_square_root_and_stay_trainable() -> None:
    assert ivf_settings(100_000) == ApproximateSearch(lists=316, probes=16, seed=0)
    assert ivf_settings(1_000_000, seed=3).lists == 1000 and ivf_settings(1_000_000, seed=3).seed == 3
    tiny = ivf_settings(20)
    assert tiny.lists == 1 and tiny.probes == 1
    assert ivf_settings(400).lists == 10  # at most count / 39 lists: faiss's minimum of points per centroid


@needs_faiss
def test_approximate_graph_recalls_the_exact_neighbours_and_never_the_row_itself() -> None:
    points = _clustered()
    exact = knn_graph(points, 10)
    approximate = graph.approximate_knn_graph(points, 10, search=ApproximateSearch(lists=40, probes=4))
    assert approximate.shape == exact.shape and approximate.dtype == torch.int64
    assert not (approximate == torch.arange(len(points))[:, None]).any()
    assert all(len(set(row)) == 10 for row in approximate.tolist())
    assert _recall(approximate, exact) >= 0.95


@needs_faiss
def test_approximate_graph_probing_every_list_is_the_exact_graph() -> None:
    points = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))  # continuous: no distance ties
    approximate = graph.approximate_knn_graph(points, 5, search=ApproximateSearch(lists=7, probes=7))
    assert torch.equal(approximate, knn_graph(points, 5))


@needs_faiss
def test_approximate_graph_is_the_same_for_the_same_seed_and_restores_faiss_threads() -> None:
    faiss = graph.load_faiss()
    points = _clustered(1500, seed=2)
    threads_before = faiss.omp_get_max_threads()
    search = ApproximateSearch(lists=38, probes=2, seed=5)
    first = graph.approximate_knn_graph(points, 10, search=search)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = graph.approximate_knn_graph(points, 10, search=search)
    finally:
        torch.set_num_threads(torch_threads)
    assert torch.equal(first, graph.approximate_knn_graph(points, 10, search=search))
    assert torch.equal(first, single)  # one faiss thread or several: the same graph
    assert faiss.omp_get_max_threads() == threads_before


@needs_faiss
def test_approximate_graph_clips_k_and_reports_progress() -> None:
    calls: list[tuple[str, int, int]] = []
    result = graph.approximate_knn_graph(torch.tensor([[0.0], [2.0], [5.0]]), 10,
                                         progress=lambda stage, done, total, **_: calls.append((stage, done, total)))
    assert result.tolist() == [[1, 2], [0, 2], [1, 0]]
    assert calls[-1] == ("graph", 3, 3)
    assert graph.approximate_knn_graph(torch.zeros(1, 3), 5).shape == (1, 0)
    with pytest.raises(OptionError, match="^graph_neighbors 0"):
        graph.approximate_knn_graph(torch.zeros(3, 2), 0)


def test_rows_whose_probed_lists_run_short_get_their_exact_neighbours() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # Rows 0-1 as faiss returns them for k = 2: row 0 found itself first; row 1 has a -1 (a short list).
    found = torch.tensor([[0, 1, 2], [1, 0, -1]])
    assert graph._drop_self(found, 0, 2, points).tolist() == [[1, 2], [0, 2]]
    # Row 2 where a duplicate hid the row itself: the first k of what came back.
    assert graph._drop_self(torch.tensor([[1, 0, 3]]), 2, 2, points).tolist() == [[1, 0]]


def test_pool_graph_is_the_exact_search_up_to_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path))
    descriptors = _clustered(400, seed=3)
    built = pool_graph(descriptors, neighbors=5, seed=0, device=torch.device("cpu"), use_cache=True, exact_max=400)
    assert built is not None and built.method == "exact" and built.warning is None
    assert torch.equal(built.neighbors, knn_graph(graph_features(descriptors), 5))
    again = pool_graph(descriptors, neighbors=5, seed=0, device=torch.device("cpu"), use_cache=True, exact_max=400)
    assert again is not None and again.from_cache and torch.equal(again.neighbors, built.neighbors)


@needs_faiss
def test_pool_graph_above_the_threshold_is_approximate_seeded_and_cached_under_its_method(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path))
    descriptors = _clustered(800, seed=4)
    exact = pool_graph(descriptors, neighbors=5, seed=0, device=torch.device("cpu"), use_cache=True)
    approximate = pool_graph(descriptors, neighbors=5, seed=0, device=torch.device("cpu"), use_cache=True,
                             exact_max=799)
    assert exact is not None and approximate is not None
    assert approximate.method == ivf_settings(800).describe() and not approximate.from_cache  # not the exact entry
    assert _recall(approximate.neighbors, exact.neighbors) >= 0.9
    again = pool_graph(descriptors, neighbors=5, seed=0, device=torch.device("cpu"), use_cache=True, exact_max=0)
    assert again is not None and again.from_cache and torch.equal(again.neighbors, approximate.neighbors)
    _, summary = smooth_over_graph(torch.randn(800), approximate, alpha=0.9, steps=3)
    assert summary.method.startswith("ivf-flat:lists=20,probes=16") and "warning" not in summary.as_dict()


def test_without_faiss_a_large_pool_falls_back_to_the_exact_search_with_a_one_line_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(graph, "load_faiss", lambda: None)
    descriptors = _clustered(300, seed=5)
    built = pool_graph(descriptors, neighbors=4, seed=0, device=torch.device("cpu"), use_cache=False, exact_max=10)
    assert built is not None and built.method == "exact"
    assert torch.equal(built.neighbors, knn_graph(graph_features(descriptors), 4))
    assert "faiss is not installed" in built.warning and "pucli[scale]" in built.warning
    assert len(built.warning.splitlines()) == 1
    _, summary = smooth_over_graph(torch.randn(300), built, alpha=0.9, steps=3)
    assert summary.method == "exact" and summary.warning == built.warning


def test_the_exact_graph_keeps_its_cache_key_and_an_approximate_one_adds_its_method(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path))
    features = graph_features(_clustered(100))
    digest = hashlib.sha256(f"v{GRAPH_CACHE_VERSION}-k10-{tuple(features.shape)}".encode())
    digest.update(features.numpy().tobytes())
    exact = graph._graph_cache_file(features, 10)
    assert exact.name == f"{digest.hexdigest()[:32]}.safetensors"  # graphs cached before issue 20 stay valid
    keys = {graph._graph_cache_file(features, 10, search) for search in
            (ApproximateSearch(10, 2), ApproximateSearch(10, 4), ApproximateSearch(10, 2, seed=1))}
    assert len(keys) == 3 and exact not in keys


def test_select_rejects_a_negative_graph_exact_max_in_one_line(tiny_teacher: Path, make_class_folder: Callable[..., Path],
                                                               make_pool: Callable[..., Path]) -> None:
    from pucli.cli import app

    result = CliRunner().invoke(app, ["select", "--positive", str(make_class_folder("pos", per_class=2)),
                                      "--unlabeled", str(make_pool("pool", count=4)), "--teacher", str(tiny_teacher),
                                      "--prior", "0.3", "--graph-exact-max", "-1", "--out", "x.tsv"])
    assert result.exit_code == 2
    assert "--graph-exact-max" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_select_with_graph_exact_max_0_records_the_approximate_method(
        tiny_teacher: Path, make_class_folder: Callable[..., Path], make_pool: Callable[..., Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from pucli.cli import app

    monkeypatch.setenv("PUCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PUCLI_STATE_DIR", str(tmp_path / "state"))
    args = ["select", "--positive", str(make_class_folder("pos", per_class=2)), "--unlabeled",
            str(make_pool("pool", count=20)), "--teacher", str(tiny_teacher), "--epochs", "1", "--ensemble", "1",
            "--batch-size", "8", "--workers", "0", "--threads", "1", "--prior", "0.3", "--graph-neighbors", "3",
            "--graph-exact-max", "0", "--out", str(tmp_path / "sel.tsv"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    method = json.loads(result.stdout)["graph"]["method"]
    assert method == ("exact" if graph.load_faiss() is None else ivf_settings(20).describe())


_TORCHRUN_SCRIPT = '''
import sys, torch
from pucli import distributed
from pucli.pu.neighbors import approximate_knn_graph, graph_features, ivf_settings, pool_graph

distributed.setup(torch.device("cpu"))
descriptors = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
graph = pool_graph(descriptors if distributed.is_main() else None, neighbors=4, seed=3, device=torch.device("cpu"),
                   use_cache=False, exact_max=0, progress=lambda *a, **k: None)
if distributed.is_main():
    expected = approximate_knn_graph(graph_features(descriptors), 4, search=ivf_settings(400, seed=3))
    assert graph is not None and torch.equal(graph.neighbors, expected), "graph differs from one process"
    assert graph.method == ivf_settings(400, seed=3).describe()
    open(sys.argv[1], "w").write("ok")
else:
    assert graph is None
'''


@needs_faiss
def test_under_torchrun_rank_0_builds_the_approximate_graph_of_one_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "approximate_ranks.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path / "result")], check=False, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "result").read_text() == "ok"
