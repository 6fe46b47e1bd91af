"""benchmarks/photo_draft_f1.py: the photo-sized positives and the F1 it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import photo_draft_f1


def test_positives_are_written_as_photo_sized_jpegs_in_their_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for label in (3, 7):
        folder = root / "positive" / "nl10-seed0" / str(label)
        folder.mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 30 * label, dtype=np.uint8), mode="L").save(folder / f"img-{label}.png")
    out = photo_draft_f1.photo_positives(root, "nl10-seed0", tmp_path / "photos", side=64, quality=90)
    written = sorted(out.rglob("*.jpg"))
    assert [p.relative_to(out).as_posix() for p in written] == ["3/img-3.jpg", "7/img-7.jpg"]
    with Image.open(written[1]) as image:
        assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "RGB"
        assert np.abs(np.asarray(image).astype(int) - 210).max() <= 2  # a flat grey 30 * 7, in all three channels
    before = written[0].stat().st_mtime_ns
    photo_draft_f1.photo_positives(root, "nl10-seed0", tmp_path / "photos", side=64, quality=90)
    assert written[0].stat().st_mtime_ns == before  # kept, not rewritten


def test_quality_is_precision_recall_and_f1_of_the_kept_paths(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "ground_truth.tsv").write_text("path\tpositive\tsource\n/p/a\t1\tm\n/p/b\t1\tm\n/p/c\t0\tf\n/p/d\t1\tm\n")
    import scale_pools

    truth = scale_pools.task_images(pool)
    assert truth == {"/p/a", "/p/b", "/p/d"}
    paths = [Path("/p/a"), Path("/p/b"), Path("/p/c"), Path("/p/d")]
    result = photo_draft_f1.quality(paths, torch.tensor([True, False, True, False]), truth)
    # 2 kept, 1 of them a task image, 3 task images: precision 1/2, recall 1/3, F1 2PR/(P+R) = 0.4.
    assert result["precision"] == 0.5 and abs(result["recall"] - 1 / 3) < 1e-4 and abs(result["f1"] - 0.4) < 1e-4
