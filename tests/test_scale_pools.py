"""benchmarks/scale_pools.py on tiny synthetic inputs: shards byte-identical across runs, resumes and
worker counts; the planned prior and ground truth; photo-sized JPEG members pucli reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scale_pools
from conftest import write_idx_data

from pucli.data.decode import decode_image_file
from pucli.data.shards import split_member
from pucli.data.sources import UnlabeledPool
from pucli.errors import UsageError

COUNTS = {("mnist", "train"): 40, ("fashion", "train"): 12, ("fashion", "t10k"): 5, ("kmnist", "test"): 3}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A shared-data folder with tiny IDX files of the four splits and their SHA256SUMS."""
    return write_idx_data(tmp_path / "data",
                          ((images, labels, COUNTS[key]) for key, (images, labels) in scale_pools.IDX_FILES.items()))


def _affine(data_dir: Path, n: int = 30, shard_size: int = 8) -> scale_pools.AffinePool:
    return scale_pools.AffinePool(data_dir, n, prior=0.2, seed=3, shard_size=shard_size, positive_range=(20, 40))


def _shard_bytes(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((out / "shards").glob("pool-*.tar"))]


def test_affine_pool_shards_are_byte_identical_after_an_interrupted_run_resumes(data_dir: Path, tmp_path: Path) -> None:
    whole = scale_pools.generate(_affine(data_dir), tmp_path / "whole", progress=lambda _m: None)
    assert whole is not None and whole["shards"] == 4 and whole["images"] == 30
    assert scale_pools.generate(_affine(data_dir), tmp_path / "resumed", progress=lambda _m: None, stop_after=2) is None
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    resumed = scale_pools.generate(_affine(data_dir), tmp_path / "resumed", progress=lambda _m: None)
    assert resumed is not None
    assert _shard_bytes(tmp_path / "whole") == _shard_bytes(tmp_path / "resumed")
    truth = lambda out: (out / "ground_truth.tsv").read_text().replace(str(out), "")
    assert truth(tmp_path / "whole") == truth(tmp_path / "resumed")


def test_affine_pool_shards_do_not_depend_on_the_worker_count(data_dir: Path, tmp_path: Path) -> None:
    scale_pools.generate(_affine(data_dir), tmp_path / "one", progress=lambda _m: None)
    scale_pools.generate(_affine(data_dir), tmp_path / "two", workers=2, progress=lambda _m: None)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")


def test_affine_pool_has_the_planned_prior_and_a_ground_truth_row_per_member(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool"
    manifest = scale_pools.generate(_affine(data_dir), out, progress=lambda _m: None)
    assert manifest is not None and manifest["positives"] == 6  # round(0.2 * 30)
    members = UnlabeledPool.from_source(str(out / "pool-shards.txt")).paths
    rows = [line.split("\t") for line in (out / "ground_truth.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [str(p) for p in members]
    assert sum(r[1] == "1" for r in rows) == 6
    assert all((r[1] == "1") == (r[2] == "mnist-train") for r in rows)
    assert all(r[2] != "mnist-train" or 20 <= int(r[3]) < 40 for r in rows)  # never the teacher's images
    image = decode_image_file(members[0], 1)
    assert tuple(image.shape) == (1, 28, 28)


def test_a_pool_with_other_settings_is_refused_unless_forced(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool"
    scale_pools.generate(_affine(data_dir), out, progress=lambda _m: None)
    other = scale_pools.AffinePool(data_dir, 30, prior=0.2, seed=4, shard_size=8, positive_range=(20, 40))
    with pytest.raises(UsageError):
        scale_pools.generate(other, out, progress=lambda _m: None)
    assert scale_pools.generate(other, out, force=True, progress=lambda _m: None) is not None
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4


def test_photo_pool_members_are_photo_sized_jpegs_in_pool_order(tmp_path: Path) -> None:
    root = tmp_path / "mnist-pu"
    rows = []
    for i in range(5):
        path = root / "unlabeled" / f"img-{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8), mode="L").save(path)
        rows.append(f"{path}\t{i % 2}\tmnist\t{i}")
    (root / "ground_truth.tsv").write_text("path\tpositive\tsource\tlabel\n" + "\n".join(rows) + "\n")
    (root / "manifest.json").write_text("{}")
    out = tmp_path / "photo"
    pool = scale_pools.PhotoPool(root, side=64, quality=90, shard_size=2)
    manifest = scale_pools.generate(pool, out, progress=lambda _m: None)
    assert manifest is not None and manifest["shards"] == 3 and manifest["positives"] == 2
    members = UnlabeledPool.from_source(str(out / "pool-shards.txt")).paths
    assert [split_member(p)[1] for p in members] == [f"u{i:07d}.jpg" for i in range(5)]
    image = decode_image_file(members[3], 3)
    assert tuple(image.shape) == (3, 64, 64)
    assert abs(float(image.float().mean()) - 120) < 2  # grey level 40 * 3, through JPEG
