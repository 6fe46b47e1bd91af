"""The pool's k-nearest-neighbour graph: the search space, exact and approximate search, the cache.

The graph is what pucli ranks the pool over (:mod:`pucli.pu.propagation`): images that look alike
to the teacher nearly always share their label, so each image's neighbours vote on it. It is built
in the space of :func:`graph_features`: the frozen descriptors standardised with the pool's own
statistics, and projected onto their leading principal components (``torch.pca_lowrank``, seeded)
when wider than :data:`MAX_GRAPH_CHANNELS`, which bounds C.

The exact search (:func:`knn_graph`) is O(N^2 C) multiply-adds, run in row blocks so memory stays
near ``block_elements`` floats; under torchrun the ranks split the blocks (:func:`pool_graph`). Its
wall-clock: docs/benchmarks.md, "Graph smoothing", and docs/scaling.md.

Pools larger than :data:`GRAPH_EXACT_MAX` images (an option: ``SelectorOptions.graph_exact_max``)
are searched approximately instead (:func:`approximate_knn_graph`): an inverted-file index with
exact distances inside the probed lists (IVF-Flat, faiss: Johnson, Douze, Jégou, "Billion-scale
similarity search with GPUs", IEEE Trans. Big Data 2019), whose cost grows as
``N * (lists + N * probes / lists) * C`` instead of ``N^2 C``. IVF-Flat rather than a graph index
(HNSW: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", IEEE TPAMI 2018) because its one random step, the
k-means training, is seeded, so the same features give the same graph; its recall@10 against the
exact graph is measured in docs/benchmarks.md, "Approximate neighbours". faiss is the optional
``scale`` extra: without it every pool gets the exact search, and the graph carries a one-line
warning.

The pool's graph is cached on disk by its features (:func:`pool_graph`); the labeled positives
join it without a second pool search (:func:`join_positives`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from pucli import distributed
from pucli.cache import CacheEntry, read_entry, write_entry
from pucli.errors import OptionError
from pucli.paths import cache_dir
from pucli.progress import ProgressCallback, no_progress

__all__ = [
    "BLOCK_ELEMENTS",
    "GRAPH_EXACT_MAX",
    "MAX_GRAPH_CHANNELS",
    "ApproximateSearch",
    "GraphTransform",
    "PoolGraph",
    "approximate_knn_graph",
    "block_rows",
    "graph_features",
    "graph_transform",
    "ivf_settings",
    "join_positives",
    "knn_graph",
    "load_faiss",
    "pool_graph",
    "search_method",
]

MAX_GRAPH_CHANNELS = 128
"""Descriptors wider than this are projected onto this many principal components before the search."""


def graph_features(descriptors: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """The space the k-NN graph is built in: standardised, at most :data:`MAX_GRAPH_CHANNELS` wide.

    Each channel is standardised with the pool's own mean and std (floor 1e-6), as the score
    head does, so a 6-channel conv stage and an 84-d layer weigh alike. Wider descriptors are
    projected onto their leading principal components (``torch.pca_lowrank``, seeded, so the
    projection is reproducible).

    Args:
        descriptors: (N, C) float32 pool descriptors.
        seed: seeds the randomised PCA (only used when C > :data:`MAX_GRAPH_CHANNELS`).

    Returns:
        (N, min(C, MAX_GRAPH_CHANNELS)) float32.
    """
    return graph_transform(descriptors, seed=seed)(descriptors)


@dataclass(frozen=True)
class GraphTransform:
    """The map :func:`graph_features` applies, fitted on the pool, to apply to other images too
    (the labeled positives joined to the graph: :func:`join_positives`).

    Attributes:
        mean, std: (C,) float32 the pool's channel statistics (std floored at 1e-6).
        components: (C, MAX_GRAPH_CHANNELS) float32 principal directions, or None when C is small.
    """

    mean: torch.Tensor
    std: torch.Tensor
    components: torch.Tensor | None

    def __call__(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(M, C) float32 descriptors -> (M, C') float32 graph features."""
        features = (descriptors.float() - self.mean) / self.std
        if self.components is not None:
            features = features @ self.components
        return features.contiguous()


