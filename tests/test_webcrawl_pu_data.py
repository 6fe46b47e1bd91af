"""benchmarks/webcrawl_pu_data.py on tiny synthetic inputs: the planned prior and counts, the top-up
with labelled augmented copies, reuse of the mnist-pu root's PNGs by hard link, the layout the study
harness reads, nesting across priors, and the manifest-last rerun rule."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import webcrawl_pu_data as wc
from conftest import write_idx_data

from pucli.errors import UsageError

# Tiny IDX inputs: MNIST train has 40 images (positions 20..39 play the pool's positives).
SIZES = {"mnist-train": 40, "fashion-train": 12, "fashion-t10k": 5, "kmnist-test": 3}
POSITIVE_RANGE = (20, 40)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_idx_data(tmp_path / "data", ((images, labels, SIZES[name]) for name, (images, labels) in wc.INPUTS.items()))


@pytest.fixture
def ref_root(tmp_path: Path, data_dir: Path) -> Path:
    """A stand-in mnist-pu root: train/, positive/, test/, a manifest, and the PNGs of a few pool images."""
    root = tmp_path / "mnist-pu"
    for part in ("train/0", "positive/nl10-seed0/0", "test/0"):
        (root / part).mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"scenario": "mnist-pu"}))
    images, _ = wc.load_arrays(data_dir)
    for array, index in (("mnist-train", 25), ("fashion-train", 3), ("kmnist-test", 1)):
        folder = root / "unlabeled" / wc.SOURCE_OF[array]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[array][index], mode="L").save(folder / f"{array}-{index:05d}.png")
    return root


def _build(prior: float, size: int, data_dir: Path, ref_root: Path, out: Path, **kwargs):
    return wc.materialise(prior, size=size, data_dir=data_dir, out_base=out, ref_root=ref_root,
                          positive_range=POSITIVE_RANGE, progress=lambda _: None, **kwargs)


def _rows(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "ground_truth.tsv").read_text().splitlines()[1:]]


def test_pool_counts_prior_and_topup(data_dir: Path, ref_root: Path, tmp_path: Path) -> None:
    root, manifest = _build(0.1, 50, data_dir, ref_root, tmp_path / "wc")
    assert root.name == "p0.10" and manifest is not None
    rows = _rows(root)
    assert len(rows) == 50 and manifest["true_class_prior"] == pytest.approx(0.1)
    assert sum(r[1] == "1" for r in rows) == 5
    # 20 distinct negatives, 25 augmented copies: one copy of each negative, then a second of five.
    sources = [r[2] for r in rows]
    assert sum(s in ("fashion", "kmnist") for s in sources) == 20
    assert sum(s.endswith("-aug") for s in sources) == 25
    assert manifest["counts"]["unlabeled_negative_augmented"] == 25
    assert len({r[0] for r in rows}) == 50  # every pool path is its own file
    # unlabeled.txt: the same absolute paths, same order; every file a 28 x 28 grey PNG.
    pool = (root / "unlabeled.txt").read_text().split()
    assert pool == [r[0] for r in rows]
    for path in pool[:10]:
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (28, 28)
    # The mnist-pu parts are links; the pool positives are MNIST train positions in the pool range.
    for part in ("train", "positive", "test"):
        assert (root / part).is_symlink() and (root / part).resolve() == (ref_root / part).resolve()
    positions = [int(Path(r[0]).stem.split("-")[-1]) for r in rows if r[1] == "1"]
    assert all(POSITIVE_RANGE[0] <= p < POSITIVE_RANGE[1] for p in positions)


def test_reuses_reference_pngs_by_hard_link(data_dir: Path, ref_root: Path, tmp_path: Path) -> None:
    root, manifest = _build(0.5, 40, data_dir, ref_root, tmp_path / "wc")
    linked = root / "unlabeled" / "fashion" / "fashion-train-00003.png"
    assert linked.is_file()
    assert os.stat(linked).st_ino == os.stat(ref_root / "unlabeled" / "fashion" / "fashion-train-00003.png").st_ino
    assert manifest["files"]["hard_links_to_ref_root"] >= 2


def test_augmented_copies_are_near_duplicates(data_dir: Path) -> None:
    images, _ = wc.load_arrays(data_dir)
    source = images["fashion-train"][0]
    params = wc.augment_params(0, 0)
    assert params == wc.augment_params(0, 0)  # seeded
    assert abs(params["rotation_deg"]) <= wc.ROTATION_DEG and wc.SCALE_RANGE[0] <= params["scale"] <= wc.SCALE_RANGE[1]
    copy = wc.augment(source, params)
    assert copy.shape == (28, 28) and copy.dtype == np.uint8 and not np.array_equal(copy, source)
    identity = wc.augment(source, {"rotation_deg": 0.0, "scale": 1.0, "shift_x": 0.0, "shift_y": 0.0})
    assert np.abs(identity.astype(int) - source.astype(int)).max() <= 1


def test_priors_are_nested_and_rerun_is_a_no_op(data_dir: Path, ref_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "wc"
    low, _ = _build(0.1, 50, data_dir, ref_root, out)
    high, _ = _build(0.2, 50, data_dir, ref_root, out)
    positives = lambda root: {Path(r[0]).name for r in _rows(root) if r[1] == "1"}
    assert positives(low) < positives(high)
    before = (low / "manifest.json").read_text()
    again, manifest = _build(0.1, 50, data_dir, ref_root, out)
    assert again == low and manifest is None and (low / "manifest.json").read_text() == before
    _, rebuilt = _build(0.1, 50, data_dir, ref_root, out, force=True)
    assert rebuilt is not None and _rows(low) == [r for r in _rows(low)]
    assert not list(out.glob(".p0.10.partial-*"))


def test_impossible_prior_is_a_usage_error(data_dir: Path, ref_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        _build(0.9, 50, data_dir, ref_root, tmp_path / "wc")  # 45 positives, 20 available
    with pytest.raises(UsageError):
        wc.plan_pool(0.0, 50, [("fashion-train", 0)], POSITIVE_RANGE)


@pytest.mark.slow
def test_real_plan_at_the_lowest_prior() -> None:
    """The real pool at prior 0.02 (planning only, no files): 2,000 positives, all 80,000 distinct
    negatives, 18,000 augmented copies of 18,000 different negatives."""
    data = wc.default_data_dir()
    if not (data / "SHA256SUMS").is_file():
        pytest.skip(f"no shared data at {data}")
    images, _ = wc.load_arrays(data)
    available = [(a, i) for a in wc.NEGATIVE_ARRAYS for i in range(len(images[a]))]
    plan = wc.plan_pool(0.02, wc.POOL_SIZE, available, wc.POOL_POSITIVE_RANGE)
    assert len(available) == 80_000 and plan["n_positive"] == 2_000 and len(plan["negatives"]) == 80_000
    assert len(plan["augmented"]) == 18_000 and len({(a, i) for a, i, _, _ in plan["augmented"]}) == 18_000
