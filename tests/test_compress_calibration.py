"""Where re-estimation's images come from (pucli.compress.calibration): every source pucli reads, equal
batches, seeded draws, unreadable files replaced."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from conftest import write_png

from pucli.checkpoints import ModelConfig
from pucli.compress.calibration import calibration_batches, calibration_paths
from pucli.data.files import SkippedFile
from pucli.data.index import IndexEntry, write_index
from pucli.data.loading import Preprocess

CONFIG = ModelConfig("test_resnet", 10, 1, (1, 8, 8), (0.5,), (0.5,))


def pool(tmp_path: Path, count: int = 12) -> list[Path]:
    return [write_png(tmp_path / "pool" / f"u{i:02d}.png", size=(8, 8), seed=i) for i in range(count)]


def test_folder_list_and_stdin_list_give_the_same_paths(tmp_path: Path) -> None:
    paths = pool(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    assert calibration_paths(str(tmp_path / "pool")) == paths
    assert calibration_paths(str(listing)) == paths
    assert calibration_paths("-", stdin=io.StringIO(listing.read_text())) == paths


def test_an_index_gives_its_selected_rows_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    paths = pool(tmp_path, 4)
    entries = [IndexEntry(p, 1.0 - i, selected=i < 2) for i, p in enumerate(paths)]
    write_index(entries, tmp_path / "index.tsv", with_selected=True)
    assert calibration_paths(str(tmp_path / "index.tsv")) == paths[:2]
    assert calibration_paths("-", stdin=io.StringIO((tmp_path / "index.tsv").read_text())) == paths[:2]


def test_an_expanded_set_gives_all_its_items(tmp_path: Path) -> None:
    from pucli.data.manifest import write_expanded_set
    from pucli.kd.expand import build_expanded_set

    paths = pool(tmp_path, 3)
    expanded = build_expanded_set(paths=paths, origins=["positive", "unlabeled", "unlabeled"], labels=[0, -1, -1],
                                  scores=[None, 1.0, 0.5], soft_targets=torch.full((3, 2), 0.5), temperature=1.0,
                                  teacher_digest="sha256:0", class_names=["a", "b"])
    (tmp_path / "expanded").mkdir()
    write_expanded_set(expanded, tmp_path / "expanded")
    assert calibration_paths(str(tmp_path / "expanded")) == paths


def test_batches_are_equal_seeded_and_replace_unreadable_files(tmp_path: Path) -> None:
    paths = pool(tmp_path, 12)
    paths[3].write_bytes(b"not an image")
    skipped: list[SkippedFile] = []
    preprocess = Preprocess(CONFIG)
    first = list(calibration_batches(paths, preprocess, images=10, batch_size=4, seed=1, skipped=skipped))
    assert [b.shape for b in first] == [(3, 1, 8, 8)] * 3  # ceil(10 / 4) = 3 batches of 10 // 3 = 3
    assert first[0].dtype == torch.float32
    again = list(calibration_batches(paths, preprocess, images=10, batch_size=4, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = list(calibration_batches(paths, preprocess, images=10, batch_size=4, seed=2))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    everything = list(calibration_batches(paths, preprocess, images=100, batch_size=100, seed=0, skipped=skipped))
    assert [b.shape[0] for b in everything] == [11]  # 12 drawn, one unreadable: one batch of the 11 left
    assert any(s.path == str(paths[3]) for s in skipped)


def test_flip_crop_changes_the_images_but_not_their_shape(tmp_path: Path) -> None:
    paths = pool(tmp_path, 8)
    plain = torch.cat(list(calibration_batches(paths, Preprocess(CONFIG), images=8, batch_size=8)))
    augmented = torch.cat(list(calibration_batches(paths, Preprocess(CONFIG), images=8, batch_size=8, augment="flip-crop")))
    assert plain.shape == augmented.shape and not torch.equal(plain, augmented)