def graph_transform(descriptors: torch.Tensor, *, seed: int = 0) -> GraphTransform:
    """Fit :class:`GraphTransform` on the pool's (N, C) float32 descriptors (seeded randomised PCA
    when C > :data:`MAX_GRAPH_CHANNELS`)."""
    features = descriptors.float()
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    components = None
    if features.shape[1] > MAX_GRAPH_CHANNELS and len(features) > MAX_GRAPH_CHANNELS:
        with torch.random.fork_rng(devices=[]):  # pca_lowrank draws from the global CPU generator
            torch.default_generator.manual_seed(seed)
            _, _, components = torch.pca_lowrank((features - mean) / std, q=MAX_GRAPH_CHANNELS, center=False)
    return GraphTransform(mean, std, components)


BLOCK_ELEMENTS = 1 << 26
"""Distances one search block holds by default (float32: 256 MiB)."""


def block_rows(count: int, block_elements: int | None = None) -> int:
    """Rows per search block of :func:`knn_graph` for a pool of ``count``: ``block_elements / count``
    (default :data:`BLOCK_ELEMENTS`), at least 1. Row ranges that start on a multiple of it compute
    exactly the blocks (and bits) of a whole-pool search, which is how ranks under torchrun split
    the work."""
    return max(1, min(count, (block_elements or BLOCK_ELEMENTS) // max(1, count)))


def knn_graph(
    features: torch.Tensor,
    neighbors: int,
    *,
    device: torch.device | None = None,
    block_elements: int | None = None,
    rows: tuple[int, int] | None = None,
    progress: ProgressCallback = no_progress,
) -> torch.Tensor:
    """Exact k nearest neighbours of rows of ``features`` among all the others (Euclidean).

    Args:
        features: (N, C) float32.
        neighbors: k >= 1; fewer than k other rows gives every other row.
        device: where the distance blocks are computed (CPU by default; a GPU is much faster).
        block_elements: about how many distances one block holds (float32), which bounds memory;
            default :data:`BLOCK_ELEMENTS`.
        rows: ``(start, stop)``: only these rows' neighbours (all N candidates are searched);
            None for every row. Start on a multiple of :func:`block_rows` to get the bits of the
            whole search.
        progress: called as ``progress("graph", rows_done, rows_total)``.

    Returns:
        (stop - start, min(k, N - 1)) int64 row indices into ``features``, nearest first. A row is
        never its own neighbour.

    Raises:
        UsageError: ``neighbors`` < 1.
    """
    if neighbors < 1:
        raise OptionError("graph_neighbors", neighbors, "must be >= 1 (or 0 to turn graph smoothing off)")
    n = len(features)
    first, last = rows if rows is not None else (0, n)
    k = min(neighbors, n - 1)
    if k <= 0 or last <= first:
        return torch.empty(max(0, last - first), max(0, k), dtype=torch.int64)
    device = device or torch.device("cpu")
    points = features.to(device, torch.float32)
    norms = (points * points).sum(1)
    step = block_rows(n, block_elements)
    out = torch.empty(last - first, k, dtype=torch.int64)
    for start in range(first, last, step):
        stop = min(last, start + step)
        # ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, one block of rows against every row.
        distances = torch.addmm(norms[None, :], points[start:stop], points.T, alpha=-2.0)
        distances += norms[start:stop, None]
        distances[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = math.inf
        out[start - first:stop - first] = distances.topk(k, dim=1, largest=False, sorted=True).indices.cpu()
        progress("graph", stop - first, last - first)
    return out


GRAPH_EXACT_MAX = 200_000
"""Pools of up to this many images get the exact search (:func:`knn_graph`), larger ones the
approximate index (:func:`approximate_knn_graph`); the default of ``SelectorOptions.graph_exact_max``."""


@dataclass(frozen=True)
class ApproximateSearch:
    """The settings of the IVF-Flat index :func:`approximate_knn_graph` searches.

    Attributes:
        lists: inverted lists (k-means centroids); :func:`ivf_settings` picks ``~ sqrt(N)``.
        probes: lists searched per query (``nprobe``); more is slower and closer to exact.
        seed: seeds the k-means training (and its sample of training points).
        train_per_list: training points per list (a seeded sample of the pool; faiss's
            ``max_points_per_centroid``), which bounds the training cost at large N.
    """

    lists: int
    probes: int
    seed: int = 0
    train_per_list: int = 64

    def describe(self) -> str:
        """The method as the graph cache key and the run report name it."""
        return f"ivf-flat:lists={self.lists},probes={self.probes},seed={self.seed},train={self.train_per_list}"


IVF_PROBES = 16
"""Lists each query probes by default (chosen by recall@10 on mnist-pu: docs/benchmarks.md)."""


def ivf_settings(count: int, *, seed: int = 0) -> ApproximateSearch:
    """The default IVF-Flat settings for a pool of ``count`` images: ``round(sqrt(count))`` lists
    (at least 1; at most ``count / 39``, faiss's minimum of training points per centroid) and
    :data:`IVF_PROBES` probes (at most the lists)."""
    lists = max(1, min(round(math.sqrt(max(1, count))), count // 39))
    return ApproximateSearch(lists=lists, probes=min(IVF_PROBES, lists), seed=seed)


def load_faiss() -> ModuleType | None:
    """The ``faiss`` module, or None when it is not installed (``pip install 'pucli[scale]'``)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


_SEARCH_ROWS = 8192  # queries per faiss call: progress between them, bounded result buffers


def approximate_knn_graph(
    features: torch.Tensor,
    neighbors: int,
    *,
    search: ApproximateSearch | None = None,
    progress: ProgressCallback = no_progress,
) -> torch.Tensor:
    """Approximate k nearest neighbours of every row of ``features`` (Euclidean), by an IVF-Flat
    index (faiss; Johnson, Douze & Jégou 2019): the rows are clustered by k-means into
    ``search.lists`` lists, and each row is compared, with exact distances, with the rows of its
    ``search.probes`` nearest lists only.

    Deterministic: the k-means training is seeded (``search.seed``), so the same features, settings
    and number of threads give the same graph. faiss runs on as many OpenMP threads as
    ``torch.get_num_threads()`` (one with ``--threads 1``); the previous count is restored after.
    A row whose probed lists hold fewer than k other rows gets its neighbours from the exact search.

    Args:
        features: (N, C) float32 (CPU; faiss-cpu).
        neighbors: k >= 1; fewer than k other rows gives every other row.
        search: the index settings; None: :func:`ivf_settings` of N.
        progress: called as ``progress("graph", rows_done, N)``.

    Returns:
        (N, min(k, N - 1)) int64 row indices into ``features``, nearest first; a row is never its
        own neighbour (as :func:`knn_graph`).

    Raises:
        UsageError: ``neighbors`` < 1.
        ImportError: faiss is not installed (:func:`pool_graph` checks first and searches exactly).
    """
    if neighbors < 1:
        raise OptionError("graph_neighbors", neighbors, "must be >= 1 (or 0 to turn graph smoothing off)")
    faiss = load_faiss()
    if faiss is None:
        raise ImportError("approximate neighbours need faiss: pip install 'pucli[scale]'")
    n = len(features)
    k = min(neighbors, n - 1)
    if k <= 0:
        return torch.empty(n, max(0, k), dtype=torch.int64)
    search = search or ivf_settings(n)
    points = features.detach().cpu().to(torch.float32).contiguous().numpy()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        quantizer = faiss.IndexFlatL2(points.shape[1])
        index = faiss.IndexIVFFlat(quantizer, points.shape[1], search.lists)
        index.cp.seed = search.seed % (1 << 31)
        index.cp.max_points_per_centroid = search.train_per_list
        index.cp.min_points_per_centroid = 1  # ivf_settings keeps >= 39 per list; no stderr warning on tiny pools
        index.train(points)
        index.add(points)
        index.nprobe = search.probes
        out = torch.empty(n, k, dtype=torch.int64)
        for start in range(0, n, _SEARCH_ROWS):
            stop = min(n, start + _SEARCH_ROWS)
            _, found = index.search(points[start:stop], k + 1)  # k + 1: the row itself comes back too
            out[start:stop] = _drop_self(torch.from_numpy(found), start, k, features)
            progress("graph", stop, n)
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def _drop_self(found: torch.Tensor, start: int, k: int, features: torch.Tensor) -> torch.Tensor:
    """(B, k + 1) int64 faiss results of rows ``start..start+B`` (-1 where a list ran short) -> (B, k):
    the first k that are neither the row itself nor -1, in faiss's order (nearest first). Rows left
    with fewer than k are searched exactly."""
    rows = torch.arange(start, start + len(found))[:, None]
    valid = (found != rows) & (found >= 0)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :k]  # valid ones first
    chosen = found.gather(1, order)
    short = (valid.sum(1) < k).nonzero().flatten()
    if len(short):
        points = features.to(torch.float32)
        queries = points[start + short]
        distances = torch.cdist(queries, points).square()
        distances[torch.arange(len(short)), start + short] = math.inf
        chosen[short] = distances.topk(k, dim=1, largest=False, sorted=True).indices
    return chosen


# --- the pool's graph, cached (what selection calls) ---


GRAPH_CACHE_VERSION = 2  # 2: a pucli.cache entry


def _graph_cache_file(features: torch.Tensor, neighbors: int, method: ApproximateSearch | None = None) -> Path:
    digest = hashlib.sha256()
    # The exact search's key is the one it always had (its cached graphs stay valid); an
    # approximate graph's key adds the method and its settings.
    digest.update(f"v{GRAPH_CACHE_VERSION}-k{neighbors}-{tuple(features.shape)}".encode())
    if method is not None:
        digest.update(f"-{method.describe()}".encode())
    digest.update(memoryview(features.detach().cpu().contiguous().numpy()))  # no copy of the bytes
    return cache_dir() / "graphs" / f"{digest.hexdigest()[:32]}.safetensors"


def _read_graph_cache(path: Path, count: int, neighbors: int) -> torch.Tensor | None:
    def valid(entry: CacheEntry) -> bool:
        graph = entry.tensors["neighbors"]
        return (tuple(graph.shape) == (count, min(neighbors, count - 1)) and graph.dtype == torch.int64
                and not (graph.numel() and (int(graph.min()) < 0 or int(graph.max()) >= count)))

    entry = read_entry(path, kind="graph", version=GRAPH_CACHE_VERSION, check=valid)
    return entry.tensors["neighbors"] if entry is not None else None  # None: rebuild and overwrite it


def _write_graph_cache(path: Path, graph: torch.Tensor) -> None:
    write_entry(path, {"neighbors": graph}, kind="graph", version=GRAPH_CACHE_VERSION)  # False: a read-only cache


@dataclass
class PoolGraph:
    """The pool's k-NN graph ((N, k) int64), the width of the space it was searched in, whether it
    came from the cache, how it was searched (``"exact"`` or :meth:`ApproximateSearch.describe`),
    and a one-line warning when the search is not the one asked for (None otherwise)."""

    neighbors: torch.Tensor
    channels: int
    from_cache: bool
    method: str = "exact"
    warning: str | None = None


def search_method(count: int, *, exact_max: int, seed: int) -> tuple[ApproximateSearch | None, str | None]:
    """How a pool of ``count`` images is searched: None (exact) up to ``exact_max`` images, the
    IVF-Flat settings (:func:`ivf_settings`, seeded) above it; and a warning when faiss is
    missing above it (then the search is exact)."""
    if count <= exact_max:
        return None, None
    if load_faiss() is None:
        return None, (f"faiss is not installed: the {count:,}-image pool (above graph_exact_max {exact_max:,}) "
                      "gets the slower exact neighbour search; pip install 'pucli[scale]'")
    return ivf_settings(count, seed=seed), None


def pool_graph(pool_descriptors: torch.Tensor | None, *, neighbors: int, seed: int, device: torch.device,
               use_cache: bool, exact_max: int = GRAPH_EXACT_MAX,
               progress: ProgressCallback = no_progress) -> PoolGraph | None:
    """The pool's k-NN graph, from the cache when these exact features were seen.

    Pools of up to ``exact_max`` images get the exact search (:func:`knn_graph`), larger ones the
    approximate one (:func:`approximate_knn_graph`, seeded with ``seed``) when faiss is installed
    (:func:`search_method`; without it the exact search, and the graph carries a warning).

    Under torchrun every rank must call this (rank 0 with the gathered descriptors, the others
    with None). Exact search: rank 0 shares the search features, each rank searches a contiguous
    run of whole blocks of rows (the blocks of a one-process search, so the same bits), and the
    rows are gathered on rank 0. Approximate search: rank 0 builds and searches the index alone
    (the same graph as one process) while the others wait. Rank 0 gets the graph, the other ranks
    None. One process: the search runs here. None also when the pool has fewer than 2 images
    (nothing to smooth).
    """
    main = distributed.is_main()
    features = graph_features(pool_descriptors, seed=seed) if pool_descriptors is not None else None
    path = cached = None
    method, warning = (search_method(len(features), exact_max=exact_max, seed=seed) if features is not None
                       else (None, None))
    if features is not None and len(features) > 1:
        path = _graph_cache_file(features, neighbors, method) if use_cache else None
        cached = _read_graph_cache(path, len(features), neighbors) if path is not None else None
    described = method.describe() if method is not None else "exact"
    # Rank 0 decides: (count, channels, approximate?) to search, or None when there is nothing to build.
    plan = ((*features.shape, method is not None) if features is not None and len(features) > 1 and cached is None
            else None)
    plan = distributed.broadcast_object(plan) if distributed.is_distributed() else plan
    if cached is not None:
        progress("graph", len(cached), len(cached), cached=1)
        return PoolGraph(cached, int(features.shape[1]), True, described, warning)  # type: ignore[union-attr]
    if plan is None:
        return None
    count, channels, approximate = plan
    if approximate:
        if not main:
            return None
        graph = approximate_knn_graph(features, neighbors, search=method, progress=progress)  # type: ignore[arg-type]
    elif distributed.is_distributed():
        mine = features if main else torch.empty(0, channels)
        _, shared = distributed.gather_rows(torch.arange(len(mine), dtype=torch.int64), mine, to_all=True)
        first, last = distributed.batch_block(count, block_rows(count))
        part = knn_graph(shared, neighbors, device=device, rows=(first, last),
                         progress=progress if main else no_progress)
        gathered = distributed.gather_rows(torch.arange(first, last, dtype=torch.int64), part)
        del shared
        if not main:
            return None
        assert gathered is not None
        graph = gathered[1]
    else:
        graph = knn_graph(features, neighbors, device=device, progress=progress)  # type: ignore[arg-type]
    if path is not None:
        _write_graph_cache(path, graph)
    return PoolGraph(graph, channels, False, described, warning)


def join_positives(pool_neighbors: torch.Tensor, pool_features: torch.Tensor, positive_features: torch.Tensor,
                   *, block_elements: int | None = None) -> torch.Tensor:
    """The k-NN graph of the pool and the labeled positives together, from the pool's own graph.

    Nodes ``0..N-1`` are the pool, ``N..N+M-1`` the positives (their augmented copies included).
    A pool row keeps its k nearest among its old neighbours and every positive (so with an exact
    pool graph the joined graph is exact too; with the approximate one, as good as it was); a
    positive's row is an exact search over all other nodes. The pool's graph is the cached one
    (:func:`pool_graph`): joining costs ``N * M`` distances, not a second pool search.

    Args:
        pool_neighbors: (N, k) int64, the pool's graph.
        pool_features, positive_features: (N, C) and (M, C) float32 graph features (the pool's
            :func:`graph_transform` applied to both).
        block_elements: about how many distances one block holds (default :data:`BLOCK_ELEMENTS`).

    Returns:
        (N + M, k) int64 neighbours, nearest first; no node is its own neighbour.
    """
    n, k = pool_neighbors.shape
    m = len(positive_features)
    if m == 0 or k == 0:
        return pool_neighbors.clone()
    nodes = torch.cat([pool_features.float(), positive_features.float()])
    norms = (nodes * nodes).sum(1)
    out = torch.empty(n + m, k, dtype=torch.int64)
    budget = block_elements or BLOCK_ELEMENTS
    step = max(1, budget // (k * nodes.shape[1] + m))  # rows per block: (rows, k, C) and (rows, M) floats
    seed_ids = torch.arange(n, n + m)
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = nodes[start:stop]
        old = pool_neighbors[start:stop]
        old_d = ((rows[:, None, :] - nodes[old]) ** 2).sum(2)
        new_d = torch.addmm(norms[None, n:], rows, nodes[n:].T, alpha=-2.0) + norms[start:stop, None]
        candidates = torch.cat([old, seed_ids.expand(stop - start, m)], 1)
        distances = torch.cat([old_d, new_d.clamp(min=0.0)], 1)
        order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
        out[start:stop] = candidates.gather(1, order)
    out[n:] = knn_graph(nodes, k, rows=(n, n + m), block_elements=block_elements)
    return out
