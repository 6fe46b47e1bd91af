"""Image sources: class mapping of labeled folders, pool sources, decoding and bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_png
from PIL import Image

from pucli.checkpoints import ModelConfig
from pucli.data.decode import BadImageError, decode_image_file
from pucli.data.loading import ImageDataset, Preprocess, collate, iterate_batches
from pucli.data.sources import LabeledFolder, UnlabeledPool
from pucli.errors import ClassMappingError, NoImagesError, UsageError

GRAY_28 = ModelConfig("lenet5", 3, 1, (1, 28, 28), (0.5,), (0.25,))


def test_labeled_folder_maps_classes_by_teacher_label_names(make_class_folder) -> None:
    root = make_class_folder("pos", classes=["cat", "dog"], per_class=2)
    folder = LabeledFolder.from_folder(root, num_classes=3, label_names=["bird", "dog", "cat"])
    assert folder.folder_to_class == {"cat": 2, "dog": 1}
    assert folder.counts == [0, 2, 2]
    assert all(folder.labels[i] == (2 if p.parent.name == "cat" else 1) for i, p in enumerate(folder.paths))


def test_labeled_folder_uses_sorted_folder_names_without_label_names(make_class_folder) -> None:
    root = make_class_folder("pos", classes=["b", "a", "c"], per_class=1)
    folder = LabeledFolder.from_folder(root, num_classes=3)
    assert folder.class_names == ["a", "b", "c"] and folder.folder_to_class == {"a": 0, "b": 1, "c": 2}


def test_classes_file_wins_over_label_names(make_class_folder, tmp_path: Path) -> None:
    root = make_class_folder("pos", classes=["x", "y"], per_class=1)
    classes = tmp_path / "classes.txt"
    classes.write_text("# output order\ny\nz\nx\n")
    folder = LabeledFolder.from_folder(root, num_classes=3, label_names=["a", "b", "c"], classes_file=classes)
    assert folder.folder_to_class == {"x": 2, "y": 0}


def test_folder_count_mismatch_without_names_is_a_class_mapping_error(make_class_folder) -> None:
    root = make_class_folder("pos", classes=["0", "1"], per_class=1)
    with pytest.raises(ClassMappingError, match="2 class folders but the teacher has 3 outputs.*`classes_file=FILE`"):
        LabeledFolder.from_folder(root, num_classes=3)


def test_folder_not_among_label_names_is_a_class_mapping_error(make_class_folder) -> None:
    root = make_class_folder("pos", classes=["0", "7"], per_class=1)
    with pytest.raises(ClassMappingError, match="folder\\(s\\) 7 are not classes"):
        LabeledFolder.from_folder(root, num_classes=3, label_names=["0", "1", "2"])


def test_classes_file_with_wrong_count_is_a_usage_error(make_class_folder, tmp_path: Path) -> None:
    root = make_class_folder("pos", classes=["0"], per_class=1)
    (tmp_path / "c.txt").write_text("0\n1\n")
    with pytest.raises(UsageError, match="lists 2 classes but the teacher has 3"):
        LabeledFolder.from_folder(root, num_classes=3, classes_file=tmp_path / "c.txt")


def test_missing_empty_and_flat_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        LabeledFolder.from_folder(tmp_path / "missing", num_classes=2)
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(NoImagesError, match="no class subfolders"):
        LabeledFolder.from_folder(tmp_path / "flat", num_classes=2)
    (tmp_path / "empty" / "0").mkdir(parents=True)
    (tmp_path / "empty" / "1").mkdir()
    with pytest.raises(NoImagesError, match="holds no image files"):
        LabeledFolder.from_folder(tmp_path / "empty", num_classes=2)


def test_pool_from_folder_is_recursive_sorted_and_ignores_non_images(make_pool) -> None:
    root = make_pool(count=6)
    (root / "notes.txt").write_text("not an image")
    pool = UnlabeledPool.from_source(str(root))
    assert len(pool) == 6
    assert pool.paths == sorted(pool.paths)


def test_pool_from_list_file_resolves_relative_paths_against_the_list(make_pool, tmp_path: Path) -> None:
    root = make_pool(count=3)
    listing = tmp_path / "list.txt"
    listing.write_text("# pool\npool/part0/u000.png\n\n" + str(root / "part1" / "u001.png") + "\n")
    pool = UnlabeledPool.from_source(str(listing))
    assert pool.paths == [tmp_path / "pool/part0/u000.png", root / "part1" / "u001.png"]


def test_pool_from_stdin_dash(make_pool) -> None:
    root = make_pool(count=2)
    stdin = io.StringIO(f"{root}/part0/u000.png\n{root}/part1/u001.png\n")
    pool = UnlabeledPool.from_source("-", stdin=stdin)
    assert [p.name for p in pool.paths] == ["u000.png", "u001.png"]


def test_empty_pool_and_missing_pool_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="names no image file"):
        UnlabeledPool.from_source(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="does not exist"):
        UnlabeledPool.from_source(str(tmp_path / "nowhere"))


def test_unreadable_files_are_skipped_counted_and_listed(make_pool, tmp_path: Path) -> None:
    root = make_pool(count=4)
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("hello, not a png")
    good = (root / "part0" / "u000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    pool = UnlabeledPool.from_source(str(root))
    skipped: list = []
    batches = list(iterate_batches(ImageDataset(pool.paths, Preprocess(GRAY_28)), batch_size=3, skipped=skipped))
    assert sum(len(b.indices) for b in batches) == 4
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert set(reasons) == {"zero.png", "text.png", "truncated.png"}
    assert reasons["zero.png"] == "empty file"
    assert reasons["text.png"] == "not an image"
    assert "truncated" in reasons["truncated.png"]


def test_batches_keep_dataset_order_with_worker_processes(make_pool) -> None:
    pool = UnlabeledPool.from_source(str(make_pool(count=10)))
    batches = list(iterate_batches(ImageDataset(pool.paths, Preprocess(GRAY_28)), batch_size=4, workers=2))
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(10))
    assert batches[0].images.dtype == torch.uint8 and batches[0].images.shape == (4, 1, 28, 28)


def test_colour_images_are_converted_to_the_models_channels_and_size(tmp_path: Path) -> None:
    path = write_png(tmp_path / "rgb.png", size=(40, 30), mode="RGB")
    image = Preprocess(GRAY_28).resize(decode_image_file(path, 1))
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    rgb_config = ModelConfig("resnet18", 3, 3, (3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), crop_pct=0.875)
    assert Preprocess(rgb_config).resize(decode_image_file(path, 3)).shape == (3, 32, 32)


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "P", "I;16", "LA", "1"])
def test_odd_image_modes_decode(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8), mode="RGB")
    image = base.convert("L").convert(mode) if mode in ("I;16", "LA", "1") else base.convert(mode)
    path = tmp_path / ("odd.tif" if mode == "CMYK" else "odd.png")
    image.save(path)
    for channels in (1, 3):
        decoded = decode_image_file(path, channels)
        assert decoded.shape == (channels, 9, 7) and decoded.dtype == torch.uint8


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed 10 wide, 20 high
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert decode_image_file(tmp_path / "rotated.jpg", 3).shape == (3, 20, 10)


def test_decoding_a_non_image_raises_bad_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadImageError):
        decode_image_file(tmp_path / "x.png", 1)


def test_normalize_uses_config_mean_and_std() -> None:
    batch = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = Preprocess(GRAY_28).normalize(batch)
    torch.testing.assert_close(out, torch.full((2, 1, 28, 28), (1.0 - 0.5) / 0.25))


def _mixed_pool(root: Path) -> list[Path]:
    """Good PNGs of several sizes and modes, odd formats PIL must take, and bad files, interleaved."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(23):
        kind = i % 6
        if kind == 0:
            paths.append(write_png(root / f"{i:02d}-gray.png", seed=i))
        elif kind == 1:
            paths.append(write_png(root / f"{i:02d}-rgb.png", size=(40, 30), mode="RGB", seed=i))
        elif kind == 2:
            path = root / f"{i:02d}-16bit.png"
            Image.fromarray(rng.integers(0, 65536, (28, 28), dtype=np.uint16)).save(path)  # torchvision: uint16
            paths.append(path)
        elif kind == 3:
            path = root / f"{i:02d}-cmyk.tif"  # torchvision cannot, PIL can
            Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert("CMYK").save(path)
            paths.append(path)
        elif kind == 4:
            paths.append(root / f"{i:02d}-empty.png")
            paths[-1].write_bytes(b"")
        else:
            paths.append(root / f"{i:02d}-text.png")
            paths[-1].write_text("not an image")
    paths.append(root / "missing.png")
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_fetching_yields_the_batches_and_skips_of_per_item_fetching(tmp_path: Path, workers: int) -> None:
    paths = _mixed_pool(tmp_path)
    labels = [i % 3 for i in range(len(paths))]
    dataset = ImageDataset(paths, Preprocess(GRAY_28), labels)
    skipped: list = []
    batches = list(iterate_batches(dataset, batch_size=5, workers=workers, skipped=skipped))

    expected_skipped = []
    expected = []
    for start in range(0, len(paths), 5):
        reference = collate([dataset[i] for i in range(start, start + 5) if i < len(paths)])
        expected_skipped += [(str(paths[i]), reason) for i, reason in reference.failed]
        if len(reference.indices):
            expected.append(reference)
    assert [(s.path, s.reason) for s in skipped] == expected_skipped
    assert {Path(p).name.split("-")[-1] for p, _ in expected_skipped} == {"empty.png", "text.png", "missing.png"}
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        assert torch.equal(got.indices, want.indices) and torch.equal(got.labels, want.labels)
        assert got.images.dtype == torch.uint8 and torch.equal(got.images, want.images)


def test_getitems_returns_a_batch_that_collate_passes_through(tmp_path: Path) -> None:
    paths = _mixed_pool(tmp_path)[:6]
    dataset = ImageDataset(paths, Preprocess(GRAY_28))
    batch = dataset.__getitems__([0, 4, 1])
    assert collate(batch) is batch
    assert batch.indices.tolist() == [0, 1] and batch.labels.tolist() == [-1, -1]
    assert batch.failed == [(4, "empty file")] and batch.images.shape == (2, 1, 28, 28)
    all_bad = dataset.__getitems__([4, 5])
    assert len(all_bad.indices) == 0 and [i for i, _ in all_bad.failed] == [4, 5]


def test_decoding_reads_16_bit_pngs_to_their_high_byte(tmp_path: Path) -> None:
    pixels = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    decoded = decode_image_file(tmp_path / "deep.png", 1)
    assert decoded.dtype == torch.uint8 and decoded.flatten().tolist() == list(range(256))
