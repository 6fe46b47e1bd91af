"""Reduced-size JPEG decoding (pucli.data.decode ``draft``, issue 20): large JPEGs are decoded at
the size the teacher needs, every other image exactly as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pucli.checkpoints import ModelConfig
from pucli.data import decode
from pucli.data.decode import BadImageError, decode_image_file, decode_images, draft_side
from pucli.data.loading import ImageDataset, Preprocess

RGB_32 = ModelConfig("resnet18", 10, 3, (3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
RGB_32_CROP = ModelConfig("resnet18", 10, 3, (3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), crop_pct=0.875)
GRAY_28 = ModelConfig("lenet5", 10, 1, (1, 28, 28), (0.5,), (0.25,))


def _photo(width: int = 256, height: int = 256, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour waves, a few flat discs with sharp edges, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([np.sin(2 * np.pi * (1.5 * x + 0.5 * y) + phase) for phase in (0, 2, 4)], -1) * 80 + 128
    for _ in range(6):
        cx, cy, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < radius ** 2] = rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def _final(path: Path, config: ModelConfig, *, draft: bool) -> torch.Tensor:
    """The uint8 (C, h, w) image the loaders hand the model: through ImageDataset (draft), or the full
    decode and the same resize (no draft)."""
    preprocess = Preprocess(config)
    if draft:
        return ImageDataset([path], preprocess)[0][1]
    return preprocess.resize(decode_image_file(path, config.in_chans))


def test_draft_side_is_the_scale_step_of_the_evaluation_transform() -> None:
    assert draft_side((32, 32), 1.0) == 32
    assert draft_side((32, 32), 0.875) == 36  # floor(32 / 0.875)
    assert draft_side((224, 160), 0.9) == 248
    assert ImageDataset([], Preprocess(RGB_32_CROP)).draft == 36


@pytest.mark.parametrize(("config", "reduced", "max_diff", "mean_diff"), [
    (RGB_32, (3, 32, 32), 32, 2.0),        # 1/8 DCT scaling, then nothing left to resize
    (RGB_32_CROP, (3, 64, 64), 12, 1.0),   # 1/4 (both sides >= 36), then the resize to 36 and the crop
    (GRAY_28, (1, 32, 32), 10, 1.0),       # grey: libjpeg's luma straight from the reduced decode
])
def test_a_256_pixel_jpeg_is_decoded_reduced_to_the_same_shape_and_nearly_the_same_pixels(
        tmp_path: Path, config: ModelConfig, reduced: tuple[int, ...], max_diff: int, mean_diff: float) -> None:
    path = _save(_photo(), tmp_path / "photo.jpg", quality=90)
    raw = decode_image_file(path, config.in_chans, draft=draft_side(Preprocess(config).size, config.crop_pct))
    assert tuple(raw.shape) == reduced
    drafted, full = _final(path, config, draft=True), _final(path, config, draft=False)
    assert drafted.shape == full.shape == (config.in_chans, *config.input_size[1:]) and drafted.dtype == torch.uint8
    difference = (drafted.int() - full.int()).abs()
    # Measured on this image (Pillow 13, libjpeg-turbo): max 24 / mean 1.34 grey levels at 1/8,
    # max 8 / mean 0.55 at 1/4, max 6 / mean 0.58 in grey; the bounds leave room for other libjpegs.
    assert int(difference.max()) <= max_diff
    assert float(difference.float().mean()) <= mean_diff


def test_the_batch_decoder_takes_the_same_reduced_path(tmp_path: Path) -> None:
    path = _save(_photo(seed=1), tmp_path / "photo.jpg", quality=90)
    (batched, reason), = decode_images([path], 3, draft=32)
    assert reason is None and torch.equal(batched, decode_image_file(path, 3, draft=32))


def test_png_pixels_are_byte_identical_with_and_without_draft(tmp_path: Path) -> None:
    path = _save(_photo(), tmp_path / "photo.png")
    plain = decode_image_file(path, 3)
    assert torch.equal(decode_image_file(path, 3, draft=32), plain) and plain.shape == (3, 256, 256)
    assert torch.equal(decode_images([path], 3, draft=32)[0][0], plain)
    assert torch.equal(_final(path, RGB_32, draft=True), _final(path, RGB_32, draft=False))


def test_a_jpeg_less_than_twice_the_target_decodes_at_full_size_as_before(tmp_path: Path) -> None:
    path = _save(_photo(60, 60), tmp_path / "small.jpg", quality=90)
    assert torch.equal(decode_image_file(path, 3, draft=32), decode_image_file(path, 3))
    assert torch.equal(_final(path, RGB_32, draft=True), _final(path, RGB_32, draft=False))


def test_a_reduced_decode_keeps_the_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a 512 x 256 file shows as 256 wide, 512 high
    path = _save(_photo(512, 256), tmp_path / "rotated.jpg", quality=90, exif=exif.tobytes())
    full = decode_image_file(path, 3)
    assert full.shape == (3, 512, 256)
    assert decode_image_file(path, 3, draft=32).shape == (3, 64, 32)  # 1/8 of each side, same orientation


def test_the_bomb_guard_still_refuses_a_jpeg_over_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_photo(), tmp_path / "photo.jpg", quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 256 x 256 is over twice this: PIL's error
    with pytest.raises(BadImageError, match="too large"):
        decode_image_file(path, 3, draft=32)
    assert decode_images([path], 3, draft=32) == decode_images([path], 3)


def test_a_truncated_or_corrupt_large_jpeg_fails_as_it_does_without_draft(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _photo().save(buffer, format="JPEG", quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(buffer.getvalue()[:200] + b"\x00" * 5000)
    for path in (truncated, corrupt):
        with_draft, without = decode_images([path], 3, draft=32)[0], decode_images([path], 3)[0]
        assert (with_draft[0] is None) == (without[0] is None) and with_draft[1] == without[1]
    assert decode._decode_reduced(torch.frombuffer(bytearray(corrupt.read_bytes()), dtype=torch.uint8), 3, 32) is None
